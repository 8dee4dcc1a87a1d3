"""Tests for llamalocal.sampling (pure numpy; no model needed)."""

import math
import time

import numpy as np
import pytest

from llamalocal.sampling import samplers as S
from llamalocal.sampling import (
    Llama2cSampler,
    SamplerConfig,
    apply_repetition_penalties,
    apply_temperature,
    greedy,
    make_sampler,
    min_p,
    top_k,
    top_p,
)

NEG = -np.inf


def kept(a):
    """Sorted list of the ids that are not masked (-inf)."""
    return [int(i) for i in np.flatnonzero(np.asarray(a) > -np.inf)]


def f32(*v):
    return np.array(v, dtype=np.float32)


# ----------------------------------------------------------------------------
# top-k


def test_top_k_keeps_exactly_k_and_values():
    x = f32(1.0, 5.0, 3.0, -2.0, 4.0)
    out = top_k(x, 2)
    assert kept(out) == [1, 4]
    assert out.dtype == np.float32
    assert out[1] == 5.0 and out[4] == 4.0
    assert np.all(np.isneginf(np.delete(out, [1, 4])))


def test_top_k_ties_at_boundary_keep_lowest_ids():
    x = f32(1.0, 2.0, 2.0, 0.5, 2.0, 2.0)
    assert kept(top_k(x, 2)) == [1, 2]
    assert kept(top_k(x, 3)) == [1, 2, 4]
    assert kept(top_k(f32(7, 7, 7, 7), 1)) == [0]
    # a strictly larger value always wins over ties
    assert kept(top_k(f32(2, 2, 3, 2), 2)) == [0, 2]


def test_top_k_disabled_and_large_k():
    x = f32(3, 1, 2)
    for k in (0, 3, 10):
        out = top_k(x, k)
        np.testing.assert_array_equal(out, x)
        assert out is not x


@pytest.mark.parametrize("n,k", [(50_000, 40), (262_144, 40), (50_000, 1), (50_000, 3000), (1000, 40)])
def test_top_k_matches_stable_sort_reference(n, k):
    rng = np.random.default_rng(n + k)
    # small integer range -> lots of ties, exercises the boundary rule
    for x in (rng.integers(-30, 30, n).astype(np.float32), rng.standard_normal(n).astype(np.float32)):
        ref = np.sort(np.argsort(-x, kind="stable")[:k])
        assert kept(top_k(x, k)) == ref.tolist()
        ids = S._top_k_ids(x, k)  # ordered by (logit desc, id asc)
        np.testing.assert_array_equal(ids, np.argsort(-x, kind="stable")[:k])


def test_top_k_adversarial_layout():
    # the largest values sit exactly on / off the subsample stride
    n, k = 65_536, 40
    x = np.zeros(n, dtype=np.float32)
    x[1::409][:k] = np.arange(k, dtype=np.float32) + 1  # off-stride
    x[::409][:10] = 0.5  # on-stride, smaller
    assert kept(top_k(x, k)) == np.sort(np.argsort(-x, kind="stable")[:k]).tolist()


# ----------------------------------------------------------------------------
# top-p


def test_top_p_boundary_equal_probs():
    x = f32(0, 0, 0, 0)  # probabilities exactly 0.25 each
    assert kept(top_p(x, 0.25)) == [0]
    assert kept(top_p(x, 0.5)) == [0, 1]  # mass 0.5 >= 0.5: boundary inclusive
    assert kept(top_p(x, 0.5000001)) == [0, 1, 2]
    assert kept(top_p(x, 0.75)) == [0, 1, 2]
    assert kept(top_p(x, 0.99)) == [0, 1, 2, 3]
    np.testing.assert_array_equal(top_p(x, 1.0), x)


def test_top_p_dyadic_probs_and_ties():
    x = np.log(np.array([4.0, 2.0, 1.0, 1.0]))  # float64 probs 0.5, 0.25, 0.125, 0.125
    out = top_p(x, 0.75)
    assert out.dtype == np.float64
    assert kept(out) == [0, 1]  # 0.5 + 0.25 reaches 0.75 exactly
    assert kept(top_p(x, 0.76)) == [0, 1, 2]  # tie 2 vs 3: lowest id
    assert kept(top_p(x, 0.5)) == [0]
    assert kept(top_p(x, 0.1)) == [0]  # always at least one token


