"""llama2.c's sampler, so that .bin models reproduce `./run -t T -p P -s SEED`."""
from __future__ import annotations

import math
import time
from typing import Optional, Sequence

import numpy as np

from ..errors import InvalidArgumentError

_MASK64 = 0xFFFFFFFFFFFFFFFF


def _expf(x: np.ndarray) -> np.ndarray:
    """float32 exp, correctly rounded via float64 (see Llama2cSampler notes)."""
    return np.exp(x.astype(np.float64)).astype(np.float32)


class Llama2cSampler:
    """Port of karpathy/llama2.c ``run.c``'s ``Sampler`` (``sample()``).

    Faithful to run.c in:

    * RNG: xorshift64* ``random_u32`` on a 64-bit state initialised to the
      seed directly (``rng_state = rng_seed``); ``random_f32 = (u32 >> 8) /
      16777216.0f``; exactly one ``random_f32`` per non-greedy token, none for
      greedy.  ``seed`` None or 0 -> ``(unsigned int)time(NULL)`` as run.c;
      negative seeds wrap to 64 bits like ``atoi`` -> ``unsigned long long``.
    * ``temperature == 0`` -> ``sample_argmax`` on the raw logits (strict ``>``,
      first max wins); negative temperatures are clamped to 0 as run.c's main.
    * Otherwise float32 ``logits / temperature``, float32 softmax (max
      subtraction, sequential float32 sum, float32 division), then
      ``sample_mult`` if ``topp <= 0 or topp >= 1`` else ``sample_topp``:
      cutoff pre-filter ``p >= (1.0f - topp) / (n - 1)``, sort by probability
      descending, truncate where the sequential float32 cumulative sum first
      exceeds ``topp``, ``r = coin * cumulative_prob``, first ``r < cdf``.
      All comparisons / sums are float32 in the same order as the C loops.

    Deviations (documented):

    * Sort ties: C ``qsort`` is not guaranteed stable.  We behave like a
      stable descending sort: equal probabilities are visited in ascending
      token-id order (implemented by sorting the values and mapping the
      chosen position back to the rank-th lowest id with that value).  glibc's
      qsort has in practice been a stable merge sort when it can allocate its
      temporary buffer; BSD/macOS qsort may order exact ties differently.
      Only exact float32 ties whose cdf span contains ``r`` can change the
      token.
    * ``expf`` is computed as ``float32(exp(float64(x)))`` (correctly rounded
      except in astronomically rare double-rounding cases).  glibc's expf is
      < 0.502 ulp, not always correctly rounded: measured ~0.06% of inputs
      differ by 1 ulp.  A 1-ulp probability change only matters if the coin
      lands within ~1e-7 of a cdf boundary.  With ``-Ofast`` builds run.c's
      own sums may be reassociated; we follow the plain ``-O3`` semantics.
    * If no probability passes the cutoff (only possible for ``n == 1`` or a
      tiny ``topp``), run.c reads ``probindex[-1]`` (undefined behaviour); we
      return the argmax.
    * ``topp`` outside ``[0, 1]`` raises ValueError (run.c's main silently
      replaces it with 0.9).
    """

    def __init__(self, temperature: float = 1.0, topp: float = 0.9, seed: Optional[int] = None):
        t = float(temperature)
        if math.isnan(t):
            raise InvalidArgumentError("temperature must not be NaN")
        if t < 0.0:
            t = 0.0
        tp = float(topp)
        if not (0.0 <= tp <= 1.0):
            raise InvalidArgumentError(f"topp must be in [0, 1] (0 or 1 = plain multinomial), got {topp!r}")
        self.temperature = np.float32(t)
        self.topp = np.float32(tp)
        if seed is None or int(seed) == 0:
            seed = int(time.time()) & 0xFFFFFFFF
        self.state = int(seed) & _MASK64

    # -- RNG ---------------------------------------------------------------
    def random_u32(self) -> int:
        s = self.state
        s ^= s >> 12
        s ^= (s << 25) & _MASK64
        s ^= s >> 27
        self.state = s
        return ((s * 0x2545F4914F6CDD1D) & _MASK64) >> 32

    def random_f32(self) -> np.float32:
        # (u >> 8) < 2**24 and the divisor is 2**24: exact in float32
        return np.float32((self.random_u32() >> 8) / 16777216.0)

    # -- run.c building blocks (probabilities are float32 arrays) ------------
    @staticmethod
    def softmax(x) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        e = _expf(x - x.max())
        total = np.cumsum(e, dtype=np.float32)[-1]  # sequential float32 sum
        return e / total

    @staticmethod
    def sample_argmax(probabilities) -> int:
        return int(np.argmax(np.asarray(probabilities, dtype=np.float32)))

    @staticmethod
    def sample_mult(probabilities, coin) -> int:
        probs = np.asarray(probabilities, dtype=np.float32)
        cdf = np.cumsum(probs, dtype=np.float32)  # monotone: first coin < cdf[i]
        i = int(np.searchsorted(cdf, np.float32(coin), side="right"))
        return min(i, probs.size - 1)

    @staticmethod
    def sample_topp(probabilities, topp, coin) -> int:
        probs = np.asarray(probabilities, dtype=np.float32)
        n = probs.size
        topp = np.float32(topp)
        with np.errstate(divide="ignore", invalid="ignore"):
            cutoff = (np.float32(1.0) - topp) / np.float32(n - 1)
        cand = probs[probs >= cutoff]
        if cand.size == 0:
            return int(np.argmax(probs))
        # Sorting the probability *values* gives exactly the sequence a
        # stable qsort would visit (equal values are interchangeable for the
        # float32 sums); the token at the chosen position is then recovered
        # as the rank-th lowest id among the tokens with that value.
        vs = np.sort(cand)[::-1]
        cs = np.cumsum(vs, dtype=np.float32)  # sequential, like the C loop
        over = (cs > topp).nonzero()[0]
        last = int(over[0]) if over.size else vs.size - 1
        r = np.float32(coin) * cs[last]
        j = min(int(np.searchsorted(cs[: last + 1], r, side="right")), last)
        v = vs[j]
        rank = j - int(np.count_nonzero(vs > v))
        return int((probs == v).nonzero()[0][rank])

    # -- run.c sample() -----------------------------------------------------
    def __call__(self, logits, history: Sequence[int] = ()) -> int:
        x = np.array(logits, dtype=np.float32).reshape(-1)  # private copy
        if self.temperature == np.float32(0.0):
            return self.sample_argmax(x)
        x = x / self.temperature
        probs = self.softmax(x)
        coin = self.random_f32()
        if self.topp <= 0 or self.topp >= 1:
            return self.sample_mult(probs, coin)
        return self.sample_topp(probs, self.topp, coin)

    sample = __call__
