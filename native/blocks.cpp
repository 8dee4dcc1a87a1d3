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

}  // namespace ll
