# Design: the elementwise epilogues of a dense layer, forward and backward, and inverted
# dropout, over contiguous float32 or float64 arrays (the fused `floating`). An activation is
# named by an int code (LINEAR, RELU, ...), so that one kernel serves every layer and the
# engine picks the code once per plan. Every backward is computed from the layer's output A,
# except GELU's, whose derivative needs the pre-activation Z (GELU is not monotonic, so A does
# not determine Z): the engine keeps Z for GELU layers only. Parameters are Keras' defaults
# for the names: leaky_relu's negative slope 0.2, elu's alpha 1.0, and GELU's tanh form with
# 0.044715. float32 arrays use single-precision libm functions; the branches are selects,
# which compilers vectorise where the functions allow. Dropout's mask is not stored: it is a
# hash of (seed, step, row, column), recomputed in the backward pass, so it is the same at
# any thread count and on any number of processes (the row is the sample's row in the global
# batch).
from cython cimport floating
from libc.math cimport M_SQRT1_2, erf, erff, exp, expf, tanh, tanhf
from libc.stdint cimport uint32_t, uint64_t

LINEAR, RELU, TANH, SIGMOID, GELU, GELU_TANH, LEAKY_RELU, ELU = range(8)
# The codes whose backward pass reads the pre-activation Z rather than the output A.
NEEDS_PRE_ACTIVATION = (GELU, GELU_TANH)

cdef double LEAKY_SLOPE = 0.2
cdef double ELU_ALPHA = 1.0
cdef double SQRT_2_OVER_PI = 0.7978845608028654
cdef double GELU_CUBIC = 0.044715
cdef double INV_SQRT_2PI = 0.3989422804014327


cdef inline floating f_exp(floating x) noexcept nogil:
    if floating is float:
        return expf(x)
    else:
        return exp(x)


cdef inline floating f_tanh(floating x) noexcept nogil:
    if floating is float:
        return tanhf(x)
    else:
        return tanh(x)


cdef inline floating f_erf(floating x) noexcept nogil:
    if floating is float:
        return erff(x)
    else:
        return erf(x)


cdef inline floating sigmoid(floating z) noexcept nogil:
    """1 / (1 + exp(-z)), without overflow for either sign"""
    cdef floating e
    if z >= 0:
        return 1 / (1 + f_exp(-z))
    e = f_exp(z)
    return e / (1 + e)


cdef void activate(int code, const floating* z, floating* a, Py_ssize_t size) noexcept nogil:
    """a := act_code(z), elementwise; a may be z"""
    cdef Py_ssize_t i
    cdef floating v, t
    if code == RELU_CODE:
        for i in range(size):
            # `< 0` keeps NaN, as TensorFlow does.
            a[i] = 0 if z[i] < 0 else z[i]
    elif code == TANH_CODE:
        for i in range(size):
            a[i] = f_tanh(z[i])
    elif code == SIGMOID_CODE:
        for i in range(size):
            a[i] = sigmoid(z[i])
    elif code == GELU_CODE:
        for i in range(size):
            v = z[i]
            a[i] = <floating>0.5 * v * (1 + f_erf(v * <floating>M_SQRT1_2))
    elif code == GELU_TANH_CODE:
        for i in range(size):
            v = z[i]
            t = f_tanh(<floating>SQRT_2_OVER_PI * (v + <floating>GELU_CUBIC * v * v * v))
            a[i] = <floating>0.5 * v * (1 + t)
    elif code == LEAKY_RELU_CODE:
        for i in range(size):
            a[i] = z[i] * <floating>LEAKY_SLOPE if z[i] < 0 else z[i]
    elif code == ELU_CODE:
        for i in range(size):
            a[i] = <floating>ELU_ALPHA * (f_exp(z[i]) - 1) if z[i] < 0 else z[i]
    elif a != z:
        for i in range(size):
            a[i] = z[i]


cdef void activation_backward(int code, const floating* a, const floating* z, floating* delta,
                              Py_ssize_t size) noexcept nogil:
    """delta := delta * act_code'(z), from the output a = act_code(z) (GELU: from z)"""
    cdef Py_ssize_t i
    cdef floating v, t, u
    if code == RELU_CODE:
        for i in range(size):
            delta[i] = delta[i] if a[i] > 0 else 0
    elif code == TANH_CODE:
        for i in range(size):
            delta[i] = delta[i] * (1 - a[i] * a[i])
    elif code == SIGMOID_CODE:
        for i in range(size):
            delta[i] = delta[i] * a[i] * (1 - a[i])
    elif code == GELU_CODE:
        for i in range(size):
            v = z[i]
            delta[i] = delta[i] * (<floating>0.5 * (1 + f_erf(v * <floating>M_SQRT1_2))
                                   + v * <floating>INV_SQRT_2PI * f_exp(<floating>-0.5 * v * v))
    elif code == GELU_TANH_CODE:
        for i in range(size):
            v = z[i]
            u = <floating>SQRT_2_OVER_PI * (v + <floating>GELU_CUBIC * v * v * v)
            t = f_tanh(u)
            delta[i] = delta[i] * (<floating>0.5 * (1 + t) + <floating>0.5 * v * (1 - t * t)
                                   * <floating>SQRT_2_OVER_PI
                                   * (1 + 3 * <floating>GELU_CUBIC * v * v))
    elif code == LEAKY_RELU_CODE:
        for i in range(size):
            delta[i] = delta[i] if a[i] > 0 else delta[i] * <floating>LEAKY_SLOPE
    elif code == ELU_CODE:
        for i in range(size):
            delta[i] = delta[i] if a[i] > 0 else delta[i] * (a[i] + <floating>ELU_ALPHA)


