# Design: NumPy arrays here are row-major (C order) while BLAS is column-major.
# A row-major (m, n) array is the column-major (n, m) array of its transpose, so
# C = op(A) @ op(B) is computed as C.T = op(B).T @ op(A).T: B and A are passed
# swapped, with each array's row length as its leading dimension. Every GEMM of
# the package goes through SciPy's BLAS (scipy.linalg.cython_blas), one library
# and one thread pool. Its functions are looked up on first use rather than
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

cdef sgemm_t sgemm = NULL
cdef dgemm_t dgemm = NULL
cdef saxpy_t saxpy = NULL
cdef daxpy_t daxpy = NULL


cdef void* _function(dict capi, str name) except NULL:
    capsule = capi[name]
    return PyCapsule_GetPointer(capsule, PyCapsule_GetName(capsule))


cdef int load_blas() except -1:
    """Resolve SciPy's BLAS functions, once."""
    global sgemm, dgemm, saxpy, daxpy
    if sgemm != NULL:
        return 0
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
