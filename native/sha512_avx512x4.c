/* AVX-512VL with 4 lanes on 256-bit vectors: a batch's last 2 to 4 jobs, bodies or chains. With
 * most of its lanes empty, a step of the 8-lane kernel costs as much as with all 8 busy, while
 * 256-bit vector ops issue on three ports where 512-bit ones get two: 4 busy lanes here hash
 * 1.4x as fast as 4 of 8 (1.74 against 1.24 GB/s for 4 x 256 KB bodies), and rotates and
 * three-input logic make it 1.8x the AVX2 kernel. A lone job is still faster in scalar. */
#include "sha512_impl.h"

#ifdef DW_X86
#include <immintrin.h>

#define DW_TARGET __attribute__((target("avx512f,avx512vl")))
#define DW_VW 4
#define DW_GROUPS 1
#define DW_NAME(x) dw_avx512x4_##x
#define DW_ROR(x, n) ((V)_mm256_ror_epi64((__m256i)(x), (n)))
#include "sha512_vec.h"

const dw_lane_kernel dw_avx512x4_kernel = {DW_LANES, 1, dw_avx512x4_block, dw_avx512x4_chain, dw_avx512x4_load};
#endif
