from cython cimport floating

cdef enum:
    # The element steps a Rule applies (an optimizer's step from its gradient). RULE_PLAIN,
    # w := w - learning_rate g, is the GEMMs' own step: change_bound's alone.
    RULE_PLAIN = 0
    RULE_MOMENTUM = 1
    RULE_NESTEROV = 2
    RULE_ADAM = 3

cdef struct Rule:
    # An optimizer's step, applied by a weight-gradient kernel to each block of the gradient
    # as it produces it (rule_step). kind: RULE_*; the settings its step reads; penalty:
    # 2 l2, W's gradient gains penalty * W first (b's none); arrays[0], arrays[1]: W and b,
    # of the kernel's dtype; state[2 a], state[2 a + 1]: array a's state arrays (velocity
    # and NULL; Adam's m and v), laid out as it.
    int kind
    double learning_rate, momentum, alpha, one_minus_beta_1, one_minus_beta_2, epsilon
    double penalty
    void* arrays[2]
    void* state[4]

cdef void dense_forward(const floating[:, ::1] X, const floating[:, ::1] W,
                        const floating[::1] b, int activation,
                        floating[:, ::1] Z_out, int n_threads, floating* spare) noexcept nogil
cdef void dense_input_grad(const floating[:, ::1] delta, const floating[:, ::1] W,
                           floating[:, ::1] dX_out, int n_threads, floating* spare,
                           int activation=*, const floating* a=*, const floating* z=*,
                           double* peaks=*) noexcept nogil
cdef void dense_param_grad(const floating[:, ::1] X, const floating[:, ::1] delta,
                           floating alpha, floating beta,
                           floating[:, ::1] dW_out, floating[::1] db_out,
                           int n_threads, const Rule* rule) noexcept nogil
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
cdef void rule_step(const Rule* rule, int array, floating* g, Py_ssize_t start,
                    Py_ssize_t n) noexcept nogil
cdef double max_abs(const floating* a, Py_ssize_t n) noexcept nogil
cdef double scan(const floating* a, Py_ssize_t n, Py_ssize_t* nonzeros,
                 int n_threads) noexcept nogil
cdef double scan_from(const floating[:, ::1] a, const floating[::1] offsets,
                      Py_ssize_t* nonzeros, int n_threads) noexcept nogil
cdef void transpose_block(const floating* A, Py_ssize_t lda, floating* out, Py_ssize_t ldo,
                          Py_ssize_t rows, Py_ssize_t cols, bint registers) noexcept nogil
cdef double max_abs_on(const floating* a, Py_ssize_t n, int n_threads) noexcept nogil

cdef int read_rule(tuple rule, Rule* out, bint plain) except -1
cdef int check_slots(const double[::1] slots) except -1
cdef double change_bound(const Rule* rule, double* slots, double g, double* state) noexcept nogil
cdef double largest_bound(double a, double b, double c) noexcept nogil
