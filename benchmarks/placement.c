/* Where two CPUs sit, for the benchmarks (workloads.placement_library compiles and loads
 * this file): the time a cache line takes to go from one to the other and back, what two
 * threads gain on memory of their own (whether the host runs the two on separate cores),
 * and two threads' sweeps over one matrix split by rows or by columns
 * (benchmarks/placement.py).
 *
 * On a virtual machine the host may place two virtual CPUs on cores of one chiplet (a round
 * trip of about 75 ns on Zen 5) or of two (300-660 ns), and move them while a benchmark runs: a
 * step that hands data from one thread to the other pays that price for every cache line,
 * so the figure tells which placement a timed round ran on.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct partner {
    atomic_long *flag;
    long trips;
    int cpu;
    int pinned;
};

static int pin(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return pthread_setaffinity_np(pthread_self(), sizeof set, &set) == 0;
}

static void *answer(void *argument)
{
    struct partner *p = argument;
    long i;
    p->pinned = pin(p->cpu);
    for (i = 0; i < p->trips; i++) {
        while (atomic_load_explicit(p->flag, memory_order_acquire) != 2 * i + 1)
            ;
        atomic_store_explicit(p->flag, 2 * i + 2, memory_order_release);
    }
    return NULL;
}

/* Trips before the clock starts: the partner thread's start and move to its CPU. */
#define WARM_UP_TRIPS 10000

/* Mean nanoseconds per round trip between cpu_a (the calling thread, pinned there for the
 * measurement and given its affinity back after) and cpu_b; -1 if a CPU cannot be used. */
double fastnaive_bench_round_trip(int cpu_a, int cpu_b, long trips)
{
    static _Alignas(64) atomic_long flag;
    struct partner p = {&flag, WARM_UP_TRIPS + trips, cpu_b, 0};
    cpu_set_t saved;
    pthread_t thread;
    struct timespec start, end;
    long i;
    if (trips <= 0 || pthread_getaffinity_np(pthread_self(), sizeof saved, &saved) != 0)
        return -1;
    if (!pin(cpu_a))
        return -1;
    atomic_store(&flag, 0);
    if (pthread_create(&thread, NULL, answer, &p) != 0) {
        pthread_setaffinity_np(pthread_self(), sizeof saved, &saved);
        return -1;
    }
    for (i = 0; i < WARM_UP_TRIPS + trips; i++) {
        if (i == WARM_UP_TRIPS)
            clock_gettime(CLOCK_MONOTONIC, &start);
        atomic_store_explicit(&flag, 2 * i + 1, memory_order_release);
        while (atomic_load_explicit(&flag, memory_order_acquire) != 2 * i + 2)
            ;
    }
    clock_gettime(CLOCK_MONOTONIC, &end);
    pthread_join(thread, NULL);
    pthread_setaffinity_np(pthread_self(), sizeof saved, &saved);
    if (!p.pinned)
        return -1;
    return ((end.tv_sec - start.tv_sec) * 1e9 + (end.tv_nsec - start.tv_nsec)) / trips;
}

/* ---- Two threads on memory of their own: sweeps summing a private buffer, on cpu_a alone,
 * then on cpu_a and cpu_b at once. Two virtual CPUs on separate cores run the pair nearly
 * twice as fast as one; on the two hardware threads of one core, or beside a neighbour that
 * takes the core's caches, well under that, whatever their round trip. */

static volatile float pair_sink;

/* Seconds for `sweeps` sums of b (n floats, a multiple of 64). */
static double timed_sums(const float *b, long n, long sweeps)
{
    struct timespec start, end;
    float total = 0;
    long s, i;
    int l;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (s = 0; s < sweeps; s++) {
        float lanes[64] = {0};
        for (i = 0; i < n; i += 64)
            for (l = 0; l < 64; l++)
                lanes[l] += b[i + l];
        for (l = 0; l < 64; l++)
            total += lanes[l];
    }
    clock_gettime(CLOCK_MONOTONIC, &end);
    pair_sink = total;
    return (end.tv_sec - start.tv_sec) + (end.tv_nsec - start.tv_nsec) / 1e9;
}

/* Rounds of the pair: alone, then together, PAIR_ROUNDS times, the fastest of each kept. */
#define PAIR_ROUNDS 3

