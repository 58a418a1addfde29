# Design: one kernel per step of the MLP's forward and backward pass, over
# C-contiguous typed memoryviews of float32 or float64 (the fused `floating`),
# any number of rows. Kernels run without the GIL, never allocate and never
# raise: shapes are checked by the `def` wrappers at the bottom, which are the
# only way in from Python, and row indices out of range turn the affected row
# into NaN instead of reading out of bounds. GEMMs go through fastnaive._blas,
# cut into blocks by their shapes (tile_grid), one single-threaded BLAS call per
# block on the threads of one OpenMP loop; the rest are epilogues fused around
# each block (bias as the GEMM's starting value with beta = 1, the activation in
# place on its output, fastnaive._activations; on an input gradient, the previous
# layer's activation derivative and the peaks of the step's overflow bound). Nothing
# is cut by the number of threads, so every result has the same bits at any thread
# count. A kernel whose blocks run on one thread (one block, one thread allowed, or too
# little work) loops outside any parallel region: libgomp's region costs 0.5-0.6 us even on
# one thread (a futex call each time, Zen 4), which was 15% of a tiny model's step (five
# regions of 18.6 us, benchmarks/overhead.py).
# The losses are in fastnaive._losses.
from cpython.buffer cimport (PyBUF_C_CONTIGUOUS, PyBUF_FORMAT, PyBUF_RECORDS_RO, PyBUF_WRITABLE,
                             PyBuffer_Release, PyObject_GetBuffer)
cimport cython
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport exp, INFINITY, NAN, powf, sqrtf
from libc.string cimport memcpy

import numpy as np

from fastnaive._activations cimport LINEAR_CODE, RELU_CODE, activate, activation_backward
from fastnaive._blas cimport axpy, gemm_block, gemm_into, load_blas, tile_grid

cdef extern from *:
    """
    /* Asks for the cache lines of bytes [p, p + size) (a row that a later copy reads). */
    static inline void fastnaive_prefetch_bytes(const void *p, size_t size)
    {
        const char *c = (const char *)p;
        size_t done;
        for (done = 0; done < size; done += 64)
            __builtin_prefetch(c + done);
    }
    """
    void prefetch_bytes "fastnaive_prefetch_bytes"(const void* p, size_t size) noexcept nogil

cdef extern from *:
    """
    /* A tile of 8 x 8 floats or 4 x 4 doubles transposed in AVX registers: o[c * ldo + r] :=
     * a[r * lda + c]; fastnaive_transpose_avx2() tells whether the CPU runs them. */
    #if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
    #include <immintrin.h>
    #define FASTNAIVE_TRANSPOSE_AVX2 __attribute__((target("avx2")))
    static int fastnaive_transpose_avx2(void)
    {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2");
    }
    FASTNAIVE_TRANSPOSE_AVX2 static void fastnaive_transpose_tile_f(const float *a, Py_ssize_t lda,
                                                                  float *o, Py_ssize_t ldo)
    {
        __m256 r0 = _mm256_loadu_ps(a), r1 = _mm256_loadu_ps(a + lda);
        __m256 r2 = _mm256_loadu_ps(a + 2 * lda), r3 = _mm256_loadu_ps(a + 3 * lda);
        __m256 r4 = _mm256_loadu_ps(a + 4 * lda), r5 = _mm256_loadu_ps(a + 5 * lda);
        __m256 r6 = _mm256_loadu_ps(a + 6 * lda), r7 = _mm256_loadu_ps(a + 7 * lda);
        __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
        __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
        __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
        __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
        __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
        __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
        __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
        __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
        _mm256_storeu_ps(o, _mm256_permute2f128_ps(s0, s4, 0x20));
        _mm256_storeu_ps(o + ldo, _mm256_permute2f128_ps(s1, s5, 0x20));
        _mm256_storeu_ps(o + 2 * ldo, _mm256_permute2f128_ps(s2, s6, 0x20));
        _mm256_storeu_ps(o + 3 * ldo, _mm256_permute2f128_ps(s3, s7, 0x20));
        _mm256_storeu_ps(o + 4 * ldo, _mm256_permute2f128_ps(s0, s4, 0x31));
        _mm256_storeu_ps(o + 5 * ldo, _mm256_permute2f128_ps(s1, s5, 0x31));
        _mm256_storeu_ps(o + 6 * ldo, _mm256_permute2f128_ps(s2, s6, 0x31));
        _mm256_storeu_ps(o + 7 * ldo, _mm256_permute2f128_ps(s3, s7, 0x31));
    }
    FASTNAIVE_TRANSPOSE_AVX2 static void fastnaive_transpose_tile_d(const double *a, Py_ssize_t lda,
                                                                  double *o, Py_ssize_t ldo)
    {
        __m256d r0 = _mm256_loadu_pd(a), r1 = _mm256_loadu_pd(a + lda);
        __m256d r2 = _mm256_loadu_pd(a + 2 * lda), r3 = _mm256_loadu_pd(a + 3 * lda);
        __m256d t0 = _mm256_unpacklo_pd(r0, r1), t1 = _mm256_unpackhi_pd(r0, r1);
        __m256d t2 = _mm256_unpacklo_pd(r2, r3), t3 = _mm256_unpackhi_pd(r2, r3);
        _mm256_storeu_pd(o, _mm256_permute2f128_pd(t0, t2, 0x20));
        _mm256_storeu_pd(o + ldo, _mm256_permute2f128_pd(t1, t3, 0x20));
        _mm256_storeu_pd(o + 2 * ldo, _mm256_permute2f128_pd(t0, t2, 0x31));
        _mm256_storeu_pd(o + 3 * ldo, _mm256_permute2f128_pd(t1, t3, 0x31));
    }
    #else
    static int fastnaive_transpose_avx2(void) { return 0; }
    static void fastnaive_transpose_tile_f(const float *a, Py_ssize_t lda, float *o, Py_ssize_t ldo) {}
    static void fastnaive_transpose_tile_d(const double *a, Py_ssize_t lda, double *o, Py_ssize_t ldo) {}
    #endif
    """
    int transpose_avx2 "fastnaive_transpose_avx2"() noexcept nogil
    void transpose_tile_f "fastnaive_transpose_tile_f"(const float* a, Py_ssize_t lda, float* o,
                                                        Py_ssize_t ldo) noexcept nogil
    void transpose_tile_d "fastnaive_transpose_tile_d"(const double* a, Py_ssize_t lda, double* o,
                                                         Py_ssize_t ldo) noexcept nogil

