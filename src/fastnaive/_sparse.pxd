from cython cimport floating

from fastnaive._kernels cimport Rule

cdef extern from "sparse_kernels.h" nogil:
    const int GROUP "FASTNAIVE_GROUP"
    const int PATTERNS "FASTNAIVE_PATTERNS"
    const int NARROW_MAX "FASTNAIVE_NARROW_MAX"

cdef inline Py_ssize_t n_groups(Py_ssize_t n_lines) noexcept nogil:
    """The groups of GROUP lines that n_lines make"""
    return (n_lines + GROUP - 1) // GROUP

cdef Py_ssize_t feature_parts(Py_ssize_t k) noexcept nogil
cdef Py_ssize_t checked_cut(Py_ssize_t n_features, object cut) except -1
cdef Py_ssize_t starts_length(Py_ssize_t n_lines, Py_ssize_t n_positions,
                              bint by_rows) noexcept nogil
cdef Py_ssize_t group_lines(const floating[:, ::1] X, bint by_rows, int[::1] starts_out,
                            int[::1] index_out, floating[:, ::1] quads_out, Py_ssize_t cut,
                            int n_threads, const floating[::1] offsets) noexcept nogil
cdef bint group_and_forward(const floating[:, ::1] X, int[::1] row_starts_out,
                            int[::1] row_index_out, floating[:, ::1] row_quads_out,
                            bint columns, int[::1] column_starts_out, int[::1] column_index_out,
                            floating[:, ::1] column_quads_out, const floating[:, ::1] W,
                            const floating[::1] b, const floating[::1] offsets,
                            floating[:, ::1] offset_sums, bint relu, floating[:, ::1] Z_out,
                            floating[:, ::1] partial, Py_ssize_t cut, int n_threads,
                            double* peak, bint add_parts, floating[::1] pack) noexcept nogil
cdef void sparse_forward(const int[::1] starts, const int[::1] index,
                         const floating[:, ::1] quads, const floating[:, ::1] W,
                         const floating[::1] b, const floating[::1] offsets,
                         floating[:, ::1] offset_sums, bint relu, floating[:, ::1] Z_out,
                         floating[:, ::1] partial, Py_ssize_t cut, int n_threads,
                         floating[::1] pack, bint transposed=*) noexcept nogil
cdef void add_parts_rows(floating[:, ::1] Z_out, const floating[:, ::1] partial, bint relu,
                         Py_ssize_t i0, Py_ssize_t i1) noexcept nogil
cdef void sparse_param_grad(const int[::1] starts, const int[::1] index,
                            const floating[:, ::1] quads, const floating[:, ::1] delta,
                            floating alpha, floating beta, floating[:, ::1] dW_out,
                            floating[::1] db_out, const floating[::1] offsets,
                            floating[::1] delta_sums, Py_ssize_t cut, int n_threads,
                            const Rule* rule, floating[:, ::1] padded) noexcept nogil
cdef void narrow_forward(const floating[:, ::1] X, const floating[:, ::1] W,
                         const floating[::1] b, int activation, floating[:, ::1] Z_out,
                         int n_threads) noexcept nogil
cdef void narrow_input_grad(const floating[:, ::1] delta, const floating[:, ::1] W,
                            floating[:, ::1] dX_out, int n_threads, const floating* relu_of,
                            double* peaks) noexcept nogil
cdef void narrow_param_grad(const floating[:, ::1] X, const floating[:, ::1] delta,
                            floating alpha, floating beta, floating[:, ::1] dW_out,
                            floating[::1] db_out, int n_threads,
                            const Rule* rule) noexcept nogil
cdef bint narrow_in_parallel(Py_ssize_t n, Py_ssize_t m, Py_ssize_t k, Py_ssize_t n_blocks,
                             int n_threads) noexcept nogil
cdef void narrow_forward_rows(const floating[:, ::1] X, const floating[:, ::1] W,
                              const floating[::1] b, int activation, floating[:, ::1] Z_out,
                              Py_ssize_t i0, Py_ssize_t i1) noexcept nogil
cdef void narrow_input_rows(const floating[:, ::1] delta, const floating[:, ::1] W,
                            floating[:, ::1] dX_out, const floating* relu_of, Py_ssize_t i0,
                            Py_ssize_t i1, double* slot_peaks) noexcept nogil
