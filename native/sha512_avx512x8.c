/* AVX-512 with a single group of 8 lanes: it leads batches that are mostly body blocks (see
 * sha512chain.c), and takes the last 5 to 8 jobs of the others (2 to 8 without AVX-512VL): a step
 * of the 16-lane kernel costs as much with most of its lanes empty, while one group alone takes
 * about 0.53 of its time here (8 chains: 26 against 28 M it/s for 16). Without AVX-512VL only a
 * lone chain is faster in scalar (5.6 M it/s against 3.3 per lane); with it, 2 to 4 jobs go on to
 * the 4-lane kernel (sha512_avx512x4.c). */
#include "sha512_impl.h"

#ifdef DW_X86
#include <immintrin.h>

#define DW_TARGET __attribute__((target("avx512f")))
#define DW_VW 8
#define DW_GROUPS 1
#define DW_NAME(x) dw_avx512x8_##x
#define DW_ROR(x, n) ((V)_mm512_ror_epi64((__m512i)(x), (n)))
#include "sha512_vec.h"

const dw_lane_kernel dw_avx512x8_kernel = {DW_LANES, 1, dw_avx512x8_block, dw_avx512x8_chain, dw_avx512x8_load};
#endif
