"""Request-time scoring: a shopper's latest (item_id, kind) events -> top-k store ids.

Load once per process (``Predictor.from_artifact``), then each request is one encoder
pass over at most ``max_len`` events plus one [d] x [d, N] product (about a millisecond
at 50k items on one core), and with a hybrid ranker a gather of the history's kNN
neighbours. ``top`` is the one top-k path: serving and tests alike. Thread-safe for
concurrent reads (no state is mutated).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence

import torch

from .artifact import Artifact, load_artifact
from .data import IdMap
from .hybrid import HybridRanker
from .reasons import reason_indices


class Predictor:
    def __init__(
        self,
        model: torch.nn.Module,
        item_ids: Sequence,
        kind_names: Sequence[str],
        *,
        drop_kinds: Iterable[str] = ("remove_from_cart",),
    ):
        if hasattr(model, "item_embeddings") and not isinstance(model, HybridRanker):
            model = HybridRanker.of(model)  # a net trained before the blend: the net alone
        self.model = model.eval()
        self.item_map = IdMap.from_list(list(item_ids))
        self.kind_names = list(kind_names)
        self._kind_index = {name: i for i, name in enumerate(self.kind_names) if i > 0}
        # Kinds unseen at training time read as the most neutral known kind.
        self._fallback_kind = self._kind_index.get("view", 1)
        self.drop_kinds = set(drop_kinds)
        self.max_len = int(getattr(model, "max_len", 50))
        # The items' vectors [N+1, d] an approximate index is built over; None for baselines.
        self.item_vectors = None
        if hasattr(model, "item_embeddings"):
            with torch.no_grad():
                self.item_vectors = model.item_embeddings().detach()

    @classmethod
    def from_artifact(cls, source, *, item_key=None, **kwargs) -> Predictor:
        """``source``: an Artifact, or a path / binary file object to load one from.

        ``item_key`` turns each id as the artifact's JSON holds it into the store's own
        key (a store keyed by UUIDs stores their text), so requests look items up by key.
        """
        art = source if isinstance(source, Artifact) else load_artifact(source)
        item_ids = art.item_ids if item_key is None else [item_key(i) for i in art.item_ids]
        return cls(art.build_model(), item_ids, art.kind_names, **kwargs)

    def over(self, model: torch.nn.Module) -> Predictor:
        """This predictor's vocabularies (shared, not copied) over another ``model`` of the
        same items: an experiment's item-kNN arm serves a version's kNN lists alone."""
        other = copy.copy(self)
        other.model = model.eval()
        other.max_len = int(getattr(model, "max_len", self.max_len))
        other.item_vectors = None
        if hasattr(model, "item_embeddings"):
            with torch.no_grad():
                other.item_vectors = model.item_embeddings().detach()
        return other

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

    def indices(self, item_ids: Iterable) -> set[int]:
        """The model's indices of the store ids it knows."""
        return {self.item_map.index(i, 0) for i in item_ids} - {0}

    def mask(self, item_ids: Iterable) -> torch.Tensor:
        """[N+1] bool: True for the store ids given (those the model knows)."""
        keep = torch.zeros(self.n_items + 1, dtype=torch.bool)
        keep[torch.tensor(sorted(self.indices(item_ids)), dtype=torch.long)] = True
        return keep

    @torch.no_grad()
    def top(
        self, events: Iterable[tuple], k: int, *, exclude: Iterable = (), allowed=None, index=None
    ) -> list[tuple]:
        """The k best ``(item_id, score)`` for a shopper's events, best first: the served score.

        ``exclude``: store ids never returned (what the store's rules ban: seen, bought...);
        ``allowed``: an [N+1] bool mask (``mask``) of the only items that may be returned.
        ``index`` (an ann.IVFIndex over ``item_vectors``) takes the net's candidates
        approximately; the hybrid then scores them with the history's kNN neighbours,
        exactly as ``full_sort_predict`` would. A shopper the model knows none of the items
        of gets nothing (the caller falls back to popular items).
        """
        item_seq, kind_seq, seen = self.encode(events)
        if not seen:
            return []
        banned = self.indices(exclude)
        if index is not None and allowed is None and isinstance(self.model, HybridRanker):
            vector = self.model.shopper_vector(item_seq, kind_seq)[0]  # [d]
            found, _ = index.search(vector, k + len(banned))
            found = torch.tensor(found, dtype=torch.long)
            candidates, scores = self.model.candidate_scores(item_seq, kind_seq, vector, found)
            if banned:
                scores[torch.isin(candidates, torch.tensor(sorted(banned)))] = -torch.inf
        else:
            candidates = None
            scores = self.model.full_sort_predict(item_seq, kind_seq)[0]  # [N+1]
            scores[0] = -torch.inf
            if banned:
                scores[torch.tensor(sorted(banned))] = -torch.inf
            if allowed is not None:
                scores = torch.where(allowed, scores, torch.tensor(-torch.inf))
        top = torch.topk(scores, min(k, len(scores)))
        chosen = top.indices if candidates is None else candidates[top.indices]
        return [
            (self.item_map.id(int(i)), float(s))
            for i, s in zip(chosen.tolist(), top.values.tolist(), strict=True)
            if s != -float("inf")
        ]

    @torch.no_grad()
    def reasons(self, events: Iterable[tuple], item_ids: Iterable, *, eligible=None) -> dict:
        """{item_id: the shopper's own history item id that contributed most, or None}.

        ``events``: the shopper's events as ``top`` reads them (the latest ``max_len``);
        ``item_ids``: the chosen candidates; ``eligible``: store ids that may be named
        (None: any history item). One batched pass for all candidates
        (``reasons.reason_indices``: leave-one-out on the served score). Only items of
        ``events`` can be named; popularity names none.
        """
        item_ids = list(item_ids)
        item_seq, kind_seq, seen = self.encode(events)
        known = [(i, self.item_map.index(i, 0)) for i in item_ids]
        known = [(i, idx) for i, idx in known if idx]
        found = dict.fromkeys(item_ids)
        if not seen or not known:
            return found
        allowed = None if eligible is None else self.indices(eligible)
        chosen = reason_indices(
            self.model, item_seq, kind_seq, [idx for _, idx in known], eligible=allowed
        )
        for (item_id, _), reason in zip(known, chosen, strict=True):
            found[item_id] = None if reason is None else self.item_map.id(reason)
        return found

    @torch.no_grad()
    def similar(self, item_id, k: int = 10, *, exclude: Iterable = ()) -> list[tuple]:
        """Items most like ``item_id``, as measured best on validation (``HybridRanker.similar``):
        embedding cosine, co-occurrence cosine, or both; the kNN lists for an item-kNN model."""
        idx = self.item_map.index(item_id, 0)
        if not idx or not hasattr(self.model, "similar"):
            return []
        bad = sorted(self.indices(exclude))
        ids, sims = self.model.similar(idx, k, bad)
        return [(self.item_map.id(int(i)), float(s)) for i, s in zip(ids, sims, strict=True)]
