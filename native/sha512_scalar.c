/* Portable scalar SHA-512: the body hash and a chain kernel that stays in 64-bit words. */
#include <string.h>

#include "sha512_impl.h"

const uint64_t dw_K[80] = {
    0x428a2f98d728ae22ULL, 0x7137449123ef65cdULL, 0xb5c0fbcfec4d3b2fULL, 0xe9b5dba58189dbbcULL,
    0x3956c25bf348b538ULL, 0x59f111f1b605d019ULL, 0x923f82a4af194f9bULL, 0xab1c5ed5da6d8118ULL,
    0xd807aa98a3030242ULL, 0x12835b0145706fbeULL, 0x243185be4ee4b28cULL, 0x550c7dc3d5ffb4e2ULL,
    0x72be5d74f27b896fULL, 0x80deb1fe3b1696b1ULL, 0x9bdc06a725c71235ULL, 0xc19bf174cf692694ULL,
    0xe49b69c19ef14ad2ULL, 0xefbe4786384f25e3ULL, 0x0fc19dc68b8cd5b5ULL, 0x240ca1cc77ac9c65ULL,
    0x2de92c6f592b0275ULL, 0x4a7484aa6ea6e483ULL, 0x5cb0a9dcbd41fbd4ULL, 0x76f988da831153b5ULL,
    0x983e5152ee66dfabULL, 0xa831c66d2db43210ULL, 0xb00327c898fb213fULL, 0xbf597fc7beef0ee4ULL,
    0xc6e00bf33da88fc2ULL, 0xd5a79147930aa725ULL, 0x06ca6351e003826fULL, 0x142929670a0e6e70ULL,
    0x27b70a8546d22ffcULL, 0x2e1b21385c26c926ULL, 0x4d2c6dfc5ac42aedULL, 0x53380d139d95b3dfULL,
    0x650a73548baf63deULL, 0x766a0abb3c77b2a8ULL, 0x81c2c92e47edaee6ULL, 0x92722c851482353bULL,
    0xa2bfe8a14cf10364ULL, 0xa81a664bbc423001ULL, 0xc24b8b70d0f89791ULL, 0xc76c51a30654be30ULL,
    0xd192e819d6ef5218ULL, 0xd69906245565a910ULL, 0xf40e35855771202aULL, 0x106aa07032bbd1b8ULL,
    0x19a4c116b8d2d0c8ULL, 0x1e376c085141ab53ULL, 0x2748774cdf8eeb99ULL, 0x34b0bcb5e19b48a8ULL,
    0x391c0cb3c5c95a63ULL, 0x4ed8aa4ae3418acbULL, 0x5b9cca4f7763e373ULL, 0x682e6ff3d6b2b8a3ULL,
    0x748f82ee5defb2fcULL, 0x78a5636f43172f60ULL, 0x84c87814a1f0ab72ULL, 0x8cc702081a6439ecULL,
    0x90befffa23631e28ULL, 0xa4506cebde82bde9ULL, 0xbef9a3f7b2c67915ULL, 0xc67178f2e372532bULL,
    0xca273eceea26619cULL, 0xd186b8c721c0c207ULL, 0xeada7dd6cde0eb1eULL, 0xf57d4f7fee6ed178ULL,
    0x06f067aa72176fbaULL, 0x0a637dc5a2c898a6ULL, 0x113f9804bef90daeULL, 0x1b710b35131c471bULL,
    0x28db77f523047d84ULL, 0x32caab7b40c72493ULL, 0x3c9ebe0a15c9bebcULL, 0x431d67c49c100d4cULL,
    0x4cc5d4becb3e42b6ULL, 0x597f299cfc657e2aULL, 0x5fcb6fab3ad6faecULL, 0x6c44198c4a475817ULL,
};

const uint64_t dw_IV[8] = {
    0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL, 0xa54ff53a5f1d36f1ULL,
    0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL, 0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL,
};

/* One round; the caller rotates the roles of a..h instead of moving values. h takes K + W
 * first, off the critical path through e. Maj(a,b,c) = ((a^b) & (b^c)) ^ b, and this round's
 * a^b is the next round's b^c: ab and bc alternate between two variables. */