def test_top_p_order_independent_of_position():
    x = f32(-1.0, 3.0, 0.0, 2.0, 3.0)
    # probs ~ (.0075, .4106, .0204, .1510, .4106): 1 and 4 tie for the max
    assert kept(top_p(x, 0.01)) == [1]  # tie: lowest id first
    assert kept(top_p(x, 0.7)) == [1, 4]  # .821 >= .7
    assert kept(top_p(x, 0.85)) == [1, 3, 4]  # .972 >= .85


@pytest.mark.parametrize("n", [100, 50_000, 262_144])
def test_top_p_matches_full_sort_reference(n):
    rng = np.random.default_rng(n)
    xs = [(rng.standard_normal(n) * scale).astype(np.float32) for scale in (1.0, 4.0, 12.0)]
    xs.append(rng.integers(-6, 6, n).astype(np.float32))  # many exact ties
    for x in xs:
        for p in (0.3, 0.9, 0.95):
            order = np.argsort(-x, kind="stable")
            pr = np.exp(x[order].astype(np.float64) - x.max())
            cs = np.cumsum(pr) / pr.sum()
            m = int(np.searchsorted(cs, p - 1e-12)) + 1
            assert kept(top_p(x, p)) == np.sort(order[:m]).tolist()


# ----------------------------------------------------------------------------
# min-p


def test_min_p():
    x = f32(3.0, 2.0, 1.0, 0.0)  # ratios to max: 1, e^-1=.368, e^-2=.135, e^-3=.050
    assert kept(min_p(x, 0.3)) == [0, 1]
    assert kept(min_p(x, 0.1)) == [0, 1, 2]
    assert kept(min_p(x, 0.05)) == [0, 1, 2]  # e^-3 = 0.0498 < 0.05
    assert kept(min_p(x, 0.04)) == [0, 1, 2, 3]
    assert kept(min_p(x, 1.0)) == [0]
    assert kept(min_p(f32(1, 2, 2), 1.0)) == [1, 2]  # ties with the max survive
    np.testing.assert_array_equal(min_p(x, 0.0), x)
    xd = np.log(np.array([1.0, 0.5, 0.1, 0.04]))
    assert kept(min_p(xd, 0.45)) == [0, 1]
    assert kept(min_p(xd, 0.09)) == [0, 1, 2]
    out = min_p(x, 0.3)
    assert out[0] == 3.0 and out[1] == 2.0


# ----------------------------------------------------------------------------
# penalties


def test_repetition_penalty_positive_and_negative():
    x = f32(2.0, -2.0, 0.5, 1.0, 0.0)
    out = apply_repetition_penalties(x, [0, 1, 1, 3, 4], repeat_penalty=2.0)
    np.testing.assert_array_equal(out, f32(1.0, -4.0, 0.5, 0.5, 0.0))


def test_frequency_and_presence_penalties():
    x = f32(2.0, -2.0, 0.5, 1.0)
    out = apply_repetition_penalties(
        x, [0, 1, 1, 3, 1], repeat_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25
    )
    # token 0: 2/2 - (1*0.5 + 0.25); token 1: -2*2 - (3*0.5 + 0.25); token 3: 1/2 - 0.75
    np.testing.assert_allclose(out, f32(1.0 - 0.75, -4.0 - 1.75, 0.5, 0.5 - 0.75), rtol=0, atol=1e-6)
    only_freq = apply_repetition_penalties(x, [2, 2], frequency_penalty=1.0)
    np.testing.assert_array_equal(only_freq, f32(2.0, -2.0, -1.5, 1.0))


def test_penalty_window_last_n():
    x = f32(1.0, 1.0, 1.0)
    h = [0, 0, 1, 2]
    assert np.array_equal(apply_repetition_penalties(x, h, 2.0, last_n=2), f32(1.0, 0.5, 0.5))
    assert np.array_equal(apply_repetition_penalties(x, h, 2.0, last_n=-1), f32(0.5, 0.5, 0.5))
    assert np.array_equal(apply_repetition_penalties(x, h, 2.0, last_n=0), x)
    assert np.array_equal(apply_repetition_penalties(x, h, 2.0, last_n=100), f32(0.5, 0.5, 0.5))
    # ids outside the vocabulary are ignored (no wrap-around for negatives)
    assert np.array_equal(apply_repetition_penalties(x, [-1, 3, 99], 2.0), x)
    assert np.array_equal(apply_repetition_penalties(x, [], 2.0), x)
    assert np.array_equal(apply_repetition_penalties(x, np.array([2, 2]), 2.0), f32(1.0, 1.0, 0.5))


