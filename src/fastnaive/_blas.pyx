# Design: NumPy arrays here are row-major (C order) while BLAS is column-major.
# A row-major (m, n) array is the column-major (n, m) array of its transpose, so
# C = op(A) @ op(B) is computed as C.T = op(B).T @ op(A).T: B and A are passed
# swapped, with each array's row length as its leading dimension. Every GEMM of
# the package goes through SciPy's BLAS (scipy.linalg.cython_blas), one library;
# training runs it on one thread (engine.Step.threads), one call per block of
# C (gemm_block, tile_grid) on the kernels' own OpenMP threads: one thread pool. Its functions are looked up on first use rather than
# cimported, because cimporting imports all of scipy.linalg with the package,
# which would triple the time `import fastnaive` takes: every def wrapper that
# reaches BLAS calls load_blas() first.
from cpython.pycapsule cimport PyCapsule_GetName, PyCapsule_GetPointer

ctypedef void (*sgemm_t)(char*, char*, int*, int*, int*, float*, float*, int*, float*, int*,
                         float*, float*, int*) noexcept nogil
ctypedef void (*dgemm_t)(char*, char*, int*, int*, int*, double*, double*, int*, double*, int*,
                         double*, double*, int*) noexcept nogil
ctypedef void (*saxpy_t)(int*, float*, float*, int*, float*, int*) noexcept nogil
ctypedef void (*daxpy_t)(int*, double*, double*, int*, double*, int*) noexcept nogil

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int fastnaive_processors(void) { return omp_get_num_procs(); }
    #else
    static int fastnaive_processors(void) { return 1; }
    #endif
    """
    int fastnaive_processors() nogil

cdef enum:
    # A GEMM is cut into blocks of at least TILE_MIN_PRODUCTS multiply-adds (a BLAS call's
    # own cost is then a few percent of it) and, in the dimension cut, TILE_MIN_WIDTH rows or
    # columns, as many as the machine has processors (rounded up to a power of 2). At 1M and
    # 64 a 256 x 128 hidden layer on a batch of 128 (4M) runs on two threads; at 4M and 128
    # it ran on one (BENCHMARKS.md: 2-thread deep-MLP epochs 9-29% shorter on Zen 4).
    TILE_MIN_PRODUCTS = 1 << 20
    TILE_MIN_WIDTH = 64

# The thread-count functions (get, set) of the OpenBLAS libraries loaded in the process
# (bind_thread_counts), which one_blas_thread and restore_blas_threads call.
ctypedef int (*get_threads_t)() noexcept nogil
ctypedef void (*set_threads_t)(int) noexcept nogil
cdef enum:
    MAX_THREAD_COUNTS = 8
cdef get_threads_t thread_getters[MAX_THREAD_COUNTS]
cdef set_threads_t thread_setters[MAX_THREAD_COUNTS]
cdef int n_thread_libraries = 0
MAX_THREAD_LIBRARIES = MAX_THREAD_COUNTS

# The most blocks a GEMM is cut into: the processors this process may use, once.
cdef Py_ssize_t max_tiles = 0

cdef sgemm_t sgemm = NULL
cdef dgemm_t dgemm = NULL
cdef saxpy_t saxpy = NULL
cdef daxpy_t daxpy = NULL


cdef void* _function(dict capi, str name) except NULL:
    capsule = capi[name]
    return PyCapsule_GetPointer(capsule, PyCapsule_GetName(capsule))


cdef int load_blas() except -1:
    """Resolve SciPy's BLAS functions, once."""
    global sgemm, dgemm, saxpy, daxpy, max_tiles
    if sgemm != NULL:
        return 0
    max_tiles = 1
    while max_tiles < fastnaive_processors():
        max_tiles *= 2
    from scipy.linalg import cython_blas
    capi = cython_blas.__pyx_capi__
    dgemm = <dgemm_t>_function(capi, "dgemm")
    saxpy = <saxpy_t>_function(capi, "saxpy")
    daxpy = <daxpy_t>_function(capi, "daxpy")
    sgemm = <sgemm_t>_function(capi, "sgemm")
    return 0


