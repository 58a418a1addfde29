/* A model of the book's training step (784-512 relu-10 softmax, SGD, batch 128) with W1's
 * columns split between two threads, for benchmarks/split_step.py: what two threads gain
 * when each owns half of the hidden units, wherever the host places the two CPUs.
 *
 * Each thread groups the whole batch itself (the rows for X @ W1, the columns for the
 * weight gradient: fastnaive's grouping, src/fastnaive/sparse_kernels.h), computes its
 * half of Z = relu(X @ W1 + b1) and that half's share of the logits; after one barrier,
 * the loss and delta2 in full (each thread its own copy), then its half of delta1, its
 * rows of W2, its columns of W1 and b1. What crosses between the cores each step: the two
 * partial logits (5 KB), b2 and the barriers. One thread runs both halves in turn and sums
 * the logits in the same two halves, so every thread count gives the same bits.
 *
 * layout: each half of W1, W2, Z and delta1 in buffers of its own, except, with bit 0 set,
 * W1 one row-major array (as the model holds it) and, with bit 1 set, Z and delta1 one
 * each: the threads' halves side by side in every row. One persistent OpenMP region per epoch. Nothing is allocated per
 * step; every buffer of a call is allocated and freed by fastnaive_bench_split_epoch. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <omp.h>
#include "sparse_kernels.h"

enum { N = 128, K = 784, M = 512, H = M / 2, C = 10, CUT = K / 2, G = N / 4, GC = K / 4 };

typedef struct {
    int row_starts[2 * FASTNAIVE_PATTERNS * G], column_starts[FASTNAIVE_PATTERNS * GC];
    int *row_index, *column_index;
    float *row_quads, *column_quads;
    float *delta2;  /* this thread's copy, N x C */
} Groups;

typedef struct {
    float *W1[2], *b1[2], *W2T[2], *Z[2], *delta1[2];  /* per half; W2T: C x H */
    ptrdiff_t ldw, ldz;                                /* row strides of W1 and of Z, delta1 */
    float *b2, *partial[2];                            /* partial logits per half, N x C */
    Groups groups[2];
    double loss;
} Model;

static void *zeroed(size_t bytes)
{
    void *p = aligned_alloc(4096, (bytes + 4095) / 4096 * 4096);
    if (p)
        memset(p, 0, bytes);
    return p;
}

/* Z[half] = relu(X @ W1[half] + b1[half]) from the row groups (part 1's sums added to part
 * 0's, as fastnaive's one-thread forward does), then that half's logits. */
static void forward_half(Model *m, const Groups *gr, int half)
{
    float *Z = m->Z[half], *p = m->partial[half];
    const float *W1 = m->W1[half], *W2T = m->W2T[half];
    int i, c, h;
    fastnaive_grouped_product_f(G, gr->row_starts, gr->row_index, gr->row_quads, W1, m->ldw,
                                m->b1[half], NULL, 1, 0, 0, Z, m->ldz, N, 0, H);
    fastnaive_grouped_product_f(G, gr->row_starts + FASTNAIVE_PATTERNS * G,
                                gr->row_index + N * CUT, gr->row_quads + 4 * N * CUT,
                                W1 + CUT * m->ldw, m->ldw, NULL, NULL, 1, 1, 1, Z, m->ldz, N, 0,
                                H);
    for (i = 0; i < N; i++)
        for (c = 0; c < C; c++) {
            const float *z = Z + i * m->ldz, *w = W2T + c * H;
            float sum = 0;
#pragma omp simd reduction(+ : sum)
            for (h = 0; h < H; h++)
                sum += z[h] * w[h];
            p[i * C + c] = sum;
        }
}

/* delta1[half] = (delta2 @ W2[half]^T) * relu'(Z[half]); b1, W2 and, from the column groups,
 * W1 of the half updated by SGD. */
