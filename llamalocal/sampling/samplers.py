"""Token samplers: small pure functions over a 1-D logits vector, composed.

Style follows mlx-lm ``sample_utils.py`` / llama2.c: every logit transform is
``f(logits, ...) -> new array`` (the input is never modified; removed tokens
are set to ``-inf``), and randomness is always passed in (a
``numpy.random.Generator`` or an explicit xorshift state), never global.

Public API
----------
Logit transforms (return a new float array, same dtype as the input if it is
float32/float64, else float32):

* :func:`apply_repetition_penalties` - llama.cpp repeat / frequency / presence
  penalties over the last ``last_n`` tokens of the history.
* :func:`apply_temperature` - ``logits / T``; ``T <= 0`` keeps only the greedy
  token (the ``T -> 0`` limit).
* :func:`top_k` - keep exactly ``k`` tokens (ties at the boundary: lowest ids).
* :func:`top_p` - keep the smallest prefix (by probability, descending; ties by
  lowest id) whose mass is >= ``p``; at least one token.
* :func:`min_p` - keep tokens with ``prob >= min_p * max_prob``.

Samplers:

* :func:`greedy` - argmax, ties -> lowest id.
* :class:`SamplerConfig` + :func:`make_sampler` - the composed sampler
  ``sample(logits, history=()) -> int``: penalties -> top-k -> top-p -> min-p ->
  temperature -> softmax (float64) -> draw from a ``numpy.random.Generator``.
* :class:`sampling.llama2c.Llama2cSampler` - a faithful port of karpathy/llama2.c ``run.c``'s
  sampler (xorshift64* RNG, fp32 softmax, top-p with the cutoff pre-filter) so
  that ``.bin`` models reproduce ``./run -t T -p P -s SEED`` outputs.

Logits must not contain NaN (results are unspecified if they do).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from ..errors import InvalidArgumentError

__all__ = [
    "apply_repetition_penalties",
    "apply_temperature",
    "top_k",
    "top_p",
    "min_p",
    "greedy",
    "softmax",
    "SamplerConfig",
    "make_sampler",
]

# Tolerance on the top-p mass test (cumulative >= p - eps): absorbs float64
# rounding so that e.g. probabilities (0.5, 0.25, ...) with p = 0.75 keep two
# tokens, not three.
_TOP_P_EPS = 1e-12
# Slack (in logit units) for the cheap logit-space pre-filter of min-p; the
# exact float64 probability-ratio test is applied to the survivors.
_MIN_P_SLACK = 1e-6

# ----------------------------------------------------------------------------
# helpers


def _as_logits(logits) -> np.ndarray:
    """View (no copy when possible) of ``logits`` as a 1-D float array."""
    x = np.asarray(logits)
    if x.ndim != 1:
        raise ValueError(f"logits must be a 1-D vector, got shape {x.shape}")
    if x.size == 0:
        raise ValueError("logits must not be empty")
    if x.dtype != np.float32 and x.dtype != np.float64:
        x = x.astype(np.float32)
    return x


def _check_top_k(k) -> int:
    if isinstance(k, bool) or int(k) != k or k < 0:
        raise InvalidArgumentError(f"top_k must be an integer >= 0 (0 = disabled), got {k!r}")
    return int(k)


def _check_top_p(p) -> float:
    p = float(p)
    if not (0.0 < p <= 1.0):
        raise InvalidArgumentError(f"top_p must be in (0, 1] (1 = disabled), got {p!r}")
    return p


def _check_min_p(p) -> float:
    p = float(p)
    if not (0.0 <= p <= 1.0):
        raise InvalidArgumentError(f"min_p must be in [0, 1] (0 = disabled), got {p!r}")
    return p


def _check_penalties(repeat_penalty, frequency_penalty, presence_penalty, last_n):
    rp = float(repeat_penalty)
    if not (rp > 0.0 and math.isfinite(rp)):
        raise InvalidArgumentError(f"repeat_penalty must be a finite number > 0 (1 = disabled), got {repeat_penalty!r}")
    fp = float(frequency_penalty)
    if not math.isfinite(fp):
        raise InvalidArgumentError(f"frequency_penalty must be finite, got {frequency_penalty!r}")
    pp = float(presence_penalty)
    if not math.isfinite(pp):
        raise InvalidArgumentError(f"presence_penalty must be finite, got {presence_penalty!r}")
    if isinstance(last_n, bool) or int(last_n) != last_n or last_n < -1:
        raise InvalidArgumentError(f"repeat_last_n must be an integer >= -1 (-1 = whole history, 0 = disabled), got {last_n!r}")
    return rp, fp, pp, int(last_n)


def _history_tail(history, last_n: int) -> list:
    """The last ``last_n`` history ids as a Python list (``-1`` = all)."""
    if history is None or last_n == 0:
        return []
    if last_n > 0:
        try:
            history = history[-last_n:]
        except TypeError:  # a Sequence without slicing support
            history = list(history)[-last_n:]
    if isinstance(history, np.ndarray):
        return history.reshape(-1).tolist()
    return list(history)


def _penalize_inplace(out: np.ndarray, tail: list, rp: float, fp: float, pp: float) -> None:
    """Apply the penalties (validated parameters) for the history window
    ``tail`` to ``out`` in place.  Only the distinct history ids are touched."""
    n = out.size
    counts = Counter(t for t in tail if 0 <= t < n)
    if not counts:
        return
    ids = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
    c = np.fromiter(counts.values(), dtype=out.dtype, count=len(counts))
    f = out.dtype.type
    v = out[ids]
    v = np.where(v <= 0, v * f(rp), v / f(rp))
    out[ids] = v - (c * f(fp) + f(pp))


def _top_k_ids(x: np.ndarray, k: int) -> np.ndarray:
    """Ids of exactly ``min(k, n)`` largest logits, ordered by (logit desc, id asc).

    Ties at the k-th value keep the lowest ids.  For small ``k`` this never
    sorts the vocabulary: a strided subsample gives a lower bound ``t0`` on the
    k-th largest value (the k-th largest of a subset can only be smaller), so
    ``x >= t0`` is a guaranteed superset of the answer; only that superset
    (typically a few hundred entries) is partitioned exactly.
    """
    n = x.size
    if k >= n:
        return np.argsort(-x, kind="stable")
    stride = n // (k * 64)
    if stride >= 4:
        sub = x[::stride]
        t0 = np.partition(sub, sub.size - k)[sub.size - k]
        cand = (x >= t0).nonzero()[0]  # ascending ids, superset of the top-k
        cv = x[cand]
    else:  # dense path (k large relative to the vocabulary)
        cand = None
        cv = x
    if cv.size > 4 * k:
        kth = np.partition(cv, cv.size - k)[cv.size - k]
        pos = (cv >= kth).nonzero()[0]  # all > kth plus every tie == kth
        pos = pos[np.argsort(-cv[pos], kind="stable")[:k]]
    else:
        pos = np.argsort(-cv, kind="stable")[:k]
    # stable sort over ascending positions: ties keep the lowest ids
    return pos if cand is None else cand[pos]


def _nucleus_len(e_sorted: np.ndarray, total: Optional[float], p: float) -> int:
    """Length of the smallest prefix of ``e_sorted`` (unnormalised probabilities,
    descending) whose mass is >= ``p * total`` (``total`` None = sum of
    ``e_sorted``); at least 1; everything if the mass is never reached."""
    cs = np.cumsum(e_sorted)  # non-decreasing
    if total is None:
        total = float(cs[-1])
    j = int(np.searchsorted(cs, (p - _TOP_P_EPS) * total, side="left"))
    return min(j + 1, e_sorted.size)


def _top_p_ids(x: np.ndarray, p: float) -> np.ndarray:
    """Ids kept by top-p over the whole of ``x``; equal probabilities are
    ranked by lowest id.  The normaliser is the full float64 softmax sum.

    Small nuclei: growing top-k windows (cheap subsample selection, no sort),
    returned ordered by (prob desc, id asc).  Large nuclei: sort the float64
    probabilities *values* (much faster than a stable argsort), find the
    boundary value, then select ``> boundary`` plus the lowest-id ties;
    returned in no particular order.  Both give the same set.
    """
    n = x.size
    m = float(x.max())
    if m == -math.inf:
        raise ValueError("all logits are -inf")
    e_full = np.exp(x.astype(np.float64) - m)
    total = float(e_full.sum())
    target = (p - _TOP_P_EPS) * total
    k = 64
    while k * 256 <= n:  # i.e. _top_k_ids stays on its subsample path
        ids = _top_k_ids(x, k)
        e = e_full[ids]
        if float(e.sum()) >= target:
            return ids[: _nucleus_len(e, total, p)]
        k *= 8
    es = np.sort(e_full)[::-1]  # descending values; ties are interchangeable
    cut = _nucleus_len(es, total, p)
    boundary = es[cut - 1]
    gt = (e_full > boundary).nonzero()[0]
    eq = (e_full == boundary).nonzero()[0][: cut - gt.size]
    return np.concatenate((gt, eq))


def _min_p_keep(v: np.ndarray, p: float) -> np.ndarray:
    """Boolean mask over float logits ``v``: prob >= p * max prob, in float64."""
    m = float(np.max(v))
    return np.exp(v.astype(np.float64) - m) >= p


def softmax(logits) -> np.ndarray:
    """Numerically stable softmax in float64 (``-inf`` -> probability 0)."""
    x = np.asarray(logits, dtype=np.float64)
    m = np.max(x)
    if m == -math.inf:
        raise ValueError("all logits are -inf")
    e = np.exp(x - m)
    return e / e.sum()


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability under the model (the raw logits'
    softmax, before any sampling setting), and the `top` most likely tokens' own."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


def token_logprob(logits, token: int, n_top: int = 0) -> TokenLogprob:
    """`token`'s log-probability and the n_top most likely (id, log-probability), most likely first."""
    x = np.asarray(logits, dtype=np.float64)
    m = np.max(x)
    log_p = x - (m + np.log(np.sum(np.exp(x - m))))
    top: tuple[tuple[int, float], ...] = ()
    if n_top > 0:
        ids = np.argpartition(-log_p, min(n_top, len(x) - 1))[:n_top]
        ids = ids[np.lexsort((ids, -log_p[ids]))]  # most likely first; ties by id
        top = tuple((int(i), float(log_p[i])) for i in ids)
    return TokenLogprob(int(token), float(log_p[token]), top)