cdef void gemm(bint trans_a, bint trans_b, floating alpha, const floating[:, ::1] A,
               const floating[:, ::1] B, floating beta, floating[:, ::1] C) noexcept nogil:
    """C := alpha * op(A) @ op(B) + beta * C, with op(X) = X.T when trans_x."""
    cdef int m = <int>C.shape[0]
    cdef int n = <int>C.shape[1]
    cdef int k = <int>(A.shape[0] if trans_a else A.shape[1])
    cdef int lda = <int>A.shape[1]
    cdef int ldb = <int>B.shape[1]
    cdef int ldc = n
    cdef char* ta = b"T" if trans_a else b"N"
    cdef char* tb = b"T" if trans_b else b"N"
    if m == 0 or n == 0:
        return
    if floating is float:
        sgemm(tb, ta, &n, &m, &k, &alpha, <float*>&B[0, 0], &ldb,
              <float*>&A[0, 0], &lda, &beta, &C[0, 0], &ldc)
    else:
        dgemm(tb, ta, &n, &m, &k, &alpha, <double*>&B[0, 0], &ldb,
              <double*>&A[0, 0], &lda, &beta, &C[0, 0], &ldc)


cdef void gemm_block(bint trans_a, bint trans_b, floating alpha, const floating[:, ::1] A,
                     const floating[:, ::1] B, floating beta, floating[:, ::1] C,
                     Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t j0, Py_ssize_t j1) noexcept nogil:
    """C[i0:i1, j0:j1] := alpha * (op(A) @ op(B))[i0:i1, j0:j1] + beta * C[i0:i1, j0:j1]"""
    if i1 > i0 and j1 > j0:
        gemm_into(trans_a, trans_b, alpha, A, B, beta, &C[i0, j0], C.shape[1], i0, i1, j0, j1)


cdef void gemm_into(bint trans_a, bint trans_b, floating alpha, const floating[:, ::1] A,
                    const floating[:, ::1] B, floating beta, floating* C, Py_ssize_t ldc,
                    Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t j0, Py_ssize_t j1) noexcept nogil:
    """The block [i0:i1, j0:j1] of op(A) @ op(B) into C, i1 - i0 rows ldc elements apart:
    C := alpha * block + beta * C"""
    cdef int m = <int>(i1 - i0)
    cdef int n = <int>(j1 - j0)
    cdef int k = <int>(A.shape[0] if trans_a else A.shape[1])
    cdef int lda = <int>A.shape[1]
    cdef int ldb = <int>B.shape[1]
    cdef int ld = <int>ldc
    cdef char* ta = b"T" if trans_a else b"N"
    cdef char* tb = b"T" if trans_b else b"N"
    # op(A)'s rows i0.. are A's rows, or A's columns when transposed; op(B)'s columns j0.. are
    # B's columns, or B's rows when transposed.
    cdef const floating* a = &A[0, i0] if trans_a else &A[i0, 0]
    cdef const floating* b = &B[j0, 0] if trans_b else &B[0, j0]
    if m <= 0 or n <= 0:
        return
    if floating is float:
        sgemm(tb, ta, &n, &m, &k, &alpha, <float*>b, &ldb, <float*>a, &lda, &beta, C, &ld)
    else:
        dgemm(tb, ta, &n, &m, &k, &alpha, <double*>b, &ldb, <double*>a, &lda, &beta, C, &ld)


