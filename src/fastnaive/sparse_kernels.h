/* Inner loops of fastnaive._sparse: X @ W and X.T @ delta over the nonzeros of X only.
 *
 * Each loop is written once, as a macro over the element type and the vector width, and
 * compiled three times: for AVX-512, for AVX2 with FMA and for the baseline of the target
 * (SSE2 on x86-64). fastnaive_sparse_select_isa() points the fastnaive_sparse_* function
 * pointers at the best version the CPU runs, so wheels built for baseline x86-64 still use
 * AVX-512 where there is one, without -march flags. Elsewhere only the baseline is built.
 *
 * Both loops keep one tile of output row (FASTNAIVE_TILE_VECTORS vectors: 128 floats with
 * AVX-512) in registers while a compressed list of nonzeros streams past, so each nonzero
 * costs one vector load and one FMA per vector of the tile, and nothing is stored until the
 * list ends. The caller gives each call a block of columns [j0, j1) whose slab of W (or of
 * delta) stays in L2; blocks are disjoint, so calls on different blocks may run at once.
 */
#ifndef FASTNAIVE_SPARSE_KERNELS_H
#define FASTNAIVE_SPARSE_KERNELS_H

#include <stddef.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#define FASTNAIVE_X86_DISPATCH 1
#define FASTNAIVE_AVX512 __attribute__((target("avx512f,avx2,fma")))
#define FASTNAIVE_AVX2 __attribute__((target("avx2,fma")))
#else
#define FASTNAIVE_X86_DISPATCH 0
#endif

#define FASTNAIVE_TILE_VECTORS 8
#define FASTNAIVE_EACH_VECTOR(M) M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7)

/* Declarations of the tile's accumulators a0..a7 and the statements applied to each. */
#define FASTNAIVE_DECLARE(q) V a##q;
#define FASTNAIVE_FROM_BIAS(q) a##q = bias[q];
#define FASTNAIVE_ZERO(q) a##q = zero;
#define FASTNAIVE_FMA(q) a##q += v * src[q];
#define FASTNAIVE_ADD(q) a##q += src[q];
#define FASTNAIVE_STORE(q) dst[q] = a##q;
#define FASTNAIVE_OVERWRITE(q) dst[q] = alpha * a##q;
#define FASTNAIVE_UPDATE(q) dst[q] = beta * dst[q] + alpha * a##q;

/* Defines, for element type T and vectors of VBYTES bytes, compiled with attribute TARGET:
 *
 * fastnaive_sparse_forward_SUFFIX: for each row i < n_rows and j in [j0, j1),
 *   Z[i, j] := act(b[j] + sum_{p in [row_start[i], row_start[i+1])} vals[p] * W[cols[p], j]),
 *   act = relu (z < 0 ? 0 : z, NaN staying NaN) if relu else identity.
 *
 * fastnaive_sparse_param_grad_SUFFIX: for each c < n_features and j in [j0, j1),
 *   dW[c, j] := alpha * sum_{p in [col_start[c], col_start[c+1])} vals[p] * delta[rows[p], j]
 *               + beta * dW[c, j],
 *   db[j] := alpha * sum_{i < n_rows} delta[i, j] + beta * db[j],
 *   where beta = 0 overwrites (dW and db may hold NaN) and beta = 1 leaves the rows of dW
 *   with no nonzero untouched.
 *
 * Columns past the last whole tile go through a buffer on the stack, one vector at a time. */
#define FASTNAIVE_SPARSE_DEFINE(T, SUFFIX, TARGET, VBYTES)                                    \
typedef T fastnaive_vec_##SUFFIX __attribute__((vector_size(VBYTES), aligned(sizeof(T)), may_alias)); \
                                                                                              \
