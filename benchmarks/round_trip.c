/* The time a cache line takes to go from one CPU to another and back, for the benchmarks
 * (workloads.core_round_trip compiles and loads this file).
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
