from cython cimport floating
from libc.stdint cimport uint64_t

cdef enum:
    # The codes, as fastnaive.activations.CODES names them.
    LINEAR_CODE = 0
    RELU_CODE = 1
    TANH_CODE = 2
    SIGMOID_CODE = 3
    GELU_CODE = 4
    GELU_TANH_CODE = 5
    LEAKY_RELU_CODE = 6
    ELU_CODE = 7


cdef void activate(int code, const floating* z, floating* a, Py_ssize_t size) noexcept nogil
cdef void activation_backward(int code, const floating* a, const floating* z, floating* delta,
                              Py_ssize_t size) noexcept nogil
cdef void dropout(const floating[:, ::1] src, floating[:, ::1] out, double rate, uint64_t seed,
                  uint64_t step, Py_ssize_t first_row) noexcept nogil
