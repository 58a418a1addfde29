/* The optimizers' element steps (fastnaive._kernels.momentum_update and adam_update run
 * them on chunks of the flat weights, one chunk per thread at a time; rule_step on each
 * block of a weight gradient as a kernel produces it).
 *
 * Each is compiled for AVX-512, AVX2 and the baseline, and the loader picks the best one the
 * CPU runs: Adam's square root and division bound it, and on Zen 4 the AVX2 loop, alone and
 * hot in cache, takes half the time of the baseline's SSE2 one (BENCHMARKS.md).
 * Contraction into fused multiply-adds is off, so every clone rounds each operation as the
 * C expression says and the weights are the same bits on every CPU.
 */
#ifndef FASTNAIVE_UPDATES_H
#define FASTNAIVE_UPDATES_H

#include <math.h>
#include <stddef.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define FASTNAIVE_UPDATE_CLONES \
    __attribute__((target_clones("avx512f", "avx2", "default"), optimize("fp-contract=off")))
#else
#define FASTNAIVE_UPDATE_CLONES
#endif
#if defined(__clang__)
#define FASTNAIVE_NO_CONTRACT _Pragma("clang fp contract(off)")
#else
#define FASTNAIVE_NO_CONTRACT
#endif

/* v := momentum * v - lr * g;  w := w + (momentum * v - lr * g if nesterov else v) */
#define FASTNAIVE_MOMENTUM_DEFINE(T, SUFFIX)                                                   \
FASTNAIVE_UPDATE_CLONES static void fastnaive_momentum_range_##SUFFIX(                         \
    T *w, const T *g, T *velocity, ptrdiff_t n, T learning_rate, T momentum, int nesterov)     \
{                                                                                              \
    FASTNAIVE_NO_CONTRACT                                                                      \
    ptrdiff_t i;                                                                               \
    if (nesterov) {                                                                            \
        for (i = 0; i < n; i++) {                                                              \
            velocity[i] = momentum * velocity[i] - learning_rate * g[i];                       \
            w[i] += momentum * velocity[i] - learning_rate * g[i];                             \
        }                                                                                      \
    } else {                                                                                   \
        for (i = 0; i < n; i++) {                                                              \
            velocity[i] = momentum * velocity[i] - learning_rate * g[i];                       \
            w[i] += velocity[i];                                                               \
        }                                                                                      \
    }                                                                                          \
}

/* m += (1 - b1) (g - m);  v += (1 - b2) (g^2 - v);  w -= alpha * m / (sqrt(v) + eps) */
#define FASTNAIVE_ADAM_DEFINE(T, SUFFIX, SQRT)                                                 \
FASTNAIVE_UPDATE_CLONES static void fastnaive_adam_range_##SUFFIX(                             \
    T *w, const T *g, T *m, T *v, ptrdiff_t n, T alpha, T one_minus_beta_1,                    \
    T one_minus_beta_2, T epsilon)                                                             \
{                                                                                              \
    FASTNAIVE_NO_CONTRACT                                                                      \
    ptrdiff_t i;                                                                               \
    for (i = 0; i < n; i++) {                                                                  \
        m[i] += (g[i] - m[i]) * one_minus_beta_1;                                              \
        v[i] += (g[i] * g[i] - v[i]) * one_minus_beta_2;                                       \
        w[i] -= m[i] * alpha / (SQRT(v[i]) + epsilon);                                         \
    }                                                                                          \
}

FASTNAIVE_MOMENTUM_DEFINE(float, f)
FASTNAIVE_MOMENTUM_DEFINE(double, d)
FASTNAIVE_ADAM_DEFINE(float, f, sqrtf)
FASTNAIVE_ADAM_DEFINE(double, d, sqrt)

#endif
