/* Lane kernels as a template over GCC/Clang vector extensions. The including file defines
 *   DW_TARGET     the function attribute, e.g. __attribute__((target("avx2")))
 *   DW_VW         64-bit words per vector (4 for AVX2, 8 for AVX-512)
 *   DW_GROUPS     vectors interleaved per round (independent chains hide the op latency)
 *   DW_NAME(x)    the name prefix for this kernel's functions
 * and optionally DW_ROR(x, n) when the target has a vector rotate.
 * Lanes = DW_VW * DW_GROUPS; words are laid out [word][lane] in memory. */
#include "sha512_impl.h"

#include <immintrin.h>

#define DW_LANES (DW_VW * DW_GROUPS)

typedef uint64_t DW_NAME(v) __attribute__((vector_size(8 * DW_VW)));
#define V DW_NAME(v)

#ifndef DW_ROR
#define DW_ROR(x, n) (((x) >> (n)) | ((x) << (64 - (n))))
#endif
#define VBSIG0(x) (DW_ROR(x, 28) ^ DW_ROR(x, 34) ^ DW_ROR(x, 39))
#define VBSIG1(x) (DW_ROR(x, 14) ^ DW_ROR(x, 18) ^ DW_ROR(x, 41))
#define VSSIG0(x) (DW_ROR(x, 1) ^ DW_ROR(x, 8) ^ ((x) >> 7))
#define VSSIG1(x) (DW_ROR(x, 19) ^ DW_ROR(x, 61) ^ ((x) >> 6))

/* g loops over the interleaved groups; with constant bounds they unroll into registers. */
#define VW_AT(i, g)                                                                     \
    ((i) < 16 ? w[(i)&15][g]                                                            \
              : (w[(i)&15][g] += VSSIG1(w[((i)-2) & 15][g]) + w[((i)-7) & 15][g] +      \
                                 VSSIG0(w[((i)-15) & 15][g])))

/* As the scalar round: h takes K + W early; Maj(a,b,c) = ((a^b) & (b^c)) ^ b with this round's
 * a^b kept as the next round's b^c (ab and bc alternate between x_ and y_). */
#define VROUND(a, b, c, d, e, f, g_, h, i, ab, bc)                                      \
    for (int g = 0; g < DW_GROUPS; g++) {                                               \
        h[g] += dw_K[i] + VW_AT(i, g);                                                  \
        h[g] += VBSIG1(e[g]) + (((f[g] ^ g_[g]) & e[g]) ^ g_[g]);                       \
        d[g] += h[g];                                                                   \
        ab[g] = a[g] ^ b[g];                                                            \
        h[g] += VBSIG0(a[g]) + ((ab[g] & bc[g]) ^ b[g]);                                \
    }

#define VROUNDS8(i)                                                                     \
    VROUND(a, b, c, d, e, f, gg, h, (i) + 0, x_, y_);                                   \
    VROUND(h, a, b, c, d, e, f, gg, (i) + 1, y_, x_);                                   \
    VROUND(gg, h, a, b, c, d, e, f, (i) + 2, x_, y_);                                   \
    VROUND(f, gg, h, a, b, c, d, e, (i) + 3, y_, x_);                                   \
    VROUND(e, f, gg, h, a, b, c, d, (i) + 4, x_, y_);                                   \
    VROUND(d, e, f, gg, h, a, b, c, (i) + 5, y_, x_);                                   \
    VROUND(c, d, e, f, gg, h, a, b, (i) + 6, x_, y_);                                   \
    VROUND(b, c, d, e, f, gg, h, a, (i) + 7, y_, x_)

#define VROUNDS80                                                                       \
    V x_[DW_GROUPS], y_[DW_GROUPS];                                                     \
    for (int g = 0; g < DW_GROUPS; g++)                                                 \
        y_[g] = b[g] ^ c[g];                                                            \
    VROUNDS8(0); VROUNDS8(8); VROUNDS8(16); VROUNDS8(24); VROUNDS8(32);                 \
    VROUNDS8(40); VROUNDS8(48); VROUNDS8(56); VROUNDS8(64); VROUNDS8(72)

/* Unaligned vector load and store (macros: no vector-typed arguments cross a call). */
#define VLOAD(p)                                                                        \
    __extension__({                                                                     \
        V v_;                                                                           \
        __builtin_memcpy(&v_, (p), sizeof v_);                                          \
        v_;                                                                             \
    })
