/* AVX-512 lane kernel: two interleaved groups of 8 lanes (vector adds and rotates have a
 * 2-cycle latency on recent cores, so one group alone stalls on itself). */
#include "sha512_impl.h"

#ifdef DW_X86
#include <immintrin.h>

#define DW_TARGET __attribute__((target("avx512f")))
#define DW_VW 8
#define DW_GROUPS 2
#define DW_NAME(x) dw_avx512_##x
#define DW_ROR(x, n) ((V)_mm512_ror_epi64((__m512i)(x), (n)))
#include "sha512_vec.h"

/* One lane of 16 runs at about a third of the scalar kernel's speed (figures from issue 3:
 * ~34 M it/s for 16 lanes vs ~7 M scalar), so at 3 chains or fewer the scalar kernel wins; the
 * driver hands a batch's last chains to narrower kernels first (sha512_avx512x8.c, x4.c). */
const dw_lane_kernel dw_avx512_kernel = {DW_LANES, 3, dw_avx512_block, dw_avx512_chain, dw_avx512_load};
#endif
