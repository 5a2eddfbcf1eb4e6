"""Interactions -> cleaned, per-shopper chronological sequences -> train/validation/test splits.

Rows are plain tuples ``(shopper, item, kind, value, ts)`` so the Django side can stream
them straight out of a ``values_list`` queryset. Internally everything is columnar NumPy so
that cleaning a few million events stays a matter of seconds.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .config import checked_config

PAD = 0
PAD_KIND = "<pad>"
DEFAULT_KIND_WEIGHTS = {
    "view": 1.0,
    "click": 1.0,
    "add_to_cart": 2.0,
    "remove_from_cart": 0.0,
    "purchase": 3.0,
}
# Known kinds get stable vocabulary slots (after padding) so two trainings on similar data
# produce the same kind indices; unknown kinds follow in sorted order.
KNOWN_KINDS = tuple(DEFAULT_KIND_WEIGHTS)

Interaction = tuple  # (shopper, item, kind: str, value: float | None, ts: float)


# --------------------------------------------------------------------------- config


@dataclass
class CleaningConfig:
    """What cleaning (``build_sequences``) removes. Every step is disabled by ``None`` or ``0``.

    The order is fixed: zero-weight kinds, view bursts, bots, sequence cap, then the
    iterated item/shopper count filter (so the thresholds hold on what the model sees).
    """

    # Repeated events of a burst kind on the same (shopper, item) closer than this to the
    # previously *kept* one are dropped: page reloads are not extra interest.
    burst_window_seconds: float | None = 30.0
    burst_kinds: tuple[str, ...] = ("view",)
    # Shoppers whose event count over any `bot_window_seconds` window exceeds this rate
    # (per minute) are bots/crawlers: all their events go.
    max_events_per_minute: float | None = 60.0
    bot_window_seconds: float = 300.0
    # Iterated filtering (like 5-core, but thresholds are configurable).
    min_item_count: int | None = 2
    min_shopper_count: int | None = 2
    # Per-kind importance; a weight of 0 drops the kind entirely. Kinds not listed get
    # `default_kind_weight`. None keeps every kind with weight 1.
    kind_weights: dict[str, float] | None = field(
        default_factory=lambda: dict(DEFAULT_KIND_WEIGHTS)
    )
    default_kind_weight: float = 1.0
    # Keep at most this many most recent events per shopper.
    max_seq_len: int | None = 200

    @classmethod
    def from_dict(cls, d: dict | None) -> CleaningConfig:
        """Build from a settings dict; unknown keys are an error (typos must not pass)."""
        d = checked_config(cls, d)
        if "burst_kinds" in d and d["burst_kinds"] is not None:
            d["burst_kinds"] = tuple(d["burst_kinds"])
        return cls(**d)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["burst_kinds"] = list(self.burst_kinds)
        return d

    def weight_of(self, kind: str) -> float:
        if self.kind_weights is None:
            return 1.0
        return float(self.kind_weights.get(kind, self.default_kind_weight))


@dataclass
class CleaningReport:
    """How many events each cleaning step removed (and what was left)."""

    input_events: int = 0
    dropped_kind: int = 0
    dropped_burst: int = 0
    dropped_bot: int = 0
    bot_shoppers: int = 0
    dropped_seq_cap: int = 0
    dropped_rare_item: int = 0
    dropped_rare_shopper: int = 0
    output_events: int = 0
    shoppers: int = 0
    items: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- ids


class IdMap:
    """Store id <-> contiguous index; index 0 is padding, real ids are 1..n.

    Serialised as the plain list of ids in index order (``ids[i]`` has index ``i + 1``),
    which is JSON-able for int and str ids alike.
    """

    def __init__(self, ids: Iterable[Hashable] = ()):
        self._ids: list = []
        self._index: dict = {}
        for i in ids:
            self.add(i)

    def add(self, store_id: Hashable) -> int:
        idx = self._index.get(store_id)
        if idx is None:
            self._ids.append(store_id)
            idx = len(self._ids)
            self._index[store_id] = idx
        return idx

    def index(self, store_id: Hashable, default: int | None = None) -> int:
        if default is None:
            return self._index[store_id]
        return self._index.get(store_id, default)

    def id(self, index: int) -> Hashable:
        if index <= 0:
            raise KeyError("index 0 is padding")
        return self._ids[index - 1]

    def __contains__(self, store_id) -> bool:
        return store_id in self._index

    def __len__(self) -> int:
        return len(self._ids)

    def to_list(self) -> list:
        return list(self._ids)

    @classmethod
    def from_list(cls, ids: Sequence) -> IdMap:
        m = cls(ids)
        if len(m) != len(ids):
            raise ValueError("IdMap list contains duplicate ids")
        return m

    def __eq__(self, other) -> bool:
        return isinstance(other, IdMap) and self._ids == other._ids

    def __repr__(self) -> str:
        return f"IdMap({len(self)} ids)"


def _sorted_if_possible(values: Iterable) -> list:
    values = list(values)
    try:
        return sorted(values)
    except TypeError:  # mixed types: keep first-seen order, still deterministic
        return values


# --------------------------------------------------------------------------- columns


@dataclass
class _Columns:
    """Columnar events; codes index into the uniques lists."""

    shopper: np.ndarray  # int64 codes
    item: np.ndarray  # int64 codes
    kind: np.ndarray  # int64 codes
    value: np.ndarray  # float64, NaN for None
    ts: np.ndarray  # float64
    shopper_ids: list
    item_ids: list
    kind_names: list

    def take(self, idx) -> _Columns:
        return dataclasses.replace(
            self,
            shopper=self.shopper[idx],
            item=self.item[idx],
            kind=self.kind[idx],
            value=self.value[idx],
            ts=self.ts[idx],
        )

    def __len__(self) -> int:
        return len(self.ts)


def _to_columns(rows: Iterable[Interaction]) -> _Columns:
    shop_codes: dict = {}
    item_codes: dict = {}
    kind_codes: dict = {}
    s, it, k, v, t = [], [], [], [], []
    for row in rows:
        shopper, item, kind, value, ts = row
        s.append(shop_codes.setdefault(shopper, len(shop_codes)))
        it.append(item_codes.setdefault(item, len(item_codes)))
        k.append(kind_codes.setdefault(str(kind), len(kind_codes)))
        v.append(math.nan if value is None else float(value))
        t.append(float(ts))
    cols = _Columns(
        shopper=np.asarray(s, dtype=np.int64),
        item=np.asarray(it, dtype=np.int64),
        kind=np.asarray(k, dtype=np.int64),
        value=np.asarray(v, dtype=np.float64),
        ts=np.asarray(t, dtype=np.float64),
        shopper_ids=list(shop_codes),
        item_ids=list(item_codes),
        kind_names=list(kind_codes),
    )
    # Chronological per shopper; arrival order breaks ties (stable sort).
    order = np.lexsort((cols.ts, cols.shopper))
    return cols.take(order)


def _group_starts(keys: np.ndarray) -> np.ndarray:
    """Boolean [N]: True where a new group begins in sorted `keys`."""
    starts = np.ones(len(keys), dtype=bool)
    if len(keys) > 1:
        starts[1:] = keys[1:] != keys[:-1]
    return starts


def _burst_mask(cols: _Columns, config: CleaningConfig) -> np.ndarray:
    """Keep mask dropping repeats of burst kinds within the window of the last kept one."""
    keep = np.ones(len(cols), dtype=bool)
    window = config.burst_window_seconds
    if not window or not config.burst_kinds or len(cols) == 0:
        return keep
    burst_codes = [i for i, name in enumerate(cols.kind_names) if name in config.burst_kinds]
    if not burst_codes:
        return keep
    cand = np.flatnonzero(np.isin(cols.kind, burst_codes))
    # Sort the burst-kind events by (shopper, item, kind, ts).
    order = cand[np.lexsort((cols.ts[cand], cols.kind[cand], cols.item[cand], cols.shopper[cand]))]
    sh, it, kd, ts = cols.shopper[order], cols.item[order], cols.kind[order], cols.ts[order]
    same = np.zeros(len(order), dtype=bool)
    same[1:] = (sh[1:] == sh[:-1]) & (it[1:] == it[:-1]) & (kd[1:] == kd[:-1])
    close = np.zeros(len(order), dtype=bool)
    close[1:] = same[1:] & (ts[1:] - ts[:-1] < window)
    # An event far from its predecessor is always kept; only those close to it need the
    # sequential "distance to the last kept one" rule, walked in plain Python.
    last_kept = -math.inf
    ts_l = ts.tolist()
    for j in np.flatnonzero(close | np.roll(close, -1)).tolist():
        if not same[j]:
            last_kept = ts_l[j]
        elif not close[j]:
            last_kept = ts_l[j]
        elif ts_l[j] - last_kept < window:
            keep[order[j]] = False
        else:
            last_kept = ts_l[j]
    return keep


def _bot_shoppers(cols: _Columns, config: CleaningConfig) -> np.ndarray:
    """Shopper codes whose event count in any window exceeds the allowed rate."""
    rate = config.max_events_per_minute
    if not rate or len(cols) == 0:
        return np.zeros(0, dtype=np.int64)
    window = float(config.bot_window_seconds)
    allowed = rate * window / 60.0
    # cols is sorted by (shopper, ts). Shift each shopper onto its own stretch of a single
    # increasing axis, with gaps wider than the window, so one searchsorted counts windows.
    starts = _group_starts(cols.shopper)
    group = np.cumsum(starts) - 1
    first_ts = cols.ts[starts][group]
    rel = cols.ts - first_ts
    span = float(rel.max()) + 2.0 * window + 1.0
    axis = rel + group * span
    lo = np.searchsorted(axis, axis - window, side="left")
    count = np.arange(len(axis)) - lo + 1
    bad = np.unique(cols.shopper[count > allowed])
    return bad


def _cap_mask(cols: _Columns, max_len: int | None) -> np.ndarray:
    keep = np.ones(len(cols), dtype=bool)
    if not max_len or len(cols) == 0:
        return keep
    starts = _group_starts(cols.shopper)
    group = np.cumsum(starts) - 1
    sizes = np.bincount(group)
    pos = np.arange(len(cols)) - np.flatnonzero(starts)[group]
    keep = pos >= (sizes[group] - max_len)
    return keep


def _clean_columns(cols: _Columns, config: CleaningConfig) -> tuple[_Columns, CleaningReport]:
    rep = CleaningReport(input_events=len(cols))

    if config.kind_weights is not None:
        zero = [i for i, name in enumerate(cols.kind_names) if config.weight_of(name) <= 0]
        keep = ~np.isin(cols.kind, zero)
        rep.dropped_kind = int((~keep).sum())
        cols = cols.take(keep)

    keep = _burst_mask(cols, config)
    rep.dropped_burst = int((~keep).sum())
    cols = cols.take(keep)

    bots = _bot_shoppers(cols, config)
    if len(bots):
        keep = ~np.isin(cols.shopper, bots)
        rep.dropped_bot = int((~keep).sum())
        rep.bot_shoppers = len(bots)
        cols = cols.take(keep)

    keep = _cap_mask(cols, config.max_seq_len)
    rep.dropped_seq_cap = int((~keep).sum())
    cols = cols.take(keep)

    min_item = config.min_item_count or 0
    min_shop = config.min_shopper_count or 0
    while len(cols) and (min_item > 1 or min_shop > 1):
        changed = False
        if min_item > 1:
            counts = np.bincount(cols.item, minlength=len(cols.item_ids))
            keep = counts[cols.item] >= min_item
            if not keep.all():
                rep.dropped_rare_item += int((~keep).sum())
                cols = cols.take(keep)
                changed = True
        if min_shop > 1 and len(cols):
            counts = np.bincount(cols.shopper, minlength=len(cols.shopper_ids))
            keep = counts[cols.shopper] >= min_shop
            if not keep.all():
                rep.dropped_rare_shopper += int((~keep).sum())
                cols = cols.take(keep)
                changed = True
        if not changed:
            break

    rep.output_events = len(cols)
    rep.shoppers = len(np.unique(cols.shopper))
    rep.items = len(np.unique(cols.item))
    return cols, rep


# --------------------------------------------------------------------------- sequences


def kind_vocabulary(kinds: Iterable[str]) -> list[str]:
    """Padding first, then known kinds in a fixed order, then the rest sorted."""
    present = set(kinds)
    known = [k for k in KNOWN_KINDS if k in present]
    rest = sorted(present - set(KNOWN_KINDS) - {PAD_KIND})
    return [PAD_KIND, *known, *rest]


class _Vocabulary:
    """Sizes derived from ``item_map`` and ``kind_names`` (sequences and splits share them)."""

    @property
    def n_items(self) -> int:
        """Number of real items; model tables have n_items + 1 rows (row 0 = padding)."""
        return len(self.item_map)

    @property
    def n_kinds(self) -> int:
        """Size of the kind vocabulary including padding."""
        return len(self.kind_names)


@dataclass
class Sequences(_Vocabulary):
    """Per-shopper chronological arrays (item/kind indices, weights, timestamps)."""

    shopper_ids: list
    items: list[np.ndarray]  # each [n_s] int64, 1..n_items
    kinds: list[np.ndarray]  # each [n_s] int64, 1..n_kinds-1
    weights: list[np.ndarray]  # each [n_s] float32
    times: list[np.ndarray]  # each [n_s] float64
    item_map: IdMap
    kind_names: list[str]  # index 0 is padding
    report: CleaningReport | None = None
    # True when ``times`` are seconds (a store's events), so gaps between them mark visits;
    # False for a file whose line numbers only stand in for the order.
    clocked: bool = False

    def __len__(self) -> int:
        return len(self.items)

    @property
    def n_events(self) -> int:
        return int(sum(len(x) for x in self.items))


def _sequences_from_columns(
    cols: _Columns, config: CleaningConfig | None, report: CleaningReport | None
) -> Sequences:
    item_codes_used = np.unique(cols.item)
    used_ids = [cols.item_ids[c] for c in item_codes_used]
    item_map = IdMap(_sorted_if_possible(used_ids))
    code_to_index = np.zeros(len(cols.item_ids), dtype=np.int64)
    for c, store_id in zip(item_codes_used.tolist(), used_ids, strict=True):
        code_to_index[c] = item_map.index(store_id)

    used_kinds = [cols.kind_names[c] for c in np.unique(cols.kind)]
    kind_names = kind_vocabulary(used_kinds)
    kind_to_index = np.zeros(max(len(cols.kind_names), 1), dtype=np.int64)
    kind_weight = np.ones(max(len(cols.kind_names), 1), dtype=np.float32)
    for c, name in enumerate(cols.kind_names):
        if name in kind_names:
            kind_to_index[c] = kind_names.index(name)
        kind_weight[c] = config.weight_of(name) if config is not None else 1.0

    items = code_to_index[cols.item]
    kinds = kind_to_index[cols.kind]
    weights = kind_weight[cols.kind]
    starts = np.flatnonzero(_group_starts(cols.shopper))
    bounds = np.append(starts, len(cols))
    shopper_ids, it_l, k_l, w_l, t_l = [], [], [], [], []
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        shopper_ids.append(cols.shopper_ids[cols.shopper[a]])
        it_l.append(items[a:b].copy())
        k_l.append(kinds[a:b].copy())
        w_l.append(weights[a:b].copy())
        t_l.append(cols.ts[a:b].copy())
    return Sequences(shopper_ids, it_l, k_l, w_l, t_l, item_map, kind_names, report, clocked=True)


def build_sequences(rows: Iterable[Interaction], config: CleaningConfig | None = None) -> Sequences:
    """Clean (idempotent, so pre-cleaned rows are fine) and group into sequences."""
    config = config or CleaningConfig()
    cols, rep = _clean_columns(_to_columns(rows), config)
    return _sequences_from_columns(cols, config, rep)


def read_user_item_file(path) -> Sequences:
    """Read the ``user item`` benchmark format: one event per line, chronological per user.

    Every event is a 'view' with weight 1; the line number stands in for the timestamp.
    No cleaning is applied: the file defines the benchmark protocol.
    """
    arr = np.loadtxt(path, dtype=np.int64, ndmin=2)
    if arr.shape[1] < 2:
        raise ValueError(f"{path}: expected two columns 'user item'")
    users, raw_items = arr[:, 0], arr[:, 1]
    line = np.arange(len(arr), dtype=np.float64)
    order = np.argsort(users, kind="stable")
    users, raw_items, line = users[order], raw_items[order], line[order]
    uniq_items = np.unique(raw_items)
    item_map = IdMap(uniq_items.tolist())
    items = np.searchsorted(uniq_items, raw_items) + 1
    starts = np.flatnonzero(_group_starts(users))
    bounds = np.append(starts, len(users)).tolist()
    seqs = Sequences([], [], [], [], [], item_map, [PAD_KIND, "view"])
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        seqs.shopper_ids.append(int(users[a]))
        seqs.items.append(items[a:b].astype(np.int64))
        seqs.kinds.append(np.ones(b - a, dtype=np.int64))
        seqs.weights.append(np.ones(b - a, dtype=np.float32))
        seqs.times.append(line[a:b])
    return seqs


# --------------------------------------------------------------------------- splits


@dataclass
class SplitPart:
    """Evaluation rows: each shopper's input history and the one item to predict."""

    shopper_index: np.ndarray  # [U] index into Sequences
    items: list[np.ndarray]  # inputs, chronological
    kinds: list[np.ndarray]
    targets: np.ndarray  # [U] item index
    target_kinds: np.ndarray  # [U]

    def __len__(self) -> int:
        return len(self.targets)


