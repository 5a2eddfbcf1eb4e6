"""Model artifacts in Django storage: their names, writing, reading, and the index sidecar.

Training writes an artifact and verifies what storage holds (read back, hash, load)
before the version may serve, recording the SHA-256; serving reads it back and refuses
bytes that no longer hash to it before anything is unpickled. The file format itself
(tensors + JSON metadata, safe loader) is ``recommender.ml.artifact``'s.
"""

import hashlib
import io

from django.core.files.base import ContentFile
from django.core.files.storage import storages

from .conf import recommender_settings


class ArtifactRefused(ValueError):
    """A stored artifact is not the one that was verified when its version was trained."""


def artifact_storage():
    """The Django storage that holds artifacts (``ARTIFACT_STORAGE``)."""
    return storages[recommender_settings.ARTIFACT_STORAGE]


def artifact_name(version_id):
    """Where a version's artifact is written (storage may pick another name if it is taken)."""
    return f"{recommender_settings.ARTIFACT_PATH}/v{version_id}.pt"


def index_name(name):
    """The approximate index's sidecar file beside the artifact ``name``."""
    return f"{name}.ivf"


def write_verified(version_id, payload):
    """Store ``payload`` and verify what storage holds: read back, hash, load the model.

    Returns ``(name, sha256)`` of the stored artifact; raises ArtifactRefused (or the
    loader's ArtifactError) if storage does not give back a loadable copy of ``payload``.
    """
    from .ml import artifact

    storage = artifact_storage()
    name = storage.save(artifact_name(version_id), ContentFile(payload))
    with storage.open(name, "rb") as stored:
        stored_bytes = stored.read()
    digest = hashlib.sha256(stored_bytes).hexdigest()
    if digest != hashlib.sha256(payload).hexdigest():
        raise ArtifactRefused("The artifact read back from storage differs from what was written.")
    artifact.load_artifact(io.BytesIO(stored_bytes)).build_model()
    return name, digest


def read_verified(name, sha256=""):
    """The artifact's bytes, refused (ArtifactRefused) if they do not hash to ``sha256``.

    The check comes before anything is unpickled, so a file damaged or replaced in storage
    after training verified it never reaches the loader. An empty ``sha256`` skips it
    (versions recorded before hashes were).
    """
    with artifact_storage().open(name, "rb") as stored:
        payload = stored.read()
    if sha256:
        actual = hashlib.sha256(payload).hexdigest()
        if actual != sha256:
            raise ArtifactRefused(
                f"artifact {name!r} in storage is not the one verified at training "
                f"(sha256 {actual[:12]}..., expected {sha256[:12]}...): damaged or replaced"
            )
    return payload


def read_predictor(name, sha256="", **options):
    """A ``Predictor`` over the verified artifact ``name`` (imports torch); ``options`` go to it."""
    from .ml.inference import Predictor

    return Predictor.from_artifact(io.BytesIO(read_verified(name, sha256)), **options)


def read_header(name):
    """What the stored artifact ``name`` holds: model name, configuration, tensor shapes
    (``ml.artifact.read_header``: no tensor data is loaded; imports torch)."""
    from .ml import artifact

    with artifact_storage().open(name, "rb") as stored:
        return artifact.read_header(stored)


def save_index(name, index):
    """Store the approximate index built at training time beside the artifact ``name``."""
    buffer = io.BytesIO()
    index.save(buffer)
    artifact_storage().save(index_name(name), ContentFile(buffer.getvalue()))


def read_index(name):
    """The approximate index stored beside the artifact ``name``, or None if there is none."""
    from .ml.ann import IVFIndex

    storage = artifact_storage()
    if not storage.exists(index_name(name)):
        return None
    with storage.open(index_name(name), "rb") as stored:
        return IVFIndex.load(stored)
