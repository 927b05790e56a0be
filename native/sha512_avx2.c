/* AVX2 lane kernel: 4 lanes of 64-bit words per vector. Compiled for AVX2 with a function
 * attribute only; the dispatcher calls it after __builtin_cpu_supports("avx2"). */
#include "sha512_impl.h"

#ifdef DW_X86
#define DW_TARGET __attribute__((target("avx2")))
#define DW_VW 4
#ifndef DW_AVX2_GROUPS
#define DW_AVX2_GROUPS 1
#endif
#define DW_GROUPS DW_AVX2_GROUPS
#define DW_NAME(x) dw_avx2_##x
#include "sha512_vec.h"

/* 4 lanes run at ~2.4x the scalar kernel here: only a lone chain is faster in scalar. */
const dw_lane_kernel dw_avx2_kernel = {DW_LANES, 1, dw_avx2_block, dw_avx2_chain, dw_avx2_load};
#endif
