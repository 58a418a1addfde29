from cython cimport floating

cdef tuple checked_loss_and_hits(int code, const floating[:, ::1] logits, object targets,
                                 floating[:, ::1] grad_out, const floating[::1] sample_weight,
                                 object scale, int n_threads, bint count)
