/* max |a_i| over an array, for the step's overflow bounds (fastnaive._kernels.max_abs),
 * and with it the number of nonzero a_i (or of nonzero a_ij - c_j), for the first layer's
 * kernel choice (scan); over a block of an input gradient and the outputs it is taken
 * through, with ReLU's derivative applied on the way (dense_input_grad's epilogue).
 *
 * The absolute value of a float, read as the integer of its bits with the sign bit
 * cleared, orders like the float itself, and NaN and infinity are the integers from the
 * exponent mask up: one integer max reduction, which compilers vectorise without fast-math,
 * finds both the largest magnitude and any non-finite value. It is compiled for AVX-512,
 * AVX2 and the baseline, and the loader picks the best one the CPU runs.
 */
#ifndef FASTNAIVE_MAX_ABS_H
#define FASTNAIVE_MAX_ABS_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__SANITIZE_ADDRESS__)
#define FASTNAIVE_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FASTNAIVE_CLONES
#endif

/* out := the magnitude whose bits are the integer m (the largest |a_i| read as integers),
 * inf if it is not finite. */
#define FASTNAIVE_MAGNITUDE(T, EXPONENT, m, out)                                            \
    do {                                                                                    \
        T value;                                                                            \
        memcpy(&value, &m, sizeof value);                                                   \
        out = m >= EXPONENT ? INFINITY : (double)value;                                     \
    } while (0)

/* max_i |a_i| (0 when n = 0); +inf when any a_i is NaN or infinite */
FASTNAIVE_CLONES static double fastnaive_max_abs_f(const float *a, ptrdiff_t n) {
    int32_t bits, m = 0;
    for (ptrdiff_t i = 0; i < n; i++) {
        memcpy(&bits, a + i, sizeof bits);
        bits &= 0x7fffffff;
        m = bits > m ? bits : m;
    }
    double result;
    FASTNAIVE_MAGNITUDE(float, 0x7f800000, m, result);
    return result;
}

/* max_i |a_i| (0 when n = 0); +inf when any a_i is NaN or infinite */
FASTNAIVE_CLONES static double fastnaive_max_abs_d(const double *a, ptrdiff_t n) {
    int64_t bits, m = 0;
    for (ptrdiff_t i = 0; i < n; i++) {
        memcpy(&bits, a + i, sizeof bits);
        bits &= INT64_MAX;
        m = bits > m ? bits : m;
    }
    double result;
    FASTNAIVE_MAGNITUDE(double, INT64_C(0x7ff0000000000000), m, result);
    return result;
}

/* The same over a_0..a_n-1, with *nonzeros := the number of a_i that are not +-0 (NaN
 * counts): the nonzero magnitudes are the nonzero integers. Counted in lanes of the bits'
 * width, a block at a time, so that the count vectorises with the maximum. And
 * fastnaive_scan_from_SUFFIX, the same over the differences a[i, j] - c[j] of `rows` rows
 * of k elements (row-major): a's values as distances from per-column offsets c. Defined for
 * element type T read as integer type I, with MAGNITUDE the mask without the sign bit and
 * EXPONENT the bits of infinity. */
#define FASTNAIVE_SCAN_BLOCK ((ptrdiff_t)1 << 20)
/* Counts value (of type T) into block and its magnitude into m. */
#define FASTNAIVE_SCAN_ONE(T, MAGNITUDE, value)                                             \
    do {                                                                                    \
        const T scanned = (value);                                                          \
        memcpy(&bits, &scanned, sizeof bits);                                               \
        bits &= MAGNITUDE;                                                                  \
        m = bits > m ? bits : m;                                                            \
        block += bits != 0;                                                                 \
    } while (0)
/* The maximum m's value, inf if it is not finite. */
#define FASTNAIVE_SCAN_RESULT(T, EXPONENT)                                                  \
    double result;                                                                          \
    FASTNAIVE_MAGNITUDE(T, EXPONENT, m, result);                                            \
    return result;
#define FASTNAIVE_SCAN_DEFINE(T, I, SUFFIX, MAGNITUDE, EXPONENT)                              \
FASTNAIVE_CLONES static double fastnaive_scan_##SUFFIX(const T *a, ptrdiff_t n,              \
                                                       ptrdiff_t *nonzeros) {                 \
    I bits, m = 0;                                                                          \
    ptrdiff_t count = 0;                                                                    \
    for (ptrdiff_t i0 = 0; i0 < n; i0 += FASTNAIVE_SCAN_BLOCK) {                            \
        const ptrdiff_t i1 = n - i0 < FASTNAIVE_SCAN_BLOCK ? n : i0 + FASTNAIVE_SCAN_BLOCK; \
        I block = 0;                                                                        \
        for (ptrdiff_t i = i0; i < i1; i++)                                                 \
            FASTNAIVE_SCAN_ONE(T, MAGNITUDE, a[i]);                                         \
        count += block;                                                                     \
    }                                                                                       \
    *nonzeros = count;                                                                      \
    FASTNAIVE_SCAN_RESULT(T, EXPONENT)                                                      \
}                                                                                           \
                                                                                            \
