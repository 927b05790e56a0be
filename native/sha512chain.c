/* Public entry points and backend dispatch. */
#include "sha512chain.h"
#include "sha512_impl.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Written once at import (under the GIL) and read by every hashing thread; relaxed atomics make
 * a first use from two threads at once well defined (both compute the same value). */
#define LOAD(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)
#define STORE(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELAXED)

static int selected = -1;
static int checked[3]; /* 0: not yet, 1: passed, -1: failed its self-test */

static int cpu_has(int backend)
{
    switch (backend) {
    case DW_BACKEND_SCALAR:
        return 1;
#ifdef DW_X86
    case DW_BACKEND_AVX2:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") ? 1 : 0;
    case DW_BACKEND_AVX512:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512f") ? 1 : 0;
#endif
    default:
        return 0;
    }
}

#ifdef DW_X86
/* Whether a batch is mostly body blocks rather than chain steps. The two-group AVX-512 kernel
 * is a little faster on chain steps, whose message is mostly constant (30 against 29.6 M it/s for
 * 16 and 8 lanes here), but not on body blocks, whose full message schedule for two groups likely
 * does not fit the 32 vector registers: 16 equal 136 KB bodies took 0.77 ms on 16 lanes and 0.72
 * on 8, and on 8 lanes fewer go empty while a batch of unequal bodies drains. */
static int mostly_bodies(size_t n, const size_t *lens, const uint64_t *iterations)
{
    uint64_t blocks = 0, steps = 0;
    for (size_t i = 0; i < n; i++) {
        blocks += dw_job_blocks(lens[i]);
        steps += iterations[i] - 1 < UINT64_MAX - steps ? iterations[i] - 1 : UINT64_MAX - steps;
    }
    return blocks >= steps;
}

/* AVX-512's ladders: one group of 8 lanes leads bodies, 16 lead chains; a batch's last 2 to 8
 * jobs finish on one group of 8, and its last 2 to 4 on 4 lanes of 256 bits where the CPU has
 * AVX-512VL. */
static const dw_lane_kernel *const avx512_ladders[2][2][4] = {
    /* [bodies_on_one_group][vl] */
    {{&dw_avx512_kernel, &dw_avx512x8_kernel, NULL, NULL},
     {&dw_avx512_kernel, &dw_avx512x8_kernel, &dw_avx512x4_kernel, NULL}},
    {{&dw_avx512x8_kernel, NULL, NULL, NULL}, {&dw_avx512x8_kernel, &dw_avx512x4_kernel, NULL, NULL}},
};
static const dw_lane_kernel *const avx2_ladder[] = {&dw_avx2_kernel, NULL};

static int has_avx512vl(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vl") ? 1 : 0;
}

static const dw_lane_kernel *const *avx512_ladder(int bodies_on_one_group)
{
    return avx512_ladders[bodies_on_one_group][has_avx512vl()];
}
#endif

/* The ladder of lane kernels the backend runs these jobs on (a batch's, or those a feed has so
 * far): the lead kernel, then the narrower ones its last jobs move to, NULL-terminated; NULL for
 * the scalar backend. */
static const dw_lane_kernel *const *lead_ladder(int backend, size_t n, const size_t *lens, const uint64_t *iterations)
{
    switch (backend) {
#ifdef DW_X86
    case DW_BACKEND_AVX2:
        return avx2_ladder;
    case DW_BACKEND_AVX512:
        return avx512_ladder(mostly_bodies(n, lens, iterations));
#endif
    default:
        (void)n, (void)lens, (void)iterations;
        return NULL;
    }
}

static void run_backend(int backend, size_t n, const uint8_t *const *data, const size_t *lens,
                        const uint64_t *iterations, uint8_t *out)
{
    const dw_lane_kernel *const *ladder = lead_ladder(backend, n, lens, iterations);
    if (ladder != NULL) {
        dw_lanes_run(ladder, n, data, lens, iterations, out);
        return;
    }
    for (size_t i = 0; i < n; i++) /* one chain cannot fill vector lanes */
        dw_chain(data[i], lens[i], iterations[i], out + DW_DIGEST_SIZE * i);
}

/* A known-answer check against the scalar kernel before a SIMD kernel is ever used: more jobs
 * than lanes, bodies across the padding boundaries, lanes retiring at different steps. */