@dataclass
class Split(_Vocabulary):
    """Training sequences plus validation and test parts; shares the item vocabulary."""

    train_items: list[np.ndarray]
    train_kinds: list[np.ndarray]
    train_weights: list[np.ndarray]
    validation: SplitPart
    test: SplitPart
    item_map: IdMap
    kind_names: list[str]
    cut_ts: float | None = None
    # Event times of the training sequences, when the events have a clock (None: they
    # have only an order); training finds visits in them (``ml.train.visit_weights``).
    train_times: list[np.ndarray] | None = None


def _empty_part() -> SplitPart:
    return SplitPart(np.zeros(0, np.int64), [], [], np.zeros(0, np.int64), np.zeros(0, np.int64))


def _part(rows: list[tuple]) -> SplitPart:
    if not rows:
        return _empty_part()
    idx, items, kinds, tgt, tk = zip(*rows, strict=True)
    return SplitPart(
        np.asarray(idx, np.int64),
        list(items),
        list(kinds),
        np.asarray(tgt, np.int64),
        np.asarray(tk, np.int64),
    )


def leave_one_out(seqs: Sequences) -> Split:
    """SASRec protocol: last event = test, second-to-last = validation, the rest = train.

    Validation input is the training part; test input is training + validation events.
    Shoppers with fewer than 3 events only contribute to training.
    """
    tr_i, tr_k, tr_w, tr_t, val, test = [], [], [], [], [], []
    for s, (it, kd, w, t) in enumerate(
        zip(seqs.items, seqs.kinds, seqs.weights, seqs.times, strict=True)
    ):
        n = len(it)
        keep = slice(None) if n < 3 else slice(None, -2)
        tr_i.append(it[keep])
        tr_k.append(kd[keep])
        tr_w.append(w[keep])
        tr_t.append(t[keep])
        if n >= 3:
            val.append((s, it[:-2], kd[:-2], it[-2], kd[-2]))
            test.append((s, it[:-1], kd[:-1], it[-1], kd[-1]))
    return Split(
        tr_i, tr_k, tr_w, _part(val), _part(test), seqs.item_map, seqs.kind_names,
        train_times=tr_t if seqs.clocked else None,
    )  # fmt: skip


