"""Artifacts in Django storage: written then verified, read back verified, the index beside them."""

import hashlib
import uuid

import pytest
import torch

from recommender import artifacts
from recommender.ml import ann, artifact, baselines, inference


@pytest.fixture
def storage(settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path)
    return artifacts.artifact_storage()


def popularity_bytes(item_ids=("a", "b", "c")):
    model = baselines.Popularity(len(item_ids)).fit_sequences([[1, 2, 2, 3, 3, 3]])
    return artifact.artifact_bytes(
        model_name="popularity",
        model_config=model.config,
        state_dict=model.state_dict(),
        item_ids=list(item_ids),
        kind_names=["<pad>", "view"],
        metrics={"valid": {"ndcg@10": 0.5}},
    )


def version_id():
    return uuid.uuid4().int % 10**9


def test_an_artifact_written_and_verified_reads_back_the_same(storage):
    payload = popularity_bytes()
    pk = version_id()
    name, digest = artifacts.write_verified(pk, payload)
    assert name == artifacts.artifact_name(pk) and storage.exists(name)
    assert digest == hashlib.sha256(payload).hexdigest()
    assert artifacts.read_verified(name, digest) == payload
    predictor = artifacts.read_predictor(name, digest)
    assert predictor.item_map.to_list() == ["a", "b", "c"]
    assert predictor.model.top_items(1).tolist() == [3]


def test_a_damaged_artifact_is_refused_before_it_is_loaded(storage, monkeypatch):
    name, digest = artifacts.write_verified(version_id(), popularity_bytes())
    with storage.open(name, "rb") as stored:
        damaged = bytearray(stored.read())
    damaged[len(damaged) // 2] ^= 0xFF
    storage.delete(name)
    storage.save(name, artifacts.ContentFile(bytes(damaged)))
    loaded = []
    monkeypatch.setattr(inference, "load_artifact", lambda *a, **k: loaded.append(a))
    with pytest.raises(artifacts.ArtifactRefused, match="not the one verified at training"):
        artifacts.read_predictor(name, digest)
    assert loaded == []  # refused on its hash: nothing was unpickled


def test_a_replaced_artifact_is_refused_though_it_is_well_formed(storage):
    name, digest = artifacts.write_verified(version_id(), popularity_bytes())
    storage.delete(name)
    storage.save(name, artifacts.ContentFile(popularity_bytes(("x", "y", "z"))))
    with pytest.raises(artifacts.ArtifactRefused, match="damaged or replaced"):
        artifacts.read_verified(name, digest)


class _LossyStorage:
    """A storage that gives back other bytes than it was given."""

    def __init__(self, real):
        self.real = real

    def save(self, name, content):
        return self.real.save(name, content)

    def open(self, name, mode="rb"):
        import io

        with self.real.open(name, mode) as stored:
            return io.BytesIO(stored.read()[:-10])


def test_what_storage_gives_back_wrong_is_refused_at_write(storage, monkeypatch):
    monkeypatch.setattr(artifacts, "artifact_storage", lambda: _LossyStorage(storage))
    with pytest.raises(artifacts.ArtifactRefused, match="differs from what was written"):
        artifacts.write_verified(version_id(), popularity_bytes())


def test_an_unloadable_artifact_is_refused_at_write(storage):
    with pytest.raises(artifact.ArtifactError):
        artifacts.write_verified(version_id(), b"not a model at all")


def test_the_index_sidecar_is_stored_beside_its_artifact(storage):
    name, _ = artifacts.write_verified(version_id(), popularity_bytes())
    assert artifacts.read_index(name) is None
    index = ann.IVFIndex.build(torch.randn(201, 8, generator=torch.Generator().manual_seed(0)))
    artifacts.save_index(name, index)
    assert storage.exists(artifacts.index_name(name)) and artifacts.index_name(name) != name
    again = artifacts.read_index(name)
    assert again.nprobe == index.nprobe
    query = torch.randn(8, generator=torch.Generator().manual_seed(1))
    assert again.search(query, 5) == index.search(query, 5)