static void backward_half(Model *m, const Groups *gr, int half, float lr)
{
    const float *Z = m->Z[half], *d2 = gr->delta2;
    float *delta1 = m->delta1[half], *W2T = m->W2T[half], *b1 = m->b1[half];
    float bias_sums[H];
    int i, c, h;
    for (h = 0; h < H; h++)
        bias_sums[h] = 0;
    for (i = 0; i < N; i++) {
        float *d1 = delta1 + i * m->ldz;
        const float *z = Z + i * m->ldz;
        for (h = 0; h < H; h++)
            d1[h] = 0;
        for (c = 0; c < C; c++) {
            const float v = d2[i * C + c], *w = W2T + c * H;
#pragma omp simd
            for (h = 0; h < H; h++)
                d1[h] += v * w[h];
        }
#pragma omp simd
        for (h = 0; h < H; h++) {
            d1[h] = z[h] > 0 ? d1[h] : 0;
            bias_sums[h] += d1[h];
        }
    }
    for (h = 0; h < H; h++)
        b1[h] -= lr * bias_sums[h];
    for (i = 0; i < N; i++) {
        const float *z = Z + i * m->ldz;
        for (c = 0; c < C; c++) {
            const float v = -lr * d2[i * C + c];
            float *w = W2T + c * H;
#pragma omp simd
            for (h = 0; h < H; h++)
                w[h] += v * z[h];
        }
    }
    fastnaive_grouped_product_f(GC, gr->column_starts, gr->column_index, gr->column_quads,
                                delta1, m->ldz, NULL, NULL, -lr, 1, 0, m->W1[half], m->ldw, K, 0,
                                H);
}

/* One step on thread t of `threads` (1 or 2), inside the epoch's parallel region. */
static void step(Model *m, int t, int threads, const float *x, const int *y, float lr)
{
    Groups *gr = &m->groups[t];
    int part, g, i, c, half;
    for (part = 0; part < 2; part++) {
        const int f0 = part ? CUT : 0, f1 = part ? K : CUT;
        for (g = 0; g < G; g++)
            fastnaive_group_f(1, x + f0, N, f1 - f0, K, g,
                              gr->row_starts + FASTNAIVE_PATTERNS * G * part,
                              gr->row_index + N * f0, gr->row_quads + 4 * N * f0, NULL);
    }
    for (half = 0; half < 2; half++)
        if (threads == 1 || half == t)
            forward_half(m, gr, half);
#pragma omp barrier
    {
        double loss = 0;
        for (i = 0; i < N; i++) {
            float logits[C], largest = -INFINITY, total = 0;
            for (c = 0; c < C; c++) {
                logits[c] = m->partial[0][i * C + c] + m->partial[1][i * C + c] + m->b2[c];
                largest = logits[c] > largest ? logits[c] : largest;
            }
            for (c = 0; c < C; c++) {
                logits[c] = expf(logits[c] - largest);
                total += logits[c];
            }
            for (c = 0; c < C; c++)
                gr->delta2[i * C + c] = (logits[c] / total - (c == y[i])) / N;
            loss -= log(logits[y[i]] / total);
        }
        for (g = 0; g < GC; g++)
            fastnaive_group_f(0, x, N, K, K, g, gr->column_starts, gr->column_index,
                              gr->column_quads, NULL);
#pragma omp barrier
        if (t == 0) {
            m->loss += loss / N;
            for (c = 0; c < C; c++) {
                float sum = 0;
                for (i = 0; i < N; i++)
                    sum += gr->delta2[i * C + c];
                m->b2[c] -= lr * sum;
            }
        }
    }
    for (half = 0; half < 2; half++)
        if (threads == 1 || half == t)
            backward_half(m, gr, half, lr);
#pragma omp barrier
}