FASTNAIVE_CLONES static double fastnaive_scan_from_##SUFFIX(const T *a, const T *c,          \
                                                            ptrdiff_t rows, ptrdiff_t k,      \
                                                            ptrdiff_t *nonzeros) {            \
    I bits, m = 0;                                                                          \
    ptrdiff_t count = 0;                                                                    \
    for (ptrdiff_t r = 0; r < rows; r++) {                                                  \
        I block = 0;                                                                        \
        for (ptrdiff_t j = 0; j < k; j++)                                                   \
            FASTNAIVE_SCAN_ONE(T, MAGNITUDE, a[r * k + j] - c[j]);                          \
        count += block;                                                                     \
    }                                                                                       \
    *nonzeros = count;                                                                      \
    FASTNAIVE_SCAN_RESULT(T, EXPONENT)                                                      \
}

FASTNAIVE_SCAN_DEFINE(float, int32_t, f, 0x7fffffff, 0x7f800000)
FASTNAIVE_SCAN_DEFINE(double, int64_t, d, INT64_MAX, INT64_C(0x7ff0000000000000))

/* fastnaive_block_peaks_SUFFIX: over a block of `rows` rows of `cols` elements, d := s where
 * a > 0, else 0 (ReLU's derivative from its outputs a; a NaN gives 0) when relu is nonzero,
 * else d := s; then, unless peaks is NULL, peaks[0] := max(peaks[0], max |a|) and
 * peaks[1] := max(peaks[1], max |d|), as fastnaive_max_abs's (inf for a value that is not
 * finite). The rows of a and d are `stride` elements apart, those of s `s_stride` (s may be
 * d itself); a may be NULL where neither relu nor peaks needs it. One pass over each row,
 * while the block is in cache. */
#define FASTNAIVE_BLOCK_PEAKS_DEFINE(T, I, SUFFIX, MAGNITUDE, EXPONENT)                       \
FASTNAIVE_CLONES static void fastnaive_block_peaks_##SUFFIX(                                  \
    const T *a, const T *s, ptrdiff_t s_stride, T *d, ptrdiff_t rows, ptrdiff_t cols,       \
    ptrdiff_t stride, int relu, double *peaks) {                                            \
    I bits, ma = 0, md = 0;                                                                 \
    if (!relu && peaks == NULL && s == d) return;                                           \
    for (ptrdiff_t r = 0; r < rows; r++) {                                                  \
        const T *ar = a != NULL ? a + r * stride : NULL;                                    \
        const T *sr = s + r * s_stride;                                                     \
        T *dr = d + r * stride;                                                             \
        if (peaks == NULL) {                                                                \
            if (relu)                                                                       \
                for (ptrdiff_t j = 0; j < cols; j++)                                        \
                    dr[j] = ar[j] > 0 ? sr[j] : 0;                                          \
            else                                                                            \
                memcpy(dr, sr, (size_t)cols * sizeof(T));                                   \
            continue;                                                                       \
        }                                                                                   \
        for (ptrdiff_t j = 0; j < cols; j++) {                                              \
            const T value = relu ? (ar[j] > 0 ? sr[j] : 0) : sr[j];                        \
            dr[j] = value;                                                                  \
            memcpy(&bits, &value, sizeof bits);                                             \
            bits &= MAGNITUDE;                                                              \
            md = bits > md ? bits : md;                                                     \
            memcpy(&bits, ar + j, sizeof bits);                                             \
            bits &= MAGNITUDE;                                                              \
            ma = bits > ma ? bits : ma;                                                     \
        }                                                                                   \
    }                                                                                       \
    if (peaks != NULL) {                                                                    \
        double pa, pd;                                                                      \
        FASTNAIVE_MAGNITUDE(T, EXPONENT, ma, pa);                                           \
        FASTNAIVE_MAGNITUDE(T, EXPONENT, md, pd);                                           \
        peaks[0] = pa > peaks[0] ? pa : peaks[0];                                           \
        peaks[1] = pd > peaks[1] ? pd : peaks[1];                                           \
    }                                                                                       \
}

FASTNAIVE_BLOCK_PEAKS_DEFINE(float, int32_t, f, 0x7fffffff, 0x7f800000)
FASTNAIVE_BLOCK_PEAKS_DEFINE(double, int64_t, d, INT64_MAX, INT64_C(0x7ff0000000000000))

#endif
