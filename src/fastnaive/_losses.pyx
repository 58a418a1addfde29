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
# A loss and its hits are one pass (loss_rows) over fixed blocks of rows, which the threads
# share in order (OpenMP's static schedule, as the narrow head's forward product deals its
# rows, so each thread reads the logits it wrote); each block's sums are kept apart and added
# in order after, so the bits depend on the batch's size alone, not on the threads. A book
# batch (128 x 10) takes 5.8 us on one Zen 4 core. A training step under a narrow head runs
# the blocks inside its head pass (fastnaive._program: loss_block, blocks_total), each
# thread's between the head's product and input gradient on the same rows.
from cython cimport floating
from cython.parallel cimport prange
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
    # Below this many outputs, a parallel region costs more than it saves.
    PARALLEL_MIN_ELEMENTS = 1024

SPARSE_CATEGORICAL, CATEGORICAL, BINARY, MEAN_SQUARED = range(4)


cdef LossBlocks loss_blocks(Py_ssize_t n) noexcept nogil:
    """n rows in blocks of `rows` (the last may be shorter): as few as LOSS_BLOCKS allow,
    but of at least LOSS_BLOCK_ROWS rows"""
    cdef LossBlocks blocks
    blocks.rows = max((n + LOSS_BLOCKS - 1) // LOSS_BLOCKS, <Py_ssize_t>LOSS_BLOCK_ROWS)
    blocks.count = (n + blocks.rows - 1) // blocks.rows
    return blocks


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
                            Py_ssize_t end, double* z_max) noexcept nogil:
    """Row i's exp(z[i, j] - max_j z[i, j]) (NULL for rows wider than EXPS_BLOCK, whose
    exponentials the caller computes), its maximum to z_max; when i is past the block, the
    block from row i on: as many whole rows before row `end` as EXPS_BLOCK elements hold (at
    least one), the exponentials in one vectorised pass (exps.h). Rows are asked for in
    increasing order."""
    cdef Py_ssize_t r, j, c = z.shape[1]
    if not block.first <= i < block.first + block.rows:
        block.first = i
        block.rows = min(max(EXPS_BLOCK // c, 1), end - i)
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


# The kernels below take the rows i0 ... i1 - 1 and return their sum of w_i loss_i, unscaled;
# their gradient rows are scaled. loss_rows sums them by blocks of rows (LossBlocks).
cdef double sparse_softmax_crossentropy(const floating[:, ::1] logits,
                                        const Py_ssize_t[::1] labels, const floating* w,
                                        double scale, floating[:, ::1] grad_out, Py_ssize_t i0,
                                        Py_ssize_t i1) noexcept nogil:
    """Return sum_i w_i (logsumexp(z_i) - z_i[y_i]); grad := scale w_i (softmax(z_i) - onehot(y_i))"""
    cdef Py_ssize_t i, j, y
    cdef Py_ssize_t c = logits.shape[1]
    cdef double z_max, lse, total, weight, loss = 0
    cdef ExpBlock block
    cdef const double* e
    block.first = block.rows = 0
    for i in range(i0, i1):
        y = labels[i]
        if y < 0 or y >= c:
            for j in range(c):
                grad_out[i, j] = NAN
            loss += NAN
            continue
        weight = sample_weight(w, i) * scale
        e = row_exps(&block, logits, i, i1, &z_max)
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
    return loss


cdef double softmax_crossentropy(const floating[:, ::1] logits, const floating[:, ::1] targets,
                                 const floating* w, double scale, floating[:, ::1] grad_out,
                                 Py_ssize_t i0, Py_ssize_t i1) noexcept nogil:
    """Return sum_i w_i sum_j -t_ij log softmax(z_i)_j; grad := scale w_i (softmax(z_i) sum_j t_ij - t_i)"""
    cdef Py_ssize_t i, j
    cdef Py_ssize_t c = logits.shape[1]
    cdef double z_max, lse, total = 0, weight, t_sum, row_loss, loss = 0
    cdef ExpBlock block
    cdef const double* e
    block.first = block.rows = 0
    for i in range(i0, i1):
        e = row_exps(&block, logits, i, i1, &z_max)
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
    return loss


cdef double sigmoid_binary_crossentropy(const floating[:, ::1] logits,
                                        const floating[:, ::1] targets, const floating* w,
                                        double scale, floating[:, ::1] grad_out, Py_ssize_t i0,
                                        Py_ssize_t i1) noexcept nogil:
    """Return sum_i w_i mean_j (max(z, 0) - z t + log(1 + exp(-|z|))); grad := scale w_i (sigmoid(z) - t) / k"""
    cdef Py_ssize_t i, j
    cdef double z, t, e, weight, row_loss, loss = 0
    cdef double per_output = 1.0 / logits.shape[1]
    for i in range(i0, i1):
        weight = sample_weight(w, i) * scale * per_output
        row_loss = 0
        for j in range(logits.shape[1]):
            z, t = logits[i, j], targets[i, j]
            e = exp(-fabs(z))
            row_loss += (z if z > 0 else 0) - z * t + log1p(e)
            # sigmoid(z) from e = exp(-|z|), without overflow for either sign.
            store(&grad_out[i, j], ((1 / (1 + e) if z >= 0 else e / (1 + e)) - t) * weight)
        loss += row_loss * per_output * sample_weight(w, i)
    return loss


cdef double mean_squared_error(const floating[:, ::1] outputs, const floating[:, ::1] targets,
                               const floating* w, double scale, floating[:, ::1] grad_out,
                               Py_ssize_t i0, Py_ssize_t i1) noexcept nogil:
    """Return sum_i w_i mean_j (a - t)^2; grad := scale w_i 2 (a - t) / k"""
    cdef Py_ssize_t i, j
    cdef double d, weight, row_loss, loss = 0
    cdef double per_output = 1.0 / outputs.shape[1]
    for i in range(i0, i1):
        weight = sample_weight(w, i) * scale * per_output
        row_loss = 0
        for j in range(outputs.shape[1]):
            d = <double>outputs[i, j] - targets[i, j]
            row_loss += d * d
            store(&grad_out[i, j], 2 * d * weight)
        loss += row_loss * per_output * sample_weight(w, i)
    return loss


cdef inline Py_ssize_t row_argmax(const floating[:, ::1] z, Py_ssize_t i) noexcept nogil:
    """The first j at which z_ij is largest"""
    cdef Py_ssize_t j, best = 0
    for j in range(1, z.shape[1]):
        if z[i, j] > z[i, best]:
            best = j
    return best


cdef Py_ssize_t count_hits(int code, const floating[:, ::1] logits,
                           const Py_ssize_t[::1] labels, const floating[:, ::1] targets,
                           Py_ssize_t i0, Py_ssize_t i1) noexcept nogil:
    """Accuracy's hits over the rows i0 ... i1 - 1: argmax_j z_ij = y_i (sparse labels),
    = argmax_j t_ij (categorical), or one per (i, j) with (z_ij > 0) = (t_ij > 0.5)
    (binary); none for mean squared error. The first maximum counts on ties."""
    cdef Py_ssize_t i, j, hits = 0
    if code == SPARSE_CATEGORICAL_CODE:
        for i in range(i0, i1):
            hits += row_argmax(logits, i) == labels[i]
    elif code == CATEGORICAL_CODE:
        for i in range(i0, i1):
            hits += row_argmax(logits, i) == row_argmax(targets, i)
    elif code == BINARY_CODE:
        for i in range(i0, i1):
            for j in range(logits.shape[1]):
                hits += (logits[i, j] > 0) == (targets[i, j] > 0.5)
    return hits


cdef void loss_block(int code, const floating[:, ::1] logits, const Py_ssize_t[::1] labels,
                     const floating[:, ::1] targets, const floating* w, double scale,
                     floating[:, ::1] grad_out, bint count, Py_ssize_t rows, Py_ssize_t b,
                     double* sums, Py_ssize_t* counts) noexcept nogil:
    """loss_rows's block b of `rows` rows: its loss to sums[b], its hits to counts[b]"""
    cdef Py_ssize_t i0 = b * rows
    cdef Py_ssize_t i1 = min(i0 + rows, logits.shape[0])
    if code == SPARSE_CATEGORICAL_CODE:
        sums[b] = sparse_softmax_crossentropy(logits, labels, w, scale, grad_out, i0, i1)
    elif code == CATEGORICAL_CODE:
        sums[b] = softmax_crossentropy(logits, targets, w, scale, grad_out, i0, i1)
    elif code == BINARY_CODE:
        sums[b] = sigmoid_binary_crossentropy(logits, targets, w, scale, grad_out, i0, i1)
    else:
        sums[b] = mean_squared_error(logits, targets, w, scale, grad_out, i0, i1)
    counts[b] = count_hits(code, logits, labels, targets, i0, i1) if count else 0


cdef double loss_rows(int code, const floating[:, ::1] logits, const Py_ssize_t[::1] labels,
                      const floating[:, ::1] targets, const floating* w, double scale,
                      floating[:, ::1] grad_out, Py_ssize_t* hits,
                      int n_threads) noexcept nogil:
    """Return scale * sum_i w_i loss_i of loss `code` over all rows, grad_out := its gradient
    and, unless hits is NULL, hits[0] := accuracy's hits (count_hits): in blocks of rows
    (LossBlocks), on up to n_threads threads where there are enough rows (one thread enters
    no parallel region, which costs about 0.5 us even then). labels are read for
    SPARSE_CATEGORICAL, targets for the others."""
    cdef LossBlocks blocks = loss_blocks(logits.shape[0])
    cdef double sums[LOSS_BLOCKS]
    cdef Py_ssize_t counts[LOSS_BLOCKS]
    cdef Py_ssize_t b
    cdef bint count = hits != NULL
    cdef int threads = 1
    if logits.shape[0] * logits.shape[1] >= PARALLEL_MIN_ELEMENTS:
        threads = <int>min(<Py_ssize_t>n_threads, blocks.count)
    if threads > 1:
        for b in prange(blocks.count, num_threads=threads, schedule="static"):
            loss_block(code, logits, labels, targets, w, scale, grad_out, count, blocks.rows,
                       b, sums, counts)
    else:
        for b in range(blocks.count):
            loss_block(code, logits, labels, targets, w, scale, grad_out, count, blocks.rows,
                       b, sums, counts)
    return blocks_total(blocks, sums, counts, scale, hits)


cdef double blocks_total(LossBlocks blocks, const double* sums, const Py_ssize_t* counts,
                         double scale, Py_ssize_t* hits) noexcept nogil:
    """scale * the sum of the blocks' losses, added in order (the same bits at any number of
    threads), and, unless hits is NULL, hits[0] := the sum of their hits"""
    cdef Py_ssize_t b
    cdef double loss = 0
    for b in range(blocks.count):
        loss += sums[b]
    if hits != NULL:
        hits[0] = 0
        for b in range(blocks.count):
            hits[0] += counts[b]
    return loss * scale


cdef double sum_squares(const floating* x, Py_ssize_t size) noexcept nogil:
    """Return sum_i x_i^2, in double"""
    cdef Py_ssize_t i
    cdef double total = 0
    for i in range(size):
        total += <double>x[i] * x[i]
    return total


# ---- Python wrappers: check shapes, then run the kernel without the GIL. ----

def _shape_error(str expected, **arrays):
    received = ", ".join(f"{name}.shape={tuple(a.shape) if a is not None else None}"
                         for name, a in arrays.items())
    return ValueError(f"Expected {expected}. Received: {received}")


def loss_and_hits(int code, const floating[:, ::1] logits, targets, floating[:, ::1] grad_out,
                  const floating[::1] sample_weight=None, scale=None, int n_threads=1,
                  bint count=True):
    """Return (scale * sum_i w_i loss_i, accuracy's hits) of the loss `code` (scale None:
    1 / n; hits 0 without `count`); grad_out := the loss's gradient wrt logits.

    code: SPARSE_CATEGORICAL (targets: class indices, intp, (n,)), CATEGORICAL, BINARY or
    MEAN_SQUARED (targets: (n, k), of logits' dtype); n_threads: the most threads to use
    (the results are the same at any number)."""
    return checked_loss_and_hits(code, logits, targets, grad_out, sample_weight, scale,
                                 n_threads, count)


cdef tuple checked_loss_and_hits(int code, const floating[:, ::1] logits, object targets,
                                 floating[:, ::1] grad_out, const floating[::1] sample_weight,
                                 object scale, int n_threads, bint count):
    """loss_and_hits, for the compiled callers (fastnaive._program) as well"""
    cdef const Py_ssize_t[::1] labels = loss_labels(code, targets)
    cdef const floating[:, ::1] t = loss_targets(code, targets, logits)
    check_loss(code, logits, labels, t, grad_out, sample_weight)
    cdef const floating* w = NULL if sample_weight is None else &sample_weight[0]
    cdef double s = 1.0 / logits.shape[0] if scale is None else scale
    cdef double loss
    cdef Py_ssize_t hits = 0
    with nogil:
        loss = loss_rows(code, logits, labels, t, w, s, grad_out, &hits if count else NULL,
                         max(n_threads, 1))
    return loss, hits


cdef const Py_ssize_t[::1] loss_labels(int code, object targets):
    """The loss `code`'s targets as class indices (SPARSE_CATEGORICAL's), else None; a code
    that is none of the losses' raises ValueError, before any conversion"""
    if not SPARSE_CATEGORICAL_CODE <= code <= MEAN_SQUARED_CODE:
        raise ValueError(f"Expected code in [{SPARSE_CATEGORICAL_CODE}, "
                         f"{MEAN_SQUARED_CODE}]. Received: code={code}")
    return targets if code == SPARSE_CATEGORICAL_CODE else None


cdef const floating[:, ::1] loss_targets(int code, object targets,
                                         const floating[:, ::1] logits):
    """The loss `code`'s targets per output, in logits' dtype (every loss's but
    SPARSE_CATEGORICAL's, for which None); after loss_labels, which checks the code"""
    return None if code == SPARSE_CATEGORICAL_CODE else targets


cdef int check_loss(int code, const floating[:, ::1] logits, const Py_ssize_t[::1] labels,
                    const floating[:, ::1] targets, const floating[:, ::1] grad_out,
                    const floating[::1] sample_weight) except -1:
    """Raise ValueError unless the loss `code` (checked by loss_labels) can run on these
    arrays: labels (n,) for SPARSE_CATEGORICAL, else targets (n, k); logits and grad_out (n,
    k) with n, k >= 1; sample_weight (n,) or None"""
    cdef Py_ssize_t rows
    if code == SPARSE_CATEGORICAL_CODE:
        rows = labels.shape[0] if labels is not None else -1
    else:
        rows = (targets.shape[0] if targets is not None and targets.shape[1] == logits.shape[1]
                else -1)
    if not (logits.shape[0] == rows == grad_out.shape[0] > 0
            and logits.shape[1] == grad_out.shape[1] > 0):
        raise _shape_error("logits (n, k), targets (n,) of class indices or (n, k), and "
                           "grad_out (n, k), with n, k >= 1", logits=logits,
                           targets=labels if code == SPARSE_CATEGORICAL_CODE else targets,
                           grad_out=grad_out)
    if sample_weight is not None and sample_weight.shape[0] != logits.shape[0]:
        raise ValueError(f"Expected sample_weight of shape ({logits.shape[0]},). "
                         f"Received: sample_weight.shape=({sample_weight.shape[0]},)")
    return 0


def sum_squares_checked(const floating[:, ::1] x):
    """Return sum_ij x_ij^2, summed in double"""
    if x.shape[0] == 0 or x.shape[1] == 0:
        return 0.0
    cdef double total
    with nogil:
        total = sum_squares(&x[0, 0], x.shape[0] * x.shape[1])
    return total


def labels_in_range(const Py_ssize_t[::1] labels, Py_ssize_t n_classes):
    """True when every label is in [0, n_classes) (the class indices the losses take)"""
    cdef Py_ssize_t i
    cdef size_t bound = <size_t>max(n_classes, 0)
    cdef bint outside = False
    with nogil:
        for i in range(labels.shape[0]):
            outside |= <size_t>labels[i] >= bound
    return not outside
