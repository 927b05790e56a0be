/* Internal to native/: shared constants, the scalar primitives and the lane kernels' interface. */
#ifndef DYNWORK_SHA512_IMPL_H
#define DYNWORK_SHA512_IMPL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "sha512chain.h"

extern const uint64_t dw_K[80];
extern const uint64_t dw_IV[8];

/* Padding of a 64-byte message in its single block: words 8..15. */
#define DW_PAD8 0x8000000000000000ULL
#define DW_LEN64 512ULL

#define DW_ROTR(x, n) (((x) >> (n)) | ((x) << (64 - (n))))
#define DW_BSIG0(x) (DW_ROTR(x, 28) ^ DW_ROTR(x, 34) ^ DW_ROTR(x, 39))
#define DW_BSIG1(x) (DW_ROTR(x, 14) ^ DW_ROTR(x, 18) ^ DW_ROTR(x, 41))
#define DW_SSIG0(x) (DW_ROTR(x, 1) ^ DW_ROTR(x, 8) ^ ((x) >> 7))
#define DW_SSIG1(x) (DW_ROTR(x, 19) ^ DW_ROTR(x, 61) ^ ((x) >> 6))
#define DW_CH(x, y, z) ((((y) ^ (z)) & (x)) ^ (z))
#define DW_MAJ(x, y, z) (((x) & (y)) | ((z) & ((x) | (y))))

static inline uint64_t dw_load_be64(const uint8_t *p)
{
    return ((uint64_t)p[0] << 56) | ((uint64_t)p[1] << 48) | ((uint64_t)p[2] << 40) |
           ((uint64_t)p[3] << 32) | ((uint64_t)p[4] << 24) | ((uint64_t)p[5] << 16) |
           ((uint64_t)p[6] << 8) | (uint64_t)p[7];
}

static inline void dw_store_be64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (56 - 8 * i));
}

/* Scalar pieces (sha512_scalar.c). */
void dw_scalar_body(const uint8_t *data, size_t len, uint64_t st[8]);
void dw_scalar_blocks(uint64_t st[8], const uint8_t *data, size_t n); /* st += n 128-byte blocks */
void dw_scalar_steps(uint64_t st[8], uint64_t steps);
void dw_store_digest(const uint64_t st[8], uint8_t *out);

/* Padded tail blocks after a body's full ones, whose last rem = len % 128 bytes are left over: 2
 * when they leave no room for the 0x80 byte and the 16-byte length. */
static inline int dw_tail_count(size_t rem)
{
    return rem < 112 ? 1 : 2;
}

/* Compressions for a body of len bytes: its full blocks and its padded tail blocks. */
static inline uint64_t dw_job_blocks(size_t len)
{
    return (uint64_t)(len / 128) + (uint64_t)dw_tail_count(len % 128);
}

/* Builds the final 1 or 2 padded blocks of a body of total length len whose last
 * rem = len % 128 bytes are at tail; returns the number of blocks written to buf. */
int dw_tail_blocks(const uint8_t *tail, size_t rem, size_t len, uint8_t buf[256]);

/* Reads a body's full 128-byte blocks, whole (dw_chain_many's bodies) or in pieces (a feed's
 * dw_part arrays), the pieces' full blocks in place and a block that spans pieces gathered. */
typedef struct {
    const uint8_t *cur; /* the unread rest of the current piece */
    size_t cur_left;
    const dw_part *parts; /* the pieces after it, NULL for a whole body */
    size_t nparts, next;
} dw_reader;

static inline void dw_reader_init(dw_reader *rd, const uint8_t *data, size_t len, const dw_part *parts,
                                  size_t nparts)
{
    rd->cur = parts != NULL ? NULL : data;
    rd->cur_left = parts != NULL ? 0 : len;
    rd->parts = parts;
    rd->nparts = parts != NULL ? nparts : 0;
    rd->next = 0;
}

/* Moves to the next piece; 0 when there is none. */
static inline int dw_reader_next_piece(dw_reader *rd)
{
    if (rd->next == rd->nparts)
        return 0;
    rd->cur = rd->parts[rd->next].data;
    rd->cur_left = rd->parts[rd->next++].len;
    return 1;
}

/* The next n full blocks, 1 <= n <= most, consecutive in memory: in place, or one block gathered
 * into seam when it spans pieces. At least one full block must be left. */
static inline const uint8_t *dw_reader_blocks(dw_reader *rd, size_t most, size_t *n, uint8_t seam[128])
{
    while (rd->cur_left == 0 && dw_reader_next_piece(rd))
        continue; /* past empty pieces */
    if (rd->cur_left >= 128) {
        size_t k = rd->cur_left / 128 < most ? rd->cur_left / 128 : most;
        const uint8_t *at = rd->cur;
        rd->cur += 128 * k;
        rd->cur_left -= 128 * k;
        *n = k;
        return at;
    }
    for (size_t got = 0; got < 128;) {
        if (rd->cur_left == 0) {
            if (!dw_reader_next_piece(rd)) { /* cannot happen: a body's length is its pieces' sum */
                memset(seam + got, 0, 128 - got);
                break;
            }
            continue;
        }
        size_t take = rd->cur_left < 128 - got ? rd->cur_left : 128 - got;
        memcpy(seam + got, rd->cur, take);
        got += take;
        rd->cur += take;
        rd->cur_left -= take;
    }
    *n = 1;
    return seam;
}

