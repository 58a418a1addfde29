/* Inner loops of fastnaive._sparse: products with the nonzeros of a dense matrix only.
 *
 * Layout (made by fastnaive_group_f/_d): the lines of X (its rows, or its columns) are
 * taken four at a time. For each group of four lines and each of the P positions j along
 * them, the four values at j form a quad; its pattern is the 4-bit set of lines whose value
 * is nonzero (NaN counts as nonzero). Group g owns entries [g * P, (g + 1) * P) of index
 * (the position j) and quads (the four values), sorted by pattern: list s = 1, ..., 15 spans
 * [starts[16 g + s - 1], starts[16 g + s]); past the end of list 15 lie zero quads, never
 * read. starts[16 g] = g * P.
 *
 * Product: out[4 g + r, :] := sum over the quads of group g whose pattern has bit r of
 * quad[r] * B[index, :]. One quad's row of B is loaded once and used by every line of the
 * group that is nonzero there, so a group of four rows of MNIST (two nonzeros per quad on
 * average) loads half the rows of B that row-by-row compressed rows do, and multiplies
 * nothing by zero: each pattern has its own loop, with the FMAs of the absent lines
 * compiled out. The 4 x NV vector accumulators of a tile stay in registers. Loads of B, not
 * FMAs, bound compressed-row products (one 64-byte load per FMA, from L2); here there are
 * half as many. B's rows are best 64-byte aligned (B and ldb * sizeof(T) multiples of 64):
 * a load that straddles two cache lines costs two, and misaligned B makes a product 25-30%
 * slower.
 *
 * Each loop is written once, as a macro over the element type and the vector width, and
 * compiled for AVX-512, for AVX2 with FMA and for the baseline of the target (SSE2 on
 * x86-64); fastnaive_sparse_select_isa() points fastnaive_grouped_product_f/_d at the best
 * one the CPU runs, so wheels built for baseline x86-64 still use AVX-512, without -march.
 */
#ifndef FASTNAIVE_SPARSE_KERNELS_H
#define FASTNAIVE_SPARSE_KERNELS_H

#include <stddef.h>
#include <string.h>
#include "narrow_kernels.h"
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
#define FASTNAIVE_INLINE static inline __attribute__((always_inline))

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#define FASTNAIVE_GROUP 4
#define FASTNAIVE_PATTERNS 16

/* The loop over list s = P of a group (P a constant, so that the FMAs of the lines absent
 * from pattern P are compiled out), inside fastnaive_grouped_body_SUFFIX: all four lines'
 * sums of the tile in registers (FASTNAIVE_LIST), or in memory between the lists
 * (FASTNAIVE_WIDE_LIST, see FASTNAIVE_WIDE_DEFINE). */
#define FASTNAIVE_LIST(SUFFIX, P) fastnaive_list_##SUFFIX(P, p0, p1, index, quads, b_tile, ldb, acc)
#define FASTNAIVE_WIDE_LIST(SUFFIX, P) \
    fastnaive_wide_list_##SUFFIX(P, p0, p1, index, quads, b_tile, ldb, acc)
/* The same over `width` vectors of columns (a tile past the last whole one), or over the
 * first `part` columns of one (those past the last whole vector). */
#define FASTNAIVE_SHORT_LIST(SUFFIX, P) \
    fastnaive_quads_##SUFFIX(P, 0, width, 0, part, p0, p1, index, quads, b_tile, ldb, acc)

/* A group's lists s = 1, ..., 15 (`list` its starts) over the columns from j, each with its
 * pattern a constant, by LISTM (one of the above) on element type T. */
#define FASTNAIVE_LISTS(T, SUFFIX, LISTM)                                                         \
    for (s = 1; s < FASTNAIVE_PATTERNS; s++) {                                                    \
        const int p0 = list[s - 1], p1 = list[s];                                                 \
        const T *b_tile = B + j;                                                                  \
        if (p0 == p1)                                                                             \
            continue;                                                                             \
        switch (s) {                                                                              \
        case 1: LISTM(SUFFIX, 1); break;                                                          \
        case 2: LISTM(SUFFIX, 2); break;                                                          \
        case 3: LISTM(SUFFIX, 3); break;                                                          \
        case 4: LISTM(SUFFIX, 4); break;                                                          \
        case 5: LISTM(SUFFIX, 5); break;                                                          \
        case 6: LISTM(SUFFIX, 6); break;                                                          \
        case 7: LISTM(SUFFIX, 7); break;                                                          \
        case 8: LISTM(SUFFIX, 8); break;                                                          \
        case 9: LISTM(SUFFIX, 9); break;                                                          \
        case 10: LISTM(SUFFIX, 10); break;                                                        \
        case 11: LISTM(SUFFIX, 11); break;                                                        \
        case 12: LISTM(SUFFIX, 12); break;                                                        \
        case 13: LISTM(SUFFIX, 13); break;                                                        \
        case 14: LISTM(SUFFIX, 14); break;                                                        \
        default: LISTM(SUFFIX, 15); break;                                                        \
        }                                                                                         \
    }

/* Defines, for element type T, vectors of VBYTES bytes and NV vectors per line of a tile,
 * compiled with attribute TARGET, a list's loop LIST (FASTNAIVE_LIST or FASTNAIVE_WIDE_LIST):
 *
 * fastnaive_grouped_run_SUFFIX: for every group g < n_groups, line r < 4 with
 * 4 g + r < n_out, and column j in [j0, j1):
 *   out[4 g + r, j] := act(alpha * sum_{quads of g with bit r} quad[r] * B[index, j]
 *                          + (bias ? s * bias[j] : 0) + (beta != 0 ? beta * out[4 g + r, j] : 0))
 * with s = scales[4 g + r] if scales (a line whose scale is 0 gains nothing, not even from a
 * NaN bias), else 1 (and no multiplication). act = relu (z < 0 ? 0 : z, NaN staying NaN) if
 * relu else identity. beta = 0 overwrites, so out may hold NaN. Columns past the last whole
 * tile take tiles of two vectors (where a tile is four or more), then of one, then the last
 * few (fewer than a vector's lanes) one vector whose loads are masked to them. */
#define FASTNAIVE_GROUPED_BODY_DEFINE(T, SUFFIX, TARGET, VBYTES, NV, LIST)                         \
typedef T fastnaive_vec_##SUFFIX                                                                  \
    __attribute__((vector_size(VBYTES), aligned(sizeof(T)), may_alias));                          \
                                                                                                  \
