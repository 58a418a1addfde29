/* Products of a layer with few outputs (m <= FASTNAIVE_NARROW_MAX: a classifier's head), for
 * fastnaive._sparse's narrow_* wrappers: its forward product X @ W, its input gradient
 * delta @ W.T and its weight gradient X.T @ delta, where W is (k, m) and delta (n, m).
 *
 * A BLAS packs both operands on every call and its kernels are tiled for wide matrices: with
 * m = 10 the three products of the book's second layer (n = 128, k = 512) take 11-16 us each
 * in SciPy's OpenBLAS on Zen 5 (its AVX-512 kernels; 16-28 with its AVX2 ones), and it gains
 * little when cut in two for two threads (the packing is paid per block). Here the long dimension k runs along the vectors and the m
 * columns are loop-unrolled: X @ W as dot products of X's rows with W's columns (W taken a
 * tile at a time, transposed on the stack), delta @ W.T and X.T @ delta as sums over m or n
 * of broadcast multiply-adds into register tiles. The accumulators of a tile stay in
 * registers. Nothing is packed, so the products cut into blocks of rows (X @ W, delta @ W.T)
 * or of k (X.T @ delta) for OpenMP threads cost no more than whole ones.
 *
 * Each output element is computed by one code path, in an order fixed by the shapes alone,
 * so the results are the same bits whatever the blocks and threads. Each function is written
 * once, as a macro over the element type and the vector width, and compiled for AVX-512, for
 * AVX2 with FMA and for the baseline (sparse_kernels.h's fastnaive_sparse_select_isa chooses
 * one for both headers).
 */
#ifndef FASTNAIVE_NARROW_KERNELS_H
#define FASTNAIVE_NARROW_KERNELS_H

#include <stddef.h>

/* The widest layer the narrow products serve. */
#define FASTNAIVE_NARROW_MAX 16
/* Bytes of a column of W transposed at a time by the forward product (on the stack: 16 of
 * them), and so of a row of X per dot product: each dot product is summed across its vector's
 * lanes once per tile. */
#define FASTNAIVE_NARROW_TILE_BYTES 2048

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#define FASTNAIVE_NARROW_DISPATCH 1
#define FASTNAIVE_NARROW_AVX512 __attribute__((target("avx512f,avx2,fma")))
#define FASTNAIVE_NARROW_AVX2 __attribute__((target("avx2,fma")))
#else
#define FASTNAIVE_NARROW_DISPATCH 0
#endif
#define FASTNAIVE_NARROW_INLINE static inline __attribute__((always_inline))

#if FASTNAIVE_NARROW_DISPATCH
#include <immintrin.h>
#endif

/* FASTNAIVE_PART_<vector bytes>(T, V, src, count): the vector of type V (of T) whose first
 * count lanes (0 < count < its lanes) are src[0, count) and the rest 0, reading nothing past
 * them: AVX-512's and AVX2's masked loads (which do not fault on the lanes left out), and on
 * the baseline the elements one at a time. */
#define FASTNAIVE_PART_64(T, V, src, count)                                                       \
    (sizeof(T) == 4                                                                               \
         ? (V)_mm512_maskz_loadu_ps((__mmask16)((1u << (count)) - 1), (const float *)(src))      \
         : (V)_mm512_maskz_loadu_pd((__mmask8)((1u << (count)) - 1), (const double *)(src)))
#define FASTNAIVE_PART_32(T, V, src, count)                                                       \
    (sizeof(T) == 4                                                                               \
         ? (V)_mm256_maskload_ps((const float *)(src),                                           \
                                 _mm256_cmpgt_epi32(_mm256_set1_epi32(count),                     \
                                                    _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)))   \
         : (V)_mm256_maskload_pd((const double *)(src),                                          \
                                 _mm256_cmpgt_epi64(_mm256_set1_epi64x(count),                    \
                                                    _mm256_setr_epi64x(0, 1, 2, 3))))
