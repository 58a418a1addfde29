from cython cimport floating

cdef int load_blas() except -1
cdef void gemm(bint trans_a, bint trans_b, floating alpha, const floating[:, ::1] A,
               const floating[:, ::1] B, floating beta, floating[:, ::1] C) noexcept nogil
cdef void axpy(floating alpha, const floating* x, floating* y, int n) noexcept nogil