#define ROUND(a, b, c, d, e, f, g, h, i, ab, bc)                                        \
    do {                                                                                \
        (h) += dw_K[i] + W_AT(i);                                                       \
        (h) += DW_BSIG1(e) + DW_CH(e, f, g);                                            \
        (d) += (h);                                                                     \
        (ab) = (a) ^ (b);                                                               \
        (h) += DW_BSIG0(a) + (((ab) & (bc)) ^ (b));                                     \
    } while (0)

/* Message word i; from round 16 on it is expanded in place in a 16-word ring. */
#define W_AT(i)                                                                         \
    ((i) < 16 ? w[(i)&15]                                                               \
              : (w[(i)&15] += DW_SSIG1(w[((i)-2) & 15]) + w[((i)-7) & 15] +             \
                              DW_SSIG0(w[((i)-15) & 15])))

#define ROUNDS8(i)                                                                      \
    ROUND(a, b, c, d, e, f, g, h, (i) + 0, x_, y_);                                     \
    ROUND(h, a, b, c, d, e, f, g, (i) + 1, y_, x_);                                     \
    ROUND(g, h, a, b, c, d, e, f, (i) + 2, x_, y_);                                     \
    ROUND(f, g, h, a, b, c, d, e, (i) + 3, y_, x_);                                     \
    ROUND(e, f, g, h, a, b, c, d, (i) + 4, x_, y_);                                     \
    ROUND(d, e, f, g, h, a, b, c, (i) + 5, y_, x_);                                     \
    ROUND(c, d, e, f, g, h, a, b, (i) + 6, x_, y_);                                     \
    ROUND(b, c, d, e, f, g, h, a, (i) + 7, y_, x_)

#define ROUNDS80                                                                        \
    uint64_t x_, y_ = b ^ c;                                                            \
    ROUNDS8(0); ROUNDS8(8); ROUNDS8(16); ROUNDS8(24); ROUNDS8(32);                      \
    ROUNDS8(40); ROUNDS8(48); ROUNDS8(56); ROUNDS8(64); ROUNDS8(72)

int dw_tail_blocks(const uint8_t *tail, size_t rem, size_t len, uint8_t buf[256])
{
    int blocks = dw_tail_count(rem);
    memset(buf, 0, 256);
    if (rem)
        memcpy(buf, tail, rem);
    buf[rem] = 0x80;
    /* 128-bit big-endian bit length: high word len >> 61, low word len << 3. */
    uint8_t *end = buf + 128 * blocks;
    dw_store_be64(end - 16, (uint64_t)len >> 61);
    dw_store_be64(end - 8, (uint64_t)len << 3);
    return blocks;
}

/* The kernels below are compiled twice: portable, and with BMI2 (rorx, a rotate that keeps its
 * source, and andn) for x86 CPUs that have it; callers pick one at run time. */
