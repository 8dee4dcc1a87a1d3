#include "blocks.h"

#include <type_traits>

namespace ll {

namespace {
constexpr TypeTraits make_traits_table_entry(const char* n, int bs, int ts, Type vdt) { return TypeTraits{n, bs, ts, vdt}; }
}  // namespace

const TypeTraits TYPE_TRAITS[TYPE_COUNT] = {
    /* 0 F32  */ make_traits_table_entry("F32", 1, 4, TYPE_F32),
    /* 1 F16  */ make_traits_table_entry("F16", 1, 2, TYPE_F32),
    /* 2 Q4_0 */ make_traits_table_entry("Q4_0", QK, sizeof(block_q4_0), TYPE_Q8_0),
    /* 3 Q4_1 */ make_traits_table_entry("Q4_1", QK, sizeof(block_q4_1), TYPE_Q8_1),
    /* 4 */ {}, /* 5 */ {},
    /* 6 Q5_0 */ make_traits_table_entry("Q5_0", QK, sizeof(block_q5_0), TYPE_Q8_0),
    /* 7 Q5_1 */ make_traits_table_entry("Q5_1", QK, sizeof(block_q5_1), TYPE_Q8_1),
    /* 8 Q8_0 */ make_traits_table_entry("Q8_0", QK, sizeof(block_q8_0), TYPE_Q8_0),
    /* 9 Q8_1 */ make_traits_table_entry("Q8_1", QK, sizeof(block_q8_1), TYPE_Q8_1),
    /* 10 Q2_K */ make_traits_table_entry("Q2_K", QK_K, sizeof(block_q2_K), TYPE_Q8_K),
    /* 11 Q3_K */ make_traits_table_entry("Q3_K", QK_K, sizeof(block_q3_K), TYPE_Q8_K),
    /* 12 Q4_K */ make_traits_table_entry("Q4_K", QK_K, sizeof(block_q4_K), TYPE_Q8_K),
    /* 13 Q5_K */ make_traits_table_entry("Q5_K", QK_K, sizeof(block_q5_K), TYPE_Q8_K),
    /* 14 Q6_K */ make_traits_table_entry("Q6_K", QK_K, sizeof(block_q6_K), TYPE_Q8_K),
    /* 15 Q8_K */ make_traits_table_entry("Q8_K", QK_K, sizeof(block_q8_K), TYPE_Q8_K),
    /* 16..29 */ {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {},
    /* 30 BF16 */ make_traits_table_entry("BF16", 1, 2, TYPE_F32),
    /* 31..39 */ {}, {}, {}, {}, {}, {}, {}, {}, {},
};

namespace {
// BB: the block's size, known at compile time for the types that get copies,
// so each block is a few register moves rather than a call to memcpy (which
// took the copy of a 1.1B model's Q4_0 weights to 0.4 s).
template <size_t BB>
void permute_rows8(const uint8_t* src, int64_t rows, size_t bb, int64_t nb, uint8_t* dst, bool to_interleaved) {
    const size_t size = BB ? BB : bb, rb = nb * size;
    for (int64_t g = 0; g < rows / 8; g++) {
        const size_t base = g * 8 * rb;  // the group's first byte in either layout
        for (int64_t i = 0; i < nb; i++)
            for (int r = 0; r < 8; r++) {
                const size_t row_major = base + r * rb + i * size, interleaved = base + (i * 8 + r) * size;
                std::memcpy(dst + (to_interleaved ? interleaved : row_major), src + (to_interleaved ? row_major : interleaved), size);
            }
    }
}

// One x16 block (blocks.h) from sixteen rows' block i, or back (to_x16 false):
// rows[l] is row l's block.  Q = the row block type, X = the x16 block type.
template <class Q, class X>
void transpose_block16(Q* const* rows, X* x, bool to_x16) {
    constexpr bool HAS_M = std::is_same<Q, block_q4_1>::value || std::is_same<Q, block_q5_1>::value;
    constexpr bool HAS_QH = std::is_same<Q, block_q5_0>::value || std::is_same<Q, block_q5_1>::value;
    constexpr int CHUNKS = sizeof(x->qs) / 64;  // 4-byte groups per row block
    if constexpr (HAS_QH)
        if (to_x16) std::memset(x->qh, 0, sizeof x->qh);
    for (int l = 0; l < 16; l++) {
        Q& q = *rows[l];
        auto move = [to_x16](auto& row_field, auto& x_field) {
            if (to_x16) std::memcpy(&x_field, &row_field, sizeof row_field);
            else std::memcpy(&row_field, &x_field, sizeof row_field);
        };
        move(q.d, x->d[l]);
        if constexpr (HAS_M) move(q.m, x->m[l]);
        for (int c = 0; c < CHUNKS; c++) {
            uint8_t* xq = reinterpret_cast<uint8_t*>(x->qs[c]) + 4 * l;
            uint8_t* rq = reinterpret_cast<uint8_t*>(q.qs) + 4 * c;
            if (to_x16) std::memcpy(xq, rq, 4);
            else std::memcpy(rq, xq, 4);
        }
        if constexpr (HAS_QH) {
            uint32_t h = 0;
            if (to_x16) {
                std::memcpy(&h, q.qh, 4);
                for (int j = 0; j < 8; j++) x->qh[j] |= (uint64_t)((h >> (4 * j)) & 0xF) << (4 * l);
            } else {
                for (int j = 0; j < 8; j++) h |= (uint32_t)((x->qh[j] >> (4 * l)) & 0xF) << (4 * j);
                std::memcpy(q.qh, &h, 4);
            }
        }
    }
}

template <class Q, class X>
void permute_rows16(const uint8_t* src, int64_t rows, int64_t nb, uint8_t* dst, bool to_x16) {
    const size_t rb = nb * sizeof(Q);
    for (int64_t g = 0; g < rows / 16; g++) {
        const size_t base = g * 16 * rb;  // the group's first byte in either layout
        uint8_t* row_major = const_cast<uint8_t*>(to_x16 ? src : dst) + base;
        uint8_t* x16 = const_cast<uint8_t*>(to_x16 ? dst : src) + base;
        for (int64_t i = 0; i < nb; i++) {
            Q* q[16];
            for (int l = 0; l < 16; l++) q[l] = reinterpret_cast<Q*>(row_major + l * rb) + i;
            transpose_block16(q, reinterpret_cast<X*>(x16) + i, to_x16);
        }
    }
}

void permute_rows16(int t, const uint8_t* src, int64_t rows, int64_t cols, uint8_t* dst, bool to_x16) {
    const int64_t nb = cols / QK;
    switch (t) {
        case TYPE_Q4_1: return permute_rows16<block_q4_1, block_q4_1x16>(src, rows, nb, dst, to_x16);
        case TYPE_Q5_0: return permute_rows16<block_q5_0, block_q5_0x16>(src, rows, nb, dst, to_x16);
        case TYPE_Q5_1: return permute_rows16<block_q5_1, block_q5_1x16>(src, rows, nb, dst, to_x16);
        default: return permute_rows16<block_q8_0, block_q8_0x16>(src, rows, nb, dst, to_x16);
    }
}

void permute_rows8(int t, const uint8_t* src, int64_t rows, int64_t cols, uint8_t* dst, bool to_interleaved) {
    const size_t bb = TYPE_TRAITS[t].type_size;
    const int64_t nb = cols / TYPE_TRAITS[t].block_size;
    if (bb == sizeof(block_q4_0)) permute_rows8<sizeof(block_q4_0)>(src, rows, bb, nb, dst, to_interleaved);
    else permute_rows8<0>(src, rows, bb, nb, dst, to_interleaved);
}
}  // namespace

void interleave_rows(int t, const uint8_t* src, int64_t rows, int64_t cols, uint8_t* dst) {
    if (interleave_group(t) == 16) permute_rows16(t, src, rows, cols, dst, true);
    else permute_rows8(t, src, rows, cols, dst, true);
}

void deinterleave_rows(int t, const uint8_t* src, int64_t rows, int64_t cols, uint8_t* dst) {
    if (interleave_group(t) == 16) permute_rows16(t, src, rows, cols, dst, false);
    else permute_rows8(t, src, rows, cols, dst, false);
}

}  // namespace ll
