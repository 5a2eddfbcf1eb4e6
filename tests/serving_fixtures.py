"""An active model version over a small catalogue, without training (random weights).

Serving behaviour (rules, caching, fallbacks, version switches) does not depend on how
good the weights are; training quality is tested in test_training.py.
"""

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from recommender.ml import artifact, data, nets
from recommender.models import ModelVersion


def install_version(products, *, seed=0, activate=True, max_len=50):
    import torch

    torch.manual_seed(seed)
    kinds = data.kind_vocabulary(data.KNOWN_KINDS)
    # Untrained: the attention summary's random weights still make lists follow the
    # history (an untrained transformer stack answers nearly alike for every history).
    model = nets.build_model(
        "cnn_dnn",
        len(products),
        len(kinds),
        dim=16,
        tower_hidden=32,
        max_len=max_len,
        summary="attention",
    )
    payload = artifact.artifact_bytes(
        model_name="cnn_dnn",
        model_config=model.config,
        state_dict=model.state_dict(),
        item_ids=[p.pk for p in products],
        kind_names=kinds,
        metrics={},
    )
    name = default_storage.save(f"recommender/models/test-{seed}.pt", ContentFile(payload))
    version = ModelVersion.objects.create(
        status="ready", artifact=name, model_name="cnn_dnn", metrics={"valid": {"ndcg@10": 0.1}}
    )
    if activate:
        version.activate()
    return version