# ----------------------------------------------------------------------------
# logit transforms


def apply_repetition_penalties(
    logits,
    history: Sequence[int],
    repeat_penalty: float = 1.0,
    frequency_penalty: float = 0.0,
    presence_penalty: float = 0.0,
    last_n: int = 64,
) -> np.ndarray:
    """llama.cpp penalties over the last ``last_n`` history tokens.

    For each distinct token ``t`` seen ``c > 0`` times in the window:
    ``logit <= 0 -> logit * repeat_penalty`` else ``logit / repeat_penalty``;
    then ``logit -= c * frequency_penalty + presence_penalty``.
    ``last_n = 0`` disables, ``-1`` uses the whole history.  History ids
    outside ``[0, vocab)`` are ignored (as llama.cpp ignores tokens that are
    not candidates).  Arithmetic is done in the logits' dtype (float32 like
    llama.cpp).
    """
    x = _as_logits(logits)
    rp, fp, pp, last_n = _check_penalties(repeat_penalty, frequency_penalty, presence_penalty, last_n)
    out = x.copy()
    if rp != 1.0 or fp != 0.0 or pp != 0.0:
        _penalize_inplace(out, _history_tail(history, last_n), rp, fp, pp)
    return out


def apply_temperature(logits, temperature: float) -> np.ndarray:
    """``logits / temperature``.  ``temperature <= 0`` is the zero-temperature
    limit: only the greedy token (lowest id among ties) is kept, all others
    become ``-inf``."""
    x = _as_logits(logits)
    t = float(temperature)
    if math.isnan(t):
        raise InvalidArgumentError("temperature must not be NaN")
    if t <= 0.0:
        out = np.full_like(x, -np.inf)
        i = int(np.argmax(x))
        out[i] = x[i]
        return out
    return x / x.dtype.type(t)