#define VSTORE(p, v)                                                                    \
    do {                                                                                \
        V v_ = (v);                                                                     \
        __builtin_memcpy((p), &v_, sizeof v_);                                          \
    } while (0)

DW_TARGET static void DW_NAME(block)(uint64_t *st, const uint64_t *win)
{
    V w[16][DW_GROUPS], a[DW_GROUPS], b[DW_GROUPS], c[DW_GROUPS], d[DW_GROUPS];
    V e[DW_GROUPS], f[DW_GROUPS], gg[DW_GROUPS], h[DW_GROUPS];
    for (int g = 0; g < DW_GROUPS; g++) {
        for (int i = 0; i < 16; i++)
            w[i][g] = VLOAD(win + i * DW_LANES + g * DW_VW);
        a[g] = VLOAD(st + 0 * DW_LANES + g * DW_VW);
        b[g] = VLOAD(st + 1 * DW_LANES + g * DW_VW);
        c[g] = VLOAD(st + 2 * DW_LANES + g * DW_VW);
        d[g] = VLOAD(st + 3 * DW_LANES + g * DW_VW);
        e[g] = VLOAD(st + 4 * DW_LANES + g * DW_VW);
        f[g] = VLOAD(st + 5 * DW_LANES + g * DW_VW);
        gg[g] = VLOAD(st + 6 * DW_LANES + g * DW_VW);
        h[g] = VLOAD(st + 7 * DW_LANES + g * DW_VW);
    }
    VROUNDS80;
    for (int g = 0; g < DW_GROUPS; g++) {
        V *out[8] = {a, b, c, d, e, f, gg, h};
        for (int i = 0; i < 8; i++) {
            uint64_t *p = st + i * DW_LANES + g * DW_VW;
            VSTORE(p, VLOAD(p) + out[i][g]);
        }
    }
}

DW_TARGET static void DW_NAME(chain)(uint64_t *st, uint64_t steps)
{
    V s[8][DW_GROUPS];
    for (int i = 0; i < 8; i++)
        for (int g = 0; g < DW_GROUPS; g++)
            s[i][g] = VLOAD(st + i * DW_LANES + g * DW_VW);
    for (uint64_t n = 0; n < steps; n++) {
        V w[16][DW_GROUPS], a[DW_GROUPS], b[DW_GROUPS], c[DW_GROUPS], d[DW_GROUPS];
        V e[DW_GROUPS], f[DW_GROUPS], gg[DW_GROUPS], h[DW_GROUPS];
        for (int g = 0; g < DW_GROUPS; g++) {
            for (int i = 0; i < 8; i++)
                w[i][g] = s[i][g];
            w[8][g] = (V){} + DW_PAD8;
            for (int i = 9; i < 15; i++)
                w[i][g] = (V){};
            w[15][g] = (V){} + DW_LEN64;
            a[g] = (V){} + dw_IV[0];
            b[g] = (V){} + dw_IV[1];
            c[g] = (V){} + dw_IV[2];
            d[g] = (V){} + dw_IV[3];
            e[g] = (V){} + dw_IV[4];
            f[g] = (V){} + dw_IV[5];
            gg[g] = (V){} + dw_IV[6];
            h[g] = (V){} + dw_IV[7];
        }
        VROUNDS80;
        for (int g = 0; g < DW_GROUPS; g++) {
            s[0][g] = a[g] + dw_IV[0];
            s[1][g] = b[g] + dw_IV[1];
            s[2][g] = c[g] + dw_IV[2];
            s[3][g] = d[g] + dw_IV[3];
            s[4][g] = e[g] + dw_IV[4];
            s[5][g] = f[g] + dw_IV[5];
            s[6][g] = gg[g] + dw_IV[6];
            s[7][g] = h[g] + dw_IV[7];
        }
    }
    for (int i = 0; i < 8; i++)
        for (int g = 0; g < DW_GROUPS; g++)
            VSTORE(st + i * DW_LANES + g * DW_VW, s[i][g]);
}

#if DW_VW == 8
/* Body blocks into the lanes with vector loads: 8 lanes' blocks at a time, each 64-bit word
 * byte-swapped (with AVX-512F alone: vpshufb on 512 bits needs AVX-512BW), then transposed as
 * two 8x8 matrices of words: one word at a time (the loader below, for AVX2) costs more. */
