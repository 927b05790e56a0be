/* Iterated SHA-512: out = sha512(body), then iterations-1 times out = sha512(out).
 * The only header of native/: exactly the functions the cffi module exports. */
#ifndef DYNWORK_SHA512CHAIN_H
#define DYNWORK_SHA512CHAIN_H

#include <stddef.h>
#include <stdint.h>

/* Bytes of a SHA-512 digest: the size of every result. */
#define DW_DIGEST_SIZE 64

/* Backend ids, slowest first; ids run from 0 to DW_BACKEND_COUNT - 1. */
#define DW_BACKEND_SCALAR 0
#define DW_BACKEND_AVX2 1
#define DW_BACKEND_AVX512 2
#define DW_BACKEND_COUNT 3

/* The backend's name ("scalar", "avx2", "avx512"), or NULL for an unknown id. */
const char *dw_backend_name(int backend);

/* Chain one body; writes the 64-byte digest to out. iterations >= 1. */
void dw_chain(const uint8_t *data, size_t len, uint64_t iterations, uint8_t *out);

/* Chain n independent jobs with the selected backend; out receives n * 64 bytes.
 * Every iterations[i] >= 1. Single-threaded. */
void dw_chain_many(size_t n, const uint8_t *const *data, const size_t *lens,
                   const uint64_t *iterations, uint8_t *out);

/* A feed: a batch that takes more jobs while it is hashed. One thread pushes jobs, up to the
 * feed's capacity; another runs the feed (once), which hashes every job pushed before or while it
 * runs, each as soon as a lane is free, and closes the feed when it finds none left. */
typedef struct dw_feed dw_feed;

/* A feed for up to capacity jobs (>= 1); NULL when out of memory. */
dw_feed *dw_feed_new(size_t capacity);
void dw_feed_free(dw_feed *feed);

/* Adds a job (iterations >= 1; data must stay valid until the run returns): its index, or -1 when
 * the feed is full or closed. Only one thread may push to a feed. */
long dw_feed_push(dw_feed *feed, const uint8_t *data, size_t len, uint64_t iterations);

/* One piece of a body that arrived in pieces. */
typedef struct {
    const uint8_t *data;
    size_t len;
} dw_part;

/* dw_feed_push for a body in nparts pieces, hashed as their concatenation without joining them
 * (a block that spans two pieces is gathered); the array and the pieces must stay valid until
 * the run returns. -1 also when their total length overflows. */
long dw_feed_push_parts(dw_feed *feed, const dw_part *parts, size_t nparts, uint64_t iterations);

/* Hashes the feed's jobs with the selected backend until none is left, then closes it; returns
 * how many it hashed. Their digests: dw_feed_digests, 64 bytes each, in push order. */
size_t dw_feed_run(dw_feed *feed);
const uint8_t *dw_feed_digests(const dw_feed *feed);

/* Each job's digest is published as soon as the job is done, while the run goes on: the pushing
 * thread may call dw_feed_finished at any time for how many are done so far; the first that many
 * entries of dw_feed_finish_order are their indexes, in the order they were done, and their
 * digests are in place. With dw_feed_notify(feed, fd) before the run, the run writes an 8-byte 1
 * to fd (an eventfd) when a job is done and none was since the last dw_feed_finished call; the fd
 * must stay open until the run returns. */
void dw_feed_notify(dw_feed *feed, int fd);
size_t dw_feed_finished(dw_feed *feed);
const size_t *dw_feed_finish_order(const dw_feed *feed);

/* 1 when the CPU (and OS) can run the backend and its kernel passed a known-answer self-test
 * against the scalar kernel (run once, on first use), 0 when the CPU lacks it, -1 when it failed
 * the self-test. dw_backend_supported: status == 1. */
int dw_backend_status(int backend);
int dw_backend_supported(int backend);

/* Selects the backend used by dw_chain_many; 0 on success, -1 when the CPU lacks it, -2 when
 * it failed its self-test. Not thread-safe: call before hashing starts. */
int dw_select_backend(int backend);

/* The selected backend and how many chains it runs side by side. */
int dw_current_backend(void);
int dw_backend_lanes(int backend);

#endif