cdef Py_ssize_t tile_grid(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                          Py_ssize_t* row_tiles, Py_ssize_t* col_tiles,
                          bint rows_first=False) noexcept nogil:
    """Cut an (m, n) = (m, k) @ (k, n) product into row_tiles x col_tiles blocks of C; return
    their number. The cut depends on the shape and the machine alone, never on the number of
    threads, so that every element is computed by the same BLAS call, and comes out the same
    bits, at any thread count. A block does at least TILE_MIN_PRODUCTS multiply-adds;
    columns are cut first, in blocks of at least TILE_MIN_WIDTH, then rows; or rows first,
    so that each block of a row-major C is one stretch of memory where the rows suffice."""
    cdef Py_ssize_t tiles = 1, cols, rows
    cdef double products = <double>m * n * k
    while tiles < max_tiles and products >= 2.0 * tiles * TILE_MIN_PRODUCTS:
        tiles *= 2
    if rows_first:
        rows = min(tiles, max(1, m // TILE_MIN_WIDTH))
        cols = min(tiles // rows, max(1, n // TILE_MIN_WIDTH))
        row_tiles[0], col_tiles[0] = rows, cols
        return rows * cols
    cols = min(tiles, max(1, n // TILE_MIN_WIDTH))
    rows = min(tiles // cols, max(1, m // TILE_MIN_WIDTH))
    row_tiles[0], col_tiles[0] = rows, cols
    return rows * cols


cdef void axpy(floating alpha, const floating* x, floating* y, int n) noexcept nogil:
    """y := alpha * x + y"""
    cdef int one = 1
    if floating is float:
        saxpy(&n, &alpha, <float*>x, &one, y, &one)
    else:
        daxpy(&n, &alpha, <double*>x, &one, y, &one)


def load():
    """Load SciPy's BLAS (and so its thread pool) now rather than at the first product."""
    load_blas()


def tile_grid_checked(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k):
    """(row blocks, column blocks) of C in an (m, k) @ (k, n) product (the dense kernels')."""
    cdef Py_ssize_t rows, cols
    if m < 0 or n < 0 or k < 0:
        raise ValueError(f"Expected m, n, k >= 0. Received: m={m}, n={n}, k={k}")
    load_blas()
    tile_grid(m, n, k, &rows, &cols)
    return rows, cols


def gemm_checked(const floating[:, ::1] A, const floating[:, ::1] B, floating[:, ::1] C,
                 bint trans_a=False, bint trans_b=False, floating alpha=1, floating beta=0):
    """C := alpha * op(A) @ op(B) + beta * C, after checking the shapes agree."""
    m, k = (A.shape[1], A.shape[0]) if trans_a else (A.shape[0], A.shape[1])
    k_b, n = (B.shape[1], B.shape[0]) if trans_b else (B.shape[0], B.shape[1])
    if k == 0 or k != k_b or C.shape[0] != m or C.shape[1] != n:
        raise ValueError(
            f"Expected op(A) (m, k), op(B) (k, n) and C (m, n) with k >= 1. Received: op(A).shape="
            f"{(m, k)}, op(B).shape={(k_b, n)}, C.shape={(C.shape[0], C.shape[1])}")
    load_blas()
    with nogil:
        gemm(trans_a, trans_b, alpha, A, B, beta, C)


def bind_thread_counts(list functions):
    """Hold the thread-count functions of the BLAS libraries to set: `functions` is a list
    of (get, set) ctypes function pointers, int get(void) and void set(int), as OpenBLAS
    exports them (openblas_get_num_threads, openblas_set_num_threads)."""
    global n_thread_libraries
    import ctypes
    if len(functions) > MAX_THREAD_COUNTS:
        raise ValueError(f"Expected at most {MAX_THREAD_COUNTS} libraries. "
                         f"Received: {len(functions)}")
    addresses = [(ctypes.cast(get, ctypes.c_void_p).value, ctypes.cast(put, ctypes.c_void_p).value)
                 for get, put in functions]
    if any(not get or not put for get, put in addresses):
        raise ValueError("Expected function pointers. Received: a null one")
    for i, (get, put) in enumerate(addresses):
        thread_getters[i] = <get_threads_t><size_t>get
        thread_setters[i] = <set_threads_t><size_t>put
    n_thread_libraries = len(addresses)


def one_blas_thread():
    """Run every bound library (bind_thread_counts) on one thread; return the counts it had,
    for restore_blas_threads."""
    cdef int i, count
    counts = []
    for i in range(n_thread_libraries):
        count = thread_getters[i]()
        if count != 1:
            thread_setters[i](1)
        counts.append(count)
    return counts


def restore_blas_threads(list counts):
    """Give every bound library the thread count one_blas_thread returned for it."""
    cdef int i
    if len(counts) != n_thread_libraries:
        raise ValueError(f"Expected {n_thread_libraries} counts. Received: {len(counts)}")
    for i in range(n_thread_libraries):
        if thread_getters[i]() != counts[i]:
            thread_setters[i](counts[i])