DW_TARGET static void DW_NAME(load)(uint64_t *w, const uint8_t *const *blocks)
{
    const __m512i low_bytes = _mm512_set1_epi64(0x00FF00FF00FF00FFLL);
    for (int g = 0; g < DW_GROUPS; g++) {
        for (int half = 0; half < 2; half++) {
            __m512i r[8], t[8];
            for (int l = 0; l < 8; l++) { /* r[l]: words 8 * half .. + 7 of lane l */
                __m512i x = _mm512_loadu_si512((const void *)(blocks[8 * g + l] + 64 * half));
                x = _mm512_ror_epi32(_mm512_ror_epi64(x, 32), 16);
                r[l] = _mm512_ternarylogic_epi64(low_bytes, _mm512_srli_epi64(x, 8), _mm512_slli_epi64(x, 8), 0xCA);
            }
            for (int l = 0; l < 8; l += 2) { /* t[l]: even words of lanes l, l+1 by pairs; t[l+1]: odd */
                t[l] = _mm512_unpacklo_epi64(r[l], r[l + 1]);
                t[l + 1] = _mm512_unpackhi_epi64(r[l], r[l + 1]);
            }
            uint64_t *out = w + 8 * half * DW_LANES + 8 * g;
            for (int p = 0; p < 2; p++) { /* even words, then odd */
                __m512i u0 = _mm512_shuffle_i64x2(t[p], t[2 + p], _MM_SHUFFLE(2, 0, 2, 0));
                __m512i u1 = _mm512_shuffle_i64x2(t[p], t[2 + p], _MM_SHUFFLE(3, 1, 3, 1));
                __m512i v0 = _mm512_shuffle_i64x2(t[4 + p], t[6 + p], _MM_SHUFFLE(2, 0, 2, 0));
                __m512i v1 = _mm512_shuffle_i64x2(t[4 + p], t[6 + p], _MM_SHUFFLE(3, 1, 3, 1));
                _mm512_storeu_si512((void *)(out + (0 + p) * DW_LANES), _mm512_shuffle_i64x2(u0, v0, _MM_SHUFFLE(2, 0, 2, 0)));
                _mm512_storeu_si512((void *)(out + (2 + p) * DW_LANES), _mm512_shuffle_i64x2(u1, v1, _MM_SHUFFLE(2, 0, 2, 0)));
                _mm512_storeu_si512((void *)(out + (4 + p) * DW_LANES), _mm512_shuffle_i64x2(u0, v0, _MM_SHUFFLE(3, 1, 3, 1)));
                _mm512_storeu_si512((void *)(out + (6 + p) * DW_LANES), _mm512_shuffle_i64x2(u1, v1, _MM_SHUFFLE(3, 1, 3, 1)));
            }
        }
    }
}
#elif DW_VW == 4
/* Body blocks into the lanes with 256-bit loads (AVX2, which AVX-512 implies): 4 lanes' blocks a
 * quarter at a time, each 64-bit word byte-swapped with a byte shuffle, then transposed as a 4x4
 * matrix of words. */
DW_TARGET static void DW_NAME(load)(uint64_t *w, const uint8_t *const *blocks)
{
    const __m256i swap = _mm256_set_epi8(8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7,
                                         8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
    for (int g = 0; g < DW_GROUPS; g++) {
        for (int q = 0; q < 4; q++) { /* words 4q .. 4q + 3 */
            __m256i r[4];
            for (int l = 0; l < 4; l++)
                r[l] = _mm256_shuffle_epi8(_mm256_loadu_si256((const void *)(blocks[4 * g + l] + 32 * q)), swap);
            __m256i t0 = _mm256_unpacklo_epi64(r[0], r[1]), t1 = _mm256_unpackhi_epi64(r[0], r[1]);
            __m256i t2 = _mm256_unpacklo_epi64(r[2], r[3]), t3 = _mm256_unpackhi_epi64(r[2], r[3]);
            uint64_t *out = w + 4 * q * DW_LANES + 4 * g;
            _mm256_storeu_si256((void *)(out + 0 * DW_LANES), _mm256_permute2x128_si256(t0, t2, 0x20));
            _mm256_storeu_si256((void *)(out + 1 * DW_LANES), _mm256_permute2x128_si256(t1, t3, 0x20));
            _mm256_storeu_si256((void *)(out + 2 * DW_LANES), _mm256_permute2x128_si256(t0, t2, 0x31));
            _mm256_storeu_si256((void *)(out + 3 * DW_LANES), _mm256_permute2x128_si256(t1, t3, 0x31));
        }
    }
}
#else
#error "sha512_vec.h: no body loader for this vector width"
#endif
