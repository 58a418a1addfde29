from cython cimport floating

cdef tuple checked_loss_and_hits(int code, const floating[:, ::1] logits, object targets,
                                 floating[:, ::1] grad_out, const floating[::1] sample_weight,
                                 object scale, int n_threads, bint count)

cdef enum:
    # The losses, as fastnaive.losses names them (loss_rows's code).
    SPARSE_CATEGORICAL_CODE = 0
    CATEGORICAL_CODE = 1
    BINARY_CODE = 2
    MEAN_SQUARED_CODE = 3
    # A batch's rows go in at most LOSS_BLOCKS blocks of at least LOSS_BLOCK_ROWS rows each.
    LOSS_BLOCKS = 64
    LOSS_BLOCK_ROWS = 16

cdef struct LossBlocks:
    Py_ssize_t count, rows

cdef LossBlocks loss_blocks(Py_ssize_t n) noexcept nogil
cdef void loss_block(int code, const floating[:, ::1] logits, const Py_ssize_t[::1] labels,
                     const floating[:, ::1] targets, const floating* w, double scale,
                     floating[:, ::1] grad_out, bint count, Py_ssize_t rows, Py_ssize_t b,
                     double* sums, Py_ssize_t* counts) noexcept nogil
cdef double blocks_total(LossBlocks blocks, const double* sums, const Py_ssize_t* counts,
                         double scale, Py_ssize_t* hits) noexcept nogil
cdef const Py_ssize_t[::1] loss_labels(int code, object targets)
cdef const floating[:, ::1] loss_targets(int code, object targets,
                                         const floating[:, ::1] logits)
cdef int check_loss(int code, const floating[:, ::1] logits, const Py_ssize_t[::1] labels,
                    const floating[:, ::1] targets, const floating[:, ::1] grad_out,
                    const floating[::1] sample_weight) except -1