struct pair {
    long floats, sweeps;
    atomic_int ready, go;  /* the partner's buffer made (1, or -1: none); the round it runs */
    int cpu, pinned;
    double seconds[PAIR_ROUNDS];
};

static float *own_buffer(long floats)
{
    float *b = aligned_alloc(64, (size_t)floats * sizeof(float));
    long i;
    if (b != NULL)
        for (i = 0; i < floats; i++)
            b[i] = (float)(i % 13) * 0.0625f;
    return b;
}

static void *pair_partner(void *argument)
{
    struct pair *p = argument;
    float *b;
    int r;
    p->pinned = pin(p->cpu);
    b = own_buffer(p->floats);
    if (b != NULL)
        timed_sums(b, p->floats, 1);
    atomic_store(&p->ready, b != NULL ? 1 : -1);
    for (r = 0; b != NULL && r < PAIR_ROUNDS; r++) {
        while (atomic_load(&p->go) != r + 1)
            ;
        p->seconds[r] = timed_sums(b, p->floats, p->sweeps);
        atomic_store(&p->ready, r + 2);
    }
    free(b);
    return NULL;
}

/* How many times one CPU's throughput two threads reach, each summing `bytes` of its own
 * `sweeps` times, the calling thread on cpu_a, a partner on cpu_b: the fastest of
 * PAIR_ROUNDS sweeps alone against the fastest of as many together (2: separate cores); -1
 * if a CPU cannot be used or a buffer not allocated. */
double fastnaive_bench_pair_scaling(int cpu_a, int cpu_b, long bytes, long sweeps)
{
    struct pair p;
    const long floats = bytes / (64 * (long)sizeof(float)) * 64;
    cpu_set_t saved;
    pthread_t thread;
    double alone = -1, together = -1;
    float *b;
    int r, ok;
    if (floats < 64 || sweeps <= 0
        || pthread_getaffinity_np(pthread_self(), sizeof saved, &saved) != 0)
        return -1;
    if (!pin(cpu_a) || (b = own_buffer(floats)) == NULL) {
        pthread_setaffinity_np(pthread_self(), sizeof saved, &saved);
        return -1;
    }
    timed_sums(b, floats, 1);
    memset(&p, 0, sizeof p);
    p.floats = floats, p.sweeps = sweeps, p.cpu = cpu_b;
    atomic_store(&p.ready, 0);
    atomic_store(&p.go, 0);
    if (pthread_create(&thread, NULL, pair_partner, &p) != 0) {
        pthread_setaffinity_np(pthread_self(), sizeof saved, &saved);
        free(b);
        return -1;
    }
    while (!atomic_load(&p.ready))
        ;
    ok = atomic_load(&p.ready) == 1;
    for (r = 0; ok && r < PAIR_ROUNDS; r++) {
        double mine, both;
        const double one = timed_sums(b, floats, sweeps);
        alone = alone < 0 || one < alone ? one : alone;
        atomic_store(&p.go, r + 1);
        mine = timed_sums(b, floats, sweeps);
        while (atomic_load(&p.ready) != r + 2)
            ;
        both = mine > p.seconds[r] ? mine : p.seconds[r];
        together = together < 0 || both < together ? both : together;
    }
    pthread_join(thread, NULL);
    pthread_setaffinity_np(pthread_self(), sizeof saved, &saved);
    free(b);
    if (!ok || !p.pinned || alone <= 0 || together <= 0)
        return -1;
    return 2 * alone / together;
}

/* ---- Two threads over one rows x cols float matrix, row-major: per iteration a read pass
 * (an OR of every element's bits) then a read-modify-write pass, a barrier after each; each
 * pass split between the threads by rows ('R': half the rows each), by columns ('C': half of
 * every row each) or, for reading, not at all ('A': all of it, both). */

struct sweeps {
    float *w;
    long rows, cols, iterations;
    char read, write;
    atomic_long arrived[2];
    int cpu;
    int pinned;
};

