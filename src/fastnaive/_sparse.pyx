# Design: the first layer's two GEMMs, X @ W1 and X.T @ delta1, over the nonzeros of the
# input batch only. MNIST pixels are 81% zero, so skipping them is exact and does a fifth
# of the dense work; only the summation order changes. The batch is compressed twice, by
# rows (for X @ W: each output row is a sum of the rows of W that its nonzeros pick) and by
# columns (for X.T @ delta: each row of dW sums the rows of delta that one pixel's nonzeros
# pick), into caller-provided int32 index and value buffers, so no kernel allocates. The
# inner loops are C (sparse_kernels.h), compiled for AVX-512, AVX2 and baseline x86-64 and
# chosen at import: they keep a tile of output row in registers while the nonzeros stream
# past. The columns of W are cut into blocks of BLOCK_BYTES, whose slab of W (784 rows:
# 400 KB) stays in L2 while every row of the batch passes; OpenMP threads take disjoint
# blocks, the same ones in both kernels, so no atomics are needed and each core keeps its
# part of W in its own L2. Index buffers are user input, so the `def` wrappers check that
# they are in range before any kernel reads through them.
from cython cimport floating
from cython.parallel cimport prange
import numpy as np

cdef extern from "sparse_kernels.h" nogil:
    void fastnaive_sparse_forward_f(Py_ssize_t n_rows, const int* row_start, const int* cols,
                                    const float* vals, const float* W, Py_ssize_t ldw,
                                    const float* b, int relu, float* Z, Py_ssize_t ldz,
                                    Py_ssize_t j0, Py_ssize_t j1)
    void fastnaive_sparse_forward_d(Py_ssize_t n_rows, const int* row_start, const int* cols,
                                    const double* vals, const double* W, Py_ssize_t ldw,
                                    const double* b, int relu, double* Z, Py_ssize_t ldz,
                                    Py_ssize_t j0, Py_ssize_t j1)
    void fastnaive_sparse_param_grad_f(Py_ssize_t n_features, const int* col_start,
                                       const int* rows, const float* vals, const float* delta,
                                       Py_ssize_t n_rows, Py_ssize_t ldd, float alpha, float beta,
                                       float* dW, Py_ssize_t ldw, float* db,
                                       Py_ssize_t j0, Py_ssize_t j1)
    void fastnaive_sparse_param_grad_d(Py_ssize_t n_features, const int* col_start,
                                       const int* rows, const double* vals, const double* delta,
                                       Py_ssize_t n_rows, Py_ssize_t ldd, double alpha,
                                       double beta, double* dW, Py_ssize_t ldw, double* db,
                                       Py_ssize_t j0, Py_ssize_t j1)
    int fastnaive_sparse_select_isa(int widest)
    int fastnaive_sparse_max_threads()

# Columns of W per block: 128 floats or 64 doubles, a whole number of tiles on every ISA.
cdef Py_ssize_t BLOCK_BYTES = 512
# Below this many multiply-adds (nonzeros times columns) a parallel region costs more than it saves.
cdef Py_ssize_t PARALLEL_MIN_PRODUCTS = 1 << 18
INSTRUCTION_SETS = ("baseline", "avx2", "avx512")
cdef int _isa = fastnaive_sparse_select_isa(2)


cdef Py_ssize_t compress_rows(const floating[:, ::1] X, int[::1] row_start_out, int[::1] cols_out,
                              floating[::1] vals_out) noexcept nogil:
    """row_start, cols, vals := X by rows: row i's nonzeros X[i, cols[p]] = vals[p] for p in [row_start[i], row_start[i + 1]); return their number"""
    cdef Py_ssize_t i, c, p = 0
    cdef floating x
    for i in range(X.shape[0]):
        row_start_out[i] = <int>p
        for c in range(X.shape[1]):
            # Written always, kept when nonzero: no branch to mispredict, and p <= i * k + c
            # stays inside the (n * k)-long buffers. NaN != 0, so NaN is kept.
            x = X[i, c]
            cols_out[p] = <int>c
            vals_out[p] = x
            p += x != 0
    row_start_out[X.shape[0]] = <int>p
    return p