static int self_test(int backend)
{
    enum { JOBS = 37 };
    static const size_t sizes[] = {0, 1, 63, 64, 111, 112, 127, 128, 129, 239, 240, 300, 1000};
    uint8_t body[1000];
    const uint8_t *data[JOBS];
    size_t lens[JOBS];
    uint64_t iterations[JOBS];
    uint8_t got[DW_DIGEST_SIZE * JOBS], want[DW_DIGEST_SIZE * JOBS];
    for (size_t i = 0; i < sizeof body; i++)
        body[i] = (uint8_t)(i * 31 + 7);
    for (int j = 0; j < JOBS; j++) {
        data[j] = body + j % 7;
        lens[j] = sizes[j % (sizeof sizes / sizeof sizes[0])];
        if (lens[j] + j % 7 > sizeof body)
            lens[j] = sizeof body - j % 7;
        iterations[j] = 1 + (uint64_t)((j * 7) % 23);
        dw_chain(data[j], lens[j], iterations[j], want + DW_DIGEST_SIZE * j);
    }
#ifdef DW_X86
    if (backend == DW_BACKEND_AVX512) { /* both ladders, whichever a batch picks */
        for (int one_group = 0; one_group < 2; one_group++) {
            memset(got, 0, sizeof got);
            dw_lanes_run(avx512_ladder(one_group), JOBS, data, lens, iterations, got);
            if (memcmp(got, want, sizeof got) != 0)
                return -1;
        }
        return 1;
    }
#endif
    run_backend(backend, JOBS, data, lens, iterations, got);
    return memcmp(got, want, sizeof got) == 0 ? 1 : -1;
}

int dw_backend_status(int backend)
{
    if (backend < 0 || backend >= DW_BACKEND_COUNT || !cpu_has(backend))
        return 0;
    if (!LOAD(checked[backend]))
        STORE(checked[backend], backend == DW_BACKEND_SCALAR ? 1 : self_test(backend));
    return LOAD(checked[backend]);
}

int dw_backend_supported(int backend)
{
    return dw_backend_status(backend) == 1;
}

int dw_select_backend(int backend)
{
    int status = dw_backend_status(backend);
    if (status == 1)
        STORE(selected, backend);
    return status == 1 ? 0 : status == 0 ? -1 : -2;
}

int dw_current_backend(void)
{
    if (LOAD(selected) < 0) {
        int best = DW_BACKEND_COUNT - 1;
        while (!dw_backend_supported(best))
            best--;
        STORE(selected, best); /* scalar is always supported */
    }
    return LOAD(selected);
}

const char *dw_backend_name(int backend)
{
    static const char *const names[DW_BACKEND_COUNT] = {"scalar", "avx2", "avx512"};
    return backend >= 0 && backend < DW_BACKEND_COUNT ? names[backend] : NULL;
}

int dw_backend_lanes(int backend)
{
    switch (backend) {
#ifdef DW_X86
    case DW_BACKEND_AVX2:
        return dw_avx2_kernel.lanes;
    case DW_BACKEND_AVX512:
        return dw_avx512_kernel.lanes;
#endif
    default:
        return 1;
    }
}

void dw_chain(const uint8_t *data, size_t len, uint64_t iterations, uint8_t *out)
{
    uint64_t st[8];
    dw_scalar_body(data, len, st);
    dw_scalar_steps(st, iterations - 1);
    dw_store_digest(st, out);
}

void dw_chain_many(size_t n, const uint8_t *const *data, const size_t *lens,
                   const uint64_t *iterations, uint8_t *out)
{
    run_backend(dw_current_backend(), n, data, lens, iterations, out);
}

dw_feed *dw_feed_new(size_t capacity)
{
    size_t each = sizeof(const uint8_t *) + sizeof(const dw_part *) + 3 * sizeof(size_t) + sizeof(uint64_t) +
                  DW_DIGEST_SIZE;
    if (capacity == 0 || capacity > (SIZE_MAX - sizeof(dw_feed)) / each || capacity >= DW_FEED_CLOSED)
        return NULL;
    dw_feed *feed = calloc(1, sizeof *feed + capacity * each);
    if (feed == NULL)
        return NULL;
    feed->capacity = capacity;
    feed->data = (const uint8_t **)(feed + 1);
    feed->parts = (const dw_part **)(feed->data + capacity);
    feed->nparts = (size_t *)(feed->parts + capacity);
    feed->lens = feed->nparts + capacity;
    feed->iterations = (uint64_t *)(feed->lens + capacity);
    feed->finish_order = (size_t *)(feed->iterations + capacity);
    feed->out = (uint8_t *)(feed->finish_order + capacity);
    feed->notify_fd = -1;
    return feed;
}