/* Vector q from p, or, part > 0, the first part elements from p (the rest 0). */                 \
FASTNAIVE_INLINE TARGET fastnaive_vec_##SUFFIX fastnaive_load_##SUFFIX(const T *p, int q,         \
                                                                   int part)                      \
{                                                                                                 \
    return part ? FASTNAIVE_PART_##VBYTES(T, fastnaive_vec_##SUFFIX, p, part)                     \
                : ((const fastnaive_vec_##SUFFIX *)p)[q];                                         \
}                                                                                                 \
/* acc[r][q] += quad[r] * B[index, h + q] for q < width, each quad of the list [p0, p1) of        \
 * pattern `pattern` (width, h, by_vector and part constants where inlined, acc then in          \
 * registers). part > 0: width is 1, and only the row's first part columns are read.             \
 * A quad's row is loaded whole (width registers) and each line's value broadcast in turn;       \
 * by_vector, the lines' values are broadcast first and the row loaded one vector at a time      \
 * (lines registers instead of width: three lines of four vectors fit AVX2's 16 registers).      \
 * The same sums in the same order either way. */                                               \
FASTNAIVE_INLINE TARGET void fastnaive_quads_##SUFFIX(                                            \
    int pattern, int h, int width, int by_vector, int part, int p0, int p1, const int *index,     \
    const T *quads, const T *B, ptrdiff_t ldb, fastnaive_vec_##SUFFIX acc[FASTNAIVE_GROUP][NV])   \
{                                                                                                 \
    typedef fastnaive_vec_##SUFFIX V;                                                             \
    const int *at = index + p0, *end = index + p1;                                                \
    const T *values = quads + (ptrdiff_t)FASTNAIVE_GROUP * p0;                                    \
    int q, r;                                                                                     \
    for (; at < end; at++, values += FASTNAIVE_GROUP) {                                           \
        const V *src = (const V *)(B + (ptrdiff_t)*at * ldb) + h;                                 \
        if (by_vector) {                                                                          \
            V v[FASTNAIVE_GROUP];                                                                 \
            for (r = 0; r < FASTNAIVE_GROUP; r++)                                                 \
                if (pattern & (1 << r))                                                           \
                    v[r] = values[r] + (V){0};                                                    \
            for (q = 0; q < width; q++) {                                                         \
                const V x = fastnaive_load_##SUFFIX((const T *)src, q, part);                     \
                for (r = 0; r < FASTNAIVE_GROUP; r++)                                             \
                    if (pattern & (1 << r))                                                       \
                        acc[r][q] += v[r] * x;                                                    \
            }                                                                                     \
            continue;                                                                             \
        }                                                                                         \
        V x[NV];                                                                                  \
        for (q = 0; q < width; q++)                                                               \
            x[q] = fastnaive_load_##SUFFIX((const T *)src, q, part);                              \
        for (r = 0; r < FASTNAIVE_GROUP; r++)                                                     \
            if (pattern & (1 << r)) {                                                             \
                const T v = values[r];                                                            \
                for (q = 0; q < width; q++)                                                       \
                    acc[r][q] += v * x[q];                                                        \
            }                                                                                     \
    }                                                                                             \
}                                                                                                 \
                                                                                                  \
/* A list's loop, all four lines' sums of the tile in registers. */                               \
FASTNAIVE_INLINE TARGET void fastnaive_list_##SUFFIX(                                             \
    int pattern, int p0, int p1, const int *index, const T *quads, const T *B, ptrdiff_t ldb,     \
    fastnaive_vec_##SUFFIX acc[FASTNAIVE_GROUP][NV])                                              \
{                                                                                                 \
    fastnaive_quads_##SUFFIX(pattern, 0, NV, 0, 0, p0, p1, index, quads, B, ldb, acc);            \
}                                                                                                 \
                                                                                                  \
/* The same, acc in memory: in passes over as many of its vectors as the pattern's lines          \
 * leave registers for (FASTNAIVE_WIDE_DEFINE); three lines' passes by vector. */                 \
FASTNAIVE_INLINE TARGET void fastnaive_wide_list_##SUFFIX(                                        \
    int pattern, int p0, int p1, const int *index, const T *quads, const T *B, ptrdiff_t ldb,     \
    fastnaive_vec_##SUFFIX acc[FASTNAIVE_GROUP][NV])                                              \
{                                                                                                 \
    typedef fastnaive_vec_##SUFFIX V;                                                             \
    const int lines = __builtin_popcount(pattern);                                                \
    const int step = lines == 1 ? NV : lines <= 3 ? NV / 2 : NV / 4;                              \
    int h, q, r;                                                                                  \
    for (h = 0; h < NV; h += step) {                                                              \
        V sums[FASTNAIVE_GROUP][NV];                                                              \
        for (r = 0; r < FASTNAIVE_GROUP; r++)                                                     \
            if (pattern & (1 << r))                                                               \
                for (q = 0; q < step; q++)                                                        \
                    sums[r][q] = acc[r][h + q];                                                   \
        fastnaive_quads_##SUFFIX(pattern, h, step, lines == 3, 0, p0, p1, index, quads, B, ldb,   \
                                 sums);                                                           \
        for (r = 0; r < FASTNAIVE_GROUP; r++)                                                     \
            if (pattern & (1 << r))                                                               \
                for (q = 0; q < step; q++)                                                        \
                    acc[r][h + q] = sums[r][q];                                                   \
    }                                                                                             \
}                                                                                                 \
                                                                                                  \
/* A tile's outputs from its sums: for each line r < lines and vector q < width, its columns      \
 * of out[r * ldo + ...] := alpha * acc[r][q] + (bias ? s_r * bias : 0)                           \
 *                          + (beta != 0 ? beta * out : 0),                                       \
 * s_r = scales[r] if scaled (a line whose scale is 0 gains nothing), else 1. part > 0:           \
 * width is 1, and only the first part columns are read and written. */                           \
FASTNAIVE_INLINE TARGET void fastnaive_tile_out_##SUFFIX(                                         \
    fastnaive_vec_##SUFFIX acc[FASTNAIVE_GROUP][NV], int width, int part, int lines,              \
    const T *bias, const T *scales, T alpha, T beta, int scaled, T *out, ptrdiff_t ldo)           \
{                                                                                                 \
    typedef fastnaive_vec_##SUFFIX V;                                                             \
    int r, q, c;                                                                                  \
    for (r = 0; r < lines; r++) {                                                                 \
        T *dst = out + r * ldo;                                                                   \
        const T scale = scaled ? scales[r] : 1;                                                   \
        for (q = 0; q < width; q++) {                                                             \
            V z = alpha * acc[r][q];                                                              \
            if (scaled) {                                                                         \
                if (bias && scale != 0)                                                           \
                    z += scale * fastnaive_load_##SUFFIX(bias, q, part);                          \
            } else if (bias)                                                                      \
                z += fastnaive_load_##SUFFIX(bias, q, part);                                      \
            if (beta != 0)                                                                        \
                z += beta * fastnaive_load_##SUFFIX(dst, q, part);                                \
            if (part)                                                                             \
                for (c = 0; c < part; c++)                                                        \
                    dst[c] = z[c];                                                                \
            else                                                                                  \
                ((V *)dst)[q] = z;                                                                \
        }                                                                                         \
    }                                                                                             \
}                                                                                                 \
                                                                                                  \
/* A tile of `width` vectors (1 or 2; part: as fastnaive_quads') of a group's lines from column   \
 * j, past the last whole tile: its sums over the group's lists (`list` their starts), then       \
 * its outputs (fastnaive_tile_out). */                                                           \
