from cython cimport floating

cdef void activate(int code, const floating* z, floating* a, Py_ssize_t size) noexcept nogil
cdef void activation_backward(int code, const floating* a, const floating* z, floating* delta,
                              Py_ssize_t size) noexcept nogil