static void sweep_part(const struct sweeps *s, char split, int t, long *r0, long *r1, long *c0,
                       long *c1)
{
    *r0 = 0, *r1 = s->rows, *c0 = 0, *c1 = s->cols;
    if (split == 'R')
        *r0 = t * s->rows / 2, *r1 = (t + 1) * s->rows / 2;
    else if (split == 'C')
        *c0 = t * s->cols / 2, *c1 = (t + 1) * s->cols / 2;
}

static volatile unsigned sweep_sink;

static void sweep_thread(struct sweeps *s, int t)
{
    long i, r, c, r0, r1, c0, c1;
    for (i = 0; i < s->iterations; i++) {
        unsigned bits = 0;
        sweep_part(s, s->read, t, &r0, &r1, &c0, &c1);
        for (r = r0; r < r1; r++) {
            const unsigned *row = (const unsigned *)(s->w + r * s->cols);
            for (c = c0; c < c1; c++)
                bits |= row[c];
        }
        sweep_sink = bits;
        atomic_store(&s->arrived[t], 2 * i + 1);
        while (atomic_load(&s->arrived[1 - t]) < 2 * i + 1)
            ;
        sweep_part(s, s->write, t, &r0, &r1, &c0, &c1);
        for (r = r0; r < r1; r++) {
            float *row = s->w + r * s->cols;
            for (c = c0; c < c1; c++)
                row[c] = row[c] * 0.999f + 1e-6f;
        }
        atomic_store(&s->arrived[t], 2 * i + 2);
        while (atomic_load(&s->arrived[1 - t]) < 2 * i + 2)
            ;
    }
}

static void *sweep_partner(void *argument)
{
    struct sweeps *s = argument;
    s->pinned = pin(s->cpu);
    sweep_thread(s, 1);
    return NULL;
}

/* Mean microseconds per iteration of the sweeps (read split `read`, write split `write`)
 * over a fresh rows x cols matrix, the calling thread on cpu_a, a partner on cpu_b; -1 if
 * a CPU cannot be used or the matrix not allocated. */
double fastnaive_bench_sweeps(int cpu_a, int cpu_b, long rows, long cols, char read, char write,
                              long iterations)
{
    struct sweeps s = {NULL, rows, cols, iterations, read, write, {0, 0}, cpu_b, 0};
    cpu_set_t saved;
    pthread_t thread;
    struct timespec start, end;
    long i;
    if (iterations <= 0 || rows < 2 || cols < 2
        || pthread_getaffinity_np(pthread_self(), sizeof saved, &saved) != 0)
        return -1;
    s.w = aligned_alloc(64, (size_t)((rows * cols * sizeof(float) + 63) / 64 * 64));
    if (s.w == NULL)
        return -1;
    for (i = 0; i < rows * cols; i++)
        s.w[i] = 1.0f;
    if (!pin(cpu_a)) {
        free(s.w);
        return -1;
    }
    clock_gettime(CLOCK_MONOTONIC, &start);
    if (pthread_create(&thread, NULL, sweep_partner, &s) != 0) {
        pthread_setaffinity_np(pthread_self(), sizeof saved, &saved);
        free(s.w);
        return -1;
    }
    sweep_thread(&s, 0);
    clock_gettime(CLOCK_MONOTONIC, &end);
    pthread_join(thread, NULL);
    pthread_setaffinity_np(pthread_self(), sizeof saved, &saved);
    free(s.w);
    if (!s.pinned)
        return -1;
    return ((end.tv_sec - start.tv_sec) * 1e6 + (end.tv_nsec - start.tv_nsec) / 1e3) / iterations;
}

/* ---- The GEMM input gradient's blocks: dX (m x n) := delta (m x k) @ W.T (W: n x k), all
 * row-major, cut into two blocks of columns, one per thread, through a BLAS sgemm given by
 * its address (Fortran's interface, as SciPy's cython_blas exports it), a barrier after
 * each iteration as after a parallel loop. mode 'B': the BLAS zeroes each block (beta = 0,
 * as fastnaive._kernels.dense_input_grad does); 'Z': each thread zeroes its block, then
 * beta = 1;
 * 'S': as 'B', the second block written to an array of its own (no line of dX shared). */

typedef void (*sgemm_function)(const char *, const char *, const int *, const int *,
                               const int *, const float *, const float *, const int *,
                               const float *, const int *, const float *, float *, const int *);