FASTNAIVE_INLINE TARGET void fastnaive_short_tile_##SUFFIX(                                       \
    int width, int part, const int *list, const int *index, const T *quads, const T *B,           \
    ptrdiff_t ldb, ptrdiff_t j, int lines, const T *bias, const T *scales, T alpha, T beta,       \
    int scaled, T *out, ptrdiff_t ldo)                                                            \
{                                                                                                 \
    fastnaive_vec_##SUFFIX acc[FASTNAIVE_GROUP][NV];                                              \
    int r, q, s;                                                                                  \
    for (r = 0; r < FASTNAIVE_GROUP; r++)                                                         \
        for (q = 0; q < width; q++)                                                               \
            acc[r][q] = (fastnaive_vec_##SUFFIX){0};                                              \
    FASTNAIVE_LISTS(T, SUFFIX, FASTNAIVE_SHORT_LIST);                                             \
    fastnaive_tile_out_##SUFFIX(acc, width, part, lines, bias ? bias + j : NULL, scales, alpha,   \
                                beta, scaled, out + j, ldo);                                      \
}                                                                                                 \
/* The product, compiled apart for scaled (scales given) and not, so that the plain one's     \
 * epilogue has no test of scales. */                                                             \
FASTNAIVE_INLINE TARGET void fastnaive_grouped_body_##SUFFIX(                                     \
    ptrdiff_t n_groups, const int *starts, const int *index, const T *quads,                      \
    const T *B, ptrdiff_t ldb, const T *bias, const T *scales, T alpha, T beta, int relu,         \
    T *out, ptrdiff_t ldo, ptrdiff_t n_out, ptrdiff_t j0, ptrdiff_t j1, const int scaled)         \
{                                                                                                 \
    typedef fastnaive_vec_##SUFFIX V;                                                             \
    enum { LANES = VBYTES / sizeof(T), TILE = NV * LANES };                                       \
    const V zero = {0};                                                                           \
    ptrdiff_t g, j, c;                                                                            \
    int r, q, s;                                                                                  \
    for (g = 0; g < n_groups; g++) {                                                              \
        const int *list = starts + FASTNAIVE_PATTERNS * g;                                        \
        const ptrdiff_t first = FASTNAIVE_GROUP * g;                                              \
        const int lines = n_out - first < FASTNAIVE_GROUP                                         \
                          ? (int)(n_out - first) : FASTNAIVE_GROUP;                               \
        const T *line_scales = scaled ? scales + first : NULL;                                    \
        for (j = j0; j + TILE <= j1; j += TILE) {                                                 \
            V acc[FASTNAIVE_GROUP][NV];                                                           \
            for (r = 0; r < FASTNAIVE_GROUP; r++)                                                 \
                for (q = 0; q < NV; q++)                                                          \
                    acc[r][q] = zero;                                                             \
            FASTNAIVE_LISTS(T, SUFFIX, LIST);                                                     \
            fastnaive_tile_out_##SUFFIX(acc, NV, 0, lines, bias ? bias + j : NULL, line_scales,   \
                                        alpha, beta, scaled, out + first * ldo + j, ldo);         \
        }                                                                                         \
        /* Past the last whole tile, tiles of two vectors, then of one, then the last few as one  \
         * masked vector (a layer of 100 outputs: past its tile of 64 floats on AVX-512, 32       \
         * columns and a masked 4; each tile another pass over the group's lists). */            \
        for (; NV > 2 && j + 2 * LANES <= j1; j += 2 * LANES)                                     \
            fastnaive_short_tile_##SUFFIX(2, 0, list, index, quads, B, ldb, j, lines, bias,       \
                                          line_scales, alpha, beta, scaled, out + first * ldo,    \
                                          ldo);                                                   \
        for (; NV > 1 && j + LANES <= j1; j += LANES)                                             \
            fastnaive_short_tile_##SUFFIX(1, 0, list, index, quads, B, ldb, j, lines, bias,       \
                                          line_scales, alpha, beta, scaled, out + first * ldo,    \
                                          ldo);                                                   \
        if (j < j1)                                                                               \
            fastnaive_short_tile_##SUFFIX(1, (int)(j1 - j), list, index, quads, B, ldb, j, lines, \
                                          bias, line_scales, alpha, beta, scaled,                 \
                                          out + first * ldo, ldo);                                \
        if (relu)                                                                                 \
            for (r = 0; r < lines; r++) {                                                         \
                T *dst = out + (first + r) * ldo;                                                 \
                for (c = j0; c < j1; c++)                                                         \
                    dst[c] = dst[c] < 0 ? 0 : dst[c];                                             \
            }                                                                                     \
    }                                                                                             \
}                                                                                                 \
                                                                                                  \
FASTNAIVE_INLINE TARGET void fastnaive_grouped_run_##SUFFIX(                                      \
    ptrdiff_t n_groups, const int *starts, const int *index, const T *quads,                      \
    const T *B, ptrdiff_t ldb, const T *bias, const T *scales, T alpha, T beta, int relu,         \
    T *out, ptrdiff_t ldo, ptrdiff_t n_out, ptrdiff_t j0, ptrdiff_t j1)                           \
{                                                                                                 \
    if (scales)                                                                                   \
        fastnaive_grouped_body_##SUFFIX(n_groups, starts, index, quads, B, ldb, bias, scales,     \
                                        alpha, beta, relu, out, ldo, n_out, j0, j1, 1);           \
    else                                                                                          \
        fastnaive_grouped_body_##SUFFIX(n_groups, starts, index, quads, B, ldb, bias, NULL,       \
                                        alpha, beta, relu, out, ldo, n_out, j0, j1, 0);           \
}

/* Defines fastnaive_grouped_product_SUFFIX (see FASTNAIVE_GROUPED_BODY_DEFINE) with all four
 * lines' sums of a tile in registers. */
#define FASTNAIVE_GROUPED_DEFINE(T, SUFFIX, TARGET, VBYTES, NV)                                   \
FASTNAIVE_GROUPED_BODY_DEFINE(T, SUFFIX, TARGET, VBYTES, NV, FASTNAIVE_LIST)                      \
                                                                                                  \
static TARGET void fastnaive_grouped_product_##SUFFIX(                                            \
    ptrdiff_t n_groups, const int *starts, const int *index, const T *quads,                      \
    const T *B, ptrdiff_t ldb, const T *bias, const T *scales, T alpha, T beta, int relu,         \
    T *out, ptrdiff_t ldo, ptrdiff_t n_out, ptrdiff_t j0, ptrdiff_t j1)                           \
{                                                                                                 \
    fastnaive_grouped_run_##SUFFIX(n_groups, starts, index, quads, B, ldb, bias, scales, alpha,   \
                                   beta, relu, out, ldo, n_out, j0, j1);                          \
}