#define FASTNAIVE_PART_16(T, V, src, count) \
    ((V)fastnaive_part_scalar_##T((const T *)(src), (count)))

/* The baseline's FASTNAIVE_PART_16 for float and double. */
#define FASTNAIVE_PART_SCALAR_DEFINE(T)                                                           \
typedef T fastnaive_vec16_##T __attribute__((vector_size(16), aligned(sizeof(T)), may_alias));    \
FASTNAIVE_NARROW_INLINE fastnaive_vec16_##T fastnaive_part_scalar_##T(const T *src, int count)   \
{                                                                                                 \
    fastnaive_vec16_##T x = {0};                                                                  \
    int i;                                                                                        \
    for (i = 0; i < count; i++)                                                                   \
        x[i] = src[i];                                                                            \
    return x;                                                                                     \
}
FASTNAIVE_PART_SCALAR_DEFINE(float)
FASTNAIVE_PART_SCALAR_DEFINE(double)

/* Defines, for element type T, vectors of VBYTES bytes, compiled with attribute TARGET:
 * - fastnaive_narrow_forward_SUFFIX: Z[i, j] := sum_c X[i, c] W[c, j] + b[j] for the rows i in
 *   [i0, i1), as dot products, ROWS rows and up to JBMAX columns of W at a time;
 * - fastnaive_narrow_input_SUFFIX: dX[i, c] := sum_j delta[i, j] W[c, j] for the columns c in
 *   [c0, c1) and every row, NV vectors of columns and IROWS rows at a time; with relu_of
 *   (the previous layer's ReLU outputs, rows ldo apart, or NULL), 0 where relu_of[i, c] is
 *   not > 0, as its derivative takes it (fastnaive._activations.activation_backward),
 *   applied as the tile is stored;
 * - fastnaive_narrow_param_SUFFIX: dW[c, j] := alpha sum_i X[i, c] delta[i, j] + beta dW[c, j]
 *   (beta = 0 overwrites: dW may hold NaN) for the rows c in [c0, c1) of dW, PNV vectors of c
 *   and up to PJB columns j at a time.
 * Row-major arrays; X is (n, k) with rows ldx apart, W (k, m), delta (n, m), Z (n, m), dX
 * (n, k) with rows ldo apart, dW (k, m). In the two gradients, the columns of dX and rows of
 * dW past the last whole tile take tiles of one vector, then the last few (fewer than a
 * vector) one vector: dW's rows with X's loads masked to them (before, one pass with every
 * sum's chain interleaved; before that, one element at a time: a 100-input head's weight
 * gradient, 36 rows past its tile of 64 floats on AVX-512, took 44-47 us on Zen 4), dX's
 * columns with W's transposed tile zeros past them, not stored; in the forward product, k
 * past the last whole vector takes one vector whose loads of X are masked to it. Which path
 * an element takes depends on the shapes alone. */
#define FASTNAIVE_NARROW_DEFINE(T, SUFFIX, TARGET, VBYTES, NV, ROWS, JBMAX, IROWS, PNV, PJB) \
typedef T fastnaive_nvec_##SUFFIX                                                                 \
    __attribute__((vector_size(VBYTES), aligned(sizeof(T)), may_alias));                         \
                                                                                                  \
/* The sum of v's lanes, by halves (a chain of adds lane by lane waits on each add). */     \
FASTNAIVE_NARROW_INLINE TARGET T fastnaive_narrow_sum_##SUFFIX(fastnaive_nvec_##SUFFIX v)        \
{                                                                                                 \
    typedef T H32 __attribute__((vector_size(32), aligned(sizeof(T)), may_alias));                \
    typedef T H16 __attribute__((vector_size(16), aligned(sizeof(T)), may_alias));                \
    T lanes[VBYTES / sizeof(T)] __attribute__((aligned(64)));                                     \
    H16 q;                                                                                        \
    *(fastnaive_nvec_##SUFFIX *)lanes = v;                                                        \
    if (VBYTES == 64)                                                                             \
        *(H32 *)lanes = ((const H32 *)lanes)[0] + ((const H32 *)lanes)[1];                        \
    if (VBYTES >= 32)                                                                             \
        q = ((const H16 *)lanes)[0] + ((const H16 *)lanes)[1];                                    \
    else                                                                                          \
        q = ((const H16 *)lanes)[0];                                                              \
    return sizeof(T) == 4 ? (q[0] + q[2 % (16 / sizeof(T))]) + (q[1] + q[3 % (16 / sizeof(T))])   \
                          : q[0] + q[1];                                                          \
}                                                                                                 \
                                                                                                  \
/* acc[r][jj] += X[i + r, c..] * wt[jb + jj][t..], one vector of each (part > 0: X's first part   \
 * elements, the rest 0). */                                                                      \
FASTNAIVE_NARROW_INLINE TARGET void fastnaive_narrow_step_##SUFFIX(                               \
    int R, int JB, const T *X, ptrdiff_t ldx, ptrdiff_t i, ptrdiff_t c, int part,                 \
    T wt[FASTNAIVE_NARROW_MAX][FASTNAIVE_NARROW_TILE_BYTES / sizeof(T)], ptrdiff_t jb,            \
    ptrdiff_t t, fastnaive_nvec_##SUFFIX acc[ROWS][JBMAX])                                        \
{                                                                                                 \
    typedef fastnaive_nvec_##SUFFIX V;                                                            \
    V a[ROWS];                                                                                    \
    int r, jj;                                                                                    \
    for (r = 0; r < R; r++)                                                                       \
        a[r] = part ? FASTNAIVE_PART_##VBYTES(T, V, X + (i + r) * ldx + c, part)                  \
                    : *(const V *)(X + (i + r) * ldx + c);                                        \
    for (jj = 0; jj < JB; jj++) {                                                                 \
        const V w = *(const V *)(wt[jb + jj] + t);                                                \
        for (r = 0; r < R; r++)                                                                   \
            acc[r][jj] += a[r] * w;                                                               \
    }                                                                                             \
}                                                                                                 \
/* Rows [i, i + R) of Z, columns [jb, jb + JB), from the transposed tile wt (columns c0.. of X,  \
 * `width` of them, `vectors` whole vectors); first: the tile is the first (Z is overwritten). */ \
FASTNAIVE_NARROW_INLINE TARGET void fastnaive_narrow_dots_##SUFFIX(                               \
    int R, int JB, const T *X, ptrdiff_t ldx, ptrdiff_t i, ptrdiff_t c0, ptrdiff_t width,         \
    ptrdiff_t vectors, T wt[FASTNAIVE_NARROW_MAX][FASTNAIVE_NARROW_TILE_BYTES / sizeof(T)], ptrdiff_t jb,          \
    T *Z, ptrdiff_t m, int first)                                                                 \
{                                                                                                 \
    typedef fastnaive_nvec_##SUFFIX V;                                                            \
    enum { L = VBYTES / sizeof(T) };                                                              \
    V acc[ROWS][JBMAX];                                                                           \
    ptrdiff_t v;                                                                                  \
    int r, jj;                                                                                    \
    for (r = 0; r < R; r++)                                                                       \
        for (jj = 0; jj < JB; jj++)                                                               \
            acc[r][jj] = (V){0};                                                                  \
    /* The tile's whole vectors, then its last columns (fewer than a vector) as one: X's loads    \
     * masked to them, wt's lanes past them zeros. */                                             \
    for (v = 0; v < vectors; v++)                                                                 \
        fastnaive_narrow_step_##SUFFIX(R, JB, X, ldx, i, c0 + v * L, 0, wt, jb, v * L, acc);      \
    if (vectors * L < width)                                                                      \
        fastnaive_narrow_step_##SUFFIX(R, JB, X, ldx, i, c0 + vectors * L,                        \
                                       (int)(width - vectors * L), wt, jb, vectors * L, acc);     \
    for (r = 0; r < R; r++)                                                                       \
        for (jj = 0; jj < JB; jj++) {                                                             \
            const T s = fastnaive_narrow_sum_##SUFFIX(acc[r][jj]);                                \
            if (first)                                                                            \
                Z[(i + r) * m + jb + jj] = s;                                                     \
            else                                                                                  \
                Z[(i + r) * m + jb + jj] += s;                                                    \
        }                                                                                         \
}                                                                                                 \
                                                                                                  \
