# Design: NumPy arrays here are row-major (C order) while BLAS is column-major.
# A row-major (m, n) array is the column-major (n, m) array of its transpose, so
# C = op(A) @ op(B) is computed as C.T = op(B).T @ op(A).T: B and A are passed
# swapped, with each array's row length as its leading dimension. Every GEMM of
# the package goes through scipy's BLAS, one library and one thread pool.
from scipy.linalg.cython_blas cimport sgemm, dgemm, saxpy, daxpy


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


def gemm_checked(const floating[:, ::1] A, const floating[:, ::1] B, floating[:, ::1] C,
                 bint trans_a=False, bint trans_b=False, floating alpha=1, floating beta=0):
    """C := alpha * op(A) @ op(B) + beta * C, after checking the shapes agree."""
    m, k = (A.shape[1], A.shape[0]) if trans_a else (A.shape[0], A.shape[1])
    k_b, n = (B.shape[1], B.shape[0]) if trans_b else (B.shape[0], B.shape[1])
    if k == 0 or k != k_b or C.shape[0] != m or C.shape[1] != n:
        raise ValueError(
            f"Expected op(A) (m, k), op(B) (k, n) and C (m, n) with k >= 1. Received: op(A).shape="
            f"{(m, k)}, op(B).shape={(k_b, n)}, C.shape={(C.shape[0], C.shape[1])}")
    with nogil:
        gemm(trans_a, trans_b, alpha, A, B, beta, C)