def top_k(logits, k: int) -> np.ndarray:
    """Keep exactly ``min(k, n)`` highest logits (boundary ties: lowest ids);
    ``k = 0`` disables.  Raises ValueError for ``k < 0``."""
    x = _as_logits(logits)
    k = _check_top_k(k)
    if k == 0 or k >= x.size:
        return x.copy()
    out = np.full_like(x, -np.inf)
    ids = _top_k_ids(x, k)
    out[ids] = x[ids]
    return out


def top_p(logits, p: float) -> np.ndarray:
    """Nucleus filter: keep the smallest set of most-probable tokens (stable
    order: ties by lowest id) whose probability mass is >= ``p`` (float64,
    tolerance 1e-12); always at least one token.  ``p = 1`` disables.
    Raises ValueError unless ``0 < p <= 1``."""
    x = _as_logits(logits)
    p = _check_top_p(p)
    if p >= 1.0:
        return x.copy()
    out = np.full_like(x, -np.inf)
    ids = _top_p_ids(x, p)
    out[ids] = x[ids]
    return out


def min_p(logits, p: float) -> np.ndarray:
    """Keep tokens whose probability is >= ``p`` times the largest probability
    (i.e. ``exp(l - l_max) >= p`` in float64); ``p = 0`` disables.
    Raises ValueError unless ``0 <= p <= 1``."""
    x = _as_logits(logits)
    p = _check_min_p(p)
    if p <= 0.0:
        return x.copy()
    m = float(x.max())
    if m == -math.inf:
        return x.copy()
    # cheap superset in logit space, then the exact ratio test on survivors
    cand = np.flatnonzero(x >= m + math.log(p) - _MIN_P_SLACK)
    cand = cand[_min_p_keep(x[cand], p)]
    out = np.full_like(x, -np.inf)
    out[cand] = x[cand]
    return out