/* Every column block of rows [i, i + R), JBMAX columns at a time, then 4, 2, 1 (constants,     \
 * so that each block's accumulators are unrolled into registers). */                            \
FASTNAIVE_NARROW_INLINE TARGET void fastnaive_narrow_row_##SUFFIX(                                \
    int R, const T *X, ptrdiff_t ldx, ptrdiff_t i, ptrdiff_t c0, ptrdiff_t width,                 \
    ptrdiff_t vectors, T wt[FASTNAIVE_NARROW_MAX][FASTNAIVE_NARROW_TILE_BYTES / sizeof(T)], T *Z, ptrdiff_t m,     \
    int first)                                                                                    \
{                                                                                                 \
    ptrdiff_t jb = 0;                                                                             \
    for (; jb + JBMAX <= m; jb += JBMAX)                                                          \
        fastnaive_narrow_dots_##SUFFIX(R, JBMAX, X, ldx, i, c0, width, vectors, wt, jb, Z, m,     \
                                       first);                                                    \
    if (JBMAX > 4 && jb + 4 <= m) {                                                               \
        fastnaive_narrow_dots_##SUFFIX(R, 4, X, ldx, i, c0, width, vectors, wt, jb, Z, m, first); \
        jb += 4;                                                                                  \
    }                                                                                             \
    if (jb + 2 <= m) {                                                                            \
        fastnaive_narrow_dots_##SUFFIX(R, 2, X, ldx, i, c0, width, vectors, wt, jb, Z, m, first); \
        jb += 2;                                                                                  \
    }                                                                                             \
    if (jb < m)                                                                                   \
        fastnaive_narrow_dots_##SUFFIX(R, 1, X, ldx, i, c0, width, vectors, wt, jb, Z, m, first); \
}                                                                                                 \
                                                                                                  \
