# Design: each loss returns scale * sum_i w_i * loss_i over a batch's rows and writes its
# gradient, scale * w_i * dloss_i, into grad_out: scale = 1 / n gives the batch mean, and
# scale = 1 / n_global gives one process's part of a batch shared among processes, so the
# engine sums losses and gradients over processes without rescaling. w is the optional
# sample weight (NULL: all ones), reduced as Keras' "sum_over_batch_size" does. Heads that
# a loss absorbs are computed from logits, exactly: softmax for the cross-entropies (the row
# maximum subtracted before exp), sigmoid for binary cross-entropy
# (max(z, 0) - z y + log(1 + exp(-|z|))). Per-sample losses average over the outputs (binary
# cross-entropy, mean squared error), as Keras' do over the last axis. Sums are in double.
# A label out of range turns its row's loss and gradient into NaN instead of reading out of
# bounds. The metrics count hits: argmax against the label or the target's argmax, and
# thresholded outputs for binary targets (logit > 0, i.e. probability > 0.5).
# A gradient element below the dtype's smallest normal number is stored as 0 (store), as
# TensorFlow's and XLA's CPU kernels flush subnormals: a saturated softmax's probabilities
# (MNIST's book model at SGD 1e-2, batch 1024: 5% of them) would otherwise reach every GEMM
# of the backward pass, where each vector FMA that meets a subnormal takes a microcode
# assist (that epoch: 0.83 s against 0.51 s at 1e-3 on an AVX-512 Xeon).
from cython cimport floating
from libc.float cimport DBL_MIN, FLT_MIN
from libc.math cimport NAN, exp, fabs, log, log1p


cdef inline void store(floating* out, double value) noexcept nogil:
    """out[0] := value in out's dtype, 0 where that would be subnormal (NaN stays NaN)"""
    if floating is float:
        out[0] = 0 if fabs(value) < FLT_MIN else <float>value
    else:
        out[0] = 0 if fabs(value) < DBL_MIN else value


cdef inline double sample_weight(const floating* w, Py_ssize_t i) noexcept nogil:
    return 1.0 if w == NULL else <double>w[i]


cdef enum:
    # The softmaxes exponentiate the shifted logits of as many whole rows as this many
    # elements hold in one vectorised pass on the stack (row_exps), each once for the
    # loss and the gradient; rows wider than that take libm's exp, twice per element.
    EXPS_BLOCK = 2048


cdef inline double row_max(const floating[:, ::1] z, Py_ssize_t i) noexcept nogil:
    cdef Py_ssize_t j
    cdef double z_max = z[i, 0]
    for j in range(1, z.shape[1]):
        if z[i, j] > z_max:
            z_max = z[i, j]
    return z_max


cdef inline double row_logsumexp(const floating[:, ::1] z, Py_ssize_t i,
                                 double z_max) noexcept nogil:
    """log(sum_j exp(z_ij - z_max)), z_max being the row's maximum"""
    cdef Py_ssize_t j
    cdef double total = 0
    for j in range(z.shape[1]):
        total += exp(z[i, j] - z_max)
    return log(total)


cdef extern from "exps.h" nogil:
    void exps_in_place "fastnaive_exps_in_place"(double* a, Py_ssize_t n)


cdef struct ExpBlock:
    # The rows first... first + rows - 1 of a batch: their maxima and, for rows of at most
    # EXPS_BLOCK elements, exps[r * c + j] = exp(z[first + r, j] - maxima[r]).
    Py_ssize_t first, rows
    double maxima[EXPS_BLOCK]
    double exps[EXPS_BLOCK]