def greedy(logits) -> int:
    """Index of the largest logit; ties -> lowest id."""
    return int(np.argmax(_as_logits(logits)))


# ----------------------------------------------------------------------------
# composed sampler


@dataclass
class SamplerConfig:
    """Sampling parameters (defaults = llama.cpp's).

    ``temperature <= 0`` means greedy (penalties still apply).  ``top_k = 0``,
    ``top_p = 1``, ``min_p = 0``, ``repeat_penalty = 1`` disable the
    respective stage.  ``repeat_last_n = -1`` penalises the whole history.
    ``seed = None`` seeds the generator from OS entropy.
    """

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repeat_last_n: int = 64
    seed: Optional[int] = None

    def __post_init__(self):
        self.validate()

    def validate(self) -> "SamplerConfig":
        if math.isnan(float(self.temperature)):
            raise InvalidArgumentError("temperature must not be NaN")
        _check_top_k(self.top_k)
        _check_top_p(self.top_p)
        _check_min_p(self.min_p)
        _check_penalties(self.repeat_penalty, self.frequency_penalty, self.presence_penalty, self.repeat_last_n)
        return self

    @property
    def is_greedy(self) -> bool:
        return float(self.temperature) <= 0.0


def _candidates(x: np.ndarray, k: int, p: float, mp: float):
    """top-k -> top-p -> min-p on (already penalised) logits ``x``.

    Returns ``(ids, d)``: surviving token ids and ``d = logit - max_logit`` in
    float64 (before temperature; all finite, ``d.max() == 0``).  Equivalent to
    composing the public :func:`top_k`, :func:`top_p`, :func:`min_p`, but
    never sorts the vocabulary when ``k`` is small.
    """
    n = x.size
    if 0 < k < n:
        ids = _top_k_ids(x, k)  # (logit desc, id asc)
        d = x[ids].astype(np.float64)
        if d[0] == -np.inf:
            raise ValueError("all logits are -inf")
        d -= d[0]
        if d[-1] == -np.inf:  # fewer than k finite logits
            finite = int(np.count_nonzero(d > -np.inf))
            ids, d = ids[:finite], d[:finite]
        e = np.exp(d)
        if p < 1.0:  # softmax over the k survivors, prefix cut
            cut = _nucleus_len(e, None, p)
            ids, d, e = ids[:cut], d[:cut], e[:cut]
        if mp > 0.0:  # still sorted descending: survivors are a prefix
            cut = int(np.count_nonzero(e >= mp))
            ids, d = ids[:cut], d[:cut]
        return ids, d
    if p < 1.0:
        ids = _top_p_ids(x, p)  # not necessarily sorted
        d = x[ids].astype(np.float64)
        d -= d.max()
        keep = d > -np.inf  # (-inf only if the mass was never reached)
        if mp > 0.0:
            keep &= np.exp(d) >= mp
        return ids[keep], d[keep]
    m = float(x.max())
    if m == -math.inf:
        raise ValueError("all logits are -inf")
    if mp > 0.0:  # only tokens that can survive min-p, then the exact test
        ids = (x >= m + math.log(mp) - _MIN_P_SLACK).nonzero()[0]
        d = x[ids].astype(np.float64) - m
        keep = np.exp(d) >= mp
        return ids[keep], d[keep]
    ids = (x > -np.inf).nonzero()[0]
    return ids, x[ids].astype(np.float64) - m