static TARGET void fastnaive_narrow_forward_##SUFFIX(                                             \
    const T *X, ptrdiff_t ldx, ptrdiff_t k, const T *W, ptrdiff_t m, const T *b, T *Z,            \
    ptrdiff_t i0, ptrdiff_t i1)                                                                   \
{                                                                                                 \
    enum { L = VBYTES / sizeof(T) };                                                              \
    T wt[FASTNAIVE_NARROW_MAX][FASTNAIVE_NARROW_TILE_BYTES / sizeof(T)] __attribute__((aligned(64)));               \
    ptrdiff_t c0, i, j, t;                                                                        \
    if (k == 0)                                                                                   \
        for (i = i0; i < i1; i++)                                                                 \
            for (j = 0; j < m; j++)                                                               \
                Z[i * m + j] = 0;                                                                 \
    enum { TILE = FASTNAIVE_NARROW_TILE_BYTES / sizeof(T) };                                      \
    for (c0 = 0; c0 < k; c0 += TILE) {                                                            \
        const ptrdiff_t width = k - c0 < TILE ? k - c0 : TILE;                                    \
        const ptrdiff_t vectors = width / L;                                                      \
        for (t = 0; t < width; t++)                                                               \
            for (j = 0; j < m; j++)                                                               \
                wt[j][t] = W[(c0 + t) * m + j];                                                   \
        for (j = 0; j < m; j++)                                                                   \
            for (t = width; t < (width + L - 1) / L * L; t++)                                     \
                wt[j][t] = 0;                                                                     \
        for (i = i0; i + ROWS <= i1; i += ROWS)                                                   \
            fastnaive_narrow_row_##SUFFIX(ROWS, X, ldx, i, c0, width, vectors, wt, Z, m, c0 == 0); \
        for (; i < i1; i++)                                                                       \
            fastnaive_narrow_row_##SUFFIX(1, X, ldx, i, c0, width, vectors, wt, Z, m, c0 == 0);   \
    }                                                                                             \
    for (i = i0; i < i1; i++)                                                                     \
        for (j = 0; j < m; j++)                                                                   \
            Z[i * m + j] += b[j];                                                                 \
}                                                                                                 \
                                                                                                  \
