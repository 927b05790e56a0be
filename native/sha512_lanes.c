/* The multi-buffer driver: runs n jobs through a lane kernel, one chain per lane.
 *
 * Each lane holds one job at a time and moves through two phases: the body (its full 128-byte
 * blocks, then 1 or 2 padded tail blocks) and the chain (iterations - 1 steps on 64-byte
 * messages). While any lane is in its body phase the kernel compresses one block per lane per
 * call, chain lanes taking their next step in the same call; once every busy lane is chaining, the
 * kernel runs as many steps as the nearest finishing lane needs without leaving its registers. A
 * lane that finishes is refilled with the next job at once, so no lane idles while jobs remain.
 * Jobs go to the lanes longest first: the short ones refill lanes near the end, so the lanes run
 * out of work close together instead of one long job finishing alone.
 */
#include <stdlib.h>
#include <string.h>

#include "sha512_impl.h"

#define MAX_LANES 16

enum { IDLE, BODY, CHAIN };

typedef struct {
    uint64_t work; /* compressions: body blocks, then chain steps */
    size_t job;
} job_rank;

typedef struct {
    int phase;
    size_t job;
    const uint8_t *next; /* next full block of the body */
    size_t full_left;    /* full blocks not yet compressed */
    int tail_blocks;     /* padded tail blocks (1 or 2) */
    int tail_done;
    uint64_t steps_left; /* chain steps after the body */
    uint8_t tail[256];
} lane_t;

typedef struct {
    const dw_lane_kernel *k;
    size_t n, next_job, busy;
    const job_rank *order; /* the jobs, longest first; NULL: as given */
    const uint8_t *const *data;
    const size_t *lens;
    const uint64_t *iterations;
    uint8_t *out;
    lane_t lane[MAX_LANES];
    uint64_t st[8 * MAX_LANES]; /* [word][lane] */
    uint64_t w[16 * MAX_LANES];
} run_t;

static void assign(run_t *r, int l)
{
    lane_t *ln = &r->lane[l];
    int L = r->k->lanes;
    if (r->next_job >= r->n) {
        ln->phase = IDLE;
        return;
    }
    size_t j = r->order != NULL ? r->order[r->next_job].job : r->next_job;
    r->next_job++;
    size_t len = r->lens[j];
    ln->phase = BODY;
    ln->job = j;
    ln->next = r->data[j];
    ln->full_left = len / 128;
    ln->tail_blocks = dw_tail_blocks(r->data[j] + 128 * ln->full_left, len % 128, len, ln->tail);
    ln->tail_done = 0;
    ln->steps_left = r->iterations[j] - 1;
    for (int i = 0; i < 8; i++)
        r->st[i * L + l] = dw_IV[i];
    r->busy++;
}

/* Stores a finished lane's digest and refills the lane. */
static void retire(run_t *r, int l)
{
    uint64_t h[8];
    int L = r->k->lanes;
    for (int i = 0; i < 8; i++)
        h[i] = r->st[i * L + l];
    dw_store_digest(h, r->out + 64 * r->lane[l].job);
    r->busy--;
    assign(r, l);
}

/* One block per lane: body lanes compress their next block, chain lanes take one step. */
static void mixed_step(run_t *r)
{
    int L = r->k->lanes;
    for (int l = 0; l < L; l++) {
        lane_t *ln = &r->lane[l];
        if (ln->phase == BODY) {
            const uint8_t *block = ln->full_left ? ln->next : ln->tail + 128 * ln->tail_done;
            for (int i = 0; i < 16; i++)
                r->w[i * L + l] = dw_load_be64(block + 8 * i);
        } else if (ln->phase == CHAIN) {
            for (int i = 0; i < 8; i++) {
                r->w[i * L + l] = r->st[i * L + l];
                r->st[i * L + l] = dw_IV[i];
            }
            r->w[8 * L + l] = DW_PAD8;
            for (int i = 9; i < 15; i++)
                r->w[i * L + l] = 0;
            r->w[15 * L + l] = DW_LEN64;
        } else {
            for (int i = 0; i < 16; i++)
                r->w[i * L + l] = 0;
        }
    }
    r->k->block(r->st, r->w);
    for (int l = 0; l < L; l++) {
        lane_t *ln = &r->lane[l];
        if (ln->phase == BODY) {
            if (ln->full_left) {
                ln->full_left--;
                ln->next += 128;
            } else if (++ln->tail_done == ln->tail_blocks) {
                ln->phase = CHAIN;
            }
        } else if (ln->phase == CHAIN) {
            ln->steps_left--;
        }
        if (ln->phase == CHAIN && ln->steps_left == 0)
            retire(r, l);
    }
}

static void drive(run_t *r, const dw_lane_kernel *narrower);