# ----------------------------------------------------------------------------
# temperature / greedy


def test_temperature_scaling():
    x = f32(1.0, 2.0, -4.0)
    np.testing.assert_array_equal(apply_temperature(x, 2.0), f32(0.5, 1.0, -2.0))
    np.testing.assert_array_equal(apply_temperature(x, 1.0), x)
    np.testing.assert_array_equal(apply_temperature(x, 0.5), f32(2.0, 4.0, -8.0))
    assert kept(apply_temperature(x, 0.0)) == [1]
    assert kept(apply_temperature(f32(3, 3, 1), -1.0)) == [0]
    # lower temperature sharpens the distribution
    p1 = S.softmax(apply_temperature(x, 1.0))
    p2 = S.softmax(apply_temperature(x, 0.5))
    assert p2[1] > p1[1]
    np.testing.assert_allclose(p2, np.array([np.e**2, np.e**4, np.e**-8]) / (np.e**2 + np.e**4 + np.e**-8))


def test_greedy_ties_lowest_id():
    assert greedy(f32(1, 5, 5, 2)) == 1
    assert greedy(f32(0, 0, 0)) == 0
    assert greedy([1.0, 3.0, 2.0]) == 1
    assert greedy(f32(-np.inf, -1, -np.inf)) == 1


@pytest.mark.parametrize("t", [0.0, -1.0])
def test_sampler_nonpositive_temperature_is_greedy(t):
    s = make_sampler(SamplerConfig(temperature=t, seed=0))
    x = f32(1, 5, 5, 2)
    assert all(s(x) == 1 for _ in range(10))
    # penalties still apply before argmax
    sp = make_sampler(SamplerConfig(temperature=t, repeat_penalty=2.0))
    assert sp(x, [1, 2]) == 1  # [1, 2.5, 2.5, 2]: tie -> lowest id
    assert sp(f32(1, 5, 5, 3), [1, 2]) == 3  # [1, 2.5, 2.5, 3]


# ----------------------------------------------------------------------------
# input immutability


def test_inputs_not_mutated():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(5000).astype(np.float32)
    x0 = x.copy()
    h = [1, 2, 3, 3]
    apply_repetition_penalties(x, h, 1.3, 0.2, 0.1)
    apply_temperature(x, 0.7)
    apply_temperature(x, 0.0)
    top_k(x, 10)
    top_p(x, 0.9)
    min_p(x, 0.1)
    greedy(x)
    s = make_sampler(SamplerConfig(seed=1, repeat_penalty=1.2, frequency_penalty=0.3))
    for _ in range(5):
        s(x, h)
    L = Llama2cSampler(0.8, 0.9, 7)
    L(x)
    Llama2cSampler(0.0, 0.9, 7)(x)
    np.testing.assert_array_equal(x, x0)
    assert h == [1, 2, 3, 3]


# ----------------------------------------------------------------------------
# composed sampler


def test_config_defaults_match_llama_cpp():
    c = SamplerConfig()
    assert (c.temperature, c.top_k, c.top_p, c.min_p) == (0.8, 40, 0.95, 0.05)
    assert (c.repeat_penalty, c.frequency_penalty, c.presence_penalty, c.repeat_last_n) == (1.0, 0.0, 0.0, 64)
    assert c.seed is None


def test_determinism_per_seed():
    rng = np.random.default_rng(5)
    seq = [rng.standard_normal(1000).astype(np.float32) for _ in range(50)]
    cfg = dict(temperature=1.0, top_k=50, top_p=0.9, min_p=0.01, repeat_penalty=1.1)

    def run(seed):
        s = make_sampler(SamplerConfig(seed=seed, **cfg))
        out = []
        for x in seq:
            out.append(s(x, out))
        return out

    a, b, c = run(123), run(123), run(124)
    assert a == b
    assert a != c
    # randomness can also be passed in explicitly
    s1 = make_sampler(SamplerConfig(**cfg), rng=np.random.default_rng(123))
    out = []
    for x in seq:
        out.append(s1(x, out))
    assert out == a