cdef void compress_columns(const int[::1] row_start, const int[::1] cols,
                           const floating[::1] vals, int[::1] col_start_out, int[::1] rows_out,
                           floating[::1] col_vals_out) noexcept nogil:
    """col_start, rows, col_vals := the same matrix by columns (its transpose by rows), rows ascending"""
    cdef Py_ssize_t i, c, p, q
    cdef Py_ssize_t n_rows = row_start.shape[0] - 1
    cdef Py_ssize_t n_features = col_start_out.shape[0] - 1
    cdef Py_ssize_t nnz = row_start[n_rows]
    for c in range(n_features + 1):
        col_start_out[c] = 0
    for p in range(nnz):
        col_start_out[cols[p] + 1] += 1
    for c in range(n_features):
        col_start_out[c + 1] += col_start_out[c]
    # Scatter with col_start_out[c] as column c's cursor; it ends at column c + 1's start.
    for i in range(n_rows):
        for p in range(row_start[i], row_start[i + 1]):
            c = cols[p]
            q = col_start_out[c]
            rows_out[q] = <int>i
            col_vals_out[q] = vals[p]
            col_start_out[c] = <int>(q + 1)
    for c in range(n_features, 0, -1):
        col_start_out[c] = col_start_out[c - 1]
    col_start_out[0] = 0


cdef inline const int* first_index(const int[::1] a) noexcept nogil:
    """&a[0], or NULL when a is empty (a list with no nonzeros is never read)"""
    return &a[0] if a.shape[0] > 0 else NULL


cdef inline const floating* first_value(const floating[::1] a) noexcept nogil:
    """&a[0], or NULL when a is empty (a list with no nonzeros is never read)"""
    return &a[0] if a.shape[0] > 0 else NULL


cdef void sparse_forward(const int[::1] row_start, const int[::1] cols, const floating[::1] vals,
                         const floating[:, ::1] W, const floating[::1] b, bint relu,
                         floating[:, ::1] Z_out, int n_threads) noexcept nogil:
    """Z := act(X @ W + b), X given by rows (compress_rows), act = relu if relu else identity"""
    cdef Py_ssize_t n = Z_out.shape[0]
    cdef Py_ssize_t m = Z_out.shape[1]
    cdef Py_ssize_t width = BLOCK_BYTES // <Py_ssize_t>sizeof(floating)
    cdef Py_ssize_t n_blocks = (m + width - 1) // width
    cdef Py_ssize_t block, j0, j1
    cdef bint parallel = (n_threads > 1 and n_blocks > 1
                          and row_start[n] * m >= PARALLEL_MIN_PRODUCTS)
    if n == 0 or m == 0:
        return
    for block in prange(n_blocks, num_threads=n_threads, schedule="static",
                        use_threads_if=parallel):
        j0 = block * width
        j1 = min(j0 + width, m)
        if floating is float:
            fastnaive_sparse_forward_f(n, &row_start[0], first_index(cols), first_value(vals),
                                       &W[0, 0], m,
                                       &b[0], relu, &Z_out[0, 0], m, j0, j1)
        else:
            fastnaive_sparse_forward_d(n, &row_start[0], first_index(cols), first_value(vals),
                                       &W[0, 0], m,
                                       &b[0], relu, &Z_out[0, 0], m, j0, j1)