/* Moves the busy lanes (no jobs left) to the narrower kernel k2 and finishes them there, in
 * whichever phase each is: a 16-lane kernel with four jobs left computes twelve empty lanes at
 * every step, and a lone 256 KB body would take 2048 such steps. */
static void finish_narrower(run_t *r, const dw_lane_kernel *k2)
{
    run_t n2;
    int L = r->k->lanes, L2 = k2->lanes, j = 0;
    memset(&n2, 0, sizeof n2);
    n2.k = k2;
    n2.out = r->out; /* n2.n == 0: a retired lane is not refilled */
    for (int l = 0; l < L; l++) {
        if (r->lane[l].phase == IDLE)
            continue;
        n2.lane[j] = r->lane[l];
        for (int i = 0; i < 8; i++)
            n2.st[i * L2 + j] = r->st[i * L + l];
        r->lane[l].phase = IDLE;
        j++;
    }
    n2.busy = (size_t)j;
    r->busy = 0;
    drive(&n2, NULL);
}

/* Finishes every busy lane (no jobs left) with the scalar kernel: the rest of its body, if any,
 * then its remaining chain steps. */
static void finish_scalar(run_t *r)
{
    int L = r->k->lanes;
    for (int l = 0; l < L; l++) {
        lane_t *ln = &r->lane[l];
        if (ln->phase == IDLE)
            continue;
        uint64_t h[8];
        for (int i = 0; i < 8; i++)
            h[i] = r->st[i * L + l];
        if (ln->phase == BODY) {
            dw_scalar_blocks(h, ln->next, ln->full_left);
            dw_scalar_blocks(h, ln->tail + 128 * ln->tail_done, (size_t)(ln->tail_blocks - ln->tail_done));
        }
        dw_scalar_steps(h, ln->steps_left);
        dw_store_digest(h, r->out + 64 * ln->job);
        ln->phase = IDLE;
        r->busy--;
    }
}

static void drive(run_t *r, const dw_lane_kernel *narrower)
{
    const dw_lane_kernel *k = r->k;
    int L = k->lanes;
    while (r->busy) {
        if (r->next_job >= r->n) { /* no job left to refill a lane: fewer lanes cost less */
            if (narrower != NULL && r->busy <= (size_t)narrower->lanes && r->busy > (size_t)narrower->scalar_below) {
                finish_narrower(r, narrower);
                continue;
            }
            if (r->busy <= (size_t)k->scalar_below) {
                finish_scalar(r);
                continue;
            }
        }
        int any_body = 0;
        uint64_t least = UINT64_MAX;
        for (int l = 0; l < L; l++) {
            if (r->lane[l].phase == BODY)
                any_body = 1;
            else if (r->lane[l].phase == CHAIN && r->lane[l].steps_left < least)
                least = r->lane[l].steps_left;
        }
        if (any_body) {
            mixed_step(r);
            continue;
        }
        k->chain(r->st, least);
        for (int l = 0; l < L; l++) {
            if (r->lane[l].phase != CHAIN)
                continue;
            r->lane[l].steps_left -= least;
            if (r->lane[l].steps_left == 0)
                retire(r, l);
        }
    }
}

static int more_work_first(const void *a, const void *b)
{
    const job_rank *x = a, *y = b;
    if (x->work != y->work)
        return x->work > y->work ? -1 : 1;
    return x->job < y->job ? -1 : x->job > y->job; /* equal work keeps the given order */
}

/* The jobs, most compressions first, in a malloc'd array; NULL when there is nothing to gain (no
 * more jobs than lanes: all start at once) or no memory (then they go as given). */
static job_rank *longest_first(size_t n, int lanes, const size_t *lens, const uint64_t *iterations)
{
    if (n <= (size_t)lanes || n > SIZE_MAX / sizeof(job_rank))
        return NULL;
    job_rank *order = malloc(n * sizeof *order);
    if (order == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        uint64_t blocks = dw_job_blocks(lens[i]), steps = iterations[i] - 1;
        order[i].work = steps > UINT64_MAX - blocks ? UINT64_MAX : blocks + steps;
        order[i].job = i;
    }
    qsort(order, n, sizeof *order, more_work_first);
    return order;
}

void dw_lanes_run(const dw_lane_kernel *k, const dw_lane_kernel *narrower, size_t n,
                  const uint8_t *const *data, const size_t *lens, const uint64_t *iterations,
                  uint8_t *out)
{
    run_t r;
    memset(&r, 0, sizeof r);
    r.k = k;
    r.n = n;
    job_rank *order = longest_first(n, k->lanes, lens, iterations);
    r.order = order;
    r.data = data;
    r.lens = lens;
    r.iterations = iterations;
    r.out = out;
    for (int l = 0; l < k->lanes; l++)
        assign(&r, l);
    drive(&r, narrower != NULL && narrower->lanes < k->lanes ? narrower : NULL);
    free(order);
}
