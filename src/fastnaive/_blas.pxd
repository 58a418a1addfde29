from cython cimport floating

cdef int load_blas() except -1
cdef void gemm(bint trans_a, bint trans_b, floating alpha, const floating[:, ::1] A,
               const floating[:, ::1] B, floating beta, floating[:, ::1] C) noexcept nogil
cdef void gemm_block(bint trans_a, bint trans_b, floating alpha, const floating[:, ::1] A,
                     const floating[:, ::1] B, floating beta, floating[:, ::1] C,
                     Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t j0, Py_ssize_t j1) noexcept nogil
cdef void gemm_into(bint trans_a, bint trans_b, floating alpha, const floating[:, ::1] A,
                    const floating[:, ::1] B, floating beta, floating* C, Py_ssize_t ldc,
                    Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t j0, Py_ssize_t j1) noexcept nogil
cdef Py_ssize_t tile_grid(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                          Py_ssize_t* row_tiles, Py_ssize_t* col_tiles,
                          bint rows_first=*) noexcept nogil
cdef void axpy(floating alpha, const floating* x, floating* y, int n) noexcept nogil
