"""Expert loads: expected tokens routed to each expert of each MoE layer per batch.

The format is the `[layers, experts]` matrix DeepSeek's EPLB takes (`weight` of
`rebalance_experts`). It comes from a measurement (`SimpleMoELayer.tokens_per_expert`, via
`loads_from_layers`), a file (`read_loads`: .npy, .csv (.txt is read as CSV) or .json; the only
I/O here), or a seeded
synthetic generator (`synthetic_loads`).
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wattmoe.checks import is_real
from wattmoe.errors import ConfigError, os_error_as
from wattmoe.placement.base import PlacementError


@dataclass(frozen=True, eq=False)
class ExpertLoads:
    """Token counts per (layer, expert) for one batch.

    Attributes:
        tokens: [layers, experts] float64, read-only; finite and >= 0.
        top_k: experts each token is routed to.
        tokens_per_batch: tokens in the batch (each contributes `top_k` to every layer's row).
        source: where the counts come from ('zipf:1.2 seed=0', a file name, ...).
    """

    tokens: np.ndarray
    top_k: int
    tokens_per_batch: float
    source: str = ""

    @property
    def num_layers(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def num_experts(self) -> int:
        return int(self.tokens.shape[1])


def make_loads(tokens: object, top_k: int = 1, tokens_per_batch: float | None = None,
               source: str = "") -> ExpertLoads:
    """Validates a `[layers, experts]` matrix (or one layer's `[experts]` vector).

    `tokens_per_batch` defaults to the mean over layers of sum(row) / top_k. A given one
    must account for the counts: every token goes to at most top_k experts and to an expert
    at most once, so a row may not sum to more than tokens_per_batch x top_k (fewer is fine:
    dropped assignments), nor a count exceed tokens_per_batch (within float rounding). More
    would price more work per token than the batch's tokens can make (counts added up over
    several batches, for one: divide them by the number of batches).

    Raises:
        PlacementError: wrong shape, NaN/inf or negative counts, no tokens at all, counts
            that a given tokens_per_batch cannot account for, or (none given) a count above
            its layer's sum / top_k; the message names the first bad layer (and expert).
    """
    try:
        arr = np.array(tokens, dtype=np.float64)
    except (TypeError, ValueError):
        raise PlacementError(f"loads must be a numeric [layers, experts] matrix, got "
                             f"{type(tokens).__name__}") from None
    except OverflowError as exc:  # a Python int beyond float64 (was a traceback)
        raise PlacementError(f"loads must be finite numbers: a count is too large for a "
                             f"float64 ({exc})") from None
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise PlacementError(f"loads must be a [layers, experts] matrix, got shape {arr.shape}")
    bad = ~np.isfinite(arr)
    if bad.any():
        layer, expert = (int(i) for i in np.argwhere(bad)[0])
        raise PlacementError(f"loads are invalid: layer {layer}, expert {expert} has "
                             f"{arr[layer, expert]} tokens ({int(bad.sum())} non-finite "
                             "values); counts must be finite")
    neg = arr < 0
    if neg.any():
        layer, expert = (int(i) for i in np.argwhere(neg)[0])
        raise PlacementError(f"loads are invalid: layer {layer}, expert {expert} has "
                             f"{arr[layer, expert]:g} tokens ({int(neg.sum())} negative "
                             "values); counts must be >= 0")
    if isinstance(top_k, bool) or not isinstance(top_k, int | np.integer) or top_k < 1 \
            or top_k > arr.shape[1]:
        raise PlacementError(f"top_k must be an integer in [1, {arr.shape[1]}], got {top_k!r}")
    given = tokens_per_batch is not None
    if tokens_per_batch is None:
        tokens_per_batch = float(arr.sum(axis=1).mean() / top_k)
    elif isinstance(tokens_per_batch, bool) or not isinstance(tokens_per_batch,
                                                              int | float | np.number):
        raise PlacementError(f"tokens_per_batch must be a number > 0 or None, got "
                             f"{tokens_per_batch!r}")
    if not (math.isfinite(tokens_per_batch) and tokens_per_batch > 0):
        if given:
            raise PlacementError(f"tokens_per_batch must be a finite number > 0, got "
                                 f"{tokens_per_batch!r}")
        raise PlacementError("loads are invalid: no tokens at all (every count is 0), so "
                             "energy per token is undefined")
    if given:
        _check_accounted(arr, int(top_k), float(tokens_per_batch))
    else:
        _check_inferred(arr, int(top_k))
    arr.setflags(write=False)
    return ExpertLoads(arr, int(top_k), float(tokens_per_batch), source)


# counts may exceed a bound by this relative factor: float counts' rounding
_ROUNDING = 1 + 1e-9


def _check_inferred(arr: np.ndarray, top_k: int) -> None:
    """Raises PlacementError where the tokens per batch inferred from the counts (row sum /
    top_k, as if no assignment was dropped) cannot have made a layer's counts, so that energy
    and latency per token are not quietly priced on too few tokens."""
    sums = arr.sum(axis=1)
    _check_each_expert(
        arr, sums / top_k,
        lambda layer: f"the tokens its layer's counts imply, sum / top_k = {sums[layer]:g} / "
                      f"{top_k}",
        "; give the batch's tokens (--tokens / tokens_per_batch) if assignments were dropped, "
        "or check top_k")


def _check_accounted(arr: np.ndarray, top_k: int, tokens: float) -> None:
    """Raises PlacementError unless `tokens` tokens routed to top_k experts each can make the
    counts (see `make_loads`); a relative 1e-9 allows for float counts' rounding."""
    sums = arr.sum(axis=1)
    over = sums > tokens * top_k * _ROUNDING
    if over.any():
        layer = int(np.argmax(over))
        n = int(over.sum())
        raise PlacementError(
            f"loads are invalid: layer {layer} has {sums[layer]:g} assignments, more than "
            f"tokens_per_batch x top_k = {tokens:g} x {top_k} = {tokens * top_k:g} ({n} "
            f"layer{'s' if n > 1 else ''} over); counts added up over several batches? divide "
            "them by the number of batches (loads_from_layers: steps=)")
    _check_each_expert(arr, np.full(arr.shape[0], tokens), lambda _: "tokens_per_batch")


def _check_each_expert(arr: np.ndarray, bound: np.ndarray, name: Callable[[int], str],
                       hint: str = "") -> None:
    """Raises PlacementError at the first count above its layer's bound of tokens per batch:
    a token picks an expert at most once, so no expert gets more tokens than the batch has.

    Args:
        arr: [layers, experts] counts.
        bound: [layers] tokens per batch that the counts are checked against.
        name: what the bound of a layer is, for the message ("tokens_per_batch").
        hint: appended to the message: what to do about it.
    """
    big = arr > bound[:, None] * _ROUNDING
    if big.any():
        layer, expert = (int(i) for i in np.argwhere(big)[0])
        raise PlacementError(
            f"loads are invalid: layer {layer}, expert {expert} has {arr[layer, expert]:g} "
            f"tokens, more than {name(layer)} = {bound[layer]:g} (a token picks an expert at "
            f"most once){hint}")


def parse_skew(skew: str) -> tuple[str, float]:
    """'uniform' -> ('zipf', 0.0); 'zipf:1.2' -> ('zipf', 1.2)."""
    s = skew.strip().lower()
    if s == "uniform":
        return "zipf", 0.0
    kind, _, value = s.partition(":")
    if kind == "zipf":
        try:
            exponent = float(value)
        except ValueError:
            exponent = -1.0
        if math.isfinite(exponent) and exponent >= 0:
            return "zipf", exponent
    raise ConfigError(f"cannot read skew {skew!r}: use 'uniform' or 'zipf:S' with S >= 0 "
                      "(e.g. zipf:1.2)")


def _inclusion_probabilities(weights: np.ndarray, top_k: int,
                             exponent: float = 1.0) -> np.ndarray:
    """P(expert chosen by a token) proportional to `weights` ** `exponent` (weights > 0),
    summing to top_k, each <= 1.

    The powers are taken relative to the largest weight still uncapped, in logs: a steep
    exponent (zipf:400) underflows every weight but the largest to 0 (was: 0 / 0, NaN), where
    this caps the top_k largest at 1, the limit."""
    logw = np.log(np.asarray(weights, dtype=np.float64))
    pi = np.zeros(len(logw))
    free = np.ones(len(logw), dtype=bool)
    budget = float(top_k)
    while free.any():  # water-filling: experts that would exceed 1 are capped at 1
        with np.errstate(over="ignore"):  # (-inf: a weight negligible beside the largest)
            w = np.exp(exponent * (logw[free] - logw[free].max()))
        scaled = w / w.sum() * budget
        capped = scaled > 1.0
        if not capped.any():
            pi[free] = scaled
            return pi
        idx = np.flatnonzero(free)[capped]
        pi[idx] = 1.0
        free[idx] = False
        budget -= len(idx)
    return pi


def _route_exactly(counts: np.ndarray, pi: np.ndarray, tokens: int, top_k: int,
                   rng: np.random.Generator) -> None:
    """Brings one layer's drawn counts to exactly tokens x top_k assignments, in place (see
    `synthetic_loads`)."""
    surplus = int(counts.sum()) - tokens * top_k
    if surplus > 0:  # taken from experts with pi < 1 (pi = 1: every token picks the expert)
        free = pi < 1.0
        counts[free] -= _without_replacement(counts[free], surplus, rng)
    elif surplus < 0:  # added among the (token, expert) pairs not drawn
        counts += _without_replacement(tokens - counts, -surplus, rng)


def _without_replacement(colors: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """How many of n items drawn uniformly without replacement from a pool holding colors[i]
    items of kind i are of each kind (n <= colors.sum())."""
    if colors.sum() < 10**9:  # the most numpy's sampler takes
        return rng.multivariate_hypergeometric(colors, n)
    # a pool this large (>= 1e9 pairs): draws with replacement, a negligible difference here,
    # capped at what each kind holds and repeated until n are taken
    taken = np.zeros_like(colors)
    while n > 0:
        left = colors - taken
        got = np.minimum(rng.multinomial(n, left / left.sum()), left)
        taken += got
        n -= int(got.sum())
    return taken


def synthetic_loads(num_layers: int, num_experts: int, top_k: int, tokens_per_batch: int,
                    skew: str = "zipf:1.2", seed: int | np.random.Generator = 0) -> ExpertLoads:
    """Token counts of one batch with Zipf-skewed expert popularity.

    In each layer, a random permutation of the experts gets popularity 1/rank^S; each token
    picks expert e with probability pi_e proportional to it (capped at 1, summing to top_k),
    and the count of expert e is drawn as Binomial(tokens_per_batch, pi_e). Independent
    draws miss tokens_per_batch x top_k by sampling noise (over it half the time: more
    assignments than the batch's tokens can make), so each layer's row is then
    brought to exactly tokens_per_batch x top_k, as routing does (every token goes to top_k
    experts): a surplus is taken uniformly at random from the drawn assignments of the
    experts with pi_e < 1, a shortfall added uniformly at random among the (token, expert)
    pairs not drawn. Counts stay in [0, tokens_per_batch]; an expert with pi_e = 1 keeps
    all the tokens. The change is small (about sqrt(tokens x top_k) assignments a layer).

    Args:
        skew: 'uniform' or 'zipf:S'.
        seed: an int seed or a numpy Generator.
    """
    for name, v in (("num_layers", num_layers), ("num_experts", num_experts),
                    ("top_k", top_k), ("tokens_per_batch", tokens_per_batch)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
            raise ConfigError(f"{name} must be a positive integer, got {v!r}")
    if top_k > num_experts:
        raise ConfigError(f"top_k={top_k} is larger than num_experts={num_experts}")
    if not isinstance(seed, np.random.Generator) and (
            isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0):
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")
    _, exponent = parse_skew(skew)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    ranks = np.arange(1, num_experts + 1, dtype=np.float64)
    pi = _inclusion_probabilities(1.0 / ranks, top_k, exponent)
    counts = np.empty((num_layers, num_experts), dtype=np.int64)
    chances = np.empty((num_layers, num_experts))
    for layer in range(num_layers):
        chances[layer] = pi[rng.permutation(num_experts)]
        counts[layer] = rng.binomial(tokens_per_batch, chances[layer])
    # after every layer's draws, so that those are the ones a seed always gave
    for row, p in zip(counts, chances):
        _route_exactly(row, p, tokens_per_batch, top_k, rng)
    seed_txt = seed if not isinstance(seed, np.random.Generator) else "generator"
    return make_loads(counts, top_k, float(tokens_per_batch),
                      source=f"{skew} seed={seed_txt} tokens={tokens_per_batch}")


def loads_from_layers(layers: Sequence[object], tokens_per_batch: float | None = None,
                      steps: int = 1) -> ExpertLoads:
    """From measured utilization: each layer's `tokens_per_expert` counts
    (`wattmoe.moe.SimpleMoELayer`; duck-typed, torch tensors or arrays).

    A layer's counts add up over every step since its last `reset_utilization()`; `steps`
    says over how many, and the counts are divided by it, so the loads are those of one batch
    (of `tokens_per_batch` tokens: one step's).
    """
    if not layers:
        raise PlacementError("loads_from_layers needs at least one layer")
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 1:
        raise PlacementError(f"steps must be a positive integer, got {steps!r}")
    rows = []
    for layer in layers:
        counts = layer.tokens_per_expert  # type: ignore[attr-defined]
        if hasattr(counts, "detach"):
            counts = counts.detach().cpu().numpy()
        rows.append(np.asarray(counts, dtype=np.float64))
    if len({len(r) for r in rows}) != 1:
        raise PlacementError(f"layers have different expert counts: {[len(r) for r in rows]}")
    top_k = int(layers[0].config.top_k)  # type: ignore[attr-defined]
    source = "SimpleMoELayer counts" + (f" / {steps} steps" if steps > 1 else "")
    return make_loads(np.stack(rows) / steps, top_k, tokens_per_batch, source=source)


def _json_kind(value: object) -> str:
    if isinstance(value, dict):
        return "an object"
    return "a string" if isinstance(value, str) else json.dumps(value)


def _check_json_counts(data: object, where: str) -> None:
    """Checks decoded JSON loads cell by cell (numpy would say only "got list", or read true
    as 1 and "3" as 3): a list of rows of numbers (or one row), every row as long as row 0.

    Raises:
        ConfigError: naming the row that differs in length or the cell that is not a number.
    """
    if not isinstance(data, list):
        raise ConfigError(f"{where}: must be a list of rows (a [layers, experts] matrix), got "
                          f"{_json_kind(data)}")
    rows = data if any(isinstance(r, list) for r in data) else [data]
    for i, row in enumerate(rows):
        if not isinstance(row, list):
            raise ConfigError(f"{where}: rows differ in length: row {i} is {_json_kind(row)}, "
                              "not a list of counts")
        if len(row) != len(rows[0]):
            raise ConfigError(f"{where}: rows differ in length: row {i} has {len(row)} counts, "
                              f"row 0 has {len(rows[0])}")
        for j, v in enumerate(row):
            if not is_real(v):
                raise ConfigError(f"{where}: layer {i}, expert {j} is {json.dumps(v)}; counts "
                                  "must be numbers")
            if isinstance(v, int) and abs(v) > sys.float_info.max:  # (JSON ints are unbounded)
                raise ConfigError(f"{where}: layer {i}, expert {j} is an integer of "
                                  f"{len(str(abs(v)))} digits, too large for a count; counts "
                                  "must be finite")


#: the first bytes of every .npy file (numpy.lib.format.MAGIC_PREFIX)
_NPY_MAGIC = b"\x93NUMPY"


def read_loads(path: str | Path, top_k: int, tokens_per_batch: float | None = None,
               ) -> ExpertLoads:
    """Reads a `[layers, experts]` matrix from .npy (`numpy.save`, real numbers), .csv or .txt
    (comma separated, '#' comments, a UTF-8 byte-order mark allowed, as Excel writes one) or
    .json (a list of lists). The edge of the package: its only file I/O besides specs."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".json", ".csv", ".txt"):
        raise ConfigError(f"loads file {str(path)!r}: use .npy, .csv (or .txt, read as CSV) "
                          "or .json")
    with os_error_as(ConfigError, f"cannot read loads file {str(path)!r}"):
        if suffix == ".npy":
            _check_npy_header(path)
        try:
            if suffix == ".npy":
                data = np.load(path, allow_pickle=False)
            elif suffix == ".json":
                data = json.loads(path.read_text())
            else:
                with warnings.catch_warnings():  # numpy warns of an empty file: said below
                    warnings.simplefilter("ignore", UserWarning)
                    data = np.loadtxt(path, delimiter=",", comments="#", ndmin=2,
                                      encoding="utf-8-sig")
        except ValueError as exc:
            msg = str(exc).splitlines()[0]
            if "; use `usecols`" in msg:  # numpy's advice to its caller, not to ours
                msg = (msg.split("; use `usecols`")[0] + " (one row per layer, each with a "
                       "count for every expert)")
            raise ConfigError(f"loads file {str(path)!r} is not a numeric matrix: "
                              f"{msg}") from None
    if isinstance(data, np.ndarray) and data.size == 0:
        raise ConfigError(f"loads file {str(path)!r} holds no counts (an empty matrix)")
    if isinstance(data, np.ndarray) and data.dtype == bool:
        raise ConfigError(f"loads file {str(path)!r} holds true/false values (a bool array); "
                          "counts must be numbers")
    if isinstance(data, np.ndarray) and data.dtype.kind not in "iuf":
        # complex: its imaginary part was dropped; strings: read as numbers
        raise ConfigError(f"loads file {str(path)!r} holds {data.dtype} values; counts must "
                          "be real numbers")
    if suffix == ".json":
        _check_json_counts(data, f"loads file {str(path)!r}")
    return make_loads(data, top_k, tokens_per_batch, source=path.name)


def _check_npy_header(path: Path) -> None:
    """Raises ConfigError where `path` does not start with numpy's .npy header (a CSV named
    .npy, for one: numpy's loader took it for pickled data and spoke of allow_pickle)."""
    with path.open("rb") as f:
        if f.read(len(_NPY_MAGIC)) != _NPY_MAGIC:
            raise ConfigError(f"loads file {str(path)!r} is not a .npy file (no NumPy header; "
                              "write it with numpy.save, or name a comma-separated file .csv)")