/* Rows [i, i + R) of dX, columns [c, c + NVEC vectors) (NVEC <= NV), W's columns there the       \
 * tile's vectors from q0 in wt; part > 0: NVEC is 1, and only its first part columns are         \
 * read (relu_of) and written. */                                                                 \
FASTNAIVE_NARROW_INLINE TARGET void fastnaive_narrow_input_tile_##SUFFIX(                         \
    int NVEC, int part, int R, const T *delta, ptrdiff_t m,                                       \
    T wt[FASTNAIVE_NARROW_MAX][NV * VBYTES / sizeof(T)], int q0, T *dX, ptrdiff_t ldo,            \
    ptrdiff_t i, ptrdiff_t c, const T *relu_of)                                                   \
{                                                                                                 \
    typedef fastnaive_nvec_##SUFFIX V;                                                            \
    typedef __typeof__((V){0} > (V){0}) M; /* the lanes' masks, integers of T's width */         \
    V acc[IROWS][NV];                                                                             \
    ptrdiff_t j;                                                                                  \
    int r, q, t;                                                                                  \
    for (r = 0; r < R; r++)                                                                       \
        for (q = 0; q < NVEC; q++)                                                                \
            acc[r][q] = (V){0};                                                                   \
    for (j = 0; j < m; j++) {                                                                     \
        V w[NV];                                                                                  \
        for (q = 0; q < NVEC; q++)                                                                \
            w[q] = ((const V *)wt[j])[q0 + q];                                                    \
        for (r = 0; r < R; r++) {                                                                 \
            const T d = delta[(i + r) * m + j];                                                   \
            for (q = 0; q < NVEC; q++)                                                            \
                acc[r][q] += d * w[q];                                                            \
        }                                                                                         \
    }                                                                                             \
    if (part) {                                                                                   \
        for (r = 0; r < R; r++)                                                                   \
            for (t = 0; t < part; t++)                                                            \
                dX[(i + r) * ldo + c + t] =                                                       \
                    relu_of && !(relu_of[(i + r) * ldo + c + t] > 0) ? 0 : acc[r][0][t];          \
        return;                                                                                   \
    }                                                                                             \
    if (relu_of)                                                                                  \
        for (r = 0; r < R; r++)                                                                   \
            for (q = 0; q < NVEC; q++) {                                                          \
                const M on = ((const V *)(relu_of + (i + r) * ldo + c))[q] > (V){0};              \
                acc[r][q] = (V)((M)acc[r][q] & on);                                               \
            }                                                                                     \
    for (r = 0; r < R; r++)                                                                       \
        for (q = 0; q < NVEC; q++)                                                                \
            ((V *)(dX + (i + r) * ldo + c))[q] = acc[r][q];                                       \
}                                                                                                 \
                                                                                                  \
/* Every row of dX, IROWS at a time then one, over columns [c, c + NVEC vectors) (the tile's      \
 * vectors from q0 in wt; part: as the tile's). */                                                \
FASTNAIVE_NARROW_INLINE TARGET void fastnaive_narrow_input_rows_##SUFFIX(                         \
    int NVEC, int part, const T *delta, ptrdiff_t n, ptrdiff_t m,                                 \
    T wt[FASTNAIVE_NARROW_MAX][NV * VBYTES / sizeof(T)], int q0, T *dX, ptrdiff_t ldo,            \
    ptrdiff_t c, const T *relu_of)                                                                \
{                                                                                                 \
    ptrdiff_t i;                                                                                  \
    for (i = 0; i + IROWS <= n; i += IROWS)                                                       \
        fastnaive_narrow_input_tile_##SUFFIX(NVEC, part, IROWS, delta, m, wt, q0, dX, ldo, i, c,  \
                                             relu_of);                                            \
    for (; i < n; i++)                                                                            \
        fastnaive_narrow_input_tile_##SUFFIX(NVEC, part, 1, delta, m, wt, q0, dX, ldo, i, c,      \
                                             relu_of);                                            \
}                                                                                                 \
                                                                                                  \