void dw_feed_free(dw_feed *feed)
{
    free(feed);
}

static long push(dw_feed *feed, const uint8_t *data, const dw_part *parts, size_t nparts, size_t len,
                 uint64_t iterations)
{
    size_t s = __atomic_load_n(&feed->state, __ATOMIC_ACQUIRE);
    if ((s & DW_FEED_CLOSED) || s >= feed->capacity)
        return -1;
    feed->data[s] = data; /* slot s is not yet published: the run does not read it */
    feed->parts[s] = parts;
    feed->nparts[s] = nparts;
    feed->lens[s] = len;
    feed->iterations[s] = iterations;
    /* Fails only if the run closed the feed meanwhile (one thread pushes). */
    if (!__atomic_compare_exchange_n(&feed->state, &s, s + 1, 0, __ATOMIC_RELEASE, __ATOMIC_RELAXED))
        return -1;
    return (long)s;
}

long dw_feed_push(dw_feed *feed, const uint8_t *data, size_t len, uint64_t iterations)
{
    return push(feed, data, NULL, 0, len, iterations);
}

long dw_feed_push_parts(dw_feed *feed, const dw_part *parts, size_t nparts, uint64_t iterations)
{
    static const uint8_t empty[1];
    if (nparts <= 1) /* nothing to gather */
        return push(feed, nparts ? parts[0].data : empty, NULL, 0, nparts ? parts[0].len : 0, iterations);
    size_t len = 0;
    for (size_t i = 0; i < nparts; i++) {
        if (parts[i].len > SIZE_MAX - len)
            return -1;
        len += parts[i].len;
    }
    return push(feed, NULL, parts, nparts, len, iterations);
}

void dw_feed_notify(dw_feed *feed, int fd)
{
    feed->notify_fd = fd;
}

/* Sequentially consistent on both sides, so a job done just after the pushing thread looked is
 * never left without a wake-up: either it saw the new count, or the run sees the flag cleared. */
void dw_feed_done(dw_feed *feed, size_t j)
{
    size_t n = feed->finished; /* only this thread writes it */
    feed->finish_order[n] = j;
    __atomic_store_n(&feed->finished, n + 1, __ATOMIC_SEQ_CST);
    if (feed->notify_fd >= 0 && !__atomic_exchange_n(&feed->notified, 1, __ATOMIC_SEQ_CST)) {
        uint64_t one = 1;
        /* It cannot fail on an open eventfd; if it did, the news would only wait for the run's end. */
        ssize_t written = write(feed->notify_fd, &one, sizeof one);
        (void)written;
    }
}

size_t dw_feed_finished(dw_feed *feed)
{
    __atomic_store_n(&feed->notified, 0, __ATOMIC_SEQ_CST);
    return __atomic_load_n(&feed->finished, __ATOMIC_SEQ_CST);
}

const size_t *dw_feed_finish_order(const dw_feed *feed)
{
    return feed->finish_order;
}

/* The scalar backend on a feed: one job after another, then a look for more. */
static void feed_scalar(dw_feed *feed)
{
    size_t done = 0;
    do {
        for (size_t n = dw_feed_pushed(feed); done < n; done++) {
            uint8_t *out = feed->out + DW_DIGEST_SIZE * done;
            if (feed->parts[done] != NULL)
                dw_chain_parts(feed->parts[done], feed->nparts[done], feed->lens[done], feed->iterations[done], out);
            else
                dw_chain(feed->data[done], feed->lens[done], feed->iterations[done], out);
            dw_feed_done(feed, done);
        }
    } while (!dw_feed_close(feed, done));
}

size_t dw_feed_run(dw_feed *feed)
{
    size_t state = __atomic_load_n(&feed->state, __ATOMIC_ACQUIRE);
    if (state & DW_FEED_CLOSED)
        return state & ~DW_FEED_CLOSED; /* run once */
    /* the jobs pushed so far choose the kernels, as a batch's do */
    const dw_lane_kernel *const *ladder = lead_ladder(dw_current_backend(), state, feed->lens, feed->iterations);
    if (ladder != NULL)
        dw_lanes_feed(ladder, feed);
    else
        feed_scalar(feed);
    return dw_feed_pushed(feed);
}

const uint8_t *dw_feed_digests(const dw_feed *feed)
{
    return feed->out;
}