/* Defines fastnaive_grouped_product_SUFFIX as FASTNAIVE_GROUPED_DEFINE's, for vectors of
 * VBYTES bytes where the registers hold fewer sums than four lines of a wide tile (AVX2's 16):
 * tiles of NV vectors per line, their sums kept in memory (L1) between the lists, and each
 * list run in passes over as many of a tile's vectors as its pattern's lines leave
 * registers for: all NV for one line, NV / 2 for two or three (three by vector: their 12
 * sums, 3 broadcast values and one vector of the row fill AVX2's 16), NV / 4 for four. A
 * list of one line thus keeps NV independent sums in flight, where a tile of two vectors
 * per line would keep two, each quad's FMAs waiting on the previous quad's (the FMA's
 * latency, four cycles, for two of them). Three lines in two passes of four vectors, not
 * four of two: Fashion-MNIST's X @ W on one Zen 4 core held to AVX2, 891-932 -> 846-875 us
 * (four lines in passes of 3, 3 and 2 vectors: 957-968, not kept). Every sum takes the same
 * quads in the same order as in FASTNAIVE_GROUPED_DEFINE's (the same bits; only alpha * sum
 * + beta * out may round apart, as the compiler forms its fused multiply-add); the columns
 * past the last whole tile go to NARROW, FASTNAIVE_GROUPED_DEFINE's product. Tiles are 256
 * bytes, as AVX-512's, so every block of columns the threads split (at multiples of 256
 * bytes) is whole tiles. */
#define FASTNAIVE_WIDE_DEFINE(T, SUFFIX, TARGET, VBYTES, NV, NARROW)                              \
FASTNAIVE_GROUPED_BODY_DEFINE(T, SUFFIX, TARGET, VBYTES, NV, FASTNAIVE_WIDE_LIST)                 \
                                                                                                  \
static TARGET void fastnaive_grouped_product_##SUFFIX(                                            \
    ptrdiff_t n_groups, const int *starts, const int *index, const T *quads,                      \
    const T *B, ptrdiff_t ldb, const T *bias, const T *scales, T alpha, T beta, int relu,         \
    T *out, ptrdiff_t ldo, ptrdiff_t n_out, ptrdiff_t j0, ptrdiff_t j1)                           \
{                                                                                                 \
    enum { TILE = NV * VBYTES / sizeof(T) };                                                      \
    const ptrdiff_t wide = j0 + (j1 - j0) / TILE * TILE;                                          \
    if (wide > j0)                                                                                \
        fastnaive_grouped_run_##SUFFIX(n_groups, starts, index, quads, B, ldb, bias, scales,      \
                                       alpha, beta, relu, out, ldo, n_out, j0, wide);             \
    if (wide < j1)                                                                                \
        fastnaive_grouped_product_##NARROW(n_groups, starts, index, quads, B, ldb, bias, scales,  \
                                           alpha, beta, relu, out, ldo, n_out, wide, j1);         \
}

#if FASTNAIVE_X86_DISPATCH
FASTNAIVE_GROUPED_DEFINE(float, f_avx512, FASTNAIVE_AVX512, 64, 4)
FASTNAIVE_GROUPED_DEFINE(double, d_avx512, FASTNAIVE_AVX512, 64, 4)
FASTNAIVE_GROUPED_DEFINE(float, f_avx2_vector, FASTNAIVE_AVX2, 32, 2)
FASTNAIVE_GROUPED_DEFINE(double, d_avx2_vector, FASTNAIVE_AVX2, 32, 2)
FASTNAIVE_WIDE_DEFINE(float, f_avx2, FASTNAIVE_AVX2, 32, 8, f_avx2_vector)
FASTNAIVE_WIDE_DEFINE(double, d_avx2, FASTNAIVE_AVX2, 32, 8, d_avx2_vector)
#endif
FASTNAIVE_GROUPED_DEFINE(float, f_baseline, , 16, 2)
FASTNAIVE_GROUPED_DEFINE(double, d_baseline, , 16, 2)

/* ---- Offsets: the first layer's inputs taken as their distances from a per-feature value c
 * (the most common one), so that X @ W = (X - 1 c^T) @ W + 1 (c^T W) and X^T @ delta =
 * (X - 1 c^T)^T @ delta + c sum_rows(delta) run on the nonzeros of X - 1 c^T (the second
 * term as the grouped product's bias, scaled per line by c).
 *
 * fastnaive_offset_sums_SUFFIX: u[j] := (init ? init[j] : 0) + sum_{r < rows} c[r] W[r, j],
 * rows whose c is 0 skipped, as zeros are by the products; each element one sum over the
 * rows in order, the same bits for any column range [j0, j1) cut at whole vectors. */
#define FASTNAIVE_OFFSET_DEFINE(T, SUFFIX, TARGET, VBYTES)                                     \
static TARGET void fastnaive_offset_sums_##SUFFIX(const T *c, const T *W, ptrdiff_t ldw,       \
                                                  ptrdiff_t rows, const T *init, T *u,         \
                                                  ptrdiff_t j0, ptrdiff_t j1)                  \
{                                                                                              \
    typedef fastnaive_vec_##SUFFIX V;                                                          \
    enum { LANES = VBYTES / sizeof(T) };                                                       \
    ptrdiff_t r, j;                                                                            \
    for (j = j0; j < j1; j++)                                                                  \
        u[j] = init ? init[j] : 0;                                                             \
    for (r = 0; r < rows; r++) {                                                               \
        const T cr = c[r];                                                                     \
        const T *w = W + r * ldw;                                                              \
        if (cr == 0)                                                                           \
            continue;                                                                          \
        for (j = j0; j + LANES <= j1; j += LANES)                                              \
            *(V *)(u + j) += cr * *(const V *)(w + j);                                         \
        for (; j < j1; j++)                                                                    \
            u[j] += cr * w[j];                                                                 \
    }                                                                                          \
}

#if FASTNAIVE_X86_DISPATCH
FASTNAIVE_OFFSET_DEFINE(float, f_avx512, FASTNAIVE_AVX512, 64)
FASTNAIVE_OFFSET_DEFINE(double, d_avx512, FASTNAIVE_AVX512, 64)
FASTNAIVE_OFFSET_DEFINE(float, f_avx2, FASTNAIVE_AVX2, 32)
FASTNAIVE_OFFSET_DEFINE(double, d_avx2, FASTNAIVE_AVX2, 32)
#endif
FASTNAIVE_OFFSET_DEFINE(float, f_baseline, , 16)
FASTNAIVE_OFFSET_DEFINE(double, d_baseline, , 16)

/* ---- Builders: X (n, k), row-major, into the layout above, one group at a time. A pass
 * over its positions, four at a time (a block), counts the quads of each pattern and keeps
 * the nonzero quads, their positions and patterns on the stack (up to FASTNAIVE_KEEP_MAX
 * positions; the lines of a longer group are read again instead, by a second pass that
 * writes); then each kept quad is written at its pattern's cursor. Each of the four quads of
 * a block has its own counters and cursors (the list of a pattern is four sublists, by
 * position mod 4), so that a run of one pattern is not a chain of increments of one counter
 * in memory; blocks of sixteen zeros, most of an MNIST image's border, are skipped. Either
 * way each sublist holds its quads in the order of their positions. On AVX-512, a float
 * group of four lines is built by a pass of its own (fastnaive_group_slots_f, below): the
 * same layout, sixteen positions at a time. ---- */

/* The positions of a group whose nonzero quads the builder keeps on the stack (16 KiB of
 * float quads, 32 KiB of double ones, and their positions and patterns). */