static TARGET void fastnaive_sparse_forward_##SUFFIX(                                         \
    ptrdiff_t n_rows, const int *row_start, const int *cols, const T *vals,                   \
    const T *W, ptrdiff_t ldw, const T *b, int relu, T *Z, ptrdiff_t ldz,                     \
    ptrdiff_t j0, ptrdiff_t j1)                                                               \
{                                                                                             \
    typedef fastnaive_vec_##SUFFIX V;                                                         \
    enum { LANES = VBYTES / sizeof(T), TILE = FASTNAIVE_TILE_VECTORS * LANES };               \
    ptrdiff_t i, j, q;                                                                        \
    int p;                                                                                    \
    for (i = 0; i < n_rows; i++) {                                                            \
        const int p0 = row_start[i], p1 = row_start[i + 1];                                   \
        T *z = Z + i * ldz;                                                                   \
        for (j = j0; j + TILE <= j1; j += TILE) {                                             \
            const V *bias = (const V *)(b + j);                                               \
            V *dst = (V *)(z + j);                                                            \
            FASTNAIVE_EACH_VECTOR(FASTNAIVE_DECLARE)                                          \
            FASTNAIVE_EACH_VECTOR(FASTNAIVE_FROM_BIAS)                                        \
            for (p = p0; p < p1; p++) {                                                       \
                const V *src = (const V *)(W + (ptrdiff_t)cols[p] * ldw + j);                 \
                const T v = vals[p];                                                          \
                FASTNAIVE_EACH_VECTOR(FASTNAIVE_FMA)                                          \
            }                                                                                 \
            FASTNAIVE_EACH_VECTOR(FASTNAIVE_STORE)                                            \
        }                                                                                     \
        if (j < j1) {                                                                         \
            T acc[TILE];                                                                      \
            const ptrdiff_t rest = j1 - j;                                                    \
            for (q = 0; q < rest; q++)                                                        \
                acc[q] = b[j + q];                                                            \
            for (p = p0; p < p1; p++) {                                                       \
                const T *w = W + (ptrdiff_t)cols[p] * ldw + j;                                \
                const T v = vals[p];                                                          \
                for (q = 0; q < rest; q++)                                                    \
                    acc[q] += v * w[q];                                                       \
            }                                                                                 \
            for (q = 0; q < rest; q++)                                                        \
                z[j + q] = acc[q];                                                            \
        }                                                                                     \
        if (relu)                                                                             \
            for (j = j0; j < j1; j++)                                                         \
                z[j] = z[j] < 0 ? 0 : z[j];                                                   \
    }                                                                                         \
}                                                                                             \
                                                                                              \
static TARGET void fastnaive_sparse_param_grad_##SUFFIX(                                      \
    ptrdiff_t n_features, const int *col_start, const int *rows, const T *vals,               \
    const T *delta, ptrdiff_t n_rows, ptrdiff_t ldd, T alpha, T beta,                         \
    T *dW, ptrdiff_t ldw, T *db, ptrdiff_t j0, ptrdiff_t j1)                                  \
{                                                                                             \
    typedef fastnaive_vec_##SUFFIX V;                                                         \
    enum { LANES = VBYTES / sizeof(T), TILE = FASTNAIVE_TILE_VECTORS * LANES };               \
    const V zero = {0};                                                                       \
    ptrdiff_t c, i, j, q;                                                                     \
    int p;                                                                                    \
    for (j = j0; j < j1; j += TILE) {                                                         \
        const ptrdiff_t rest = j1 - j < TILE ? j1 - j : TILE;                                 \
        T acc[TILE];                                                                          \
        for (q = 0; q < rest; q++)                                                            \
            acc[q] = 0;                                                                       \
        for (i = 0; i < n_rows; i++)                                                          \
            for (q = 0; q < rest; q++)                                                        \
                acc[q] += delta[i * ldd + j + q];                                             \
        for (q = 0; q < rest; q++)                                                            \
            db[j + q] = beta == 0 ? alpha * acc[q] : beta * db[j + q] + alpha * acc[q];       \
    }                                                                                         \
    for (c = 0; c < n_features; c++) {                                                        \
        const int p0 = col_start[c], p1 = col_start[c + 1];                                   \
        T *w = dW + c * ldw;                                                                  \
        if (p0 == p1) {                                                                       \
            if (beta != 1)                                                                    \
                for (j = j0; j < j1; j++)                                                     \
                    w[j] = beta == 0 ? 0 : beta * w[j];                                       \
            continue;                                                                         \
        }                                                                                     \
        for (j = j0; j + TILE <= j1; j += TILE) {                                             \
            V *dst = (V *)(w + j);                                                            \
            FASTNAIVE_EACH_VECTOR(FASTNAIVE_DECLARE)                                          \
            FASTNAIVE_EACH_VECTOR(FASTNAIVE_ZERO)                                             \
            for (p = p0; p < p1; p++) {                                                       \
                const V *src = (const V *)(delta + (ptrdiff_t)rows[p] * ldd + j);             \
                const T v = vals[p];                                                          \
                FASTNAIVE_EACH_VECTOR(FASTNAIVE_FMA)                                          \
            }                                                                                 \
            if (beta == 0) {                                                                  \
                FASTNAIVE_EACH_VECTOR(FASTNAIVE_OVERWRITE)                                    \
            } else {                                                                          \
                FASTNAIVE_EACH_VECTOR(FASTNAIVE_UPDATE)                                       \
            }                                                                                 \
        }                                                                                     \
        if (j < j1) {                                                                         \
            T acc[TILE];                                                                      \
            const ptrdiff_t rest = j1 - j;                                                    \
            for (q = 0; q < rest; q++)                                                        \
                acc[q] = 0;                                                                   \
            for (p = p0; p < p1; p++) {                                                       \
                const T *d = delta + (ptrdiff_t)rows[p] * ldd + j;                            \
                const T v = vals[p];                                                          \
                for (q = 0; q < rest; q++)                                                    \
                    acc[q] += v * d[q];                                                       \
            }                                                                                 \
            for (q = 0; q < rest; q++)                                                        \
                w[j + q] = beta == 0 ? alpha * acc[q] : beta * w[j + q] + alpha * acc[q];     \
        }                                                                                     \
    }                                                                                         \
}