cdef inline uint32_t mix32(uint32_t x) noexcept nogil:
    """A 32-bit integer hash with full avalanche (lowbias32)"""
    x ^= x >> 16
    x *= 0x7feb352dU
    x ^= x >> 15
    x *= 0x846ca68bU
    x ^= x >> 16
    return x


cdef inline uint32_t row_key(uint64_t seed, uint64_t step, uint64_t row) noexcept nogil:
    """The hash of (seed, step, row) that each column's mask bit is drawn from"""
    cdef uint32_t key = mix32(<uint32_t>seed ^ mix32(<uint32_t>(seed >> 32)))
    key = mix32(key ^ mix32(<uint32_t>step ^ mix32(<uint32_t>(step >> 32) + 0x9e3779b9U)))
    return mix32(key ^ mix32(<uint32_t>row + 0x85ebca6bU))


cdef void dropout(const floating[:, ::1] src, floating[:, ::1] out, double rate, uint64_t seed,
                  uint64_t step, Py_ssize_t first_row) noexcept nogil:
    """out[i, j] := src[i, j] * keep(i, j) / (1 - rate), keep ~ Bernoulli(1 - rate) hashed"""
    cdef Py_ssize_t i, j
    cdef uint32_t key
    cdef uint32_t threshold = <uint32_t>(rate * 16777216.0)  # rate * 2**24
    cdef floating scale = <floating>(1 / (1 - rate))
    for i in range(src.shape[0]):
        key = row_key(seed, step, <uint64_t>(first_row + i))
        for j in range(src.shape[1]):
            out[i, j] = src[i, j] * scale if (mix32(key ^ <uint32_t>j) >> 8) >= threshold else 0


# ---- Python wrappers: check shapes, then run the kernel without the GIL. ----

def _shape_error(str expected, **arrays):
    received = ", ".join(f"{name}.shape={tuple(a.shape)}" for name, a in arrays.items())
    return ValueError(f"Expected {expected}. Received: {received}")


def _checked_code(int code):
    if not 0 <= code <= ELU_CODE:
        raise ValueError(f"Expected an activation code in [0, {ELU_CODE}]. Received: code={code}")


def activate_checked(int code, const floating[:, ::1] Z, floating[:, ::1] A_out):
    """A_out := act_code(Z); A_out may be Z"""
    _checked_code(code)
    if not (Z.shape[0] == A_out.shape[0] and Z.shape[1] == A_out.shape[1]):
        raise _shape_error("Z and A_out of the same shape", Z=Z, A_out=A_out)
    if Z.shape[0] == 0 or Z.shape[1] == 0:
        return
    with nogil:
        activate(code, &Z[0, 0], &A_out[0, 0], Z.shape[0] * Z.shape[1])


def activation_backward_checked(int code, const floating[:, ::1] A, const floating[:, ::1] Z,
                                floating[:, ::1] delta):
    """delta := delta * act_code'(Z), from A = act_code(Z) (GELU reads Z, the others A)"""
    _checked_code(code)
    if not (A.shape[0] == Z.shape[0] == delta.shape[0]
            and A.shape[1] == Z.shape[1] == delta.shape[1]):
        raise _shape_error("A, Z and delta of the same shape", A=A, Z=Z, delta=delta)
    if A.shape[0] == 0 or A.shape[1] == 0:
        return
    with nogil:
        activation_backward(code, &A[0, 0], &Z[0, 0], &delta[0, 0], A.shape[0] * A.shape[1])


def dropout_checked(const floating[:, ::1] src, floating[:, ::1] out, double rate,
                    uint64_t seed, uint64_t step, Py_ssize_t first_row=0):
    """out := src * mask / (1 - rate), the mask of (seed, step, first_row + row, column)"""
    if not (src.shape[0] == out.shape[0] and src.shape[1] == out.shape[1]):
        raise _shape_error("src and out of the same shape", src=src, out=out)
    if not 0 <= rate < 1:
        raise ValueError(f"Expected rate in [0, 1). Received: rate={rate!r}")
    if first_row < 0:
        raise ValueError(f"Expected first_row >= 0. Received: first_row={first_row}")
    with nogil:
        dropout(src, out, rate, seed, step, first_row)
