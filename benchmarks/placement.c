/* Where two CPUs sit, for the benchmarks (workloads.placement_library compiles and loads
 * this file): the time a cache line takes to go from one to the other and back, and two
 * threads' sweeps over one matrix split by rows or by columns (benchmarks/placement.py).
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