#define FASTNAIVE_KEEP_MAX 1024
/* What a pass over a group does with each nonzero quad: counts it, writes it at its
 * pattern's cursor, or counts and keeps it. */
#define FASTNAIVE_COUNT 0
#define FASTNAIVE_WRITE 1
#define FASTNAIVE_KEEP 2

/* The nonzero quads of a group, kept by a FASTNAIVE_KEEP pass: n of them, in the order of
 * their positions (a pass writes every quad at entry n and counts it in n if nonzero). */
#define FASTNAIVE_KEPT_DEFINE(T, SUFFIX)                                                       \
typedef struct {                                                                               \
    ptrdiff_t n;                                                                               \
    int position[FASTNAIVE_KEEP_MAX];                                                          \
    int pattern[FASTNAIVE_KEEP_MAX];                                                           \
    T quad[FASTNAIVE_KEEP_MAX][FASTNAIVE_GROUP];                                               \
} fastnaive_kept_##SUFFIX;

FASTNAIVE_KEPT_DEFINE(float, f)
FASTNAIVE_KEPT_DEFINE(double, d)


static const int fastnaive_popcount[FASTNAIVE_PATTERNS] = {0, 1, 1, 2, 1, 2, 2, 3,
                                                          1, 2, 2, 3, 2, 3, 3, 4};

/* A pass (mode FASTNAIVE_COUNT, _WRITE or _KEEP) over a group of four float lines by
 * SSE2: by rows, a 4 x 4 block of X transposed gives four quads at once; by columns, a quad
 * is four neighbouring floats of a row. With shift (the group's offsets, see
 * fastnaive_group_f), the values are X's minus them. cmpneq is true for NaN, like != in C.
 * Returns 0 (for the generic pass to run instead) without SSE2. */
FASTNAIVE_INLINE int fastnaive_fast_pass_f(int mode, int by_rows, const float *first,
                                           ptrdiff_t ldx, ptrdiff_t n_positions,
                                           const float *shift,
                                           int counts[4][FASTNAIVE_PATTERNS], int *index,
                                           float *quads, fastnaive_kept_f *kept)
{
#if defined(__SSE2__)
    const __m128 zero = _mm_setzero_ps();
    const __m128 line_shift = shift && !by_rows ? _mm_loadu_ps(shift) : zero;
    ptrdiff_t j;
    int c;
    for (j = 0; j < n_positions; j += 4) {
        const int width = n_positions - j < 4 ? (int)(n_positions - j) : 4;
        __m128 block[4];
        if (by_rows) {
            const float *x = first + j;
            /* The next group's rows, a cache line of each every 16 positions: the first
             * pass over a batch's rows reads them from memory. */
            if ((j & 15) == 0)
                for (c = 0; c < 4; c++)
                    __builtin_prefetch(x + (c + FASTNAIVE_GROUP) * ldx);
            for (c = 0; c < 4; c++)
                block[c] = width == 4 ? _mm_loadu_ps(x + c * ldx)
                           : _mm_setr_ps(x[c * ldx], width > 1 ? x[c * ldx + 1] : 0,
                                         width > 2 ? x[c * ldx + 2] : 0, 0);
            if (shift) {
                const float *o = shift + j;
                const __m128 row_shift = width == 4 ? _mm_loadu_ps(o)
                                         : _mm_setr_ps(o[0], width > 1 ? o[1] : 0,
                                                       width > 2 ? o[2] : 0, 0);
                for (c = 0; c < 4; c++)
                    block[c] = _mm_sub_ps(block[c], row_shift);
            }
        } else {
            for (c = 0; c < 4; c++)
                block[c] = c < width ? _mm_loadu_ps(first + (j + c) * ldx) : zero;
            if (shift)
                for (c = 0; c < width; c++)
                    block[c] = _mm_sub_ps(block[c], line_shift);
        }
        /* The OR of nonzero floats is nonzero, of zeros of either sign +-0. */
        if (_mm_movemask_ps(_mm_cmpneq_ps(_mm_or_ps(_mm_or_ps(block[0], block[1]),
                                                    _mm_or_ps(block[2], block[3])), zero)) == 0)
            continue;
        if (by_rows)
            _MM_TRANSPOSE4_PS(block[0], block[1], block[2], block[3]);
        for (c = 0; c < width; c++) {
            const int pattern = _mm_movemask_ps(_mm_cmpneq_ps(block[c], zero));
            if (mode == FASTNAIVE_KEEP) {
                /* Written whatever the pattern and kept if nonzero: no branch on the data. */
                counts[c][pattern]++;
                kept->position[kept->n] = (int)(j + c);
                kept->pattern[kept->n] = pattern;
                _mm_storeu_ps(kept->quad[kept->n], block[c]);
                kept->n += pattern != 0;
            } else if (mode == FASTNAIVE_COUNT) {
                counts[c][pattern]++;
            } else {
                const int q = counts[c][pattern]++;
                index[q] = (int)(j + c);
                _mm_storeu_ps(quads + FASTNAIVE_GROUP * q, block[c]);
            }
        }
    }
    return 1;
#else
    (void)mode; (void)by_rows; (void)first; (void)ldx; (void)n_positions; (void)shift;
    (void)counts; (void)index; (void)quads; (void)kept;
    return 0;
#endif
}

FASTNAIVE_INLINE int fastnaive_fast_pass_d(int mode, int by_rows, const double *first,
                                           ptrdiff_t ldx, ptrdiff_t n_positions,
                                           const double *shift,
                                           int counts[4][FASTNAIVE_PATTERNS], int *index,
                                           double *quads, fastnaive_kept_d *kept)
{
    (void)mode; (void)by_rows; (void)first; (void)ldx; (void)n_positions; (void)shift;
    (void)counts; (void)index; (void)quads; (void)kept;
    return 0;
}

/* A group's counts of quads per sublist (counts[position mod 4][pattern]) to the sublists'
 * cursors, from `cursor`, the group's first entry: the sublists of pattern 1, then those of
 * 2, ..., 15, then 0; the group's 16 starts set. Returns the nonzeros the quads counted hold. */
static ptrdiff_t fastnaive_cursors(int counts[4][FASTNAIVE_PATTERNS], ptrdiff_t cursor,
                                   int *starts)
{
    ptrdiff_t nnz = 0;
    int c, s;
    starts[0] = (int)cursor;
    for (s = 1; s <= FASTNAIVE_PATTERNS; s++) {
        const int pattern = s % FASTNAIVE_PATTERNS;
        for (c = 0; c < 4; c++) {
            const int count = counts[c][pattern];
            counts[c][pattern] = (int)cursor;
            cursor += count;
            nnz += (ptrdiff_t)count * fastnaive_popcount[pattern];
        }
        if (s < FASTNAIVE_PATTERNS)
            starts[s] = (int)cursor;
    }
    return nnz;
}

/* Whether the float builder may take its AVX-512 pass (fastnaive_sparse_select_isa). */
static int fastnaive_group_avx512 = 0;