static TARGET void fastnaive_narrow_input_##SUFFIX(                                               \
    const T *delta, ptrdiff_t n, ptrdiff_t m, const T *W, T *dX, ptrdiff_t ldo, ptrdiff_t c0,     \
    ptrdiff_t c1, const T *relu_of)                                                               \
{                                                                                                 \
    enum { LANES = VBYTES / sizeof(T), CT = NV * LANES };                                         \
    T wt[FASTNAIVE_NARROW_MAX][CT] __attribute__((aligned(64)));                                  \
    ptrdiff_t c, j, t;                                                                            \
    int q;                                                                                        \
    for (c = c0; c < c1; c += CT) {                                                               \
        const ptrdiff_t width = c1 - c < CT ? c1 - c : CT;                                        \
        for (t = 0; t < width; t++)                                                               \
            for (j = 0; j < m; j++)                                                               \
                wt[j][t] = W[(c + t) * m + j];                                                    \
        if (width == CT) {                                                                        \
            fastnaive_narrow_input_rows_##SUFFIX(NV, 0, delta, n, m, wt, 0, dX, ldo, c, relu_of); \
            continue;                                                                             \
        }                                                                                         \
        /* A last, partial tile (a 100-unit hidden layer's last 36 columns): its whole vectors    \
         * one at a time, then the rest as one vector, wt's columns past them zeros. */           \
        for (q = 0; NV > 1 && (q + 1) * LANES <= width; q++)                                      \
            fastnaive_narrow_input_rows_##SUFFIX(1, 0, delta, n, m, wt, q, dX, ldo,               \
                                                 c + q * LANES, relu_of);                         \
        if (q * LANES < width) {                                                                  \
            for (j = 0; j < m; j++)                                                               \
                for (t = width; t < (q + 1) * LANES; t++)                                         \
                    wt[j][t] = 0;                                                                 \
            fastnaive_narrow_input_rows_##SUFFIX(1, (int)(width - q * LANES), delta, n, m, wt, q, \
                                                 dX, ldo, c + q * LANES, relu_of);                \
        }                                                                                         \
    }                                                                                             \
}                                                                                                 \
                                                                                                  \
/* Rows [c, c + NVEC vectors) of dW (NVEC <= PNV), columns [jb, jb + JB); part > 0: NVEC is 1,    \
 * and only its first part rows (columns of X) are read and written. */                           \
FASTNAIVE_NARROW_INLINE TARGET void fastnaive_narrow_param_tile_##SUFFIX(                         \
    int NVEC, int part, int JB, const T *X, ptrdiff_t ldx, const T *delta, ptrdiff_t n,           \
    ptrdiff_t m, T alpha, T beta, T *dW, ptrdiff_t c, ptrdiff_t jb)                               \
{                                                                                                 \
    typedef fastnaive_nvec_##SUFFIX V;                                                            \
    enum { LANES = VBYTES / sizeof(T), CT = PNV * LANES };                                        \
    V acc[PJB][PNV];                                                                              \
    T sums[PJB][CT] __attribute__((aligned(64)));                                                 \
    ptrdiff_t i;                                                                                  \
    int jj, q, t;                                                                                 \
    for (jj = 0; jj < JB; jj++)                                                                   \
        for (q = 0; q < NVEC; q++)                                                                \
            acc[jj][q] = (V){0};                                                                  \
    for (i = 0; i < n; i++) {                                                                     \
        V x[PNV];                                                                                 \
        for (q = 0; q < NVEC; q++)                                                                \
            x[q] = part ? FASTNAIVE_PART_##VBYTES(T, V, X + i * ldx + c, part)                    \
                        : ((const V *)(X + i * ldx + c))[q];                                      \
        for (jj = 0; jj < JB; jj++) {                                                             \
            const T d = delta[i * m + jb + jj];                                                   \
            for (q = 0; q < NVEC; q++)                                                            \
                acc[jj][q] += d * x[q];                                                           \
        }                                                                                         \
    }                                                                                             \
    for (jj = 0; jj < JB; jj++)                                                                   \
        for (q = 0; q < NVEC; q++)                                                                \
            ((V *)sums[jj])[q] = acc[jj][q];                                                      \
    for (t = 0; t < NVEC * LANES && (!part || t < part); t++)                                     \
        for (jj = 0; jj < JB; jj++) {                                                             \
            T *out = dW + (c + t) * m + jb + jj;                                                  \
            *out = alpha * sums[jj][t] + (beta != 0 ? beta * *out : 0);                           \
        }                                                                                         \
}                                                                                                 \
                                                                                                  \