cdef void sparse_param_grad(const int[::1] col_start, const int[::1] rows,
                            const floating[::1] vals, const floating[:, ::1] delta,
                            floating alpha, floating beta, floating[:, ::1] dW_out,
                            floating[::1] db_out, int n_threads) noexcept nogil:
    """dW := alpha * X.T @ delta + beta * dW;  db := alpha * sum_rows(delta) + beta * db, X given by columns (compress_columns)"""
    cdef Py_ssize_t k = dW_out.shape[0]
    cdef Py_ssize_t m = dW_out.shape[1]
    cdef Py_ssize_t width = BLOCK_BYTES // <Py_ssize_t>sizeof(floating)
    cdef Py_ssize_t n_blocks = (m + width - 1) // width
    cdef Py_ssize_t block, j0, j1
    cdef bint parallel = (n_threads > 1 and n_blocks > 1
                          and (col_start[k] + delta.shape[0]) * m >= PARALLEL_MIN_PRODUCTS)
    if m == 0:
        return
    for block in prange(n_blocks, num_threads=n_threads, schedule="static",
                        use_threads_if=parallel):
        j0 = block * width
        j1 = min(j0 + width, m)
        if floating is float:
            fastnaive_sparse_param_grad_f(k, &col_start[0], first_index(rows), first_value(vals),
                                          &delta[0, 0],
                                          delta.shape[0], m, alpha, beta, &dW_out[0, 0], m,
                                          &db_out[0], j0, j1)
        else:
            fastnaive_sparse_param_grad_d(k, &col_start[0], first_index(rows), first_value(vals),
                                          &delta[0, 0],
                                          delta.shape[0], m, alpha, beta, &dW_out[0, 0], m,
                                          &db_out[0], j0, j1)


cdef bint compressed_in_range(const int[::1] start, Py_ssize_t capacity, const int[::1] index,
                              Py_ssize_t n_index) noexcept nogil:
    """True when start rises from 0 to at most capacity and index[:start[-1]] lies in [0, n_index)"""
    cdef Py_ssize_t i, p
    cdef int lowest = 0, highest = 0
    if start[0] != 0:
        return False
    for i in range(start.shape[0] - 1):
        if start[i + 1] < start[i]:
            return False
    if start[start.shape[0] - 1] > capacity:
        return False
    for p in range(start[start.shape[0] - 1]):
        lowest = min(lowest, index[p])
        highest = max(highest, index[p])
    return lowest >= 0 and highest < n_index


# ---- Python wrappers: check shapes and indices, then run the kernel without the GIL. ----

def _shape_error(str expected, **arrays):
    received = ", ".join(f"{name}.shape={tuple(a.shape)}" for name, a in arrays.items())
    return ValueError(f"Expected {expected}. Received: {received}")


def _check_compressed(str start_name, const int[::1] start, str index_name, const int[::1] index,
                      Py_ssize_t capacity, Py_ssize_t n_index):
    cdef bint valid
    with nogil:
        valid = compressed_in_range(start, capacity, index, n_index)
    if not valid:
        starts = np.asarray(start)
        last = int(starts[len(starts) - 1])
        used = np.asarray(index)[:max(0, min(last, capacity))]
        bounds = f"[{used.min()}, {used.max()}]" if used.size else "[]"
        raise ValueError(
            f"Expected {start_name} non-decreasing from 0 to at most {capacity} (the length of "
            f"{index_name} and of the values) and {index_name} in [0, {n_index}). Received: "
            f"{start_name}[0]={starts[0]}, {start_name}[-1]={last}, non-decreasing="
            f"{bool(np.all(np.diff(starts) >= 0))}, {index_name} used in {bounds}")


def _n_threads(n_threads):
    return fastnaive_sparse_max_threads() if n_threads is None else max(1, int(n_threads))


def select_instruction_set(str widest="avx512"):
    """Use the widest kernels, of "avx512", "avx2" and "baseline", that the CPU runs and that are no wider than `widest`; return their name."""
    if widest not in INSTRUCTION_SETS:
        raise ValueError(f"Expected widest in {INSTRUCTION_SETS}. Received: widest={widest!r}")
    global _isa
    _isa = fastnaive_sparse_select_isa(INSTRUCTION_SETS.index(widest))
    return INSTRUCTION_SETS[_isa]


def instruction_set():
    """The instruction set the kernels run on: "avx512", "avx2" or "baseline"."""
    return INSTRUCTION_SETS[_isa]