/* Where a body's last rem (< 128) bytes are: in place for a whole body, else gathered into buf. */
static inline const uint8_t *dw_body_end(const uint8_t *data, size_t len, const dw_part *parts, size_t nparts,
                                         size_t rem, uint8_t buf[128])
{
    if (parts == NULL)
        return data + len - rem;
    for (size_t i = nparts, need = rem; i-- > 0 && need;) {
        size_t take = parts[i].len < need ? parts[i].len : need;
        if (take)
            memcpy(buf + need - take, parts[i].data + parts[i].len - take, take);
        need -= take;
    }
    return buf;
}

/* dw_chain of a body in pieces (a feed's, on the scalar backend). */
void dw_chain_parts(const dw_part *parts, size_t nparts, size_t len, uint64_t iterations, uint8_t *out);

/* A lane kernel works on L chains at once; words are laid out [word][lane].
 * block: st += compress(st, w) for every lane (w: 16 message words per lane).
 * chain: steps times, st = sha512 of the 64-byte message st, on every lane.
 * scalar_below: once no jobs are left and at most this many lanes are busy, the driver finishes
 * them with the scalar kernel (bodies and chains), which is faster than a mostly empty vector.
 * load: w = the message words of one 128-byte block per lane, big-endian, at blocks[lane]. */
typedef struct {
    int lanes;
    int scalar_below;
    void (*block)(uint64_t *st, const uint64_t *w);
    void (*chain)(uint64_t *st, uint64_t steps);
    void (*load)(uint64_t *w, const uint8_t *const *blocks);
} dw_lane_kernel;

/* The multi-buffer driver (sha512_lanes.c): runs the jobs on a ladder of kernels, the lead
 * kernel first, then narrower ones, NULL-terminated, and keeps every lane busy while jobs remain.
 * Once none remain, the busy lanes move to the narrowest kernel that holds them, where each step
 * costs less, whether still in their bodies or chaining. */
void dw_lanes_run(const dw_lane_kernel *const *ladder, size_t n,
                  const uint8_t *const *data, const size_t *lens, const uint64_t *iterations,
                  uint8_t *out);

/* A feed's shared part (sha512chain.h). `state` counts the jobs pushed, with DW_FEED_CLOSED set
 * once the run has closed it; a job's slot is written before the count that publishes it. */
struct dw_feed {
    size_t capacity;
    size_t state;
    const uint8_t **data; /* a whole body, or NULL for one in pieces: */
    const dw_part **parts; /* its pieces, and how many */
    size_t *nparts;
    size_t *lens; /* the body's length (the pieces' sum) */
    uint64_t *iterations;
    uint8_t *out;
    size_t *finish_order; /* indexes of the jobs done, the first `finished` of them published */
    size_t finished;
    int notify_fd;        /* -1: nobody to wake */
    int notified;         /* fd written since the pushing thread last looked */
};
#define DW_FEED_CLOSED ((size_t)1 << (sizeof(size_t) * 8 - 1))

/* The jobs pushed so far (acquire: their slots are written). */
static inline size_t dw_feed_pushed(const struct dw_feed *feed)
{
    return __atomic_load_n(&feed->state, __ATOMIC_ACQUIRE) & ~DW_FEED_CLOSED;
}

/* Closes the feed if exactly `taken` jobs were pushed; 0 when more came meanwhile. */
static inline int dw_feed_close(struct dw_feed *feed, size_t taken)
{
    return __atomic_compare_exchange_n(&feed->state, &taken, taken | DW_FEED_CLOSED, 0, __ATOMIC_ACQ_REL,
                                       __ATOMIC_ACQUIRE);
}

/* Publishes job j of the feed, whose digest is stored (the run's thread only). */
void dw_feed_done(struct dw_feed *feed, size_t j);

/* The driver on a feed: like dw_lanes_run, on the jobs pushed before and while it runs. */
void dw_lanes_feed(const dw_lane_kernel *const *ladder, struct dw_feed *feed);

/* DW_NO_SIMD builds the portable code only, as on non-x86 machines. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(DW_NO_SIMD)
#define DW_X86 1
extern const dw_lane_kernel dw_avx2_kernel;
extern const dw_lane_kernel dw_avx512_kernel;
extern const dw_lane_kernel dw_avx512x8_kernel; /* one group of 8: bodies, and a batch's last chains */
extern const dw_lane_kernel dw_avx512x4_kernel; /* 4 lanes on 256-bit vectors (AVX-512VL): a batch's last 2 to 4 */
#endif

#endif