def chi2(counts, probs):
    n = counts.sum()
    exp = n * np.asarray(probs)
    return float(((counts - exp) ** 2 / exp).sum())


CHI2_3DOF_P001 = 16.27  # 99.9% quantile, 3 degrees of freedom


def test_distribution_plain_softmax():
    probs = np.array([0.1, 0.2, 0.3, 0.4])
    x = np.log(probs).astype(np.float32)
    s = make_sampler(SamplerConfig(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=2024))
    counts = np.bincount([s(x) for _ in range(20_000)], minlength=4)
    assert chi2(counts, probs) < CHI2_3DOF_P001, counts


def test_distribution_with_temperature_and_filters():
    probs = np.array([0.1, 0.2, 0.3, 0.4])
    x = np.log(probs).astype(np.float32)
    # temperature 0.5 squares the probabilities
    s = make_sampler(SamplerConfig(temperature=0.5, top_k=0, top_p=1.0, min_p=0.0, seed=7))
    q = probs**2 / (probs**2).sum()
    counts = np.bincount([s(x) for _ in range(20_000)], minlength=4)
    assert chi2(counts, q) < CHI2_3DOF_P001, counts
    # top-k = 2 keeps tokens 3 and 2, renormalised 4:3
    s = make_sampler(SamplerConfig(temperature=1.0, top_k=2, top_p=1.0, min_p=0.0, seed=8))
    counts = np.bincount([s(x) for _ in range(20_000)], minlength=4)
    assert counts[0] == counts[1] == 0
    c2 = counts[2:]
    e2 = np.array([3 / 7, 4 / 7]) * c2.sum()
    assert float(((c2 - e2) ** 2 / e2).sum()) < 10.83  # 1 dof, 99.9%
    # min-p 0.6: keeps 0.3 and 0.4 (0.3/0.4 = .75), drops 0.2/0.4 = .5
    s = make_sampler(SamplerConfig(temperature=1.0, top_k=0, top_p=1.0, min_p=0.6, seed=9))
    counts = np.bincount([s(x) for _ in range(2000)], minlength=4)
    assert counts[0] == counts[1] == 0 and counts[2] > 0 and counts[3] > 0


def reference_probs(x, cfg, history=()):
    """Public transforms composed in the documented order; float64 softmax."""
    y = apply_repetition_penalties(
        x, history, cfg.repeat_penalty, cfg.frequency_penalty, cfg.presence_penalty, cfg.repeat_last_n
    )
    y = top_k(y, cfg.top_k)
    y = top_p(y, cfg.top_p)
    y = min_p(y, cfg.min_p)
    y = apply_temperature(y.astype(np.float64), cfg.temperature)  # sampler divides in float64
    return S.softmax(y)


@pytest.mark.parametrize(
    "cfg",
    [
        SamplerConfig(),
        SamplerConfig(top_k=0),
        SamplerConfig(top_k=0, top_p=1.0),
        SamplerConfig(top_k=5, top_p=1.0, min_p=0.0, temperature=1.3),
        SamplerConfig(top_k=100, top_p=0.5, min_p=0.2, temperature=0.6, repeat_penalty=1.3, frequency_penalty=0.2),
        SamplerConfig(top_k=0, top_p=0.99, min_p=0.0, presence_penalty=0.5, repeat_last_n=-1),
    ],
)
def test_candidates_match_public_composition(cfg):
    rng = np.random.default_rng(11)
    for n, scale in ((300, 1.0), (30_000, 3.0), (30_000, 8.0)):
        x = (rng.standard_normal(n) * scale).astype(np.float32)
        hist = rng.integers(0, n, 80).tolist()
        ref = reference_probs(x, cfg, hist)
        y = apply_repetition_penalties(
            x, hist, cfg.repeat_penalty, cfg.frequency_penalty, cfg.presence_penalty, cfg.repeat_last_n
        )
        ids, d = S._candidates(y, cfg.top_k, cfg.top_p, cfg.min_p)
        assert np.array_equal(np.sort(ids), np.flatnonzero(ref > 0))
        e = np.exp(d / cfg.temperature)
        np.testing.assert_allclose(e / e.sum(), ref[ids], rtol=1e-9, atol=1e-300)


