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
- `f32x8`: the 8 float chains that those lanes go into.

Only exact integer work is reorganised here.  The float steps are lane-wise
and single: `fma8` is acc = fma(a, float(lane), acc) per lane (llvm.fma, one
rounding, as the scalar `fma`), `hsum8` is ggml's horizontal add in its
order.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic, models, register_model

from ...formats.fp16 import read_f16

_I8, _I16, _I32, _F32 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.FloatType()


class VecType(types.Type):
    """A fixed-size LLVM vector as a numba value (no Python-side object: only
    the intrinsics below make and take one)."""

    def __init__(self, name: str, elem: ir.Type, n: int):
        self.elem, self.n = elem, n
        super().__init__(name=name)


f32x8 = VecType("f32x8", _F32, 8)
i32x8 = VecType("i32x8", _I32, 8)


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


def _nibbles(context, builder, row_t, row, o):
    """The 16 bytes at row[o:] as 32 unsigned 4-bit weights (<32 x i8>):
    the low nibbles are weights 0-15, the high ones 16-31 (ggml's order)."""
    q = _load(builder, _at(context, builder, row_t, row, o), _vt(16, _I8))
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
        w8 = _nibbles(context, builder, row_t, args[0], args[1])
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
        w8 = builder.or_(_nibbles(context, builder, row_t, args[0], args[2]), high)
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


@intrinsic
def isum8(typingctx, lanes):
    """The exact int32 total of the 8 lanes (a whole block's sum)."""
    def codegen(context, builder, sig, args):
        fn = builder.module.declare_intrinsic("llvm.vector.reduce.add.v8i32", (), ir.FunctionType(_I32, [_vt(8, _I32)]))
        return builder.call(fn, [args[0]])

    return types.int32(lanes), codegen


def _has_half_convert(context) -> bool:
    """Whether the target converts half to float in hardware (x86 F16C, any
    AArch64); elsewhere LLVM would call a runtime helper numba may lack."""
    codegen = context.codegen()
    triple = getattr(codegen, "_llvm_module", None)
    triple = triple.triple if triple is not None else ""
    features = getattr(codegen, "_tm_features", "") or ""
    return triple.startswith(("aarch64", "arm64")) or "+f16c" in features.split(",")


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