/* Rows [c, c + NVEC vectors) of dW (part: as the tile's), every column: tiles of PJB columns,    \
 * then of 2 and 1. */                                                                            \
FASTNAIVE_NARROW_INLINE TARGET void fastnaive_narrow_param_rows_##SUFFIX(                         \
    int NVEC, int part, const T *X, ptrdiff_t ldx, const T *delta, ptrdiff_t n, ptrdiff_t m,      \
    T alpha, T beta, T *dW, ptrdiff_t c)                                                          \
{                                                                                                 \
    ptrdiff_t j;                                                                                  \
    for (j = 0; j + PJB <= m; j += PJB)                                                           \
        fastnaive_narrow_param_tile_##SUFFIX(NVEC, part, PJB, X, ldx, delta, n, m, alpha, beta,   \
                                             dW, c, j);                                           \
    if (PJB > 2 && j + 2 <= m) {                                                                  \
        fastnaive_narrow_param_tile_##SUFFIX(NVEC, part, 2, X, ldx, delta, n, m, alpha, beta, dW, \
                                             c, j);                                               \
        j += 2;                                                                                   \
    }                                                                                             \
    if (PJB > 1 && j < m)                                                                         \
        fastnaive_narrow_param_tile_##SUFFIX(NVEC, part, 1, X, ldx, delta, n, m, alpha, beta, dW, \
                                             c, j);                                               \
}                                                                                                 \
                                                                                                  \
/* Rows of PNV vectors, then of one vector (a layer of fewer inputs than a tile of rows, or the   \
 * rows past the last whole tile: a 100-unit hidden layer's last 36), then the last few (fewer    \
 * than a vector) as one vector whose loads of X are masked to them. */                           \
static TARGET void fastnaive_narrow_param_##SUFFIX(                                               \
    const T *X, ptrdiff_t ldx, const T *delta, ptrdiff_t n, ptrdiff_t m, T alpha, T beta, T *dW,  \
    ptrdiff_t c0, ptrdiff_t c1)                                                                   \
{                                                                                                 \
    enum { LANES = VBYTES / sizeof(T), CT = PNV * LANES };                                        \
    ptrdiff_t c;                                                                                  \
    for (c = c0; c + CT <= c1; c += CT)                                                           \
        fastnaive_narrow_param_rows_##SUFFIX(PNV, 0, X, ldx, delta, n, m, alpha, beta, dW, c);    \
    for (; PNV > 1 && c + LANES <= c1; c += LANES)                                                \
        fastnaive_narrow_param_rows_##SUFFIX(1, 0, X, ldx, delta, n, m, alpha, beta, dW, c);      \
    if (c < c1)                                                                                   \
        fastnaive_narrow_param_rows_##SUFFIX(1, (int)(c1 - c), X, ldx, delta, n, m, alpha, beta,  \
                                             dW, c);                                              \
}

