/* Counts the OpenMP parallel regions a process opens, for tests/test_regions.py.
 *
 * Preloaded (LD_PRELOAD), this GOMP_parallel stands in for libgomp's, the entry GCC emits
 * for each `#pragma omp parallel` (Cython's prange), and passes each call on to the libgomp
 * that is loaded: a wheel's own copy (auditwheel) sits in its extensions' local scope, where
 * dlsym(RTLD_NEXT) does not look, so it is found among the loaded objects by name. While
 * counting is on, each call is counted by the thread count it asks for. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <stdlib.h>
#include <string.h>

typedef void (*parallel_entry)(void (*)(void *), void *, unsigned, unsigned);

static parallel_entry real_parallel;
static int counting;
static long regions[3]; /* asking for the default thread count (0), for 1, for more */

static int find_libgomp(struct dl_phdr_info *info, size_t size, void *unused)
{
    void *handle;
    (void)size;
    (void)unused;
    if (info->dlpi_name == NULL || strstr(info->dlpi_name, "libgomp") == NULL)
        return 0;
    handle = dlopen(info->dlpi_name, RTLD_LAZY | RTLD_NOLOAD);
    if (handle != NULL)
        real_parallel = (parallel_entry)dlsym(handle, "GOMP_parallel");
    return real_parallel != NULL;
}

void GOMP_parallel(void (*fn)(void *), void *data, unsigned num_threads, unsigned flags)
{
    if (real_parallel == NULL)
        dl_iterate_phdr(find_libgomp, NULL);
    if (real_parallel == NULL)
        abort();
    if (__atomic_load_n(&counting, __ATOMIC_RELAXED))
        __atomic_add_fetch(&regions[num_threads < 2 ? num_threads : 2], 1, __ATOMIC_RELAXED);
    real_parallel(fn, data, num_threads, flags);
}

void fastnaive_test_count_regions(int on)
{
    __atomic_store_n(&counting, on, __ATOMIC_RELAXED);
}

long fastnaive_test_regions(int threads)
{
    return __atomic_load_n(&regions[threads < 2 ? threads : 2], __ATOMIC_RELAXED);
}