#if FASTNAIVE_X86_DISPATCH
#define FASTNAIVE_AVX512_BUILD __attribute__((target("avx512f,avx2,fma,bmi2"), noinline))

/* A group's nonzero quads as the AVX-512 pass finds them, sixteen positions at a time: their
 * positions and keys (16 (position mod 4) + pattern: the sublist, an index of counts[4][16])
 * in the order of the positions,
 * and every quad of the group, zero or not, at a slot of its position (the 64-byte stores of
 * whole vectors; the lists have a vector's slack). */
typedef struct {
    ptrdiff_t n;
    int position[FASTNAIVE_KEEP_MAX + 16];
    int key[FASTNAIVE_KEEP_MAX + 16];
    float quad[FASTNAIVE_KEEP_MAX][FASTNAIVE_GROUP];
} fastnaive_slots_f;

/* The keys and positions of the nonzero quads among sixteen (pattern: a lane per position),
 * appended to d. */
FASTNAIVE_INLINE __attribute__((target("avx512f"))) void fastnaive_slots_append(
    fastnaive_slots_f *d, __m512i pattern, ptrdiff_t j)
{
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __mmask16 nonzero = _mm512_test_epi32_mask(pattern, pattern);
    const __m512i key = _mm512_or_si512(
        pattern, _mm512_slli_epi32(_mm512_and_si512(iota, _mm512_set1_epi32(3)), 4));
    /* Compressed in registers and stored whole: a compressing store to memory is
     * microcoded on AMD's cores. */
    _mm512_storeu_si512(d->key + d->n, _mm512_maskz_compress_epi32(nonzero, key));
    _mm512_storeu_si512(d->position + d->n,
                        _mm512_maskz_compress_epi32(
                            nonzero, _mm512_add_epi32(iota, _mm512_set1_epi32((int)j))));
    d->n += __builtin_popcount(nonzero);
}

/* Four rows of k floats from first, ldx floats apart (k <= FASTNAIVE_KEEP_MAX), minus
 * shift[j] at position j unless shift is NULL: a 4 x 16 block per sixteen positions,
 * transposed into quads by unpacking, position 16 b + 4 l + c at slot 16 b + 4 c + l. The
 * next group's rows are prefetched, as the SSE2 pass does. */
FASTNAIVE_AVX512_BUILD static void fastnaive_slot_rows_f(const float *first, ptrdiff_t k,
                                                         ptrdiff_t ldx, const float *shift,
                                                         fastnaive_slots_f *d)
{
    const __m512 zero = _mm512_setzero_ps();
    ptrdiff_t j;
    int c;
    d->n = 0;
    for (j = 0; j < k; j += 16) {
        const __mmask16 live = k - j >= 16 ? (__mmask16)0xFFFF
                                           : (__mmask16)((1u << (k - j)) - 1);
        const __m512 o = shift ? _mm512_maskz_loadu_ps(live, shift + j) : zero;
        __m512 r[4];
        __mmask16 m[4];
        for (c = 0; c < 4; c++) {
            __builtin_prefetch(first + (c + FASTNAIVE_GROUP) * ldx + j);
            r[c] = _mm512_maskz_loadu_ps(live, first + c * ldx + j);
            if (shift)
                r[c] = _mm512_sub_ps(r[c], o);
            /* Unordered not-equal: NaN counts as nonzero, zeros of either sign do not. */
            m[c] = _mm512_cmp_ps_mask(r[c], zero, _CMP_NEQ_UQ);
        }
        if (!(m[0] | m[1] | m[2] | m[3]))
            continue;
        fastnaive_slots_append(
            d,
            _mm512_or_si512(
                _mm512_or_si512(_mm512_maskz_set1_epi32(m[0], 1), _mm512_maskz_set1_epi32(m[1], 2)),
                _mm512_or_si512(_mm512_maskz_set1_epi32(m[2], 4), _mm512_maskz_set1_epi32(m[3], 8))),
            j);
        {
            const __m512d a = _mm512_castps_pd(_mm512_unpacklo_ps(r[0], r[1]));
            const __m512d b = _mm512_castps_pd(_mm512_unpackhi_ps(r[0], r[1]));
            const __m512d e = _mm512_castps_pd(_mm512_unpacklo_ps(r[2], r[3]));
            const __m512d f = _mm512_castps_pd(_mm512_unpackhi_ps(r[2], r[3]));
            float *slot = d->quad[j];
            _mm512_storeu_ps(slot, _mm512_castpd_ps(_mm512_unpacklo_pd(a, e)));
            _mm512_storeu_ps(slot + 16, _mm512_castpd_ps(_mm512_unpackhi_pd(a, e)));
            _mm512_storeu_ps(slot + 32, _mm512_castpd_ps(_mm512_unpacklo_pd(b, f)));
            _mm512_storeu_ps(slot + 48, _mm512_castpd_ps(_mm512_unpackhi_pd(b, f)));
        }
    }
}

/* Four columns from first of n rows k floats apart (n <= FASTNAIVE_KEEP_MAX), minus
 * shift[0..3] unless shift is NULL: a quad per row, four to a vector, position j at slot j;
 * the sixteen patterns' nibbles spread to bytes by pdep, then to lanes. */
FASTNAIVE_AVX512_BUILD static void fastnaive_slot_columns_f(const float *first, ptrdiff_t k,
                                                            ptrdiff_t n, const float *shift,
                                                            fastnaive_slots_f *d)
{
    const __m512 zero = _mm512_setzero_ps();
    const __m512 o = shift ? _mm512_broadcast_f32x4(_mm_loadu_ps(shift)) : zero;
    const unsigned long long nibbles = 0x0F0F0F0F0F0F0F0FULL;
    ptrdiff_t j;
    int i, r;
    d->n = 0;
    for (j = 0; j < n; j += 16) {
        unsigned long long masks = 0;
        for (i = 0; i < 4; i++) {
            const float *row = first + (j + 4 * i) * k;
            /* The lanes of the rows before n (past them, the zeros stay). */
            const ptrdiff_t rows = n - j - 4 * i;
            const __mmask16 live = rows >= 4 ? (__mmask16)0xFFFF
                                   : rows <= 0 ? (__mmask16)0
                                   : (__mmask16)((1u << (4 * rows)) - 1);
            __m512 v;
            if (n - j >= 4 * i + 4) {
                v = _mm512_castps128_ps512(_mm_loadu_ps(row));
                v = _mm512_insertf32x4(v, _mm_loadu_ps(row + k), 1);
                v = _mm512_insertf32x4(v, _mm_loadu_ps(row + 2 * k), 2);
                v = _mm512_insertf32x4(v, _mm_loadu_ps(row + 3 * k), 3);
            } else {
                float tail[4 * FASTNAIVE_GROUP] = {0};
                for (r = 0; r < 4 && 4 * i + r < n - j; r++)
                    memcpy(tail + FASTNAIVE_GROUP * r, row + r * k, sizeof(float) * FASTNAIVE_GROUP);
                v = _mm512_loadu_ps(tail);
            }
            if (shift)
                v = _mm512_maskz_sub_ps(live, v, o);
            masks |= (unsigned long long)_mm512_cmp_ps_mask(v, zero, _CMP_NEQ_UQ) << (16 * i);
            _mm512_storeu_ps(d->quad[j + 4 * i], v);
        }
        if (!masks)
            continue;
        fastnaive_slots_append(
            d,
            _mm512_cvtepu8_epi32(_mm_set_epi64x((long long)_pdep_u64(masks >> 32, nibbles),
                                                (long long)_pdep_u64(masks & 0xFFFFFFFFULL, nibbles))),
            j);
    }
}