#define DEFINE_KERNELS(sfx, attr)                                                       \
    /* st += compress of n consecutive 128-byte blocks at data. */                       \
    attr static void blocks_##sfx(uint64_t st[8], const uint8_t *data, size_t n)        \
    {                                                                                   \
        uint64_t s0 = st[0], s1 = st[1], s2 = st[2], s3 = st[3];                        \
        uint64_t s4 = st[4], s5 = st[5], s6 = st[6], s7 = st[7];                        \
        for (size_t j = 0; j < n; j++) {                                                \
            const uint8_t *p = data + 128 * j;                                          \
            uint64_t w[16] = {                                                          \
                dw_load_be64(p), dw_load_be64(p + 8), dw_load_be64(p + 16),             \
                dw_load_be64(p + 24), dw_load_be64(p + 32), dw_load_be64(p + 40),       \
                dw_load_be64(p + 48), dw_load_be64(p + 56), dw_load_be64(p + 64),       \
                dw_load_be64(p + 72), dw_load_be64(p + 80), dw_load_be64(p + 88),       \
                dw_load_be64(p + 96), dw_load_be64(p + 104), dw_load_be64(p + 112),     \
                dw_load_be64(p + 120)};                                                 \
            uint64_t a = s0, b = s1, c = s2, d = s3, e = s4, f = s5, g = s6, h = s7;    \
            ROUNDS80;                                                                   \
            s0 += a; s1 += b; s2 += c; s3 += d; s4 += e; s5 += f; s6 += g; s7 += h;     \
        }                                                                               \
        st[0] = s0; st[1] = s1; st[2] = s2; st[3] = s3;                                 \
        st[4] = s4; st[5] = s5; st[6] = s6; st[7] = s7;                                 \
    }                                                                                   \
                                                                                        \
    attr static void body_##sfx(const uint8_t *data, size_t len, uint64_t st[8])        \
    {                                                                                   \
        uint8_t buf[256];                                                               \
        size_t full = len / 128;                                                        \
        memcpy(st, dw_IV, sizeof dw_IV);                                                \
        blocks_##sfx(st, data, full);                                                   \
        int tail = dw_tail_blocks(data + 128 * full, len % 128, len, buf);              \
        blocks_##sfx(st, buf, (size_t)tail);                                            \
    }                                                                                   \
                                                                                        \
    /* steps times: st = sha512(st as 64 big-endian bytes). The digest words are the    \
     * next message words as they are; words 8..15 are the constant padding. */         \
    attr static void steps_##sfx(uint64_t st[8], uint64_t steps)                        \
    {                                                                                   \
        uint64_t s0 = st[0], s1 = st[1], s2 = st[2], s3 = st[3];                        \
        uint64_t s4 = st[4], s5 = st[5], s6 = st[6], s7 = st[7];                        \
        for (uint64_t n = 0; n < steps; n++) {                                          \
            uint64_t w[16] = {s0, s1, s2, s3, s4, s5, s6, s7,                           \
                              DW_PAD8, 0, 0, 0, 0, 0, 0, DW_LEN64};                     \
            uint64_t a = dw_IV[0], b = dw_IV[1], c = dw_IV[2], d = dw_IV[3];            \
            uint64_t e = dw_IV[4], f = dw_IV[5], g = dw_IV[6], h = dw_IV[7];            \
            ROUNDS80;                                                                   \
            s0 = dw_IV[0] + a; s1 = dw_IV[1] + b; s2 = dw_IV[2] + c; s3 = dw_IV[3] + d; \
            s4 = dw_IV[4] + e; s5 = dw_IV[5] + f; s6 = dw_IV[6] + g; s7 = dw_IV[7] + h; \
        }                                                                               \
        st[0] = s0; st[1] = s1; st[2] = s2; st[3] = s3;                                 \
        st[4] = s4; st[5] = s5; st[6] = s6; st[7] = s7;                                 \
    }

DEFINE_KERNELS(portable, )

#ifdef DW_X86
DEFINE_KERNELS(bmi2, __attribute__((target("bmi,bmi2"))))

static int use_bmi2(void)
{
    static int cached = -1; /* every thread computes the same value */
    int v = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (v < 0) {
        __builtin_cpu_init();
        v = __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("bmi");
        __atomic_store_n(&cached, v, __ATOMIC_RELAXED);
    }
    return v;
}
#endif

void dw_scalar_body(const uint8_t *data, size_t len, uint64_t st[8])
{
#ifdef DW_X86
    if (use_bmi2()) {
        body_bmi2(data, len, st);
        return;
    }
#endif
    body_portable(data, len, st);
}

void dw_scalar_blocks(uint64_t st[8], const uint8_t *data, size_t n)
{
#ifdef DW_X86
    if (use_bmi2()) {
        blocks_bmi2(st, data, n);
        return;
    }
#endif
    blocks_portable(st, data, n);
}

void dw_scalar_steps(uint64_t st[8], uint64_t steps)
{
#ifdef DW_X86
    if (use_bmi2()) {
        steps_bmi2(st, steps);
        return;
    }
#endif
    steps_portable(st, steps);
}

void dw_store_digest(const uint64_t st[8], uint8_t *out)
{
    for (int i = 0; i < 8; i++)
        dw_store_be64(out + 8 * i, st[i]);
}

void dw_chain_parts(const dw_part *parts, size_t nparts, size_t len, uint64_t iterations, uint8_t *out)
{
    uint64_t st[8];
    uint8_t seam[128], tail[256];
    dw_reader rd;
    memcpy(st, dw_IV, sizeof dw_IV);
    dw_reader_init(&rd, NULL, len, parts, nparts);
    for (size_t left = len / 128, n; left; left -= n) {
        const uint8_t *at = dw_reader_blocks(&rd, left, &n, seam);
        dw_scalar_blocks(st, at, n);
    }
    int blocks = dw_tail_blocks(dw_body_end(NULL, len, parts, nparts, len % 128, seam), len % 128, len, tail);
    dw_scalar_blocks(st, tail, (size_t)blocks);
    dw_scalar_steps(st, iterations - 1);
    dw_store_digest(st, out);
}