struct blocks {
    sgemm_function sgemm;
    float *delta, *w, *dx, *other;
    int m, n, k, threads;
    char mode;
    long iterations;
    atomic_long arrived[2];
    int cpu;
    int pinned;
};

static void block_product(const struct blocks *b, int block)
{
    const int width = b->n / 2 + (block ? b->n % 2 : 0), first = block * (b->n / 2);
    const float one = 1.0f, zero = 0.0f;
    float *out = b->mode == 'S' && block ? b->other : b->dx;
    long r;
    if (b->mode == 'Z')
        for (r = 0; r < b->m; r++)
            memset(out + r * b->n + first, 0, (size_t)width * sizeof(float));
    b->sgemm("T", "N", &width, &b->m, &b->k, &one, b->w + (long)first * b->k, &b->k, b->delta,
             &b->k, b->mode == 'Z' ? &one : &zero, out + first, &b->n);
}

static void blocks_thread(struct blocks *b, int t)
{
    long i;
    for (i = 0; i < b->iterations; i++) {
        if (b->threads == 1) {
            block_product(b, 0);
            block_product(b, 1);
            continue;
        }
        block_product(b, t);
        atomic_store(&b->arrived[t], i + 1);
        while (atomic_load(&b->arrived[1 - t]) < i + 1)
            ;
    }
}

static void *blocks_partner(void *argument)
{
    struct blocks *b = argument;
    b->pinned = pin(b->cpu);
    blocks_thread(b, 1);
    return NULL;
}

/* Mean microseconds per iteration of the product in mode `mode` on `threads` (1: both blocks
 * on cpu_a; 2: the second on cpu_b), sgemm the address of a single-threaded BLAS sgemm; -1 if
 * a CPU cannot be used or the arrays not allocated. */
double fastnaive_bench_gemm_blocks(int cpu_a, int cpu_b, void *sgemm, int m, int n, int k,
                                   char mode, int threads, long iterations)
{
    struct blocks b = {(sgemm_function)sgemm, NULL, NULL, NULL, NULL, m, n, k, threads, mode,
                       iterations, {0, 0}, cpu_b, 1};
    cpu_set_t saved;
    pthread_t thread;
    struct timespec start, end;
    long i;
    if (iterations <= 0 || m < 1 || n < 2 || k < 1 || threads < 1 || threads > 2
        || pthread_getaffinity_np(pthread_self(), sizeof saved, &saved) != 0)
        return -1;
    b.delta = aligned_alloc(64, ((size_t)m * k * sizeof(float) + 63) / 64 * 64);
    b.w = aligned_alloc(64, ((size_t)n * k * sizeof(float) + 63) / 64 * 64);
    b.dx = aligned_alloc(64, ((size_t)m * n * sizeof(float) + 63) / 64 * 64);
    b.other = aligned_alloc(64, ((size_t)m * n * sizeof(float) + 63) / 64 * 64);
    if (b.delta == NULL || b.w == NULL || b.dx == NULL || b.other == NULL || !pin(cpu_a)) {
        free(b.delta), free(b.w), free(b.dx), free(b.other);
        return -1;
    }
    for (i = 0; i < (long)m * k; i++)
        b.delta[i] = (float)(i % 7) * 0.125f - 0.375f;
    for (i = 0; i < (long)n * k; i++)
        b.w[i] = (float)(i % 5) * 0.25f - 0.5f;
    clock_gettime(CLOCK_MONOTONIC, &start);
    if (threads == 2 && pthread_create(&thread, NULL, blocks_partner, &b) != 0) {
        pthread_setaffinity_np(pthread_self(), sizeof saved, &saved);
        free(b.delta), free(b.w), free(b.dx), free(b.other);
        return -1;
    }
    blocks_thread(&b, 0);
    clock_gettime(CLOCK_MONOTONIC, &end);
    if (threads == 2)
        pthread_join(thread, NULL);
    pthread_setaffinity_np(pthread_self(), sizeof saved, &saved);
    free(b.delta), free(b.w), free(b.dx), free(b.other);
    if (!b.pinned)
        return -1;
    return ((end.tv_sec - start.tv_sec) * 1e6 + (end.tv_nsec - start.tv_nsec) / 1e3) / iterations;
}