/* fastnaive_group_f for a group of four lines of at most FASTNAIVE_KEEP_MAX positions: the
 * same layout, from the slots; shift: the group's offsets (see fastnaive_group_f). */
static ptrdiff_t fastnaive_group_slots_f(int by_rows, const float *X, ptrdiff_t n, ptrdiff_t k,
                                         ptrdiff_t ldx, ptrdiff_t g, const float *shift,
                                         int *starts, int *index, float *quads)
{
    const ptrdiff_t n_positions = by_rows ? k : n;
    const float *first = X + FASTNAIVE_GROUP * g * (by_rows ? ldx : 1);
    fastnaive_slots_f d;
    int counts[4][FASTNAIVE_PATTERNS] = {{0}};
    ptrdiff_t nnz, e;
    if (by_rows)
        fastnaive_slot_rows_f(first, k, ldx, shift, &d);
    else
        fastnaive_slot_columns_f(first, ldx, n_positions, shift, &d);
    for (e = 0; e < d.n; e++)
        counts[d.key[e] >> 4][d.key[e] & 15]++;
    nnz = fastnaive_cursors(counts, g * n_positions, starts + FASTNAIVE_PATTERNS * g);
    for (e = 0; e < d.n; e++) {
        const int p = d.position[e];
        const int q = counts[d.key[e] >> 4][d.key[e] & 15]++;
        const int slot = by_rows ? ((p & ~15) | ((p & 3) << 2) | ((p >> 2) & 3)) : p;
        index[q] = p;
        memcpy(quads + FASTNAIVE_GROUP * (ptrdiff_t)q, d.quad[slot], sizeof d.quad[slot]);
    }
    return nnz;
}
#endif

/* The AVX-512 builder's result for a float group of four lines that the builder keeps (-1:
 * not taken, where it is not selected or compiled). */
FASTNAIVE_INLINE ptrdiff_t fastnaive_fast_group_f(int by_rows, const float *X, ptrdiff_t n,
                                                  ptrdiff_t k, ptrdiff_t ldx, ptrdiff_t g,
                                                  const float *shift, int *starts, int *index,
                                                  float *quads)
{
#if FASTNAIVE_X86_DISPATCH
    if (fastnaive_group_avx512)
        return fastnaive_group_slots_f(by_rows, X, n, k, ldx, g, shift, starts, index, quads);
#endif
    (void)by_rows; (void)X; (void)n; (void)k; (void)ldx; (void)g; (void)shift; (void)starts;
    (void)index; (void)quads;
    return -1;
}

FASTNAIVE_INLINE ptrdiff_t fastnaive_fast_group_d(int by_rows, const double *X, ptrdiff_t n,
                                                  ptrdiff_t k, ptrdiff_t ldx, ptrdiff_t g,
                                                  const double *shift, int *starts, int *index,
                                                  double *quads)
{
    (void)by_rows; (void)X; (void)n; (void)k; (void)ldx; (void)g; (void)shift; (void)starts;
    (void)index; (void)quads;
    return -1;
}

/* fastnaive_group_SUFFIX: the quads of group g of X (n, k), its rows ldx >= k elements
 * apart, into the layout above, by_rows for X @ B (groups of four rows, index = column) or
 * not for X.T @ B (groups of four columns, index = row). X may be a block of columns of a
 * wider matrix (a part of the features, by rows). Unless offsets is NULL, the lines are
 * those of X - offsets, offsets[c] subtracted from X's column c (k of them): the quads hold
 * the differences, and the nonzeros counted are theirs. Groups are independent: each writes
 * only its own entries. Returns the number of nonzeros of the group's lines. */
#define FASTNAIVE_BUILD_DEFINE(T, SUFFIX)                                                      \
/* The generic pass, from scalars: lines < 4 (the last group) or no fast pass. */              \
FASTNAIVE_INLINE void fastnaive_group_pass_##SUFFIX(                                           \
    int mode, int by_rows, const T *first, ptrdiff_t ldx, int lines, ptrdiff_t n_positions,    \
    const T *shift, int counts[4][FASTNAIVE_PATTERNS], int *index, T *quads,                   \
    fastnaive_kept_##SUFFIX *kept)                                                             \
{                                                                                              \
    const ptrdiff_t line_stride = by_rows ? ldx : 1, position_stride = by_rows ? 1 : ldx;      \
    ptrdiff_t j;                                                                               \
    int c, r;                                                                                  \
    if (lines == FASTNAIVE_GROUP                                                               \
        && fastnaive_fast_pass_##SUFFIX(mode, by_rows, first, ldx, n_positions, shift, counts, \
                                        index, quads, kept))                                   \
        return;                                                                                \
    for (j = 0; j < n_positions; j += 4) {                                                     \
        const int width = n_positions - j < 4 ? (int)(n_positions - j) : 4;                    \
        T v[4][FASTNAIVE_GROUP];                                                               \
        int pattern[4], any = 0;                                                               \
        for (c = 0; c < 4; c++) {                                                              \
            pattern[c] = 0;                                                                    \
            for (r = 0; r < FASTNAIVE_GROUP; r++) {                                            \
                v[c][r] = c < width && r < lines                                               \
                          ? first[r * line_stride + (j + c) * position_stride] : 0;            \
                if (shift && c < width && r < lines)                                           \
                    v[c][r] -= shift[by_rows ? j + c : r];                                     \
                pattern[c] |= (v[c][r] != 0) << r;                                             \
            }                                                                                  \
            any |= pattern[c];                                                                 \
        }                                                                                      \
        if (!any)                                                                              \
            continue;                                                                          \
        for (c = 0; c < width; c++) {                                                          \
            if (mode == FASTNAIVE_KEEP) {                                                      \
                counts[c][pattern[c]]++;                                                       \
                kept->position[kept->n] = (int)(j + c);                                        \
                kept->pattern[kept->n] = pattern[c];                                           \
                for (r = 0; r < FASTNAIVE_GROUP; r++)                                          \
                    kept->quad[kept->n][r] = v[c][r];                                          \
                kept->n += pattern[c] != 0;                                                    \
            } else if (mode == FASTNAIVE_COUNT) {                                              \
                counts[c][pattern[c]]++;                                                       \
            } else {                                                                           \
                const int q = counts[c][pattern[c]]++;                                         \
                index[q] = (int)(j + c);                                                       \
                for (r = 0; r < FASTNAIVE_GROUP; r++)                                          \
                    quads[FASTNAIVE_GROUP * q + r] = v[c][r];                                  \
            }                                                                                  \
        }                                                                                      \
    }                                                                                          \
}                                                                                              \
                                                                                               \