cdef const double* row_exps(ExpBlock* block, const floating[:, ::1] z, Py_ssize_t i,
                            double* z_max) noexcept nogil:
    """Row i's exp(z[i, j] - max_j z[i, j]) (NULL for rows wider than EXPS_BLOCK, whose
    exponentials the caller computes), its maximum to z_max; when i is past the block, the
    block from row i on: as many whole rows as EXPS_BLOCK elements hold (at least one), the
    exponentials in one vectorised pass (exps.h). Rows are asked for in increasing order."""
    cdef Py_ssize_t r, j, c = z.shape[1]
    if not block.first <= i < block.first + block.rows:
        block.first = i
        block.rows = min(max(EXPS_BLOCK // c, 1), z.shape[0] - i)
        for r in range(block.rows):
            block.maxima[r] = row_max(z, i + r)
            if c <= EXPS_BLOCK:
                for j in range(c):
                    block.exps[r * c + j] = z[i + r, j] - block.maxima[r]
        if c <= EXPS_BLOCK:
            exps_in_place(block.exps, block.rows * c)
    z_max[0] = block.maxima[i - block.first]
    return block.exps + (i - block.first) * c if c <= EXPS_BLOCK else NULL


cdef inline double row_sum(const double* a, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t j
    cdef double total = 0
    for j in range(n):
        total += a[j]
    return total


cdef double sparse_softmax_crossentropy(const floating[:, ::1] logits,
                                        const Py_ssize_t[::1] labels, const floating* w,
                                        double scale, floating[:, ::1] grad_out) noexcept nogil:
    """Return scale * sum_i w_i (logsumexp(z_i) - z_i[y_i]); grad := scale w_i (softmax(z_i) - onehot(y_i))"""
    cdef Py_ssize_t i, j, y
    cdef Py_ssize_t c = logits.shape[1]
    cdef double z_max, lse, total, weight, loss = 0
    cdef ExpBlock block
    cdef const double* e
    block.first = block.rows = 0
    for i in range(logits.shape[0]):
        y = labels[i]
        if y < 0 or y >= c:
            for j in range(c):
                grad_out[i, j] = NAN
            loss += NAN
            continue
        weight = sample_weight(w, i) * scale
        e = row_exps(&block, logits, i, &z_max)
        if e != NULL:
            total = row_sum(e, c)
            lse = log(total)
            for j in range(c):
                store(&grad_out[i, j], e[j] / total * weight)
        else:
            lse = row_logsumexp(logits, i, z_max)
            for j in range(c):
                store(&grad_out[i, j], exp(logits[i, j] - z_max - lse) * weight)
        grad_out[i, y] -= <floating>weight
        loss += (lse + z_max - logits[i, y]) * sample_weight(w, i)
    return loss * scale


cdef double softmax_crossentropy(const floating[:, ::1] logits, const floating[:, ::1] targets,
                                 const floating* w, double scale,
                                 floating[:, ::1] grad_out) noexcept nogil:
    """Return scale * sum_i w_i sum_j -t_ij log softmax(z_i)_j; grad := scale w_i (softmax(z_i) sum_j t_ij - t_i)"""
    cdef Py_ssize_t i, j
    cdef Py_ssize_t c = logits.shape[1]
    cdef double z_max, lse, total = 0, weight, t_sum, row_loss, loss = 0
    cdef ExpBlock block
    cdef const double* e
    block.first = block.rows = 0
    for i in range(logits.shape[0]):
        e = row_exps(&block, logits, i, &z_max)
        if e != NULL:
            total = row_sum(e, c)
            lse = log(total)
        else:
            lse = row_logsumexp(logits, i, z_max)
        weight = sample_weight(w, i) * scale
        t_sum = row_loss = 0
        for j in range(c):
            t_sum += targets[i, j]
            row_loss += targets[i, j] * (lse + z_max - logits[i, j])
        for j in range(c):
            if e != NULL:
                store(&grad_out[i, j], (e[j] / total * t_sum - targets[i, j]) * weight)
            else:
                store(&grad_out[i, j],
                      (exp(logits[i, j] - z_max - lse) * t_sum - targets[i, j]) * weight)
        loss += row_loss * sample_weight(w, i)
    return loss * scale


cdef double sigmoid_binary_crossentropy(const floating[:, ::1] logits,
                                        const floating[:, ::1] targets, const floating* w,
                                        double scale, floating[:, ::1] grad_out) noexcept nogil:
    """Return scale * sum_i w_i mean_j (max(z, 0) - z t + log(1 + exp(-|z|))); grad := scale w_i (sigmoid(z) - t) / k"""
    cdef Py_ssize_t i, j
    cdef double z, t, e, weight, row_loss, loss = 0
    cdef double per_output = 1.0 / logits.shape[1]
    for i in range(logits.shape[0]):
        weight = sample_weight(w, i) * scale * per_output
        row_loss = 0
        for j in range(logits.shape[1]):
            z, t = logits[i, j], targets[i, j]
            e = exp(-fabs(z))
            row_loss += (z if z > 0 else 0) - z * t + log1p(e)
            # sigmoid(z) from e = exp(-|z|), without overflow for either sign.
            store(&grad_out[i, j], ((1 / (1 + e) if z >= 0 else e / (1 + e)) - t) * weight)
        loss += row_loss * per_output * sample_weight(w, i)
    return loss * scale


cdef double mean_squared_error(const floating[:, ::1] outputs, const floating[:, ::1] targets,
                               const floating* w, double scale,
                               floating[:, ::1] grad_out) noexcept nogil:
    """Return scale * sum_i w_i mean_j (a - t)^2; grad := scale w_i 2 (a - t) / k"""
    cdef Py_ssize_t i, j
    cdef double d, weight, row_loss, loss = 0
    cdef double per_output = 1.0 / outputs.shape[1]
    for i in range(outputs.shape[0]):
        weight = sample_weight(w, i) * scale * per_output
        row_loss = 0
        for j in range(outputs.shape[1]):
            d = <double>outputs[i, j] - targets[i, j]
            row_loss += d * d
            store(&grad_out[i, j], 2 * d * weight)
        loss += row_loss * per_output * sample_weight(w, i)
    return loss * scale


cdef inline Py_ssize_t row_argmax(const floating[:, ::1] z, Py_ssize_t i) noexcept nogil:
    """The first j at which z_ij is largest"""
    cdef Py_ssize_t j, best = 0
    for j in range(1, z.shape[1]):
        if z[i, j] > z[i, best]:
            best = j
    return best


cdef Py_ssize_t count_correct(const floating[:, ::1] logits,
                              const Py_ssize_t[::1] labels) noexcept nogil:
    """Return #{i : argmax_j z_ij = y_i}, the first maximum counting on ties"""
    cdef Py_ssize_t i, correct = 0
    for i in range(logits.shape[0]):
        correct += row_argmax(logits, i) == labels[i]
    return correct


cdef Py_ssize_t count_argmax_agree(const floating[:, ::1] logits,
                                   const floating[:, ::1] targets) noexcept nogil:
    """Return #{i : argmax_j z_ij = argmax_j t_ij}"""
    cdef Py_ssize_t i, correct = 0
    for i in range(logits.shape[0]):
        correct += row_argmax(logits, i) == row_argmax(targets, i)
    return correct


cdef Py_ssize_t count_binary_correct(const floating[:, ::1] logits,
                                     const floating[:, ::1] targets) noexcept nogil:
    """Return #{(i, j) : (z_ij > 0) = (t_ij > 0.5)}"""
    cdef Py_ssize_t i, j, correct = 0
    for i in range(logits.shape[0]):
        for j in range(logits.shape[1]):
            correct += (logits[i, j] > 0) == (targets[i, j] > 0.5)
    return correct


cdef double sum_squares(const floating* x, Py_ssize_t size) noexcept nogil:
    """Return sum_i x_i^2, in double"""
    cdef Py_ssize_t i
    cdef double total = 0
    for i in range(size):
        total += <double>x[i] * x[i]
    return total


# ---- Python wrappers: check shapes, then run the kernel without the GIL. ----

def _shape_error(str expected, **arrays):
    received = ", ".join(f"{name}.shape={tuple(a.shape)}" for name, a in arrays.items())
    return ValueError(f"Expected {expected}. Received: {received}")


cdef const floating* _weights(const floating[::1] w, Py_ssize_t n) except? NULL:
    if w is None:
        return NULL
    if w.shape[0] != n:
        raise ValueError(f"Expected sample_weight of shape ({n},). "
                         f"Received: sample_weight.shape=({w.shape[0]},)")
    return &w[0] if n > 0 else NULL


def _check_pair(z, t, grad_out, str names):
    if not (z.shape[0] == t.shape[0] == grad_out.shape[0] > 0
            and z.shape[1] == t.shape[1] == grad_out.shape[1] > 0):
        raise _shape_error(f"{names} and grad_out of one shape (n, k) with n, k >= 1",
                           **{names.split(", ")[0]: z, names.split(", ")[1]: t,
                              "grad_out": grad_out})


def sparse_softmax_crossentropy_checked(const floating[:, ::1] logits,
                                        const Py_ssize_t[::1] labels, floating[:, ::1] grad_out,
                                        const floating[::1] sample_weight=None, scale=None):
    """Return scale * sum_i w_i CE(softmax(z_i), y_i) (scale None: 1 / n); grad_out := its gradient wrt logits"""
    if not (logits.shape[0] == labels.shape[0] > 0 and logits.shape[1] > 0
            and grad_out.shape[0] == logits.shape[0] and grad_out.shape[1] == logits.shape[1]):
        raise _shape_error("logits (n, c), labels (n,) and grad_out (n, c) with n, c >= 1",
                           logits=logits, labels=labels, grad_out=grad_out)
    cdef const floating* w = _weights(sample_weight, logits.shape[0])
    cdef double s = 1.0 / logits.shape[0] if scale is None else scale
    cdef double loss
    with nogil:
        loss = sparse_softmax_crossentropy(logits, labels, w, s, grad_out)
    return loss


def softmax_crossentropy_checked(const floating[:, ::1] logits, const floating[:, ::1] targets,
                                 floating[:, ::1] grad_out,
                                 const floating[::1] sample_weight=None, scale=None):
    """Return scale * sum_i w_i CE(softmax(z_i), t_i) (scale None: 1 / n); grad_out := its gradient wrt logits"""
    _check_pair(logits, targets, grad_out, "logits, targets")
    cdef const floating* w = _weights(sample_weight, logits.shape[0])
    cdef double s = 1.0 / logits.shape[0] if scale is None else scale
    cdef double loss
    with nogil:
        loss = softmax_crossentropy(logits, targets, w, s, grad_out)
    return loss


def sigmoid_binary_crossentropy_checked(const floating[:, ::1] logits,
                                        const floating[:, ::1] targets, floating[:, ::1] grad_out,
                                        const floating[::1] sample_weight=None, scale=None):
    """Return scale * sum_i w_i mean_j BCE(sigmoid(z_ij), t_ij) (scale None: 1 / n); grad_out := its gradient wrt logits"""
    _check_pair(logits, targets, grad_out, "logits, targets")
    cdef const floating* w = _weights(sample_weight, logits.shape[0])
    cdef double s = 1.0 / logits.shape[0] if scale is None else scale
    cdef double loss
    with nogil:
        loss = sigmoid_binary_crossentropy(logits, targets, w, s, grad_out)
    return loss


def mean_squared_error_checked(const floating[:, ::1] outputs, const floating[:, ::1] targets,
                               floating[:, ::1] grad_out,
                               const floating[::1] sample_weight=None, scale=None):
    """Return scale * sum_i w_i mean_j (a_ij - t_ij)^2 (scale None: 1 / n); grad_out := its gradient wrt outputs"""
    _check_pair(outputs, targets, grad_out, "outputs, targets")
    cdef const floating* w = _weights(sample_weight, outputs.shape[0])
    cdef double s = 1.0 / outputs.shape[0] if scale is None else scale
    cdef double loss
    with nogil:
        loss = mean_squared_error(outputs, targets, w, s, grad_out)
    return loss


def count_correct_checked(const floating[:, ::1] logits, const Py_ssize_t[::1] labels):
    """Return how many rows have their largest logit at their label"""
    if not (logits.shape[0] == labels.shape[0] and logits.shape[1] > 0):
        raise _shape_error("logits (n, c) and labels (n,) with c >= 1", logits=logits,
                           labels=labels)
    cdef Py_ssize_t correct
    with nogil:
        correct = count_correct(logits, labels)
    return correct


def count_argmax_agree_checked(const floating[:, ::1] logits, const floating[:, ::1] targets):
    """Return how many rows have their largest logit where their target is largest"""
    if not (logits.shape[0] == targets.shape[0] and logits.shape[1] == targets.shape[1] > 0):
        raise _shape_error("logits and targets of one shape (n, c) with c >= 1", logits=logits,
                           targets=targets)
    cdef Py_ssize_t correct
    with nogil:
        correct = count_argmax_agree(logits, targets)
    return correct


def count_binary_correct_checked(const floating[:, ::1] logits, const floating[:, ::1] targets):
    """Return how many entries have logit > 0 exactly where target > 0.5"""
    if not (logits.shape[0] == targets.shape[0] and logits.shape[1] == targets.shape[1] > 0):
        raise _shape_error("logits and targets of one shape (n, k) with k >= 1", logits=logits,
                           targets=targets)
    cdef Py_ssize_t correct
    with nogil:
        correct = count_binary_correct(logits, targets)
    return correct


def sum_squares_checked(const floating[:, ::1] x):
    """Return sum_ij x_ij^2, summed in double"""
    if x.shape[0] == 0 or x.shape[1] == 0:
        return 0.0
    cdef double total
    with nogil:
        total = sum_squares(&x[0, 0], x.shape[0] * x.shape[1])
    return total
