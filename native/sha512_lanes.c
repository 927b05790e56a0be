/* The multi-buffer driver: runs n jobs through a lane kernel, one chain per lane.
 *
 * Each lane holds one job at a time and moves through two phases: the body (its full 128-byte
 * blocks, read in place, also from a body given in pieces, where only a block that spans two
 * pieces is gathered; then 1 or 2 padded tail blocks) and the chain (iterations - 1 steps on 64-byte
 * messages). While any lane is in its body phase the kernel compresses one block per lane per
 * call, chain lanes taking their next step in the same call; once every busy lane is chaining, the
 * kernel runs as many steps as the nearest finishing lane needs without leaving its registers. A
 * lane that finishes is refilled with the next job at once, so no lane idles while jobs remain.
 * Jobs go to the lanes longest first: the short ones refill lanes near the end, so the lanes run
 * out of work close together instead of one long job finishing alone.
 *
 * Once no job is left to refill a lane, the busy lanes move to the narrowest kernel of the ladder
 * that holds them (a step of 8 lanes costs as much with most of them empty), and a lone job to
 * the scalar kernel.
 *
 * On a feed (dw_lanes_feed) the jobs are those pushed so far (those pushed before the run
 * longest first), and the driver looks for more at every step: a job pushed while the batch runs
 * takes the next free lane, also on a narrower kernel, and one that finds every lane of a
 * narrower kernel busy moves them back to the wider one; one pushed while a lone job runs on the
 * scalar kernel brings that job back to the lanes (the scalar kernel runs a slice at a time
 * there, SCALAR_SLICE blocks or steps, to look in between). The lanes chain at most
 * FEED_CHAIN_SLICE steps between looks: one long chain does not keep a pushed job waiting.
 */
#include <stdlib.h>
#include <string.h>

#include "sha512_impl.h"

#define MAX_LANES 16
#define SCALAR_SLICE 32 /* 4 KB of a body, about 6 us here */
#define FEED_CHAIN_SLICE 2048 /* chain steps of every lane at once between looks, about 1-2 ms */

enum { IDLE, BODY, CHAIN };

typedef struct {
    uint64_t work; /* compressions: body blocks, then chain steps */
    size_t job;
} job_rank;

typedef struct {
    int phase;
    size_t job;
    dw_reader body;   /* where its next full block is */
    size_t full_left; /* full blocks not yet compressed */
    int tail_blocks;     /* padded tail blocks (1 or 2) */
    int tail_done;
    uint64_t steps_left; /* chain steps after the body */
    uint8_t tail[256];
    uint8_t seam[128]; /* a block that spans two pieces of a body, gathered */
} lane_t;

typedef struct {
    const dw_lane_kernel *k;
    struct dw_feed *feed; /* NULL: the n jobs given */
    int narrowed;         /* on a feed: run for a wider kernel, back to it when jobs wait for lanes */
    int closed;           /* this run closed the feed */
    size_t n, next_job, busy;
    const job_rank *order; /* the first `ordered` jobs, longest first; NULL: as given */
    size_t ordered;
    const uint8_t *const *data;
    const dw_part *const *parts; /* NULL, or per job: NULL, or its body's pieces */
    const size_t *nparts;
    const size_t *lens;
    const uint64_t *iterations;
    uint8_t *out;
    lane_t lane[MAX_LANES];
    uint64_t st[8 * MAX_LANES]; /* [word][lane] */
    uint64_t w[16 * MAX_LANES];
} run_t;

/* Jobs not yet in a lane; on a feed, after taking those pushed since the last look. */
static size_t waiting(run_t *r)
{
    if (r->feed != NULL)
        r->n = dw_feed_pushed(r->feed);
    return r->n - r->next_job;
}

static void assign(run_t *r, int l)
{
    lane_t *ln = &r->lane[l];
    int L = r->k->lanes;
    if (r->next_job >= r->n && waiting(r) == 0) {
        ln->phase = IDLE;
        return;
    }
    size_t j = r->order != NULL && r->next_job < r->ordered ? r->order[r->next_job].job : r->next_job;
    r->next_job++;
    size_t len = r->lens[j], nparts = 0;
    const dw_part *parts = r->parts != NULL ? r->parts[j] : NULL;
    if (parts != NULL)
        nparts = r->nparts[j];
    ln->phase = BODY;
    ln->job = j;
    dw_reader_init(&ln->body, r->data[j], len, parts, nparts);
    ln->full_left = len / 128;
    const uint8_t *end = dw_body_end(r->data[j], len, parts, nparts, len % 128, ln->seam);
    ln->tail_blocks = dw_tail_blocks(end, len % 128, len, ln->tail);
    ln->tail_done = 0;
    ln->steps_left = r->iterations[j] - 1;
    for (int i = 0; i < 8; i++)
        r->st[i * L + l] = dw_IV[i];
    r->busy++;
}