cdef extern from *:
    """
    #ifdef _OPENMP
    #define FASTNAIVE_OPENMP 1
    #else
    #define FASTNAIVE_OPENMP 0
    #endif
    """
    const int FASTNAIVE_OPENMP

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int fastnaive_max_threads(void) { return omp_get_max_threads(); }
    static void fastnaive_set_max_threads(int n) { omp_set_num_threads(n); }
    #else
    static int fastnaive_max_threads(void) { return 1; }
    static void fastnaive_set_max_threads(int n) { (void)n; }
    #endif
    """
    int fastnaive_max_threads() nogil
    void fastnaive_set_max_threads(int n) nogil

cdef extern from *:
    """
    #ifdef _OPENMP
    static int fastnaive_processors(void) { return omp_get_num_procs(); }
    #else
    static int fastnaive_processors(void) { return 1; }
    #endif
    """
    int fastnaive_processors() nogil

# Below this many elements a parallel region costs more than it saves: a copy, or an
# optimizer's update (about ten operations an element).
cdef Py_ssize_t PARALLEL_MIN_ELEMENTS = 1 << 18
# The same, for callers that skip setting up threads that a scan would not use.
SCAN_PARALLEL_MIN = PARALLEL_MIN_ELEMENTS
# The gather: rows asked for GATHER_AHEAD rows before they are copied, and both threads
# copying from GATHER_MIN_ELEMENTS on. A book batch (128 random MNIST rows) on Zen 5: 28 us
# serial without the prefetch, 22.5 us with it, 13.7 us on two threads.
cdef Py_ssize_t GATHER_AHEAD = 4
cdef Py_ssize_t GATHER_MIN_ELEMENTS = 1 << 16
cdef Py_ssize_t PARALLEL_MIN_UPDATE = 1 << 16
cdef enum:
    # Columns of a bias gradient summed at a time (the sums live on the stack).
    BIAS_BLOCK = 256
    # An optimizer's update runs in chunks of this many elements, one thread each.
    UPDATE_CHUNK = 1 << 13
    # The largest activation code (fastnaive._activations).
    MAX_ACTIVATION = 7
    # Parts of an array scanned at a time (scan), enough to balance any thread count.
    SCAN_CHUNKS = 64
    # The most blocks of a product whose peaks dense_input_grad measures (on the stack).
    PEAK_TILES = 64


cdef struct Block:
    Py_ssize_t i0, i1, j0, j1


cdef inline Block tile_block(Py_ssize_t tile, Py_ssize_t m, Py_ssize_t n, Py_ssize_t rows,
                             Py_ssize_t cols) noexcept nogil:
    """Block `tile` of an (m, n) matrix cut into rows x cols blocks (tile_grid): its rows
    [i0, i1) and columns [j0, j1), in row-major order of the blocks."""
    cdef Block block
    cdef Py_ssize_t r = tile // cols, c = tile % cols
    block.i0, block.i1 = m * r // rows, m * (r + 1) // rows
    block.j0, block.j1 = n * c // cols, n * (c + 1) // cols
    return block


cdef inline floating* apart(floating* spare, Py_ssize_t n, Block block) noexcept nogil:
    """Where a block of columns of an (m, n) product is computed apart, in `spare` (m * n
    elements, each block's rows one stretch): NULL for a block of whole rows, or without
    spare. Two threads then never write into the same rows of the product while the BLAS
    works on them (their blocks of a row share 4 KB pages, which the prefetchers bring
    along: BENCHMARKS.md), only in the one pass that stores each block."""
    if spare == NULL or (block.j0 == 0 and block.j1 == n):
        return NULL
    return spare + block.i0 * n + block.j0 * (block.i1 - block.i0)


cdef inline void forward_tile(const floating[:, ::1] X, const floating[:, ::1] W,
                              const floating[::1] b, int activation, floating[:, ::1] Z_out,
                              Block block, floating* spare) noexcept nogil:
    """dense_forward's block"""
    cdef Py_ssize_t i, j, width = block.j1 - block.j0
    cdef floating* t = apart(spare, Z_out.shape[1], block)
    cdef floating* row
    if t != NULL:
        # X @ W's block apart, then in one pass per row act(its sum + b) stored into Z.
        gemm_into(False, False, <floating>1, X, W, <floating>0, t, width, block.i0, block.i1,
                  block.j0, block.j1)
        for i in range(block.i1 - block.i0):
            row = t + i * width
            for j in range(width):
                row[j] = row[j] + b[block.j0 + j]
            activate(activation, row, &Z_out[block.i0 + i, block.j0], width)
        return
    for i in range(block.i0, block.i1):
        for j in range(block.j0, block.j1):
            Z_out[i, j] = b[j]
    gemm_block(False, False, <floating>1, X, W, <floating>1, Z_out, block.i0, block.i1,
               block.j0, block.j1)
    if width > 0:
        for i in range(block.i0, block.i1):
            activate(activation, &Z_out[i, block.j0], &Z_out[i, block.j0], width)


cdef void dense_forward(const floating[:, ::1] X, const floating[:, ::1] W,
                        const floating[::1] b, int activation,
                        floating[:, ::1] Z_out, int n_threads, floating* spare) noexcept nogil:
    """Z := act(X @ W + b), act the activation of code `activation` (fastnaive._activations).
    spare: m * n elements (Z's), where blocks of Z's columns are computed apart (apart), or
    NULL: in Z itself. The bits of Z depend on the shapes and on spare alone, never on the
    number of threads; every caller in the package gives a spare."""
    cdef Py_ssize_t rows, cols, tile
    cdef Py_ssize_t m = Z_out.shape[0], n = Z_out.shape[1]
    cdef Py_ssize_t tiles = tile_grid(m, n, X.shape[1], &rows, &cols)
    if n_threads > 1 and tiles > 1:
        for tile in prange(tiles, num_threads=n_threads, schedule="dynamic", chunksize=1):
            forward_tile(X, W, b, activation, Z_out, tile_block(tile, m, n, rows, cols), spare)
    else:
        for tile in range(tiles):
            forward_tile(X, W, b, activation, Z_out, tile_block(tile, m, n, rows, cols), spare)


cdef inline void input_grad_tile(const floating[:, ::1] delta, const floating[:, ::1] W,
                                 floating[:, ::1] dX_out, int activation, const floating* a,
                                 const floating* z, double* tile_peaks, Block block,
                                 floating* spare) noexcept nogil:
    """dense_input_grad's block; unless tile_peaks is NULL, its peaks there"""
    cdef Py_ssize_t i, n = dX_out.shape[1]
    cdef Py_ssize_t i0 = block.i0, i1 = block.i1, j0 = block.j0, j1 = block.j1
    cdef Py_ssize_t width = j1 - j0
    cdef floating* t = apart(spare, n, block)
    cdef bint relu = activation == RELU_CODE
    if tile_peaks != NULL:
        tile_peaks[0] = tile_peaks[1] = 0
    if width <= 0 or i1 <= i0:
        return
    if t != NULL:
        gemm_into(False, True, <floating>1, delta, W, <floating>0, t, width, i0, i1, j0, j1)
        if relu or activation == LINEAR_CODE:
            # Stored into dX by the one pass that applies ReLU's derivative and takes the
            # peaks.
            block_peaks(a + i0 * n + j0 if a != NULL else NULL, t, width, &dX_out[i0, j0],
                        i1 - i0, width, n, relu, tile_peaks)
            return
        for i in range(i0, i1):
            memcpy(&dX_out[i, j0], t + (i - i0) * width, width * sizeof(floating))
    else:
        gemm_block(False, True, <floating>1, delta, W, <floating>0, dX_out, i0, i1, j0, j1)
    if activation != LINEAR_CODE and not relu:
        for i in range(i0, i1):
            activation_backward(activation, a + i * n + j0, z + i * n + j0, &dX_out[i, j0],
                                width)
    if relu or tile_peaks != NULL:
        block_peaks(a + i0 * n + j0, &dX_out[i0, j0], n, &dX_out[i0, j0], i1 - i0, width, n,
                    relu, tile_peaks)


cdef inline void block_peaks(const floating* a, const floating* s, Py_ssize_t s_stride,
                             floating* d, Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t stride,
                             bint relu, double* peaks) noexcept nogil:
    """fastnaive_block_peaks_* (max_abs.h): d := s, times ReLU's derivative from a where relu,
    and unless peaks is NULL, the peaks of a and d"""
    if floating is float:
        fastnaive_block_peaks_f(a, s, s_stride, d, rows, cols, stride, relu, peaks)
    else:
        fastnaive_block_peaks_d(a, s, s_stride, d, rows, cols, stride, relu, peaks)


cdef void dense_input_grad(const floating[:, ::1] delta, const floating[:, ::1] W,
                           floating[:, ::1] dX_out, int n_threads, floating* spare,
                           int activation=LINEAR_CODE, const floating* a=NULL,
                           const floating* z=NULL, double* peaks=NULL) noexcept nogil:
    """dX := delta @ W.T; then, for activation not LINEAR, dX := dX * act'(z) from the
    previous layer's outputs a (and pre-activations z: GELU's; a elsewhere), of dX's shape,
    in each block as it is stored (activation_backward's arithmetic, element by element).
    Unless peaks is NULL (a then not NULL): peaks[0] := max |a|, peaks[1] := max |dX|
    (max_abs's: inf for a NaN), each block's scanned while it is in cache, in the pass that
    applies ReLU's derivative; -1 for both when the product has more than PEAK_TILES
    blocks. spare as dense_forward's (dX's m * n elements)."""
    cdef Py_ssize_t rows, cols, tile
    cdef Py_ssize_t m = dX_out.shape[0], n = dX_out.shape[1]
    cdef Py_ssize_t tiles = tile_grid(m, n, delta.shape[1], &rows, &cols)
    cdef double tile_peaks[2 * PEAK_TILES]
    cdef bint measure = peaks != NULL and tiles <= PEAK_TILES
    if peaks != NULL:
        peaks[0] = peaks[1] = 0 if measure else -1
    if n_threads > 1 and tiles > 1:
        for tile in prange(tiles, num_threads=n_threads, schedule="dynamic", chunksize=1):
            input_grad_tile(delta, W, dX_out, activation, a, z,
                            &tile_peaks[2 * tile] if measure else NULL,
                            tile_block(tile, m, n, rows, cols), spare)
    else:
        for tile in range(tiles):
            input_grad_tile(delta, W, dX_out, activation, a, z,
                            &tile_peaks[2 * tile] if measure else NULL,
                            tile_block(tile, m, n, rows, cols), spare)
    if measure:
        for tile in range(tiles):
            peaks[0] = max(peaks[0], tile_peaks[2 * tile])
            peaks[1] = max(peaks[1], tile_peaks[2 * tile + 1])


cdef inline void param_grad_tile(const floating[:, ::1] X, const floating[:, ::1] delta,
                                 floating alpha, floating beta, floating[:, ::1] dW_out,
                                 floating[::1] db_out, const Rule* rule,
                                 Block block) noexcept nogil:
    """dense_param_grad's block"""
    cdef Py_ssize_t i, n = dW_out.shape[1]
    cdef Py_ssize_t i0 = block.i0, i1 = block.i1, j0 = block.j0, j1 = block.j1
    gemm_block(True, False, alpha, X, delta, beta, dW_out, i0, i1, j0, j1)
    if rule != NULL and j1 > j0:
        for i in range(i0, i1):
            rule_step(rule, 0, &dW_out[i, j0], i * n + j0, j1 - j0)
    if i0 == 0:  # the first row of blocks owns the bias's columns
        bias_grad(delta, alpha, beta, db_out, j0, j1)
        if rule != NULL and j1 > j0:
            rule_step(rule, 1, &db_out[j0], j0, j1 - j0)


cdef void dense_param_grad(const floating[:, ::1] X, const floating[:, ::1] delta,
                           floating alpha, floating beta,
                           floating[:, ::1] dW_out, floating[::1] db_out,
                           int n_threads, const Rule* rule) noexcept nogil:
    """dW := alpha * X.T @ delta + beta * dW;  db := alpha * sum_rows(delta) + beta * db;
    then, unless rule is NULL, its step on each block of dW and db, in the block's thread"""
    cdef Py_ssize_t rows, cols, tile
    cdef Py_ssize_t m = dW_out.shape[0], n = dW_out.shape[1]
    # Blocks of whole rows where they suffice: a thread's part of W and of the optimizer's
    # state is then one stretch of memory, not runs of columns along every row. (The same
    # cut with a rule or without: the BLAS's bits depend on the block's shape.)
    cdef Py_ssize_t tiles = tile_grid(m, n, X.shape[0], &rows, &cols, True)
    if n_threads > 1 and tiles > 1:
        for tile in prange(tiles, num_threads=n_threads, schedule="dynamic", chunksize=1):
            param_grad_tile(X, delta, alpha, beta, dW_out, db_out, rule,
                            tile_block(tile, m, n, rows, cols))
    else:
        for tile in range(tiles):
            param_grad_tile(X, delta, alpha, beta, dW_out, db_out, rule,
                            tile_block(tile, m, n, rows, cols))


cdef void bias_grad(const floating[:, ::1] delta, floating alpha, floating beta,
                    floating[::1] db_out, Py_ssize_t j0, Py_ssize_t j1) noexcept nogil:
    """db[j0:j1] := alpha * sum_rows(delta[:, j0:j1]) + beta * db[j0:j1]"""
    # The column sums are taken in double, BIAS_BLOCK columns at a time, then scaled and added
    # once: adding alpha * delta[i, j] to db row by row would round at db's scale every row.
    cdef double sums[BIAS_BLOCK]
    cdef Py_ssize_t i, j, k1, k0 = j0
    while k0 < j1:
        k1 = min(k0 + BIAS_BLOCK, j1)
        for j in range(k1 - k0):
            sums[j] = 0
        for i in range(delta.shape[0]):
            for j in range(k0, k1):
                sums[j - k0] += delta[i, j]
        for j in range(k0, k1):
            # beta = 0 must overwrite, not scale: the buffer may hold NaN.
            db_out[j] = <floating>(alpha * sums[j - k0] + (beta * db_out[j] if beta != 0 else 0))
        k0 = k1


cdef void softmax(const floating[:, ::1] logits, floating[:, ::1] out) noexcept nogil:
    """out := exp(z - max(z)) / sum(exp(z - max(z))), row by row"""
    cdef Py_ssize_t i, j
    cdef double z_max, total
    for i in range(logits.shape[0]):
        z_max = logits[i, 0]
        for j in range(1, logits.shape[1]):
            if logits[i, j] > z_max:
                z_max = logits[i, j]
        total = 0
        for j in range(logits.shape[1]):
            total += exp(logits[i, j] - z_max)
        for j in range(logits.shape[1]):
            out[i, j] = <floating>(exp(logits[i, j] - z_max) / total)


cdef inline void gather_row(const floating[:, ::1] src, const Py_ssize_t[::1] rows,
                            floating[:, ::1] out, Py_ssize_t i) noexcept nogil:
    """gather_rows's row i, row rows[i + GATHER_AHEAD] asked for first"""
    cdef Py_ssize_t j, r
    cdef Py_ssize_t n_cols = out.shape[1]
    if i + GATHER_AHEAD < rows.shape[0]:
        r = rows[i + GATHER_AHEAD]
        if 0 <= r < src.shape[0]:
            prefetch_bytes(&src[r, 0], n_cols * sizeof(floating))
    r = rows[i]
    if 0 <= r < src.shape[0]:
        memcpy(&out[i, 0], &src[r, 0], n_cols * sizeof(floating))
    else:
        for j in range(n_cols):
            out[i, j] = NAN


cdef void gather_rows(const floating[:, ::1] src, const Py_ssize_t[::1] rows,
                      floating[:, ::1] out) noexcept nogil:
    """out[i] := src[rows[i]] (a row of NaN where rows[i] is out of range)"""
    cdef Py_ssize_t i
    if rows.shape[0] * out.shape[1] >= GATHER_MIN_ELEMENTS:
        for i in prange(rows.shape[0], schedule="static"):
            gather_row(src, rows, out, i)
    else:
        for i in range(rows.shape[0]):
            gather_row(src, rows, out, i)


cdef inline Py_ssize_t update_chunks(Py_ssize_t n) noexcept nogil:
    return (n + UPDATE_CHUNK - 1) // UPDATE_CHUNK


cdef void momentum_update(floating* w, const floating* g, floating* velocity, Py_ssize_t n,
                          floating learning_rate, floating momentum, bint nesterov) noexcept nogil:
    """v := momentum * v - lr * g;  w := w + (momentum * v - lr * g if nesterov else v)"""
    cdef Py_ssize_t c, i0
    # Element by element: the same bits whichever thread updates which chunk.
    if n < PARALLEL_MIN_UPDATE:
        momentum_range(w, g, velocity, n, learning_rate, momentum, nesterov)
        return
    for c in prange(update_chunks(n), schedule="static"):
        i0 = c * UPDATE_CHUNK
        momentum_range(w + i0, g + i0, velocity + i0, min(UPDATE_CHUNK, n - i0), learning_rate,
                       momentum, nesterov)


cdef void momentum_range(floating* w, const floating* g, floating* velocity, Py_ssize_t n,
                         floating learning_rate, floating momentum, bint nesterov) noexcept nogil:
    if floating is float:
        momentum_range_f(w, g, velocity, n, learning_rate, momentum, nesterov)
    else:
        momentum_range_d(w, g, velocity, n, learning_rate, momentum, nesterov)


cdef void adam_update(floating* w, const floating* g, floating* m, floating* v, Py_ssize_t n,
                      floating alpha, floating one_minus_beta_1, floating one_minus_beta_2,
                      floating epsilon) noexcept nogil:
    """m += (1 - b1) (g - m);  v += (1 - b2) (g^2 - v);  w -= alpha * m / (sqrt(v) + eps)"""
    cdef Py_ssize_t c, i0
    if n < PARALLEL_MIN_UPDATE:
        adam_range(w, g, m, v, n, alpha, one_minus_beta_1, one_minus_beta_2, epsilon)
        return
    for c in prange(update_chunks(n), schedule="static"):
        i0 = c * UPDATE_CHUNK
        adam_range(w + i0, g + i0, m + i0, v + i0, min(UPDATE_CHUNK, n - i0), alpha,
                   one_minus_beta_1, one_minus_beta_2, epsilon)


cdef void adam_range(floating* w, const floating* g, floating* m, floating* v, Py_ssize_t n,
                     floating alpha, floating one_minus_beta_1, floating one_minus_beta_2,
                     floating epsilon) noexcept nogil:
    if floating is float:
        adam_range_f(w, g, m, v, n, alpha, one_minus_beta_1, one_minus_beta_2, epsilon)
    else:
        adam_range_d(w, g, m, v, n, alpha, one_minus_beta_1, one_minus_beta_2, epsilon)


cdef void rule_step(const Rule* rule, int array, floating* g, Py_ssize_t start,
                    Py_ssize_t n) noexcept nogil:
    """rule's step on elements [start, start + n) of its array `array` (0: W, 1: b) and their
    state, from their gradient g[0:n]; W's gradient gains the penalty's part first"""
    cdef floating* w = <floating*>rule.arrays[array] + start
    cdef floating* first = <floating*>rule.state[2 * array]
    cdef floating* second = <floating*>rule.state[2 * array + 1]
    cdef Py_ssize_t done = 0
    if array == 0 and rule.penalty != 0:
        # the unfused path's axpy_checked, on this block (BLAS sizes are 32-bit)
        while done < n:
            axpy(<floating>rule.penalty, w + done, g + done, <int>min(n - done, 1 << 30))
            done += 1 << 30
    if rule.kind == RULE_ADAM:
        adam_range(w, g, first + start, second + start, n, <floating>rule.alpha,
                   <floating>rule.one_minus_beta_1, <floating>rule.one_minus_beta_2,
                   <floating>rule.epsilon)
    else:
        momentum_range(w, g, first + start, n, <floating>rule.learning_rate,
                       <floating>rule.momentum, rule.kind == RULE_NESTEROV)


cdef int read_rule(tuple rule, Rule* out, bint plain) except -1:
    """out's kind and settings from rule = (kind, learning_rate, momentum, alpha, 1 - beta_1,
    1 - beta_2, epsilon) (Optimizer.element_rule's), checked; kind RULE_PLAIN only where
    `plain` (change_bound's rules)"""
    kinds = (RULE_PLAIN,) * plain + (RULE_MOMENTUM, RULE_NESTEROV, RULE_ADAM)
    if len(rule) != 7 or rule[0] not in kinds:
        raise ValueError(f"Expected rule = (kind, learning_rate, momentum, alpha, 1 - beta_1, "
                         f"1 - beta_2, epsilon), kind in {kinds}. Received: rule={rule!r}")
    (out.kind, out.learning_rate, out.momentum, out.alpha, out.one_minus_beta_1,
     out.one_minus_beta_2, out.epsilon) = rule
    return 0


cdef int check_slots(const double[::1] slots) except -1:
    """Raise unless slots (change_bound's) holds 2 elements."""
    if slots is None or slots.shape[0] != 2:
        received = "None" if slots is None else f"slots of {slots.shape[0]} elements"
        raise ValueError(f"Expected slots of 2 elements. Received: {received}")
    return 0


cdef double change_bound(const Rule* rule, double* slots, double g, double* state) noexcept nogil:
    """How far the next step of `rule` on gradients of |g| <= g can move a weight (the
    overflow guard's bound, Optimizer.change_bound); state[0] := a bound of |state| after it.
    slots[0], slots[1]: bounds of |state| before the step, per kind of state array (the
    velocity; Adam's m and v), advanced to after it."""
    cdef double step, velocity, m, v, m_before = slots[0], v_before = slots[1]
    if rule.kind == RULE_ADAM:
        m = (1 - rule.one_minus_beta_1) * m_before + rule.one_minus_beta_1 * g
        v = (1 - rule.one_minus_beta_2) * v_before + rule.one_minus_beta_2 * g * g
        slots[0], slots[1] = m, v
        # |m| / (sqrt(v) + epsilon) <= |m| / epsilon, whatever state set_state gave; the
        # kernel's intermediates are g - m, g * g - v and m * alpha.
        state[0] = largest_bound(g + m_before, g * g + v_before, m * rule.alpha)
        return rule.alpha * m / rule.epsilon
    step = rule.learning_rate * g
    if rule.kind == RULE_PLAIN:
        state[0] = 0
        return step
    velocity = rule.momentum * m_before + step
    slots[0] = state[0] = velocity
    return rule.momentum * velocity + step if rule.kind == RULE_NESTEROV else velocity


cdef double largest_bound(double a, double b, double c) noexcept nogil:
    """The largest of three bounds (none negative), inf if any is NaN (an overflow on the
    way: 0 * inf)"""
    if a != a or b != b or c != c:
        return INFINITY
    return max(a, b, c)


cdef extern from "updates.h" nogil:
    void momentum_range_f "fastnaive_momentum_range_f"(
        float* w, const float* g, float* velocity, Py_ssize_t n, float learning_rate,
        float momentum, int nesterov)
    void momentum_range_d "fastnaive_momentum_range_d"(
        double* w, const double* g, double* velocity, Py_ssize_t n, double learning_rate,
        double momentum, int nesterov)
    void adam_range_f "fastnaive_adam_range_f"(
        float* w, const float* g, float* m, float* v, Py_ssize_t n, float alpha,
        float one_minus_beta_1, float one_minus_beta_2, float epsilon)
    void adam_range_d "fastnaive_adam_range_d"(
        double* w, const double* g, double* m, double* v, Py_ssize_t n, double alpha,
        double one_minus_beta_1, double one_minus_beta_2, double epsilon)


cdef extern from "max_abs.h" nogil:
    double fastnaive_max_abs_f(const float* a, Py_ssize_t n)
    double fastnaive_max_abs_d(const double* a, Py_ssize_t n)
    void fastnaive_block_peaks_f(const float* a, const float* s, Py_ssize_t s_stride,
                                 float* d, Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t stride,
                                 int relu, double* peaks)
    void fastnaive_block_peaks_d(const double* a, const double* s, Py_ssize_t s_stride,
                                 double* d, Py_ssize_t rows, Py_ssize_t cols,
                                 Py_ssize_t stride, int relu, double* peaks)
    double fastnaive_scan_f(const float* a, Py_ssize_t n, Py_ssize_t* nonzeros)
    double fastnaive_scan_d(const double* a, Py_ssize_t n, Py_ssize_t* nonzeros)
    double fastnaive_scan_from_f(const float* a, const float* c, Py_ssize_t rows,
                                 Py_ssize_t k, Py_ssize_t* nonzeros)
    double fastnaive_scan_from_d(const double* a, const double* c, Py_ssize_t rows,
                                 Py_ssize_t k, Py_ssize_t* nonzeros)


cdef double max_abs(const floating* a, Py_ssize_t n) noexcept nogil:
    """max_i |a_i| (0 when n = 0); +inf when any a_i is NaN or infinite"""
    if floating is float:
        return fastnaive_max_abs_f(a, n)
    else:
        return fastnaive_max_abs_d(a, n)


# transpose_block's tiles: TRANSPOSE_TILE x TRANSPOSE_TILE elements, in AVX registers where
# asked and the CPU has AVX2 (transpose_tile_*), else through a tile on the stack. W.T of a
# 2048 x 2048 float32 W on Zen 4, one thread: 3.6 ms in registers, 5.0 through the stack
# (a C loop of the same tiles: 2.4 and 4.3); NumPy's copy of the transposed view 23 ms.
cdef enum:
    TRANSPOSE_TILE = 8
cdef bint TRANSPOSE_AVX2 = transpose_avx2()


cdef void transpose_block(const floating* A, Py_ssize_t lda, floating* out, Py_ssize_t ldo,
                          Py_ssize_t rows, Py_ssize_t cols, bint registers) noexcept nogil:
    """out[c * ldo + r] := A[r * lda + c] for r < rows, c < cols: the rows x cols block at A
    (rows lda elements apart) transposed to out (rows ldo apart); its tiles in AVX registers
    where `registers` and the CPU runs AVX2"""
    cdef Py_ssize_t i, j, r, c
    cdef bint avx2 = registers and TRANSPOSE_AVX2
    cdef floating tile[TRANSPOSE_TILE][TRANSPOSE_TILE]
    cdef const floating* a
    cdef floating* o
    i = 0
    while i + TRANSPOSE_TILE <= rows:
        j = 0
        while j + TRANSPOSE_TILE <= cols:
            a = A + i * lda + j
            o = out + j * ldo + i
            if avx2:
                if floating is float:
                    transpose_tile_f(a, lda, o, ldo)
                else:
                    for r in range(0, TRANSPOSE_TILE, 4):
                        for c in range(0, TRANSPOSE_TILE, 4):
                            transpose_tile_d(a + r * lda + c, lda, o + c * ldo + r, ldo)
            else:
                for r in range(TRANSPOSE_TILE):
                    for c in range(TRANSPOSE_TILE):
                        tile[c][r] = a[r * lda + c]
                for c in range(TRANSPOSE_TILE):
                    for r in range(TRANSPOSE_TILE):
                        o[c * ldo + r] = tile[c][r]
            j += TRANSPOSE_TILE
        for c in range(j, cols):
            for r in range(TRANSPOSE_TILE):
                out[c * ldo + i + r] = A[(i + r) * lda + c]
        i += TRANSPOSE_TILE
    for r in range(i, rows):
        for c in range(cols):
            out[c * ldo + r] = A[r * lda + c]


cdef double max_abs_on(const floating* a, Py_ssize_t n, int n_threads) noexcept nogil:
    """max_abs, in SCAN_CHUNKS parts on the threads where a is large (a maximum: the same at
    any count), else on the calling thread (no parallel region)"""
    cdef double peaks[SCAN_CHUNKS]
    cdef Py_ssize_t c, chunks = SCAN_CHUNKS
    cdef double peak = 0
    if n_threads <= 1 or n < PARALLEL_MIN_ELEMENTS:
        return max_abs(a, n)
    for c in prange(chunks, num_threads=n_threads, schedule="static"):
        peaks[c] = max_abs(a + n * c // chunks, n * (c + 1) // chunks - n * c // chunks)
    for c in range(chunks):
        peak = max(peak, peaks[c])
    return peak


cdef inline double scan_rows_from(const floating[:, ::1] a, const floating[::1] offsets,
                                  Py_ssize_t i0, Py_ssize_t i1,
                                  Py_ssize_t* nonzeros) noexcept nogil:
    """max |a[i, j] - offsets[j]| over rows i0..i1, *nonzeros := the count of nonzero ones"""
    nonzeros[0] = 0
    if i1 <= i0:
        return 0
    if floating is float:
        return fastnaive_scan_from_f(&a[i0, 0], &offsets[0], i1 - i0, a.shape[1], nonzeros)
    else:
        return fastnaive_scan_from_d(&a[i0, 0], &offsets[0], i1 - i0, a.shape[1], nonzeros)


cdef double scan_from(const floating[:, ::1] a, const floating[::1] offsets,
                      Py_ssize_t* nonzeros, int n_threads) noexcept nogil:
    """scan of the differences a[i, j] - offsets[j], by chunks of rows on n_threads threads
    where a is large, else in the calling thread (no parallel region)"""
    cdef double peaks[SCAN_CHUNKS]
    cdef Py_ssize_t counts[SCAN_CHUNKS]
    cdef Py_ssize_t n = a.shape[0], k = a.shape[1]
    cdef Py_ssize_t c, chunks = SCAN_CHUNKS if n * k >= PARALLEL_MIN_ELEMENTS else 1
    cdef double peak = 0
    if n_threads > 1 and chunks > 1:
        for c in prange(chunks, num_threads=n_threads, schedule="static"):
            peaks[c] = scan_rows_from(a, offsets, n * c // chunks, n * (c + 1) // chunks,
                                      &counts[c])
    else:
        for c in range(chunks):
            peaks[c] = scan_rows_from(a, offsets, n * c // chunks, n * (c + 1) // chunks,
                                      &counts[c])
    nonzeros[0] = 0
    for c in range(chunks):
        nonzeros[0] += counts[c]
        peak = max(peak, peaks[c])
    return peak


cdef inline double scan_part(const floating* a, Py_ssize_t i0, Py_ssize_t i1,
                             Py_ssize_t* nonzeros) noexcept nogil:
    """max |a_i| over i0..i1, *nonzeros := the count of nonzero a_i there"""
    if floating is float:
        return fastnaive_scan_f(a + i0, i1 - i0, nonzeros)
    else:
        return fastnaive_scan_d(a + i0, i1 - i0, nonzeros)


cdef double scan(const floating* a, Py_ssize_t n, Py_ssize_t* nonzeros,
                 int n_threads) noexcept nogil:
    """max_i |a_i| (inf when any a_i is NaN or infinite), *nonzeros := the count of a_i != 0;
    in SCAN_CHUNKS parts on the threads (a maximum and a count: the same at any count), or
    on one thread in the calling one (no parallel region)"""
    cdef double peaks[SCAN_CHUNKS]
    cdef Py_ssize_t counts[SCAN_CHUNKS]
    cdef Py_ssize_t c, chunks = SCAN_CHUNKS if n >= PARALLEL_MIN_ELEMENTS else 1
    cdef double peak = 0
    if n_threads > 1 and chunks > 1:
        for c in prange(chunks, num_threads=n_threads, schedule="static"):
            peaks[c] = scan_part(a, n * c // chunks, n * (c + 1) // chunks, &counts[c])
    else:
        for c in range(chunks):
            peaks[c] = scan_part(a, n * c // chunks, n * (c + 1) // chunks, &counts[c])
    nonzeros[0] = 0
    for c in range(chunks):
        nonzeros[0] += counts[c]
        peak = max(peak, peaks[c])
    return peak


# ---- Python wrappers: check shapes, then run the kernel without the GIL. ----

# The kinds of Rule (an optimizer's element rule, fastnaive.optimizers.Optimizer.element_rule;
# PLAIN_RULE, w := w - learning_rate g, for change_bound_checked alone).
PLAIN_RULE, MOMENTUM_RULE, NESTEROV_RULE, ADAM_RULE = (
    RULE_PLAIN, RULE_MOMENTUM, RULE_NESTEROV, RULE_ADAM)


def change_bound_checked(tuple rule, double[::1] slots, double gradient_bound):
    """(change, state) for the next step of `rule` (kind, learning_rate, momentum, alpha,
    1 - beta_1, 1 - beta_2, epsilon) on gradients of |g| <= gradient_bound: no weight moves by
    more than change, no state value exceeds state. slots: the bounds of |state| per kind of
    state array (2,), advanced (change_bound)."""
    cdef Rule r
    cdef double state
    read_rule(rule, &r, True)
    check_slots(slots)
    change = change_bound(&r, &slots[0], gradient_bound, &state)
    return change, state


def largest_bound_checked(double a, double b, double c):
    """The largest of three bounds (none negative), inf if any is NaN."""
    return largest_bound(a, b, c)

def openmp_enabled():
    """True when the kernels were compiled with OpenMP."""
    return bool(FASTNAIVE_OPENMP)


def processors():
    """The processors this process may run on (OpenMP's count; 1 without OpenMP)."""
    return fastnaive_processors()


def max_threads():
    """The threads a parallel loop of the kernels may use: OpenMP's limit, which
    OMP_NUM_THREADS and threadpoolctl's threadpool_limits set (1 without OpenMP)."""
    return fastnaive_max_threads()


def set_max_threads(int n):
    """Set OpenMP's limit for the calling thread's parallel loops to n (>= 1; nothing
    without OpenMP)."""
    if n < 1:
        raise ValueError(f"Expected n >= 1. Received: n={n}")
    fastnaive_set_max_threads(n)


def _shape_error(str expected, **arrays):
    received = ", ".join(f"{name}.shape={tuple(a.shape)}" for name, a in arrays.items())
    return ValueError(f"Expected {expected}. Received: {received}")


cdef object spare_of(floating[:, ::1] out):
    """A buffer of out's size and dtype, where dense_forward and dense_input_grad compute
    blocks of columns apart"""
    return np.empty(out.shape[0] * out.shape[1], np.float32 if floating is float else np.float64)


def dense_forward_checked(const floating[:, ::1] X, const floating[:, ::1] W, const floating[::1] b,
                          int activation, floating[:, ::1] Z_out, int n_threads=1):
    """Z_out := act(X @ W + b), act of code `activation` (0 linear, 1 relu, ...; see fastnaive._activations)"""
    if not (X.shape[1] == W.shape[0] > 0 and b.shape[0] == W.shape[1]
            and Z_out.shape[0] == X.shape[0] and Z_out.shape[1] == W.shape[1]):
        raise _shape_error("X (n, k), W (k, m), b (m,) and Z_out (n, m) with k >= 1",
                           X=X, W=W, b=b, Z_out=Z_out)
    if not 0 <= activation <= MAX_ACTIVATION:
        raise ValueError(f"Expected an activation code in [0, {MAX_ACTIVATION}]. "
                         f"Received: activation={activation}")
    load_blas()
    cdef floating[::1] spare = spare_of(Z_out)
    with nogil:
        dense_forward(X, W, b, activation, Z_out, max(n_threads, 1),
                      &spare[0] if spare.shape[0] else NULL)


def dense_input_grad_checked(const floating[:, ::1] delta, const floating[:, ::1] W,
                             floating[:, ::1] dX_out, int n_threads=1):
    """dX_out := delta @ W.T"""
    if not (delta.shape[1] == W.shape[1] > 0 and dX_out.shape[0] == delta.shape[0]
            and dX_out.shape[1] == W.shape[0]):
        raise _shape_error("delta (n, m), W (k, m) and dX_out (n, k) with m >= 1",
                           delta=delta, W=W, dX_out=dX_out)
    load_blas()
    cdef floating[::1] spare = spare_of(dX_out)
    with nogil:
        dense_input_grad(delta, W, dX_out, max(n_threads, 1),
                         &spare[0] if spare.shape[0] else NULL)


def dense_param_grad_checked(const floating[:, ::1] X, const floating[:, ::1] delta,
                             floating alpha, floating beta, floating[:, ::1] dW_out,
                             floating[::1] db_out, int n_threads=1):
    """dW_out := alpha * X.T @ delta + beta * dW_out;  db_out := alpha * sum_rows(delta) + beta * db_out"""
    if not (X.shape[0] == delta.shape[0] > 0 and dW_out.shape[0] == X.shape[1]
            and dW_out.shape[1] == delta.shape[1] and db_out.shape[0] == delta.shape[1]):
        raise _shape_error("X (n, k), delta (n, m), dW_out (k, m) and db_out (m,) with n >= 1",
                           X=X, delta=delta, dW_out=dW_out, db_out=db_out)
    load_blas()
    with nogil:
        dense_param_grad(X, delta, alpha, beta, dW_out, db_out, max(n_threads, 1), NULL)


def softmax_checked(const floating[:, ::1] logits, floating[:, ::1] out):
    """out := softmax(logits) row by row"""
    if not (out.shape[0] == logits.shape[0] and out.shape[1] == logits.shape[1] > 0):
        raise _shape_error("logits (n, c) and out (n, c) with c >= 1", logits=logits, out=out)
    with nogil:
        softmax(logits, out)


def gather_rows_checked(const floating[:, ::1] src, const Py_ssize_t[::1] rows,
                        floating[:, ::1] out):
    """out[i] := src[rows[i]] (a row of NaN where rows[i] is out of range)"""
    if not (out.shape[0] == rows.shape[0] and out.shape[1] == src.shape[1]):
        raise _shape_error("src (n, k), rows (m,) and out (m, k)", src=src, rows=rows, out=out)
    if rows.shape[0] == 0:
        return
    with nogil:
        gather_rows(src, rows, out)


# Rows of a matrix that common_values_checked compares, evenly spaced: one in 16, at least
# 8 and at most 32 (a book batch of 128: 8, 5.6 us; all of MNIST: 32, 0.06-0.13 ms). From 8
# rows, 42-61 of MNIST + 0.01's 784 pixels got an ink value; from 32, 0-1; within a batch of
# 128, from 8, 20.
cdef enum:
    SAMPLE_ROWS = 32
    MIN_SAMPLE_ROWS = 8
    SAMPLE_COLUMNS = 256


def common_values_checked(const floating[:, ::1] a, floating[::1] out):
    """out[j] := the finite value of column j found most often (at least twice) among 8 to 32
    rows of a, one in 16, evenly spaced (the first sampled of those tied), and 0 where none
    is; return how many are nonzero. A cheap guess at each column's most common value."""
    cdef Py_ssize_t n = a.shape[0], k = a.shape[1]
    cdef Py_ssize_t samples = min(n, max(<Py_ssize_t>MIN_SAMPLE_ROWS,
                                         min(<Py_ssize_t>SAMPLE_ROWS, n // 16)))
    cdef Py_ssize_t j, j0, width, s, t, best, nonzero = 0
    cdef Py_ssize_t picked[SAMPLE_ROWS]
    # counts[s][j]: how many samples equal sample s in column j0 + j
    cdef unsigned char counts[SAMPLE_ROWS][SAMPLE_COLUMNS]
    cdef const floating* first
    cdef const floating* second
    cdef unsigned char same
    cdef floating value
    if out.shape[0] != k:
        raise _shape_error("a (n, k) and out (k,)", a=a, out=out)
    for s in range(samples):
        picked[s] = s * (n - 1) // (samples - 1) if samples > 1 else 0
    with nogil:
        j0 = 0
        while j0 < k:
            width = min(<Py_ssize_t>SAMPLE_COLUMNS, k - j0)
            for s in range(samples):
                for j in range(width):
                    counts[s][j] = 1
            for s in range(samples):
                first = &a[picked[s], j0]
                for t in range(s + 1, samples):
                    second = &a[picked[t], j0]
                    for j in range(width):
                        same = first[j] == second[j]
                        counts[s][j] += same
                        counts[t][j] += same
            for j in range(width):
                out[j0 + j], best = 0, 1
                for s in range(samples):
                    value = a[picked[s], j0 + j]
                    if counts[s][j] > best and value - value == 0:  # finite
                        out[j0 + j], best = value, counts[s][j]
                nonzero += out[j0 + j] != 0
            j0 += width
    return nonzero


# BLAS sizes are 32-bit ints: axpy_checked updates longer vectors this many elements at a time.
AXPY_CHUNK = 2**30


def axpy_checked(const floating[::1] x, floating[::1] y, floating alpha):
    """y := alpha * x + y, in BLAS calls of at most AXPY_CHUNK elements"""
    cdef Py_ssize_t n = y.shape[0], start = 0, chunk = AXPY_CHUNK
    if x.shape[0] != n:
        raise _shape_error("x and y of the same length", x=x, y=y)
    if not 0 < chunk < 2**31:
        raise ValueError(f"Expected AXPY_CHUNK in [1, 2**31). Received: {chunk}")
    if n == 0:
        return
    load_blas()
    with nogil:
        while start < n:
            axpy(alpha, &x[start], &y[start], <int>min(chunk, n - start))
            start += chunk


def momentum_update_checked(floating[::1] w, const floating[::1] g, floating[::1] velocity,
                            floating learning_rate, floating momentum, bint nesterov):
    """v := momentum * v - lr * g;  w := w + (momentum * v - lr * g if nesterov else v)"""
    if not (g.shape[0] == w.shape[0] and velocity.shape[0] == w.shape[0]):
        raise _shape_error("w, g and velocity of the same length", w=w, g=g, velocity=velocity)
    if w.shape[0] == 0:
        return
    with nogil:
        momentum_update(&w[0], &g[0], &velocity[0], w.shape[0], learning_rate, momentum, nesterov)


@cython.cdivision(True)  # in every build: C's division (1 - beta_1^t may round to 0)
def adam_alpha_float32(double learning_rate, double beta_1, double beta_2, long long step):
    """Adam's step size for float32 weights at `step` (the first is 1), with Keras 3's bias
    correction computed as Keras computes it: lr * sqrt(1 - beta_2^t) / (1 - beta_1^t), every
    operand rounded to float32 and every operation in float32 (C's powf and a correctly
    rounded square root, as NumPy's float32 scalars do)."""
    cdef float t = <float>step
    cdef float one = 1
    cdef float beta_1_power = powf(<float>beta_1, t)
    cdef float beta_2_power = powf(<float>beta_2, t)
    cdef float root = sqrtf(one - beta_2_power)
    cdef float alpha = <float>learning_rate * root
    alpha = alpha / (one - beta_1_power)
    return alpha


def adam_update_checked(floating[::1] w, const floating[::1] g, floating[::1] m, floating[::1] v,
                        floating alpha, floating one_minus_beta_1, floating one_minus_beta_2,
                        floating epsilon):
    """m += (1 - b1) (g - m);  v += (1 - b2) (g^2 - v);  w -= alpha * m / (sqrt(v) + eps)"""
    if not (g.shape[0] == w.shape[0] and m.shape[0] == w.shape[0] and v.shape[0] == w.shape[0]):
        raise _shape_error("w, g, m and v of the same length", w=w, g=g, m=m, v=v)
    if w.shape[0] == 0:
        return
    with nogil:
        adam_update(&w[0], &g[0], &m[0], &v[0], w.shape[0], alpha, one_minus_beta_1,
                    one_minus_beta_2, epsilon)


def max_abs_checked(const floating[::1] a):
    """max_i |a_i| (0 for no elements); inf when any a_i is NaN or infinite"""
    cdef double result = 0.0
    if a.shape[0]:
        with nogil:
            result = max_abs(&a[0], a.shape[0])
    return result


def max_abs_rows_checked(const floating[:, ::1] a):
    """max_ij |a_ij| (0 for no elements); inf when any a_ij is NaN or infinite"""
    cdef double result = 0.0
    if a.shape[0] and a.shape[1]:
        with nogil:
            result = max_abs(&a[0, 0], a.shape[0] * a.shape[1])
    return result


def scan_rows_checked(const floating[:, ::1] a, n_threads=None,
                      const floating[::1] offsets=None):
    """(the number of nonzero a_ij, max_ij |a_ij|) in one pass; the maximum is inf when any
    a_ij is NaN or infinite, and NaN counts as nonzero; n_threads None: OpenMP's default.
    With offsets (one per column), the same of a_ij - offsets_j."""
    cdef Py_ssize_t nonzeros = 0
    cdef double result = 0.0
    cdef int threads = fastnaive_max_threads() if n_threads is None else max(1, int(n_threads))
    if offsets is not None and offsets.shape[0] != a.shape[1]:
        raise _shape_error("a (n, k) and offsets (k,)", a=a, offsets=offsets)
    if offsets is not None and a.shape[0] and a.shape[1]:
        with nogil:
            result = scan_from(a, offsets, &nonzeros, threads)
    elif a.shape[0] and a.shape[1]:
        with nogil:
            result = scan(&a[0, 0], a.shape[0] * a.shape[1], &nonzeros, threads)
    return nonzeros, result


def transpose_checked(const floating[:, ::1] A, floating[:, ::1] out, bint registers=True):
    """out := A.T (transpose_block, its tiles in AVX registers where `registers` and the CPU
    runs AVX2)"""
    if not (out.shape[0] == A.shape[1] and out.shape[1] == A.shape[0]):
        raise _shape_error("A (r, c) and out (c, r)", A=A, out=out)
    if A.shape[0] and A.shape[1]:
        with nogil:
            transpose_block(&A[0, 0], A.shape[1], &out[0, 0], out.shape[1], A.shape[0],
                            A.shape[1], registers)


def copy_checked(const floating[::1] src, floating[::1] dst):
    """dst := src"""
    if src.shape[0] != dst.shape[0]:
        raise _shape_error("src and dst of the same length", src=src, dst=dst)
    if dst.shape[0]:
        with nogil:
            memcpy(&dst[0], &src[0], dst.shape[0] * sizeof(floating))


def increment(long long[::1] counter):
    """counter[0] := counter[0] + 1"""
    if counter.shape[0] != 1:
        raise ValueError(f"Expected a counter of one element. Received: shape ({counter.shape[0]},)")
    counter[0] += 1


def run_calls(list calls):
    """Call each (function, arguments) of `calls` in order.

    The functions are this package's compiled kernel wrappers, whose checks run no Python
    code on the way to their kernel, so no Python bytecode runs from the first call to the
    last: a Python signal handler (KeyboardInterrupt) runs before or after
    the whole sequence, never between two of its calls. That is what makes a step's writes
    to the weights all or nothing.
    """
    for function, arguments in calls:
        function(*arguments)


cdef int memory_extent(object a, size_t* low, size_t* high) except -1:
    """[low, high) := the bytes an array (any object with the buffer protocol) spans; an
    empty range (low = high) when it has no elements"""
    cdef Py_buffer view
    cdef Py_ssize_t i, reach
    cdef bint empty = False
    PyObject_GetBuffer(a, &view, PyBUF_RECORDS_RO)
    low[0] = high[0] = <size_t>view.buf
    for i in range(view.ndim):
        empty |= view.shape[i] == 0
        reach = (view.shape[i] - 1) * view.strides[i]
        if reach < 0:
            low[0] -= <size_t>(-reach)
        else:
            high[0] += <size_t>reach
    high[0] = low[0] if empty else high[0] + view.itemsize
    PyBuffer_Release(&view)
    return 0


def first_overlap(a, list arrays):
    """The index of the first of `arrays` whose memory bounds overlap a's, -1 if none (what
    numpy.may_share_memory tells of each pair, in one call)"""
    cdef size_t low, high, other_low, other_high
    cdef Py_ssize_t i
    memory_extent(a, &low, &high)
    if low == high:
        return -1
    for i in range(len(arrays)):
        memory_extent(arrays[i], &other_low, &other_high)
        if other_low < other_high and other_low < high and low < other_high:
            return i
    return -1


def intact_weights(list arrays, list shapes, bint is_double):
    """True when each of `arrays` is a C-contiguous, writeable, aligned buffer of shapes[i]
    and of float64 (is_double) or float32 in the machine's byte order: what the weights'
    checks (fastnaive.layers.NaiveDense.check_weights) require, in one call. False when any
    is not: those checks then say which and why."""
    cdef Py_buffer view
    cdef Py_ssize_t i, d
    cdef bint intact
    cdef char code = 100 if is_double else 102  # the buffer format's "d" or "f"
    cdef Py_ssize_t itemsize = 8 if is_double else 4
    if len(shapes) != len(arrays):
        raise ValueError(f"Expected a shape per array. Received: {len(shapes)} shapes for "
                         f"{len(arrays)} arrays")
    for i in range(len(arrays)):
        shape = shapes[i]
        try:
            PyObject_GetBuffer(arrays[i], &view,
                               PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE | PyBUF_FORMAT)
        except (BufferError, ValueError):
            return False
        intact = (view.itemsize == itemsize and view.format != NULL and view.format[0] == code
                  and view.format[1] == 0 and view.ndim == len(shape)
                  and <size_t>view.buf % itemsize == 0)
        if intact:
            for d in range(view.ndim):
                intact = intact and view.shape[d] == shape[d]
        PyBuffer_Release(&view)
        if not intact:
            return False
    return True