#if FASTNAIVE_X86_DISPATCH
FASTNAIVE_SPARSE_DEFINE(float, f_avx512, FASTNAIVE_AVX512, 64)
FASTNAIVE_SPARSE_DEFINE(double, d_avx512, FASTNAIVE_AVX512, 64)
FASTNAIVE_SPARSE_DEFINE(float, f_avx2, FASTNAIVE_AVX2, 32)
FASTNAIVE_SPARSE_DEFINE(double, d_avx2, FASTNAIVE_AVX2, 32)
#endif
FASTNAIVE_SPARSE_DEFINE(float, f_baseline, , 16)
FASTNAIVE_SPARSE_DEFINE(double, d_baseline, , 16)

typedef void (*fastnaive_sparse_forward_f_t)(ptrdiff_t, const int *, const int *, const float *,
                                             const float *, ptrdiff_t, const float *, int, float *,
                                             ptrdiff_t, ptrdiff_t, ptrdiff_t);
typedef void (*fastnaive_sparse_forward_d_t)(ptrdiff_t, const int *, const int *, const double *,
                                             const double *, ptrdiff_t, const double *, int,
                                             double *, ptrdiff_t, ptrdiff_t, ptrdiff_t);
typedef void (*fastnaive_sparse_param_grad_f_t)(ptrdiff_t, const int *, const int *,
                                                const float *, const float *, ptrdiff_t,
                                                ptrdiff_t, float, float, float *, ptrdiff_t,
                                                float *, ptrdiff_t, ptrdiff_t);
typedef void (*fastnaive_sparse_param_grad_d_t)(ptrdiff_t, const int *, const int *,
                                                const double *, const double *, ptrdiff_t,
                                                ptrdiff_t, double, double, double *, ptrdiff_t,
                                                double *, ptrdiff_t, ptrdiff_t);

static fastnaive_sparse_forward_f_t fastnaive_sparse_forward_f = fastnaive_sparse_forward_f_baseline;
static fastnaive_sparse_forward_d_t fastnaive_sparse_forward_d = fastnaive_sparse_forward_d_baseline;
static fastnaive_sparse_param_grad_f_t fastnaive_sparse_param_grad_f =
    fastnaive_sparse_param_grad_f_baseline;
static fastnaive_sparse_param_grad_d_t fastnaive_sparse_param_grad_d =
    fastnaive_sparse_param_grad_d_baseline;
/* Points the kernels at the widest instruction set that this CPU runs and that is at most
 * widest (2: AVX-512, 1: AVX2 with FMA, 0: baseline; lower caps test the other versions).
 * Returns the level chosen. */
static int fastnaive_sparse_select_isa(int widest)
{
    int level = 0;
#if FASTNAIVE_X86_DISPATCH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        level = __builtin_cpu_supports("avx512f") ? 2 : 1;
    if (level > widest)
        level = widest;
    if (level == 2) {
        fastnaive_sparse_forward_f = fastnaive_sparse_forward_f_avx512;
        fastnaive_sparse_forward_d = fastnaive_sparse_forward_d_avx512;
        fastnaive_sparse_param_grad_f = fastnaive_sparse_param_grad_f_avx512;
        fastnaive_sparse_param_grad_d = fastnaive_sparse_param_grad_d_avx512;
        return level;
    }
    if (level == 1) {
        fastnaive_sparse_forward_f = fastnaive_sparse_forward_f_avx2;
        fastnaive_sparse_forward_d = fastnaive_sparse_forward_d_avx2;
        fastnaive_sparse_param_grad_f = fastnaive_sparse_param_grad_f_avx2;
        fastnaive_sparse_param_grad_d = fastnaive_sparse_param_grad_d_avx2;
        return level;
    }
#endif
    (void)widest;
    fastnaive_sparse_forward_f = fastnaive_sparse_forward_f_baseline;
    fastnaive_sparse_forward_d = fastnaive_sparse_forward_d_baseline;
    fastnaive_sparse_param_grad_f = fastnaive_sparse_param_grad_f_baseline;
    fastnaive_sparse_param_grad_d = fastnaive_sparse_param_grad_d_baseline;
    return level;
}

/* OpenMP's default team size (what threadpoolctl's "openmp" limit sets), 1 without OpenMP. */
static int fastnaive_sparse_max_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

#endif