static double seconds(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

/* `steps` SGD steps (learning rate 1e-3) on batches[s % n_batches] (N x K floats each, their
 * labels N ints each) on `threads` threads (1 or 2) in `layout`, on the widest kernels the
 * CPU runs up to `widest` (2: AVX-512, 1: AVX2, 0: the baseline), from W1 and W2 drawn from
 * U[0, 0.1) by a fixed generator, the biases zero. Returns the seconds the steps took (-1
 * if a buffer could not be allocated); *loss := the mean of the steps' losses, *bits := a
 * hash of W1's and W2's bits after. */
double fastnaive_bench_split_epoch(const float *batches, const int *labels, int n_batches,
                                   int steps, int threads, int layout, int widest,
                                   double *loss, unsigned *bits)
{
    Model m;
    unsigned state = 12345, hash = 2166136261u;
    float *whole[3] = {NULL, NULL, NULL};
    double start, elapsed = -1;
    int ok = 1, t, r, j;
    memset(&m, 0, sizeof m);
    fastnaive_sparse_select_isa(widest);
    m.ldw = layout & 1 ? M : H;
    m.ldz = layout & 2 ? M : H;
    for (t = 0; t < 3; t++)
        if (layout & (t ? 2 : 1))
            ok &= (whole[t] = zeroed(sizeof(float) * (t ? N : K) * M)) != NULL;
    for (t = 0; t < 2 && ok; t++) {
        Groups *gr = &m.groups[t];
        m.W1[t] = layout & 1 ? whole[0] + t * H : zeroed(sizeof(float) * K * H);
        m.Z[t] = layout & 2 ? whole[1] + t * H : zeroed(sizeof(float) * N * H);
        m.delta1[t] = layout & 2 ? whole[2] + t * H : zeroed(sizeof(float) * N * H);
        m.b1[t] = zeroed(sizeof(float) * H);
        m.W2T[t] = zeroed(sizeof(float) * C * H);
        m.partial[t] = zeroed(sizeof(float) * N * C);
        gr->row_index = zeroed(sizeof(int) * N * K);
        gr->column_index = zeroed(sizeof(int) * N * K);
        gr->row_quads = zeroed(sizeof(float) * 4 * N * K + 256);
        gr->column_quads = zeroed(sizeof(float) * 4 * N * K + 256);
        gr->delta2 = zeroed(sizeof(float) * N * C);
        ok &= m.W1[t] && m.Z[t] && m.delta1[t] && m.b1[t] && m.W2T[t] && m.partial[t]
              && gr->row_index && gr->column_index && gr->row_quads && gr->column_quads
              && gr->delta2;
    }
    m.b2 = zeroed(sizeof(float) * C);
    if (ok && m.b2) {
        /* W1 (K x M) and W2 (M x C) in row-major order, whatever the layout */
        for (r = 0; r < K; r++)
            for (j = 0; j < M; j++) {
                state = state * 1664525u + 1013904223u;
                m.W1[j / H][r * m.ldw + j % H] = 0.1f * (float)(state >> 8) / 16777216.0f;
            }
        for (r = 0; r < M; r++)
            for (j = 0; j < C; j++) {
                state = state * 1664525u + 1013904223u;
                m.W2T[r / H][j * H + r % H] = 0.1f * (float)(state >> 8) / 16777216.0f;
            }
        start = seconds();
#pragma omp parallel num_threads(threads)
        {
            const int me = omp_get_thread_num();
            int s;
            for (s = 0; s < steps; s++)
                step(&m, me, threads, batches + (size_t)(s % n_batches) * N * K,
                     labels + (size_t)(s % n_batches) * N, 1e-3f);
        }
        elapsed = seconds() - start;
        *loss = m.loss / steps;
        for (r = 0; r < K; r++)
            for (j = 0; j < M; j++) {
                unsigned u;
                memcpy(&u, &m.W1[j / H][r * m.ldw + j % H], sizeof u);
                hash = (hash ^ u) * 16777619u;
            }
        for (r = 0; r < M; r++)
            for (j = 0; j < C; j++) {
                unsigned u;
                memcpy(&u, &m.W2T[r / H][j * H + r % H], sizeof u);
                hash = (hash ^ u) * 16777619u;
            }
        *bits = hash;
    }
    for (t = 0; t < 2; t++) {
        Groups *gr = &m.groups[t];
        if (!(layout & 1))
            free(m.W1[t]);
        if (!(layout & 2)) {
            free(m.Z[t]);
            free(m.delta1[t]);
        }
        free(m.b1[t]);
        free(m.W2T[t]);
        free(m.partial[t]);
        free(gr->row_index);
        free(gr->column_index);
        free(gr->row_quads);
        free(gr->column_quads);
        free(gr->delta2);
    }
    for (t = 0; t < 3; t++)
        free(whole[t]);
    free(m.b2);
    return elapsed;
}