def compress_rows_checked(const floating[:, ::1] X, int[::1] row_start_out, int[::1] cols_out,
                          floating[::1] vals_out):
    """row_start_out, cols_out, vals_out := the nonzeros of X by rows; return their number"""
    cdef Py_ssize_t size = X.shape[0] * X.shape[1]
    if not (row_start_out.shape[0] == X.shape[0] + 1 and cols_out.shape[0] >= size
            and vals_out.shape[0] >= size and size < 2**31):
        raise _shape_error("X (n, k) with n * k < 2**31, row_start_out (n + 1,), and cols_out "
                           "and vals_out of at least n * k", X=X, row_start_out=row_start_out,
                           cols_out=cols_out, vals_out=vals_out)
    cdef Py_ssize_t nnz
    with nogil:
        nnz = compress_rows(X, row_start_out, cols_out, vals_out)
    return nnz


def compress_columns_checked(const int[::1] row_start, const int[::1] cols,
                             const floating[::1] vals, int[::1] col_start_out, int[::1] rows_out,
                             floating[::1] col_vals_out):
    """col_start_out, rows_out, col_vals_out := the matrix of compress_rows_checked by columns"""
    if not (row_start.shape[0] >= 1 and col_start_out.shape[0] >= 2
            and rows_out.shape[0] >= min(cols.shape[0], vals.shape[0])
            and col_vals_out.shape[0] >= min(cols.shape[0], vals.shape[0])):
        raise _shape_error("row_start (n + 1,), col_start_out (k + 1,) with k >= 1, and rows_out "
                           "and col_vals_out at least as long as cols and vals",
                           row_start=row_start, cols=cols, vals=vals, col_start_out=col_start_out,
                           rows_out=rows_out, col_vals_out=col_vals_out)
    _check_compressed("row_start", row_start, "cols", cols, min(cols.shape[0], vals.shape[0]),
                      col_start_out.shape[0] - 1)
    with nogil:
        compress_columns(row_start, cols, vals, col_start_out, rows_out, col_vals_out)


def sparse_forward_checked(const int[::1] row_start, const int[::1] cols, const floating[::1] vals,
                           const floating[:, ::1] W, const floating[::1] b, bint relu,
                           floating[:, ::1] Z_out, n_threads=None):
    """Z_out := act(X @ W + b), X given by compress_rows_checked; n_threads None: OpenMP's default"""
    if not (W.shape[0] > 0 and b.shape[0] == W.shape[1] and Z_out.shape[1] == W.shape[1]
            and row_start.shape[0] == Z_out.shape[0] + 1):
        raise _shape_error("row_start (n + 1,), W (k, m), b (m,) and Z_out (n, m) with k >= 1",
                           row_start=row_start, W=W, b=b, Z_out=Z_out)
    _check_compressed("row_start", row_start, "cols", cols, min(cols.shape[0], vals.shape[0]),
                      W.shape[0])
    cdef int threads = _n_threads(n_threads)
    with nogil:
        sparse_forward(row_start, cols, vals, W, b, relu, Z_out, threads)


def sparse_param_grad_checked(const int[::1] col_start, const int[::1] rows,
                              const floating[::1] vals, const floating[:, ::1] delta,
                              floating alpha, floating beta, floating[:, ::1] dW_out,
                              floating[::1] db_out, n_threads=None):
    """dW_out := alpha * X.T @ delta + beta * dW_out;  db_out := alpha * sum_rows(delta) + beta * db_out, X given by compress_columns_checked"""
    if not (delta.shape[0] > 0 and dW_out.shape[0] > 0 and col_start.shape[0] == dW_out.shape[0] + 1
            and dW_out.shape[1] == delta.shape[1] and db_out.shape[0] == delta.shape[1]):
        raise _shape_error("col_start (k + 1,), delta (n, m), dW_out (k, m) and db_out (m,) "
                           "with n, k >= 1", col_start=col_start, delta=delta, dW_out=dW_out,
                           db_out=db_out)
    _check_compressed("col_start", col_start, "rows", rows, min(rows.shape[0], vals.shape[0]),
                      delta.shape[0])
    cdef int threads = _n_threads(n_threads)
    with nogil:
        sparse_param_grad(col_start, rows, vals, delta, alpha, beta, dW_out, db_out, threads)