def test_sampler_only_returns_allowed_tokens():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(20_000) * 3).astype(np.float32)
    cfg = SamplerConfig(temperature=1.5, top_k=20, top_p=0.9, min_p=0.01, seed=1)
    allowed = set(np.flatnonzero(reference_probs(x, cfg) > 0).tolist())
    s = make_sampler(cfg)
    got = {s(x) for _ in range(500)}
    assert got <= allowed and len(got) > 1


def test_sampler_edge_cases():
    s = make_sampler(SamplerConfig(seed=0))
    assert s(f32(1.0)) == 0  # vocab of one
    assert s(f32(-np.inf, 2.0, -np.inf)) == 1
    assert s(np.array([0.0, 50.0, 1.0])) == 1  # float64 input, peaked
    # very low temperature must not overflow / NaN
    s2 = make_sampler(SamplerConfig(temperature=1e-6, top_k=0, top_p=1.0, min_p=0.0, seed=0))
    assert s2(f32(0.0, 1.0, 0.999)) == 1
    with pytest.raises(ValueError):
        s(f32(-np.inf, -np.inf))
    with pytest.raises(ValueError):
        s(np.zeros((2, 3), dtype=np.float32))


# ----------------------------------------------------------------------------
# validation


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_p=-0.1), "top_p"),
        (dict(top_p=float("nan")), "top_p"),
        (dict(top_k=-1), "top_k"),
        (dict(top_k=2.5), "top_k"),
        (dict(min_p=-0.01), "min_p"),
        (dict(min_p=1.01), "min_p"),
        (dict(repeat_penalty=0.0), "repeat_penalty"),
        (dict(repeat_last_n=-2), "repeat_last_n"),
        (dict(temperature=float("nan")), "temperature"),
    ],
)
def test_invalid_config_raises(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SamplerConfig(**kwargs)
    cfg = SamplerConfig()
    for k, v in kwargs.items():
        setattr(cfg, k, v)  # bypass __post_init__: make_sampler re-validates
    with pytest.raises(ValueError, match=name):
        make_sampler(cfg)


def test_invalid_transform_params_raise():
    x = f32(1, 2, 3)
    for p in (0.0, 1.01, -1.0):
        with pytest.raises(ValueError, match="top_p"):
            top_p(x, p)
    with pytest.raises(ValueError, match="top_k"):
        top_k(x, -1)
    for p in (-0.5, 2.0):
        with pytest.raises(ValueError, match="min_p"):
            min_p(x, p)
    with pytest.raises(ValueError, match="repeat_penalty"):
        apply_repetition_penalties(x, [0], repeat_penalty=-1.0)
    with pytest.raises(ValueError, match="topp"):
        Llama2cSampler(1.0, 1.5, 1)


def test_temperature_negative_means_greedy_config():
    assert SamplerConfig(temperature=-0.5).is_greedy
    assert not SamplerConfig().is_greedy


# ----------------------------------------------------------------------------
# llama2.c run.c port

M64 = (1 << 64) - 1


def xorshift_ref(state):
    """run.c random_u32 re-derived with Python ints masked to 64 bits."""
    state ^= state >> 12
    state = (state ^ (state << 25)) & M64
    state ^= state >> 27
    return state, ((state * 0x2545F4914F6CDD1D) & M64) >> 32


def test_llama2c_random_u32_seed_133742():
    # First step by hand: 133742 = 0x20A6E; >>12 = 32 -> 133742 ^ 32 = 133710
    # (bit 5 was set); 133710 << 25 = 4486558941... ^ 133710 = 4486563236430;
    # >> 27 = 33427 -> 4486563236430 ^ 33427 = 4486563268829;
    # (4486563268829 * 0x2545F4914F6CDD1D mod 2^64) >> 32 = 3033531262.
    s = 133742
    s ^= s >> 12
    assert s == 133710
    s ^= (s << 25) & M64
    assert s == 4486563236430
    s ^= s >> 27
    assert s == 4486563268829
    assert ((s * 0x2545F4914F6CDD1D) & M64) >> 32 == 3033531262

    expected = [3033531262, 2674377904, 2312864567, 2287415643, 1408443089]
    # independent derivations: python-int reference and wrapping numpy uint64
    st, ref = 133742, []
    for _ in range(5):
        st, u = xorshift_ref(st)
        ref.append(u)
    assert ref == expected
    a = np.array([133742], dtype=np.uint64)
    npref = []
    with np.errstate(over="ignore"):
        for _ in range(5):
            a ^= a >> np.uint64(12)
            a ^= a << np.uint64(25)
            a ^= a >> np.uint64(27)
            npref.append(int((a * np.uint64(0x2545F4914F6CDD1D))[0] >> np.uint64(32)))
    assert npref == expected

    L = Llama2cSampler(1.0, 0.9, seed=133742)
    assert L.state == 133742  # seed used directly as the state
    assert [L.random_u32() for _ in range(5)] == expected
    assert L.state == st
    # longer run stays in lockstep with the reference
    for _ in range(1000):
        st, u = xorshift_ref(st)
        assert L.random_u32() == u


def test_llama2c_random_f32():
    L = Llama2cSampler(1.0, 0.9, seed=133742)
    c = L.random_f32()
    assert isinstance(c, np.float32)
    assert c == np.float32((3033531262 >> 8) / 16777216.0)
    assert float(c) == (3033531262 >> 8) / 2**24  # exact
    vals = [float(L.random_f32()) for _ in range(2000)]
    assert 0.0 <= min(vals) and max(vals) < 1.0


def test_llama2c_seed_handling():
    assert Llama2cSampler(1.0, 0.9, seed=-1).state == M64  # atoi(-1) -> unsigned long long
    for seed in (None, 0):
        L = Llama2cSampler(1.0, 0.9, seed=seed)  # time(NULL) like run.c
        assert 0 < L.state < 2**32


def test_llama2c_greedy_does_not_consume_rng():
    L = Llama2cSampler(0.0, 0.9, seed=42)
    assert L(f32(0.1, 0.7, 0.7, 0.2)) == 1  # first max wins
    assert L.state == 42
    L = Llama2cSampler(-1.0, 0.9, seed=42)  # negative clamped to 0 (greedy)
    assert L(f32(3, 1)) == 0 and L.state == 42
    L = Llama2cSampler(1.0, 0.9, seed=42)
    L(f32(0.1, 0.7, 0.7, 0.2))
    assert L.state == xorshift_ref(42)[0]  # exactly one draw per token


def test_llama2c_sample_mult_and_topp_hand_cases():
    probs = f32(0.25, 0.125, 0.5, 0.125)  # dyadic: all sums exact
    sm = Llama2cSampler.sample_mult
    assert sm(probs, 0.0) == 0
    assert sm(probs, 0.2) == 0
    assert sm(probs, 0.25) == 1  # coin < cdf is strict
    assert sm(probs, 0.4) == 2
    assert sm(probs, 0.9) == 3
    assert sm(f32(0.5, 0.25), 0.99) == 1  # rounding fallback: n - 1
    tp = Llama2cSampler.sample_topp
    # sorted: 0.5(2) 0.25(0) 0.125(1) 0.125(3); topp .7 -> cum .75 at index 1
    assert tp(probs, 0.7, 0.5) == 2  # r = .375 < .5
    assert tp(probs, 0.7, 0.9) == 0  # r = .675 in [.5, .75)
    assert tp(probs, 0.7, 0.999) == 0  # token 1 / 3 are outside the nucleus
    # topp .8 -> nucleus includes the first of the tied 0.125s: token 1 (stable)
    assert tp(probs, 0.8, 0.99) == 1  # r = .86625 in [.75, .875)
    # topp .99 -> all four; the tied 0.125s are visited as id 1 then id 3
    assert tp(probs, 0.99, 0.8) == 1  # r = .8 in [.75, .875)
    assert tp(probs, 0.99, 0.9) == 3  # r = .9 in [.875, 1.0)
    # cutoff pre-filter: (1 - .9) / 3 = .0333 removes the 0.01 token
    p2 = f32(0.52, 0.45, 0.02, 0.01)
    assert tp(p2, 0.9, 0.999) in (0, 1)
    # degenerate: nothing passes the cutoff -> argmax
    assert tp(f32(1.0), 0.9, 0.5) == 0


def c_softmax(x):
    x = [np.float32(v) for v in x]
    mx = x[0]
    for v in x[1:]:
        if v > mx:
            mx = v
    e, s = [], np.float32(0)
    for v in x:
        ev = np.float32(math.exp(float(np.float32(v - mx))))
        e.append(ev)
        s = np.float32(s + ev)
    return np.array([np.float32(v / s) for v in e], dtype=np.float32)


def c_sample_mult(probs, coin):
    cdf = np.float32(0)
    for i, p in enumerate(probs):
        cdf = np.float32(cdf + p)
        if coin < cdf:
            return i
    return len(probs) - 1


def c_sample_topp(probs, topp, coin):
    n = len(probs)
    topp = np.float32(topp)
    cutoff = np.float32(np.float32(1) - topp) / np.float32(n - 1)
    pi = [(p, i) for i, p in enumerate(probs) if p >= cutoff]
    pi = sorted(pi, key=lambda t: -t[0])  # stable, like our documented tie rule
    cum = np.float32(0)
    last = len(pi) - 1
    for j, (p, _) in enumerate(pi):
        cum = np.float32(cum + p)
        if cum > topp:
            last = j
            break
    r = np.float32(coin * cum)
    cdf = np.float32(0)
    for j in range(last + 1):
        cdf = np.float32(cdf + pi[j][0])
        if r < cdf:
            return pi[j][1]
    return pi[last][1]


def test_llama2c_matches_literal_c_loop_port():
    rng = np.random.default_rng(17)
    for trial in range(30):
        n = int(rng.integers(2, 600))
        logits = (rng.standard_normal(n) * rng.uniform(0.5, 6)).astype(np.float32)
        if trial % 3 == 0:  # inject exact ties
            logits[rng.integers(0, n, n // 3)] = logits[0]
        temp = np.float32(rng.choice([1.0, 0.8, 1.3]))
        probs = Llama2cSampler.softmax(logits / temp)
        np.testing.assert_array_equal(probs, c_softmax(logits / temp))
        for coin in list(rng.random(20).astype(np.float32)) + [np.float32(0), np.float32(1 - 2**-24)]:
            assert Llama2cSampler.sample_mult(probs, coin) == c_sample_mult(probs, coin)
            for topp in (0.9, 0.5, 0.99, 0.1):
                assert Llama2cSampler.sample_topp(probs, topp, coin) == c_sample_topp(probs, topp, coin)


def test_llama2c_end_to_end_sequence_vs_reference():
    rng = np.random.default_rng(99)
    seq = [(rng.standard_normal(512) * 3).astype(np.float32) for _ in range(40)]
    L = Llama2cSampler(1.0, 0.9, seed=133742)
    state, out_ref = 133742, []
    for x in seq:
        probs = c_softmax(x / np.float32(1.0))
        state, u = xorshift_ref(state)
        coin = np.float32((u >> 8) / 16777216.0)
        out_ref.append(c_sample_topp(probs, 0.9, coin))
    assert [L(x) for x in seq] == out_ref
    # topp = 1 -> plain multinomial path
    L = Llama2cSampler(0.7, 1.0, seed=5)
    state, out_ref = 5, []
    for x in seq:
        state, u = xorshift_ref(state)
        out_ref.append(c_sample_mult(c_softmax(x / np.float32(0.7)), np.float32((u >> 8) / 16777216.0)))
    assert [L(x) for x in seq] == out_ref


def test_llama2c_large_vocab_topp_prefix_equals_full_sort():
    rng = np.random.default_rng(4)
    for scale in (1.0, 3.0):
        x = (rng.standard_normal(32000) * scale).astype(np.float32)
        probs = Llama2cSampler.softmax(x)
        for coin in rng.random(5).astype(np.float32):
            assert Llama2cSampler.sample_topp(probs, 0.9, coin) == c_sample_topp(probs, 0.9, coin)


# ----------------------------------------------------------------------------
# timing (informational only; run with -s to see it)


def test_print_timing():
    rng = np.random.default_rng(0)
    lines = []
    for n in (49152, 262144):
        x = (rng.standard_normal(n) * 2.5).astype(np.float32)
        s = make_sampler(SamplerConfig(seed=0))
        s(x)
        ts = []
        for _ in range(200):
            t0 = time.perf_counter()
            s(x)
            ts.append(time.perf_counter() - t0)
        lines.append(f"vocab {n}: default sampler median {np.median(ts) * 1e6:.1f} us, min {min(ts) * 1e6:.1f} us")
    print("\n[sampling timing] " + "; ".join(lines))