#if FASTNAIVE_NARROW_DISPATCH
FASTNAIVE_NARROW_DEFINE(float, f_avx512, FASTNAIVE_NARROW_AVX512, 64, 4, 4, 4, 4, 4, 4)
FASTNAIVE_NARROW_DEFINE(double, d_avx512, FASTNAIVE_NARROW_AVX512, 64, 4, 4, 4, 4, 4, 4)
FASTNAIVE_NARROW_DEFINE(float, f_avx2, FASTNAIVE_NARROW_AVX2, 32, 4, 3, 4, 3, 2, 4)
FASTNAIVE_NARROW_DEFINE(double, d_avx2, FASTNAIVE_NARROW_AVX2, 32, 4, 3, 4, 3, 2, 4)
#endif
FASTNAIVE_NARROW_DEFINE(float, f_baseline, , 16, 2, 2, 4, 4, 2, 2)
FASTNAIVE_NARROW_DEFINE(double, d_baseline, , 16, 2, 2, 4, 4, 2, 2)

typedef void (*fastnaive_narrow_forward_f_t)(const float *, ptrdiff_t, ptrdiff_t, const float *,
                                             ptrdiff_t, const float *, float *, ptrdiff_t,
                                             ptrdiff_t);
typedef void (*fastnaive_narrow_forward_d_t)(const double *, ptrdiff_t, ptrdiff_t, const double *,
                                             ptrdiff_t, const double *, double *, ptrdiff_t,
                                             ptrdiff_t);
typedef void (*fastnaive_narrow_input_f_t)(const float *, ptrdiff_t, ptrdiff_t, const float *,
                                           float *, ptrdiff_t, ptrdiff_t, ptrdiff_t,
                                           const float *);
typedef void (*fastnaive_narrow_input_d_t)(const double *, ptrdiff_t, ptrdiff_t, const double *,
                                           double *, ptrdiff_t, ptrdiff_t, ptrdiff_t,
                                           const double *);
typedef void (*fastnaive_narrow_param_f_t)(const float *, ptrdiff_t, const float *, ptrdiff_t,
                                           ptrdiff_t, float, float, float *, ptrdiff_t, ptrdiff_t);
typedef void (*fastnaive_narrow_param_d_t)(const double *, ptrdiff_t, const double *, ptrdiff_t,
                                           ptrdiff_t, double, double, double *, ptrdiff_t,
                                           ptrdiff_t);

#define FASTNAIVE_NARROW_POINTERS(SUFFIX)                                                          \
    static fastnaive_narrow_forward_##SUFFIX##_t fastnaive_narrow_forward_##SUFFIX =               \
        fastnaive_narrow_forward_##SUFFIX##_baseline;                                              \
    static fastnaive_narrow_input_##SUFFIX##_t fastnaive_narrow_input_##SUFFIX =                   \
        fastnaive_narrow_input_##SUFFIX##_baseline;                                                \
    static fastnaive_narrow_param_##SUFFIX##_t fastnaive_narrow_param_##SUFFIX =                   \
        fastnaive_narrow_param_##SUFFIX##_baseline;
FASTNAIVE_NARROW_POINTERS(f)
FASTNAIVE_NARROW_POINTERS(d)

#define FASTNAIVE_NARROW_POINT(SUFFIX, ISA)                                                        \
    do {                                                                                           \
        fastnaive_narrow_forward_##SUFFIX = fastnaive_narrow_forward_##SUFFIX##_##ISA;             \
        fastnaive_narrow_input_##SUFFIX = fastnaive_narrow_input_##SUFFIX##_##ISA;                 \
        fastnaive_narrow_param_##SUFFIX = fastnaive_narrow_param_##SUFFIX##_##ISA;                 \
    } while (0)

/* Points the narrow products at level's kernels (2: AVX-512, 1: AVX2, 0: baseline), a level
 * the CPU runs (fastnaive_sparse_select_isa chose it). */
static void fastnaive_narrow_select(int level)
{
#if FASTNAIVE_NARROW_DISPATCH
    if (level == 2) {
        FASTNAIVE_NARROW_POINT(f, avx512);
        FASTNAIVE_NARROW_POINT(d, avx512);
        return;
    }
    if (level == 1) {
        FASTNAIVE_NARROW_POINT(f, avx2);
        FASTNAIVE_NARROW_POINT(d, avx2);
        return;
    }
#endif
    (void)level;
    FASTNAIVE_NARROW_POINT(f, baseline);
    FASTNAIVE_NARROW_POINT(d, baseline);
}

#endif
