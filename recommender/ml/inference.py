"""Request-time scoring: a shopper's latest (item_id, kind) events -> top-k store ids.

Load once per process (``Predictor.from_artifact``), then each request is one encoder
pass over at most ``max_len`` events plus one [d] x [d, N] product: about a millisecond
at 50k items on one core. Thread-safe for concurrent reads (no state is mutated).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from .artifact import Artifact, load_artifact
from .data import IdMap
from .similarity import normalize, similar_items


class Predictor:
    def __init__(
        self,
        model: torch.nn.Module,
        item_ids: Sequence,
        kind_names: Sequence[str],
        *,
        drop_kinds: Iterable[str] = ("remove_from_cart",),
    ):
        self.model = model.eval()
        self.item_map = IdMap.from_list(list(item_ids))
        self.kind_names = list(kind_names)
        self._kind_index = {name: i for i, name in enumerate(self.kind_names) if i > 0}
        # Kinds unseen at training time read as the most neutral known kind.
        self._fallback_kind = self._kind_index.get("view", 1)
        self.drop_kinds = set(drop_kinds)
        self.max_len = int(getattr(model, "max_len", 50))
        self._unit_embeddings = None
        if hasattr(model, "item_embeddings"):
            with torch.no_grad():
                self._items = model.item_embeddings().detach()  # [N+1, d]

    @classmethod
    def from_artifact(cls, source, *, item_key=None, **kwargs) -> Predictor:
        """``source``: an Artifact, or a path / binary file object to load one from.

        ``item_key`` turns each id as the artifact's JSON holds it into the store's own
        key (a store keyed by UUIDs stores their text), so requests look items up by key.
        """
        art = source if isinstance(source, Artifact) else load_artifact(source)
        item_ids = art.item_ids if item_key is None else [item_key(i) for i in art.item_ids]
        return cls(art.build_model(), item_ids, art.kind_names, **kwargs)

    @property
    def n_items(self) -> int:
        return len(self.item_map)

    def encode(self, events: Iterable[tuple]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Oldest-first ``(item_id, kind)`` events -> item_seq [1, L], kind_seq [1, L], seen.

        Items the model has never seen are skipped (they have no embedding).
        """
        items, kinds = [], []
        for event in events:
            item_id, kind = event[0], event[1]
            if kind in self.drop_kinds:
                continue
            idx = self.item_map.index(item_id, 0)
            if idx:
                items.append(idx)
                kinds.append(self._kind_index.get(kind, self._fallback_kind))
        seen = list(items)
        items, kinds = items[-self.max_len :], kinds[-self.max_len :]
        width = max(len(items), 1)
        item_seq = torch.zeros(1, width, dtype=torch.long)
        kind_seq = torch.zeros(1, width, dtype=torch.long)
        if items:
            item_seq[0, width - len(items) :] = torch.tensor(items)
            kind_seq[0, width - len(kinds) :] = torch.tensor(kinds)
        return item_seq, kind_seq, seen

    @torch.no_grad()
    def scores(self, events: Iterable[tuple]) -> tuple[torch.Tensor, list[int]]:
        """Scores for every item index [N+1] (row 0 = padding) and the seen indices."""
        item_seq, kind_seq, seen = self.encode(events)
        return self.model.full_sort_predict(item_seq, kind_seq)[0], seen

    @torch.no_grad()
    def recommend(
        self,
        events: Iterable[tuple],
        k: int = 10,
        *,
        exclude: Iterable = (),
        exclude_seen: bool = True,
        allowed: Iterable | None = None,
    ) -> list[tuple]:
        """Top-k ``(item_id, score)``; ``exclude``/``allowed`` are store ids (business rules)."""
        scores, seen = self.scores(events)
        scores = scores.clone()
        scores[0] = -torch.inf
        if exclude_seen and seen:
            scores[torch.tensor(seen)] = -torch.inf
        bad = [self.item_map.index(i, 0) for i in exclude]
        if bad:
            scores[torch.tensor(bad)] = -torch.inf
        if allowed is not None:
            keep = torch.zeros_like(scores, dtype=torch.bool)
            ok = [self.item_map.index(i, 0) for i in allowed]
            keep[torch.tensor(ok, dtype=torch.long)] = True
            keep[0] = False
            scores[~keep] = -torch.inf
        top = torch.topk(scores, min(k, self.n_items))
        return [
            (self.item_map.id(int(i)), float(s))
            for i, s in zip(top.indices.tolist(), top.values.tolist(), strict=True)
            if s != -float("inf")
        ]

    @torch.no_grad()
    def similar(self, item_id, k: int = 10, *, exclude: Iterable = ()) -> list[tuple]:
        """Items closest to ``item_id``: embedding cosine for nets, stored kNN lists else."""
        idx = self.item_map.index(item_id, 0)
        if not idx:
            return []
        bad = [self.item_map.index(i, 0) for i in exclude]
        bad = [b for b in bad if b]
        if hasattr(self.model, "neighbours"):  # ItemKNN
            ids, sims = self.model.similar(idx, k + len(bad))
            pairs = [
                (int(i), float(s)) for i, s in zip(ids, sims, strict=True) if int(i) not in bad
            ]
            return [(self.item_map.id(i), s) for i, s in pairs[:k]]
        if not hasattr(self, "_items"):
            return []
        if self._unit_embeddings is None:
            self._unit_embeddings = normalize(self._items)
        ids, sims = similar_items(self._unit_embeddings, idx, k, bad, normalized=True)
        return [(self.item_map.id(int(i)), float(s)) for i, s in zip(ids, sims, strict=True)]