def _draw(ids: np.ndarray, d: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
    """temperature -> float64 softmax -> one draw (exactly one ``rng.random()``).

    ``d`` = logits minus their max (so ``exp`` never overflows)."""
    u = rng.random()
    if ids.size == 1:
        return int(ids[0])
    e = np.exp(d / temperature)
    cdf = np.cumsum(e)
    j = int(np.searchsorted(cdf, u * cdf[-1], side="right"))
    if j >= ids.size:  # u * total rounded up to total
        j = int(e.nonzero()[0][-1])
    return int(ids[j])


def _scratch_view(holder: list, x: np.ndarray) -> np.ndarray:
    """A reusable buffer shaped like ``x`` whose address is 2 KiB away from
    ``x``'s modulo 4 KiB.  Copies between buffers at (nearly) the same page
    offset hit a 4K-aliasing slow path of ``rep movsb`` memcpy on some x86
    CPUs (measured here on AMD EPYC: 66-88 us instead of 5 us for 192 KiB);
    both logits and a fresh ``np.empty`` usually sit at page offset 16."""
    isz = x.itemsize
    pad = 4096 // isz
    big = holder[0]
    if big is None or big.dtype != x.dtype or big.size < x.size + pad:
        big = holder[0] = np.empty(x.size + pad, dtype=x.dtype)
    off = ((x.ctypes.data + 2048 - big.ctypes.data) % 4096) // isz
    return big[off : off + x.size]


def make_sampler(
    config: Optional[SamplerConfig] = None,
    rng: Optional[np.random.Generator] = None,
) -> Callable[..., int]:
    """Build ``sample(logits, history=()) -> int`` from ``config``.

    Pipeline: repetition penalties (over ``history``) -> top-k -> top-p ->
    min-p -> temperature -> float64 softmax -> one draw from ``rng`` (default
    ``numpy.random.default_rng(config.seed)``; ``seed=None`` = OS entropy).
    Greedy configs (``temperature <= 0``) apply the penalties then argmax and
    consume no randomness.  Same seed + same logits/history sequence => same
    tokens.  The returned callable has ``.config`` and ``.rng`` attributes.
    """
    # private snapshot (re-validated): later edits to ``config`` do not leak in
    cfg = SamplerConfig() if config is None else dataclasses.replace(config)
    gen = np.random.default_rng(cfg.seed) if rng is None else rng
    temperature = float(cfg.temperature)
    k = int(cfg.top_k)
    p = float(cfg.top_p)
    mp = float(cfg.min_p)
    rp, fp, pp, last_n = (
        float(cfg.repeat_penalty),
        float(cfg.frequency_penalty),
        float(cfg.presence_penalty),
        int(cfg.repeat_last_n),
    )
    penalise = (rp != 1.0 or fp != 0.0 or pp != 0.0) and last_n != 0
    # Reused scratch buffer for the penalised logits (the caller's array is
    # never written).  A sampler is stateful anyway (its RNG), so it is not
    # meant to be shared between threads.
    scratch = [None]

    def sample(logits, history: Sequence[int] = ()) -> int:
        x = _as_logits(logits)
        if penalise and history is not None and len(history):
            buf = _scratch_view(scratch, x)
            np.copyto(buf, x)
            _penalize_inplace(buf, _history_tail(history, last_n), rp, fp, pp)
            x = buf
        if temperature <= 0.0:
            return int(np.argmax(x))
        ids, d = _candidates(x, k, p, mp)
        return _draw(ids, d, temperature, gen)

    sample.config = cfg
    sample.rng = gen
    return sample