/* Stores a finished job's digest from state h; on a feed, also publishes it. */
static void store_done(run_t *r, size_t job, const uint64_t h[8])
{
    dw_store_digest(h, r->out + 64 * job);
    if (r->feed != NULL)
        dw_feed_done(r->feed, job);
}

/* Stores a finished lane's digest and refills the lane. */
static void retire(run_t *r, int l)
{
    uint64_t h[8];
    int L = r->k->lanes;
    for (int i = 0; i < 8; i++)
        h[i] = r->st[i * L + l];
    store_done(r, r->lane[l].job, h);
    r->busy--;
    assign(r, l);
}

/* A body lane's next block. */
static const uint8_t *next_block(lane_t *ln)
{
    size_t one;
    return ln->full_left ? dw_reader_blocks(&ln->body, 1, &one, ln->seam) : ln->tail + 128 * ln->tail_done;
}

/* One block per lane: body lanes compress their next block, chain lanes take one step. */
static void mixed_step(run_t *r)
{
    static const uint8_t zeros[128];
    const uint8_t *blocks[MAX_LANES];
    int L = r->k->lanes;
    for (int l = 0; l < L; l++) /* the kernel loads the body lanes' blocks; chain lanes are set after */
        blocks[l] = r->lane[l].phase == BODY ? next_block(&r->lane[l]) : zeros;
    r->k->load(r->w, blocks);
    for (int l = 0; l < L; l++) {
        lane_t *ln = &r->lane[l];
        if (ln->phase == CHAIN) {
            for (int i = 0; i < 8; i++) {
                r->w[i * L + l] = r->st[i * L + l];
                r->st[i * L + l] = dw_IV[i];
            }
            r->w[8 * L + l] = DW_PAD8;
            for (int i = 9; i < 15; i++)
                r->w[i * L + l] = 0;
            r->w[15 * L + l] = DW_LEN64;
        }
    }
    r->k->block(r->st, r->w);
    for (int l = 0; l < L; l++) {
        lane_t *ln = &r->lane[l];
        if (ln->phase == BODY) {
            if (ln->full_left) {
                ln->full_left--;
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

static void drive(run_t *r, const dw_lane_kernel *const *ladder);

/* Moves the busy lanes of r to run r2, packed into r2's first lanes (r2's kernel may be narrower or wider). */
static void move_lanes(run_t *r, run_t *r2)
{
    int L = r->k->lanes, L2 = r2->k->lanes, j = 0;
    for (int l = 0; l < L; l++) {
        if (r->lane[l].phase == IDLE)
            continue;
        r2->lane[j] = r->lane[l];
        for (int i = 0; i < 8; i++)
            r2->st[i * L2 + j] = r->st[i * L + l];
        r->lane[l].phase = IDLE;
        j++;
    }
    for (; j < L2; j++)
        r2->lane[j].phase = IDLE;
    r2->busy += r->busy;
    r->busy = 0;
}

/* Moves the busy lanes (no jobs left) to the narrower kernel *ladder and runs them there, in
 * whichever phase each is: a 16-lane kernel with four jobs left computes twelve empty lanes at
 * every step, and a lone 256 KB body would take 2048 such steps. On a feed the narrower run takes
 * the jobs pushed from now on, and hands its lanes back when more wait than it has lanes. */
static void run_narrower(run_t *r, const dw_lane_kernel *const *ladder)
{
    run_t n2;
    memset(&n2, 0, sizeof n2);
    n2.k = *ladder;
    n2.out = r->out; /* n2.n == 0: a retired lane is not refilled */
    if (r->feed != NULL) { /* but on a feed, by the jobs pushed from now on */
        n2.feed = r->feed;
        n2.narrowed = 1;
        n2.data = r->data;
        n2.parts = r->parts;
        n2.nparts = r->nparts;
        n2.lens = r->lens;
        n2.iterations = r->iterations;
        n2.n = n2.next_job = r->next_job;
    }
    move_lanes(r, &n2);
    drive(&n2, ladder + 1);
    if (r->feed == NULL)
        return; /* all done */
    if (n2.closed) {
        r->closed = 1;
        return;
    }
    r->n = n2.n; /* pushed jobs wait for the wider kernel's lanes */
    r->next_job = n2.next_job;
    move_lanes(&n2, r);
}

/* The narrowest kernel of the ladder with room for `busy` lanes, NULL when there is none. */
static const dw_lane_kernel *const *narrowest_fit(const dw_lane_kernel *const *ladder, size_t busy)
{
    const dw_lane_kernel *const *fit = NULL;
    for (; *ladder != NULL; ladder++)
        if ((size_t)(*ladder)->lanes >= busy)
            fit = ladder;
    return fit;
}

/* Runs a lane's job on the scalar kernel from state h: the rest of its body, if any, then its
 * remaining chain steps. On a feed it runs a slice at a time and stops as soon as jobs were
 * pushed, its progress kept in the lane: 0 then, 1 when the job is done. */
static int scalar_lane(run_t *r, lane_t *ln, uint64_t h[8])
{
    size_t slice = r->feed != NULL ? SCALAR_SLICE : SIZE_MAX;
    while (ln->phase == BODY) {
        if (ln->full_left) {
            size_t k;
            const uint8_t *at = dw_reader_blocks(&ln->body, ln->full_left < slice ? ln->full_left : slice, &k, ln->seam);
            dw_scalar_blocks(h, at, k);
            ln->full_left -= k;
        } else {
            dw_scalar_blocks(h, ln->tail + 128 * ln->tail_done, (size_t)(ln->tail_blocks - ln->tail_done));
            ln->tail_done = ln->tail_blocks;
            ln->phase = CHAIN;
        }
        if (r->feed != NULL && (ln->phase == BODY || ln->steps_left) && waiting(r))
            return 0;
    }
    while (ln->steps_left) {
        uint64_t k = ln->steps_left < slice ? ln->steps_left : slice;
        dw_scalar_steps(h, k);
        ln->steps_left -= k;
        if (r->feed != NULL && ln->steps_left && waiting(r))
            return 0;
    }
    return 1;
}

/* Finishes every busy lane (no jobs left) with the scalar kernel; on a feed, only until jobs
 * are pushed (then the lanes take over again). */
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
        if (!scalar_lane(r, ln, h)) {
            for (int i = 0; i < 8; i++)
                r->st[i * L + l] = h[i];
            return;
        }
        store_done(r, ln->job, h);
        ln->phase = IDLE;
        r->busy--;
    }
}

/* On a feed: gives the jobs pushed since the last look to the free lanes. */
static void fill_free_lanes(run_t *r)
{
    for (int l = 0; l < r->k->lanes && r->next_job < r->n; l++)
        if (r->lane[l].phase == IDLE)
            assign(r, l);
}

static void drive(run_t *r, const dw_lane_kernel *const *ladder)
{
    const dw_lane_kernel *k = r->k;
    int L = k->lanes;
    for (;;) {
        if (r->feed != NULL && waiting(r)) {
            if (r->narrowed && r->busy == (size_t)L)
                return; /* jobs wait and every lane is busy: the wider kernel takes them */
            fill_free_lanes(r);
        }
        if (r->busy == 0) {
            if (r->feed == NULL || (r->closed = dw_feed_close(r->feed, r->next_job)))
                return;
            continue; /* jobs were pushed meanwhile */
        }
        if (r->next_job >= r->n) { /* no job left to refill a lane: fewer lanes cost less */
            const dw_lane_kernel *const *fit = narrowest_fit(ladder, r->busy);
            const dw_lane_kernel *least = fit != NULL ? *fit : k;
            if (r->busy <= (size_t)least->scalar_below) {
                finish_scalar(r);
                continue;
            }
            if (fit != NULL) {
                run_narrower(r, fit);
                if (r->closed)
                    return; /* the narrower run finished the feed, and closed it */
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
        if (r->feed != NULL && least > FEED_CHAIN_SLICE)
            least = FEED_CHAIN_SLICE; /* a long chain alone must still let pushed jobs in */
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

/* Hands out the n jobs given in r (longest first), then drives the lanes until all are done. */
static void run(run_t *r, const dw_lane_kernel *const *ladder)
{
    job_rank *order = longest_first(r->n, r->k->lanes, r->lens, r->iterations);
    r->order = order;
    r->ordered = r->n;
    for (int l = 0; l < r->k->lanes; l++)
        assign(r, l);
    drive(r, ladder + 1);
    free(order);
}

void dw_lanes_run(const dw_lane_kernel *const *ladder, size_t n,
                  const uint8_t *const *data, const size_t *lens, const uint64_t *iterations,
                  uint8_t *out)
{
    run_t r;
    memset(&r, 0, sizeof r);
    r.k = ladder[0];
    r.n = n;
    r.data = data;
    r.lens = lens;
    r.iterations = iterations;
    r.out = out;
    run(&r, ladder);
}

void dw_lanes_feed(const dw_lane_kernel *const *ladder, struct dw_feed *feed)
{
    run_t r;
    memset(&r, 0, sizeof r);
    r.k = ladder[0];
    r.feed = feed;
    r.n = dw_feed_pushed(feed); /* those pushed before the run go longest first */
    r.data = feed->data;
    r.parts = feed->parts;
    r.nparts = feed->nparts;
    r.lens = feed->lens;
    r.iterations = feed->iterations;
    r.out = feed->out;
    run(&r, ladder);
}
