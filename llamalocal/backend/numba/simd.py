"""Vector primitives for the one-row matmul kernels, written in LLVM IR.

numba's own code for a block product (decode 32 weights, multiply by 32
int8 activations, sum each run of 4) comes out scalar: its integer
arithmetic is 64-bit, and array indexing guards negative indices, both of
which stop LLVM's vectorisers.  These intrinsics state the block as vector
IR instead, which LLVM lowers for whatever CPU numba compiles for (AVX-512,
AVX2, SSE, NEON), and two small vector types carry the results between them
so that the 8 float accumulators of a row stay in one register:

- `i32x8`: the 8 exact int32 lane sums of a 32-weight block, lane l holding
  weights 4l .. 4l + 3 (llama.cpp's x86 vec_dot lanes);
- `f32x8`: the 8 float chains that those lanes go into;
- `f32x16`: 16 float chains of ggml_vec_dot_f16 (attention's q·k).

Only exact integer work is reorganised here.  The float steps are lane-wise
and single: `fma8` is acc = fma(a, float(lane), acc) per lane (llvm.fma, one
rounding, as the scalar `fma`), `hsum8` is ggml's horizontal add in its
order.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic, models, register_model

from ...formats.fp16 import f16_to_f32, read_f16

_I8, _I16, _I32, _F32 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.FloatType()


class VecType(types.Type):
    """A fixed-size LLVM vector as a numba value (no Python-side object: only
    the intrinsics below make and take one)."""

    def __init__(self, name: str, elem: ir.Type, n: int):
        self.elem, self.n = elem, n
        super().__init__(name=name)


f32x8 = VecType("f32x8", _F32, 8)
i32x8 = VecType("i32x8", _I32, 8)
f32x16 = VecType("f32x16", _F32, 16)


@register_model(VecType)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, ir.VectorType(fe_type.elem, fe_type.n))


# ----------------------------------------------------------------------------
# IR helpers
# ----------------------------------------------------------------------------


def _vt(n: int, t: ir.Type) -> ir.VectorType:
    return ir.VectorType(t, n)


def _consts(t: ir.Type, values) -> ir.Constant:
    values = list(values)
    return ir.Constant(_vt(len(values), t), [ir.Constant(t, v) for v in values])


def _splat(builder, value, n: int):
    vt = _vt(n, value.type)
    one = builder.insert_element(ir.Constant(vt, ir.Undefined), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(one, ir.Constant(vt, ir.Undefined), _consts(_I32, [0] * n))


def _at(context, builder, aryty, ary, offset):
    """Pointer to element `offset` of a 1-D array (no negative-index wrap:
    the kernels pass offsets they computed in range)."""
    data = context.make_array(aryty)(context, builder, ary).data
    return builder.gep(data, [offset])


def _load(builder, ptr, vt: ir.VectorType):
    """An unaligned load (multi-byte fields are read little-endian, as every
    target numba supports stores them)."""
    return builder.load(builder.bitcast(ptr, vt.as_pointer()), align=1)


def _pair_sums(builder, v):
    """<2n x i32> -> <n x i32>: v[2j] + v[2j + 1]."""
    n = v.type.count
    even = builder.shuffle_vector(v, v, _consts(_I32, range(0, n, 2)))
    odd = builder.shuffle_vector(v, v, _consts(_I32, range(1, n, 2)))
    return builder.add(even, odd)


def _features(context) -> set[str]:
    """The CPU features numba compiles for (its target machine's, so that a
    NUMBA_CPU_NAME / NUMBA_CPU_FEATURES override is honoured)."""
    return {f[1:] for f in (getattr(context.codegen(), "_tm_features", "") or "").split(",") if f.startswith("+")}


def _has_vnni(context) -> bool:
    f = _features(context)
    return {"avx512vnni", "avx512vl"} <= f or "avxvnni" in f


def _dpbusd(builder, acc, u8, s8):
    """acc + the sums of 4 products of unsigned bytes u8 and signed bytes s8
    (<32 x i8> each): x86's VPDPBUSD, a block's lanes in one instruction."""
    vt = _vt(8, _I32)
    fn = builder.module.declare_intrinsic("llvm.x86.avx512.vpdpbusd.256", (), ir.FunctionType(vt, [vt, vt, vt]))
    return builder.call(fn, [acc, builder.bitcast(u8, vt), builder.bitcast(s8, vt)])


def _lanes(context, builder, w8, signed: bool, bias, x_t, x, xo):
    """32 weights (<32 x i8>: signed values, or unsigned ones minus `bias`,
    an integer value or None) times the int8 activations x[xo:xo + 32]: the
    8 exact sums of 4 consecutive products."""
    xv = _load(builder, _at(context, builder, x_t, x, xo), _vt(32, _I8))
    if _has_vnni(context):
        # unsigned bytes only: a signed weight w goes in as w + 128, and the
        # offset comes back out through the activations' own sums of 4
        if signed:
            w8 = builder.xor(w8, _splat(builder, ir.Constant(_I8, 0x80), 32))
            bias = ir.Constant(_I32, 128)
        zero = ir.Constant(_vt(8, _I32), [ir.Constant(_I32, 0)] * 8)
        lanes = _dpbusd(builder, zero, w8, xv)
        if bias is None:
            return lanes
        sums = _dpbusd(builder, zero, _splat(builder, ir.Constant(_I8, 1), 32), xv)
        bias = builder.trunc(bias, _I32) if bias.type != _I32 else bias
        return builder.sub(lanes, builder.mul(sums, _splat(builder, bias, 8)))
    # Every product fits int16 (|w| and |x| are at most 128, so |w * x| <=
    # 16384), the sums int32; on x86 LLVM makes this PMADDWD
    w16 = builder.sext(w8, _vt(32, _I16)) if signed else builder.zext(w8, _vt(32, _I16))
    if bias is not None:
        w16 = builder.sub(w16, _splat(builder, builder.trunc(bias, _I16), 32))
    products = builder.sext(builder.mul(w16, builder.sext(xv, _vt(32, _I16))), _vt(32, _I32))
    return _pair_sums(builder, _pair_sums(builder, products))


def _nibbles(builder, ptr):
    """The 16 bytes at ptr as 32 unsigned 4-bit weights (<32 x i8>): the
    low nibbles are weights 0-15, the high ones 16-31 (ggml's order)."""
    q = _load(builder, ptr, _vt(16, _I8))
    lo = builder.and_(q, _splat(builder, ir.Constant(_I8, 15), 16))
    hi = builder.lshr(q, _splat(builder, ir.Constant(_I8, 4), 16))
    return builder.shuffle_vector(lo, hi, _consts(_I32, range(32)))


# ----------------------------------------------------------------------------
# block products: the 8 lane sums of one 32-weight block
# ----------------------------------------------------------------------------


@intrinsic
def lanes_q4(typingctx, row, o, x, xo, bias):
    """Q4_0 / Q4_1 quants: the nibbles at row[o:o + 16] minus bias, times x[xo:xo + 32]."""
    def codegen(context, builder, sig, args):
        row_t, _, x_t, _, _ = sig.args
        w8 = _nibbles(builder, _at(context, builder, row_t, args[0], args[1]))
        return _lanes(context, builder, w8, False, args[4], x_t, args[2], args[3])

    return i32x8(row, o, x, xo, bias), codegen


@intrinsic
def lanes_q5(typingctx, row, oh, o, x, xo, bias):
    """Q5_0 / Q5_1 quants: nibbles at row[o:o + 16] with bit 4 of weight k
    from bit k of the little-endian uint32 at row[oh:oh + 4], minus bias,
    times x[xo:xo + 32]."""
    def codegen(context, builder, sig, args):
        row_t, _, _, x_t, _, _ = sig.args
        qh = builder.load(builder.bitcast(_at(context, builder, row_t, args[0], args[1]), _I32.as_pointer()), align=1)
        bits = builder.and_(builder.lshr(_splat(builder, qh, 32), _consts(_I32, range(32))),
                            _splat(builder, ir.Constant(_I32, 1), 32))
        high = builder.shl(builder.trunc(bits, _vt(32, _I8)), _splat(builder, ir.Constant(_I8, 4), 32))
        w8 = builder.or_(_nibbles(builder, _at(context, builder, row_t, args[0], args[2])), high)
        return _lanes(context, builder, w8, False, args[5], x_t, args[3], args[4])

    return i32x8(row, oh, o, x, xo, bias), codegen


@intrinsic
def lanes_q8(typingctx, row, o, x, xo):
    """Q8_0 quants: the int8 bytes at row[o:o + 32] times x[xo:xo + 32]."""
    def codegen(context, builder, sig, args):
        row_t, _, x_t, _ = sig.args
        w8 = _load(builder, _at(context, builder, row_t, args[0], args[1]), _vt(32, _I8))
        return _lanes(context, builder, w8, True, None, x_t, args[2], args[3])

    return i32x8(row, o, x, xo), codegen


# ----------------------------------------------------------------------------
# the float side
# ----------------------------------------------------------------------------


@intrinsic
def zeros8(typingctx):
    """Eight +0 accumulators."""
    def codegen(context, builder, sig, args):
        return ir.Constant(_vt(8, _F32), [ir.Constant(_F32, 0.0)] * 8)

    return f32x8(), codegen


@intrinsic
def fma8(typingctx, a, lanes, acc):
    """acc[l] = fma(a, float32(lanes[l]), acc[l]) for each lane, rounded once
    per lane: the scalar chains of ggml's vec_dot, eight at a time."""
    if a != types.float32:
        return None

    def codegen(context, builder, sig, args):
        vt = _vt(8, _F32)
        fn = builder.module.declare_intrinsic("llvm.fma.v8f32", (), ir.FunctionType(vt, [vt, vt, vt]))
        return builder.call(fn, [_splat(builder, args[0], 8), builder.sitofp(args[1], vt), args[2]])

    return f32x8(a, lanes, acc), codegen


@intrinsic
def hsum8(typingctx, acc):
    """ggml_hsum8: ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7))."""
    def codegen(context, builder, sig, args):
        a = [builder.extract_element(args[0], ir.Constant(_I32, i)) for i in range(8)]
        s = [builder.fadd(a[i], a[i + 4]) for i in range(4)]
        return builder.fadd(builder.fadd(s[0], s[2]), builder.fadd(s[1], s[3]))

    return types.float32(acc), codegen


def _has_half_convert(context) -> bool:
    """Whether the target converts half to float in hardware (x86 F16C, any
    AArch64); elsewhere LLVM would call a runtime helper numba may lack."""
    module = getattr(context.codegen(), "_llvm_module", None)
    triple = module.triple if module is not None else ""
    return triple.startswith(("aarch64", "arm64")) or "f16c" in _features(context)


@intrinsic
def f16(typingctx, row, o):
    """The little-endian half at row[o:o + 2] as float32 (exact either way:
    the CPU's conversion where it has one, else formats.fp16.read_f16)."""
    def codegen(context, builder, sig, args):
        if not _has_half_convert(context):
            return context.compile_internal(builder, lambda r, i: read_f16(r, i), sig, args)
        half = builder.load(builder.bitcast(_at(context, builder, sig.args[0], args[0], args[1]),
                                            ir.HalfType().as_pointer()), align=1)
        return builder.fpext(half, _F32)

    return types.float32(row, o), codegen


@intrinsic
def sums_q6_k(typingctx, row, o, x, xo, bsums, bo):
    """A Q6_K super-block (ql[128], qh[64], int8 scales[16], d at row[o:])
    times the Q8_K quants x[xo:xo + 256] with their sums per 16,
    bsums[bo:bo + 16]: dot_k's 8 exact lane sums, s[l] = sum over sub-blocks
    c of scale[2c + l // 4] * lane l of c, minus the quants' offset 32
    through the activation sums, 32 * (scale[2l] * bs[2l] + scale[2l + 1] *
    bs[2l + 1])."""
    def codegen(context, builder, sig, args):
        row_t, _, x_t, _, bs_t, _ = sig.args
        row, o, x, xo = args[0], args[1], args[2], args[3]

        def at(offset):
            return builder.add(o, ir.Constant(o.type, offset))

        def bytes32(offset):
            return _load(builder, _at(context, builder, row_t, row, at(offset)), _vt(32, _I8))

        def u8(n):
            return _splat(builder, ir.Constant(_I8, n), 32)

        scales = builder.sext(_load(builder, _at(context, builder, row_t, row, at(192)), _vt(16, _I8)), _vt(16, _I32))
        total = None
        for h in range(2):
            ql = (bytes32(64 * h), bytes32(64 * h + 32))
            qh = bytes32(128 + 32 * h)
            for q in range(4):
                # sub-block c = 4h + q: weights 128h + 32q + l, l = 0..31
                c = 4 * h + q
                low = ql[q & 1]
                low = builder.and_(low, u8(15)) if q < 2 else builder.lshr(low, u8(4))
                high = builder.shl(builder.and_(builder.lshr(qh, u8(2 * q)), u8(3)), u8(4))
                xoc = builder.add(xo, ir.Constant(xo.type, 32 * c))
                lanes = _lanes(context, builder, builder.or_(low, high), False, None, x_t, x, xoc)
                scale = builder.shuffle_vector(scales, scales, _consts(_I32, [2 * c] * 4 + [2 * c + 1] * 4))
                term = builder.mul(scale, lanes)
                total = term if total is None else builder.add(total, term)
        bs = _load(builder, _at(context, builder, bs_t, args[4], args[5]), _vt(16, _I32))
        offsets = _pair_sums(builder, builder.mul(scales, bs))
        return builder.sub(total, builder.shl(offsets, _splat(builder, ir.Constant(_I32, 5), 8)))

    return i32x8(row, o, x, xo, bsums, bo), codegen


# ----------------------------------------------------------------------------
# eight weight rows at once (the repacked Q4_0 gemv: one exact sum per block)
# ----------------------------------------------------------------------------


def _row_ptr(context, builder, w_t, w, r, k, o):
    """Pointer to w[r + k, o] of a C-contiguous 2-D uint8 array."""
    a = context.make_array(w_t)(context, builder, w)
    stride = builder.extract_value(a.strides, 0)
    start = builder.add(builder.mul(builder.add(r, ir.Constant(r.type, k)), stride), o)
    return builder.gep(a.data, [start])


def _sums_of_rows(builder, vecs):
    """Eight <8 x i32> vectors -> one whose lane k is the total of vecs[k]:
    three rounds of pairwise adds of interleaved lanes."""
    level = list(vecs)
    # round 1: [a0+a1, b0+b1, a2+a3, b2+b3, ...]
    even = [builder.shuffle_vector(level[2 * i], level[2 * i + 1], _consts(_I32, [0, 8, 2, 10, 4, 12, 6, 14])) for i in range(4)]
    odd = [builder.shuffle_vector(level[2 * i], level[2 * i + 1], _consts(_I32, [1, 9, 3, 11, 5, 13, 7, 15])) for i in range(4)]
    level = [builder.add(e, o) for e, o in zip(even, odd)]
    # round 2: [a0-3, b0-3, c0-3, d0-3, a4-7, b4-7, c4-7, d4-7]
    even = [builder.shuffle_vector(level[2 * i], level[2 * i + 1], _consts(_I32, [0, 1, 8, 9, 4, 5, 12, 13])) for i in range(2)]
    odd = [builder.shuffle_vector(level[2 * i], level[2 * i + 1], _consts(_I32, [2, 3, 10, 11, 6, 7, 14, 15])) for i in range(2)]
    level = [builder.add(e, o) for e, o in zip(even, odd)]
    # round 3: the eight totals in order
    lo = builder.shuffle_vector(level[0], level[1], _consts(_I32, [0, 1, 2, 3, 8, 9, 10, 11]))
    hi = builder.shuffle_vector(level[0], level[1], _consts(_I32, [4, 5, 6, 7, 12, 13, 14, 15]))
    return builder.add(lo, hi)


@intrinsic
def sums8_q4(typingctx, w, r, o, x, xo):
    """Rows r .. r + 7 of w: the exact sum of each row's nibbles at [o, o + 16)
    times x[xo:xo + 32] (unsigned quants, no offset), lane k for row r + k."""
    def codegen(context, builder, sig, args):
        w_t, _, _, x_t, _ = sig.args
        w, r, o, x, xo = args
        lanes = []
        prefetch = builder.module.declare_intrinsic(
            "llvm.prefetch.p0", (), ir.FunctionType(ir.VoidType(), [ir.IntType(8).as_pointer(), _I32, _I32, _I32]))
        # Eight rows read side by side are eight short memory streams, which
        # the hardware prefetchers follow poorly; the next eight rows are one
        # contiguous span, so ask for it in step, 8 * o bytes into it at
        # block offset o (a prefetch never faults, past the matrix end either)
        ahead = _row_ptr(context, builder, w_t, w, r, 8, builder.mul(o, ir.Constant(o.type, 8)))
        for line in range(3):
            p = builder.gep(ahead, [ir.Constant(ir.IntType(64), 64 * line)])
            builder.call(prefetch, [builder.bitcast(p, ir.IntType(8).as_pointer()),
                                    ir.Constant(_I32, 0), ir.Constant(_I32, 3), ir.Constant(_I32, 1)])
        for k in range(8):
            w8 = _nibbles(builder, _row_ptr(context, builder, w_t, w, r, k, o))
            lanes.append(_lanes(context, builder, w8, False, None, x_t, x, xo))
        return _sums_of_rows(builder, lanes)

    return i32x8(w, r, o, x, xo), codegen


@intrinsic
def scales8(typingctx, w, r, o):
    """The halves at w[r + k, o:o + 2], k = 0 .. 7, as float32 (exact)."""
    def codegen(context, builder, sig, args):
        w_t = sig.args[0]
        vec = ir.Constant(_vt(8, _F32), ir.Undefined)
        hw = _has_half_convert(context)
        for k in range(8):
            p = _row_ptr(context, builder, w_t, args[0], args[1], k, args[2])
            if hw:
                v = builder.fpext(builder.load(builder.bitcast(p, ir.HalfType().as_pointer()), align=1), _F32)
            else:
                lo = builder.zext(builder.load(p), ir.IntType(64))
                hi = builder.zext(builder.load(builder.gep(p, [ir.Constant(ir.IntType(64), 1)])), ir.IntType(64))
                bits = builder.or_(lo, builder.shl(hi, ir.Constant(ir.IntType(64), 8)))
                v = context.compile_internal(builder, lambda h: f16_to_f32(h), types.float32(types.int64), [bits])
            vec = builder.insert_element(vec, v, ir.Constant(_I32, k))
        return vec

    return f32x8(w, r, o), codegen


@intrinsic
def fma8_rows(typingctx, sums, offset, scales, y, acc):
    """acc[k] = fma(float32(sums[k] - offset), scales[k] * y, acc[k]): the
    repacked Q4_0 gemv's step for eight rows, each lane rounded as the
    scalar one (the product scales[k] * y rounded, then one fused op)."""
    if y != types.float32:
        return None

    def codegen(context, builder, sig, args):
        vt = _vt(8, _F32)
        s = builder.sub(args[0], _splat(builder, builder.trunc(args[1], _I32), 8))
        b = builder.fmul(args[2], _splat(builder, args[3], 8))
        fn = builder.module.declare_intrinsic("llvm.fma.v8f32", (), ir.FunctionType(vt, [vt, vt, vt]))
        return builder.call(fn, [builder.sitofp(s, vt), b, args[4]])

    return f32x8(sums, offset, scales, y, acc), codegen


@intrinsic
def store8(typingctx, out, o, v):
    """out[o:o + 8] = v (a 1-D float32 array)."""
    def codegen(context, builder, sig, args):
        p = _at(context, builder, sig.args[0], args[0], args[1])
        builder.store(args[2], builder.bitcast(p, _vt(8, _F32).as_pointer()), align=4)
        return context.get_dummy_value()

    return types.none(out, o, v), codegen


# ----------------------------------------------------------------------------
# ggml_vec_dot_f16's four 16-lane accumulators (attention, native attn_f16)
# ----------------------------------------------------------------------------


@intrinsic
def zeros16(typingctx):
    """Sixteen +0 accumulators."""
    def codegen(context, builder, sig, args):
        return ir.Constant(_vt(16, _F32), [ir.Constant(_F32, 0.0)] * 16)

    return f32x16(), codegen


@intrinsic
def fma16(typingctx, x, y, o, acc):
    """acc[l] = fma(x[o + l], y[o + l], acc[l]) for l < 16 (contiguous float32
    arrays), one rounding per lane."""
    if not all(isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C" and a.dtype == types.float32 for a in (x, y)):
        return None

    def codegen(context, builder, sig, args):
        vt = _vt(16, _F32)
        a = _load(builder, _at(context, builder, sig.args[0], args[0], args[2]), vt)
        b = _load(builder, _at(context, builder, sig.args[1], args[1], args[2]), vt)
        fn = builder.module.declare_intrinsic("llvm.fma.v16f32", (), ir.FunctionType(vt, [vt, vt, vt]))
        return builder.call(fn, [a, b, args[3]])

    return f32x16(x, y, o, acc), codegen


@intrinsic
def reduce4_16(typingctx, a0, a1, a2, a3):
    """ggml_reduce4<16> of the accumulators a0..a3 (acc[0:16] .. acc[48:64]):
    a2 and a3 into a0 and a1, a1 into a0, then hsum16 of the lanes."""
    def codegen(context, builder, sig, args):
        v0, v1, v2, v3 = args
        lanes = builder.fadd(builder.fadd(v0, v2), builder.fadd(v1, v3))
        e = [builder.extract_element(lanes, ir.Constant(_I32, i)) for i in range(16)]
        a = [builder.fadd(builder.fadd(e[j], e[j + 8]), builder.fadd(e[j + 4], e[j + 12])) for j in range(4)]
        return builder.fadd(builder.fadd(a[0], a[2]), builder.fadd(a[1], a[3]))

    return types.float32(a0, a1, a2, a3), codegen
