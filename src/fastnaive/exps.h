/* exp over the shifted logits of the softmax cross-entropies (fastnaive._losses): each row's
 * maximum is subtracted, so every argument is <= 0 (or NaN).
 *
 * libm's exp is a call per element that compilers do not vectorise; a softmax over a batch
 * of 128 rows of 10 classes spent 8 of its 14 us there. This is the same function as a
 * loop of arithmetic the compiler vectorises: x = k ln 2 + r with k = round(x / ln 2) and
 * |r| <= ln 2 / 2 (Cody and Waite's two-part ln 2, so k ln2_hi is exact), exp(r) by its
 * Taylor polynomial to degree 13 (truncation below 2e-18, under a fiftieth of an ulp), and
 * 2^k put into the exponent bits. Measured against glibc's exp over [-708, 0]: within 1 ulp.
 * Below -708 the result would be subnormal, and 0 is returned (its share of a row whose
 * largest term is 1 vanishes, and the losses store subnormal gradients as 0); -inf gives 0
 * and NaN stays NaN. Contraction into fused multiply-adds is off and the clones compute the
 * same operations, so every CPU gets the same bits.
 */
#ifndef FASTNAIVE_EXPS_H
#define FASTNAIVE_EXPS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define FASTNAIVE_EXPS_CLONES \
    __attribute__((target_clones("avx512f", "avx2", "default"), optimize("fp-contract=off")))
#else
#define FASTNAIVE_EXPS_CLONES
#endif
#if defined(__clang__)
#define FASTNAIVE_EXPS_NO_CONTRACT _Pragma("clang fp contract(off)")
#else
#define FASTNAIVE_EXPS_NO_CONTRACT
#endif

/* exp(x) for x <= 0 (x > 0 is not served: no overflow handling); 0 below -708 */
static inline double fastnaive_exp_nonpositive(double x) {
    FASTNAIVE_EXPS_NO_CONTRACT
    const double log2e = 1.4426950408889634074;
    const double ln2_hi = 6.93147180369123816490e-01; /* 32 significant bits */
    const double ln2_lo = 1.90821492927058770002e-10;
    const double round = 6755399441055744.0; /* 1.5 * 2^52: adding it rounds to an integer */
    double t = x * log2e + round;
    double k = t - round;
    double r = (x - k * ln2_hi) - k * ln2_lo;
    double p = 1.0 / 6227020800.0;
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    int64_t bits_t, bits_round, bits_scale;
    double scale;
    memcpy(&bits_t, &t, sizeof bits_t);
    memcpy(&bits_round, &round, sizeof bits_round);
    /* k, the low bits of t's significand, biased into an exponent; clamped so that the
     * bits stay a normal number where the result is replaced by 0 below */
    bits_scale = bits_t - bits_round + 1023;
    bits_scale = bits_scale < 1 ? 1 : bits_scale;
    bits_scale <<= 52;
    memcpy(&scale, &bits_scale, sizeof scale);
    return x < -708.0 ? 0.0 : p * scale;
}

/* a[i] := exp(a[i]) for i < n, every a[i] <= 0 (or NaN) */
FASTNAIVE_EXPS_CLONES static void fastnaive_exps_in_place(double *a, ptrdiff_t n) {
    FASTNAIVE_EXPS_NO_CONTRACT
    for (ptrdiff_t i = 0; i < n; i++)
        a[i] = fastnaive_exp_nonpositive(a[i]);
}

#endif