static ptrdiff_t fastnaive_group_##SUFFIX(int by_rows, const T *X, ptrdiff_t n, ptrdiff_t k,   \
                                          ptrdiff_t ldx, ptrdiff_t g, int *starts, int *index, \
                                          T *quads, const T *offsets)                          \
{                                                                                              \
    const ptrdiff_t n_lines = by_rows ? n : k, n_positions = by_rows ? k : n;                  \
    const int lines = n_lines - FASTNAIVE_GROUP * g < FASTNAIVE_GROUP                          \
                      ? (int)(n_lines - FASTNAIVE_GROUP * g) : FASTNAIVE_GROUP;                \
    const T *first = X + FASTNAIVE_GROUP * g * (by_rows ? ldx : 1);                            \
    /* The group's offsets: by rows, one per position; by columns, one per line. */            \
    const T *shift = offsets && !by_rows ? offsets + FASTNAIVE_GROUP * g : offsets;            \
    int counts[4][FASTNAIVE_PATTERNS] = {{0}};                                                 \
    ptrdiff_t nnz, e;                                                                          \
    const int keep = n_positions <= FASTNAIVE_KEEP_MAX;                                        \
    fastnaive_kept_##SUFFIX kept;                                                              \
    if (lines == FASTNAIVE_GROUP && keep) {                                                    \
        const ptrdiff_t done = fastnaive_fast_group_##SUFFIX(by_rows, X, n, k, ldx, g, shift,  \
                                                             starts, index, quads);            \
        if (done >= 0)                                                                         \
            return done;                                                                       \
    }                                                                                          \
    kept.n = 0;                                                                                \
    fastnaive_group_pass_##SUFFIX(keep ? FASTNAIVE_KEEP : FASTNAIVE_COUNT, by_rows, first, ldx,\
                                  lines, n_positions, shift, counts, index, quads, &kept);     \
    nnz = fastnaive_cursors(counts, g * n_positions, starts + FASTNAIVE_PATTERNS * g);         \
    if (!keep) {                                                                               \
        fastnaive_group_pass_##SUFFIX(FASTNAIVE_WRITE, by_rows, first, ldx, lines, n_positions,\
                                      shift, counts, index, quads, &kept);                     \
        return nnz;                                                                            \
    }                                                                                          \
    for (e = 0; e < kept.n; e++) {                                                             \
        const int q = counts[kept.position[e] & 3][kept.pattern[e]]++;                         \
        index[q] = kept.position[e];                                                           \
        memcpy(quads + FASTNAIVE_GROUP * (ptrdiff_t)q, kept.quad[e], sizeof kept.quad[e]);     \
    }                                                                                          \
    return nnz;                                                                                \
}

FASTNAIVE_BUILD_DEFINE(float, f)
FASTNAIVE_BUILD_DEFINE(double, d)

/* fastnaive_add_parts_SUFFIX: out[e] := act(out[e] + part[e]) for e < count, act = relu
 * (z < 0 ? 0 : z, NaN staying NaN) if relu else identity: a product's partial sums over two
 * parts of its positions, added. */
#define FASTNAIVE_ADD_DEFINE(T, SUFFIX)                                                        \
static void fastnaive_add_parts_##SUFFIX(T *out, const T *part, ptrdiff_t count, int relu)     \
{                                                                                              \
    ptrdiff_t e;                                                                               \
    if (relu)                                                                                  \
        for (e = 0; e < count; e++) {                                                          \
            const T z = out[e] + part[e];                                                      \
            out[e] = z < 0 ? 0 : z;                                                            \
        }                                                                                      \
    else                                                                                       \
        for (e = 0; e < count; e++)                                                            \
            out[e] += part[e];                                                                 \
}

FASTNAIVE_ADD_DEFINE(float, f)
FASTNAIVE_ADD_DEFINE(double, d)

typedef void (*fastnaive_grouped_product_f_t)(ptrdiff_t, const int *, const int *, const float *,
                                              const float *, ptrdiff_t, const float *,
                                              const float *, float, float, int, float *, ptrdiff_t,
                                              ptrdiff_t, ptrdiff_t, ptrdiff_t);
typedef void (*fastnaive_grouped_product_d_t)(ptrdiff_t, const int *, const int *, const double *,
                                              const double *, ptrdiff_t, const double *,
                                              const double *, double, double, int, double *,
                                              ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t);

static fastnaive_grouped_product_f_t fastnaive_grouped_product_f =
    fastnaive_grouped_product_f_baseline;
static fastnaive_grouped_product_d_t fastnaive_grouped_product_d =
    fastnaive_grouped_product_d_baseline;

typedef void (*fastnaive_offset_sums_f_t)(const float *, const float *, ptrdiff_t, ptrdiff_t,
                                          const float *, float *, ptrdiff_t, ptrdiff_t);
typedef void (*fastnaive_offset_sums_d_t)(const double *, const double *, ptrdiff_t, ptrdiff_t,
                                          const double *, double *, ptrdiff_t, ptrdiff_t);
static fastnaive_offset_sums_f_t fastnaive_offset_sums_f = fastnaive_offset_sums_f_baseline;
static fastnaive_offset_sums_d_t fastnaive_offset_sums_d = fastnaive_offset_sums_d_baseline;

/* Points the products, and the narrow ones (narrow_kernels.h), at the widest instruction set
 * that this CPU runs and that is at most widest (2: AVX-512, 1: AVX2 with FMA, 0: baseline;
 * lower caps test the other versions). Returns the level chosen. */
static int fastnaive_sparse_select_isa(int widest)
{
    int level = 0;
#if FASTNAIVE_X86_DISPATCH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        level = __builtin_cpu_supports("avx512f") ? 2 : 1;
    if (level > widest)
        level = widest;
    fastnaive_group_avx512 = level == 2;
    if (level == 2) {
        fastnaive_grouped_product_f = fastnaive_grouped_product_f_avx512;
        fastnaive_grouped_product_d = fastnaive_grouped_product_d_avx512;
        fastnaive_offset_sums_f = fastnaive_offset_sums_f_avx512;
        fastnaive_offset_sums_d = fastnaive_offset_sums_d_avx512;
        fastnaive_narrow_select(level);
        return level;
    }
    if (level == 1) {
        fastnaive_grouped_product_f = fastnaive_grouped_product_f_avx2;
        fastnaive_grouped_product_d = fastnaive_grouped_product_d_avx2;
        fastnaive_offset_sums_f = fastnaive_offset_sums_f_avx2;
        fastnaive_offset_sums_d = fastnaive_offset_sums_d_avx2;
        fastnaive_narrow_select(level);
        return level;
    }
#endif
    (void)widest;
    fastnaive_grouped_product_f = fastnaive_grouped_product_f_baseline;
    fastnaive_grouped_product_d = fastnaive_grouped_product_d_baseline;
    fastnaive_offset_sums_f = fastnaive_offset_sums_f_baseline;
    fastnaive_offset_sums_d = fastnaive_offset_sums_d_baseline;
    fastnaive_narrow_select(0);
    return 0;
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