def time_split(
    seqs: Sequences, holdout_seconds: float, *, validation_fraction: float = 0.5, seed: int = 0
) -> Split:
    """Global temporal cut at ``max_ts - holdout_seconds``.

    Training sees only events strictly before the cut. Every shopper with history before
    the cut and at least one event after it gives one target: the first held-out item.
    Those shoppers are split at random (seeded) into validation and test, so validation
    is as "future" as test and early stopping never looks at test shoppers.
    """
    max_ts = max((float(t[-1]) for t in seqs.times if len(t)), default=0.0)
    cut = max_ts - float(holdout_seconds)
    tr_i, tr_k, tr_w, tr_t, held = [], [], [], [], []
    for s, (it, kd, w, t) in enumerate(
        zip(seqs.items, seqs.kinds, seqs.weights, seqs.times, strict=True)
    ):
        n_before = int(np.searchsorted(t, cut, side="left"))  # t sorted
        tr_i.append(it[:n_before])
        tr_k.append(kd[:n_before])
        tr_w.append(w[:n_before])
        tr_t.append(t[:n_before])
        if 0 < n_before < len(it):
            held.append((s, it[:n_before], kd[:n_before], it[n_before], kd[n_before]))
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(held))
    n_val = int(round(len(held) * validation_fraction))
    val = [held[i] for i in sorted(perm[:n_val].tolist())]
    test = [held[i] for i in sorted(perm[n_val:].tolist())]
    return Split(
        tr_i, tr_k, tr_w, _part(val), _part(test), seqs.item_map, seqs.kind_names, cut_ts=cut,
        train_times=tr_t if seqs.clocked else None,
    )  # fmt: skip
