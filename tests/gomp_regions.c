/* Counts the OpenMP parallel regions a process opens, for tests/test_regions.py, and times
 * them, for benchmarks/regions.py.
 *
 * Preloaded (LD_PRELOAD), this GOMP_parallel stands in for libgomp's, the entry GCC emits
 * for each `#pragma omp parallel` (Cython's prange), and passes each call on to the libgomp
 * that is loaded: a wheel's own copy (auditwheel) sits in its extensions' local scope, where
 * dlsym(RTLD_NEXT) does not look, so it is found among the loaded objects by name. While
 * counting is on, each call is counted by the thread count it asks for. While tracing is on,
 * each call's start and end are kept, with the outlined function it runs and, for each of
 * its first TRACE_THREADS threads, when that thread entered and left the function (the rest
 * of the region is the thread waiting: for the region to start, or at its closing barrier),
 * and marks the caller places between them. Regions are not nested (fastnaive opens none
 * inside another), so one call at a time is traced. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef void (*parallel_entry)(void (*)(void *), void *, unsigned, unsigned);

static parallel_entry real_parallel;
static int (*thread_number)(void);
static int counting;
static long regions[3]; /* asking for the default thread count (0), for 1, for more */

#define TRACE_CAPACITY (1L << 18)
#define TRACE_THREADS 4
typedef struct {
    double start, end;
    double entered[TRACE_THREADS], left[TRACE_THREADS]; /* 0: the thread took no part */
    void *function;
} traced_region;
static traced_region *trace;
static long traced;
static int tracing;
static void (*traced_function)(void *);

static int find_libgomp(struct dl_phdr_info *info, size_t size, void *unused)
{
    void *handle;
    (void)size;
    (void)unused;
    if (info->dlpi_name == NULL || strstr(info->dlpi_name, "libgomp") == NULL)
        return 0;
    handle = dlopen(info->dlpi_name, RTLD_LAZY | RTLD_NOLOAD);
    if (handle != NULL) {
        real_parallel = (parallel_entry)dlsym(handle, "GOMP_parallel");
        thread_number = (int (*)(void))dlsym(handle, "omp_get_thread_num");
    }
    return real_parallel != NULL;
}

static double seconds(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

/* The traced region's function, between the two times of the thread that runs it. */
static void timed(void *data)
{
    const int t = thread_number != NULL ? thread_number() : 0;
    const double entered = seconds();
    traced_function(data);
    if (t < TRACE_THREADS) {
        trace[traced].entered[t] = entered;
        trace[traced].left[t] = seconds();
    }
}

void GOMP_parallel(void (*fn)(void *), void *data, unsigned num_threads, unsigned flags)
{
    if (real_parallel == NULL)
        dl_iterate_phdr(find_libgomp, NULL);
    if (real_parallel == NULL)
        abort();
    if (__atomic_load_n(&counting, __ATOMIC_RELAXED))
        __atomic_add_fetch(&regions[num_threads < 2 ? num_threads : 2], 1, __ATOMIC_RELAXED);
    if (!tracing || traced == TRACE_CAPACITY) {
        real_parallel(fn, data, num_threads, flags);
        return;
    }
    memset(&trace[traced], 0, sizeof trace[traced]);
    trace[traced].function = (void *)fn;
    traced_function = fn;
    trace[traced].start = seconds();
    real_parallel(timed, data, num_threads, flags);
    trace[traced].end = seconds();
    traced++;
}

void fastnaive_test_count_regions(int on)
{
    __atomic_store_n(&counting, on, __ATOMIC_RELAXED);
}

long fastnaive_test_regions(int threads)
{
    return __atomic_load_n(&regions[threads < 2 ? threads : 2], __ATOMIC_RELAXED);
}

/* Tracing on (from no region kept: returns 0, or -1 without memory for the trace) or off. */
int fastnaive_trace_regions(int on)
{
    if (on && trace == NULL && (trace = calloc(TRACE_CAPACITY, sizeof *trace)) == NULL)
        return -1;
    if (on)
        traced = 0;
    tracing = on;
    return 0;
}

/* The regions kept (at most TRACE_CAPACITY); region i as 2 + 2 TRACE_THREADS seconds: its
 * start and end, then each thread's entry and exit (0 where it took no part); its function
 * in *function. */
long fastnaive_traced_regions(void)
{
    return traced;
}

int fastnaive_traced_region(long i, double *times, void **function)
{
    int t;
    if (i < 0 || i >= traced)
        return -1;
    times[0] = trace[i].start;
    times[1] = trace[i].end;
    for (t = 0; t < TRACE_THREADS; t++) {
        times[2 + 2 * t] = trace[i].entered[t];
        times[3 + 2 * t] = trace[i].left[t];
    }
    *function = trace[i].function;
    return 0;
}

/* A mark among the regions kept (a record of function NULL, start and end now): where a
 * step begins, say. */
void fastnaive_trace_mark(void)
{
    if (!tracing || traced == TRACE_CAPACITY)
        return;
    memset(&trace[traced], 0, sizeof trace[traced]);
    trace[traced].start = trace[traced].end = seconds();
    traced++;
}

int fastnaive_trace_threads(void)
{
    return TRACE_THREADS;
}

/* The object holding `function` (its path, up to size bytes, and its load address), for
 * naming it from the object's symbol table; -1 where it is unknown. */
int fastnaive_function_origin(void *function, char *path, size_t size, void **base)
{
    Dl_info info;
    if (dladdr(function, &info) == 0 || info.dli_fname == NULL || size == 0)
        return -1;
    strncpy(path, info.dli_fname, size - 1);
    path[size - 1] = '\0';
    *base = info.dli_fbase;
    return 0;
}
