#include "blocks.h"

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

void permute_rows8(int t, const uint8_t* src, int64_t rows, int64_t cols, uint8_t* dst, bool to_interleaved) {
    const size_t bb = TYPE_TRAITS[t].type_size;
    const int64_t nb = cols / TYPE_TRAITS[t].block_size;
    if (bb == sizeof(block_q4_0)) permute_rows8<sizeof(block_q4_0)>(src, rows, bb, nb, dst, to_interleaved);
    else permute_rows8<0>(src, rows, bb, nb, dst, to_interleaved);
}
}  // namespace

void interleave_rows8(int t, const uint8_t* src, int64_t rows, int64_t cols, uint8_t* dst) {
    permute_rows8(t, src, rows, cols, dst, true);
}

void deinterleave_rows8(int t, const uint8_t* src, int64_t rows, int64_t cols, uint8_t* dst) {
    permute_rows8(t, src, rows, cols, dst, false);
}

}  // namespace ll
