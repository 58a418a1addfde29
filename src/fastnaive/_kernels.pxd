from cython cimport floating

cdef void dense_forward(const floating[:, ::1] X, const floating[:, ::1] W,
                        const floating[::1] b, int activation,
                        floating[:, ::1] Z_out, int n_threads) noexcept nogil
cdef void dense_input_grad(const floating[:, ::1] delta, const floating[:, ::1] W,
                           floating[:, ::1] dX_out, int n_threads) noexcept nogil
cdef void dense_param_grad(const floating[:, ::1] X, const floating[:, ::1] delta,
                           floating alpha, floating beta,
                           floating[:, ::1] dW_out, floating[::1] db_out,
                           int n_threads) noexcept nogil
cdef void bias_grad(const floating[:, ::1] delta, floating alpha, floating beta,
                    floating[::1] db_out, Py_ssize_t j0, Py_ssize_t j1) noexcept nogil
cdef void softmax(const floating[:, ::1] logits, floating[:, ::1] out) noexcept nogil
cdef void gather_rows(const floating[:, ::1] src, const Py_ssize_t[::1] rows,
                      floating[:, ::1] out) noexcept nogil
cdef void momentum_update(floating* w, const floating* g, floating* velocity, Py_ssize_t n,
                          floating learning_rate, floating momentum, bint nesterov) noexcept nogil
cdef void adam_update(floating* w, const floating* g, floating* m, floating* v, Py_ssize_t n,
                      floating alpha, floating one_minus_beta_1, floating one_minus_beta_2,
                      floating epsilon) noexcept nogil
cdef double max_abs(const floating* a, Py_ssize_t n) noexcept nogil
