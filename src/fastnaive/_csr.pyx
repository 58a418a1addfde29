# Design: the first layer on a batch of rows of a scipy.sparse CSR matrix (data, indices,
# indptr) of bag-of-words width (1e5 columns and more, under 1% nonzero), read in place: the
# batch is the list `rows` of the matrix's rows, never densified or copied. What bounds both
# products is fetching the rows of W or dW that the nonzeros pick, at random, from L3 or
# memory (a 1e5 x 64 float32 W is 26 MB), not the multiply-adds.
# - Forward, Z = X[rows] @ W + b, is a row-wise gather: each nonzero (c, v) of a row adds
#   v * W[c, :] to the row's Z, a contiguous axpy over the columns that the compiler
#   vectorises. Four nonzeros go through one pass over z, written z + v0 w0 + v1 w1 + ...,
#   which C evaluates left to right: the same roundings as one nonzero at a time, with a
#   quarter of the loads and stores of z. The W rows of the nonzeros PREFETCH ahead are
#   prefetched. Threads own whole rows of Z, so no sum depends on the thread count.
# - The transpose product, dW = alpha * X[rows].T @ delta + beta * dW, is owner-computes over
#   dW's columns: each thread owns one contiguous range of whole 64-byte lines of columns
#   (no two threads write one line) and walks every nonzero of the batch, in the batch's row
#   order and each row's order, adding alpha * v * delta[i, range] to dW[c, range]. Every
#   element gets the same operations in the same order at any thread count, so results are
#   bit-identical (the ops are elementwise: vector and scalar code round alike), with no
#   atomics. One range per thread, not narrower blocks: each block walks the batch's index
#   lists once and visits each hit row once, and those visits are what cost.
# - beta == 1 (SGD fused: W := W + (-lr) * X.T @ delta) touches only the rows of dW that a
#   nonzero hits: at 1e5 rows a pass over all of W would cost more than the product. beta == 0
#   (a plain gradient) zeroes dW first and any other beta (weight decay) scales it, in a pass
#   of its own over contiguous rows.
# Nonzeros are added one by one into the output, in its dtype; a repeated column within a row,
# an unsorted row and a row listed twice in `rows` are plain sums. check_csr checks a whole
# matrix once, at the boundary; the `def` wrappers at the bottom check dtypes, shapes, `rows`
# and the batch's rows of indptr, which is O(len(rows)). A column index is not checked again
# per batch (a pass over the batch's indices costs 5-7% of a product at 64 units): the kernels
# test each one as they load it, at no measurable cost, and one out of range never reads or
# writes out of bounds but turns the forward pass's row into NaN and db into NaN, as
# _kernels does with labels and rows out of range (a NaN loss stops the training step before
# any update).
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport NAN
from libc.string cimport memset
import numbers
import numpy as np

from fastnaive._kernels cimport bias_grad

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int fastnaive_csr_max_threads(void) { return omp_get_max_threads(); }
    #else
    static int fastnaive_csr_max_threads(void) { return 1; }
    #endif
    #define fastnaive_prefetch_read(p) __builtin_prefetch((p), 0, 3)
    #define fastnaive_prefetch_write(p) __builtin_prefetch((p), 1, 3)
    """
    int max_threads "fastnaive_csr_max_threads"() noexcept nogil
    void prefetch_read "fastnaive_prefetch_read"(const void* p) noexcept nogil
    void prefetch_write "fastnaive_prefetch_write"(const void* p) noexcept nogil

# Below this many multiply-adds (or elements of dW scaled) a parallel region costs more than
# it saves.
cdef Py_ssize_t PARALLEL_MIN_PRODUCTS = 1 << 18
cdef enum:
    LINE_BYTES = 64
    # How many nonzeros ahead the rows of W or dW are prefetched, and how many bytes of each
    # (the hardware prefetcher follows on along a longer row). Measured on 1e5 x 64 and
    # 1e5 x 512 W, float32 and float64: the forward 5-15% faster than without, the transpose
    # product 25-30%.
    PREFETCH = 8
    PREFETCH_READ_BYTES = 256
    PREFETCH_WRITE_BYTES = 1024


cdef inline Py_ssize_t batch_nonzeros(const Py_ssize_t[::1] indptr,
                                      const Py_ssize_t[::1] rows) noexcept nogil:
    """Return sum_i (indptr[rows[i] + 1] - indptr[rows[i]])"""
    cdef Py_ssize_t i, nnz = 0
    for i in range(rows.shape[0]):
        nnz += indptr[rows[i] + 1] - indptr[rows[i]]
    return nnz


cdef inline void prefetch_lines(const void* start, Py_ssize_t n_bytes, bint write) noexcept nogil:
    """Prefetch the 64-byte lines of start[0:n_bytes] (a hint: never faults)"""
    cdef Py_ssize_t offset = 0
    while offset < n_bytes:
        if write:
            prefetch_write(<const char*>start + offset)
        else:
            prefetch_read(<const char*>start + offset)
        offset += LINE_BYTES


cdef inline bint outside(Py_ssize_t index, Py_ssize_t n) noexcept nogil:
    """index < 0 or index >= n, in one unsigned comparison"""
    return <size_t>index >= <size_t>n


cdef inline void gather_row(const floating* data, const Py_ssize_t* indices, Py_ssize_t p0,
                            Py_ssize_t p1, const floating* W, Py_ssize_t k, const floating* b,
                            Py_ssize_t m, floating* z) noexcept nogil:
    """z := b + sum_{p0 <= p < p1} data[p] * W[indices[p], :], or NaN if an index is outside [0, k)"""
    cdef Py_ssize_t p = p0, q, j, c0, c1, c2, c3
    cdef Py_ssize_t row_bytes = min(m * <Py_ssize_t>sizeof(floating), PREFETCH_READ_BYTES)
    cdef floating v0, v1, v2, v3
    cdef const floating* w0
    cdef const floating* w1
    cdef const floating* w2
    cdef const floating* w3
    for j in range(m):
        z[j] = b[j]
    while p + 4 <= p1:
        for q in range(p + PREFETCH, min(p + PREFETCH + 4, p1)):
            # A prefetch never faults, even at an index out of range.
            prefetch_lines(W + indices[q] * m, row_bytes, False)
        c0, c1, c2, c3 = indices[p], indices[p + 1], indices[p + 2], indices[p + 3]
        if outside(c0, k) | outside(c1, k) | outside(c2, k) | outside(c3, k):
            break
        v0, v1, v2, v3 = data[p], data[p + 1], data[p + 2], data[p + 3]
        w0, w1, w2, w3 = W + c0 * m, W + c1 * m, W + c2 * m, W + c3 * m
        for j in range(m):
            z[j] = z[j] + v0 * w0[j] + v1 * w1[j] + v2 * w2[j] + v3 * w3[j]
        p += 4
    while p < p1:
        c0 = indices[p]
        if outside(c0, k):
            for j in range(m):
                z[j] = NAN
            return
        v0, w0 = data[p], W + c0 * m
        for j in range(m):
            z[j] += v0 * w0[j]
        p += 1


cdef void csr_forward(const floating[::1] data, const Py_ssize_t[::1] indices,
                      const Py_ssize_t[::1] indptr, const Py_ssize_t[::1] rows,
                      const floating[:, ::1] W, const floating[::1] b, floating[:, ::1] Z_out,
                      int n_threads) noexcept nogil:
    """Z[i, :] := b + sum_{(c, v) in row rows[i] of X} v * W[c, :]"""
    cdef Py_ssize_t n = rows.shape[0], m = Z_out.shape[1]
    cdef Py_ssize_t i, r
    cdef bint parallel
    if n == 0 or m == 0:
        return
    # With no nonzero at all, data, indices and W may be empty: no pointer into them is read.
    cdef const floating* data0 = &data[0] if data.shape[0] > 0 else NULL
    cdef const Py_ssize_t* indices0 = &indices[0] if indices.shape[0] > 0 else NULL
    cdef const floating* W0 = &W[0, 0] if W.shape[0] > 0 else NULL
    parallel = n_threads > 1 and n > 1 and batch_nonzeros(indptr, rows) * m >= PARALLEL_MIN_PRODUCTS
    if not parallel:  # in the calling thread: no parallel region of one thread
        for i in range(n):
            r = rows[i]
            gather_row(data0, indices0, indptr[r], indptr[r + 1], W0, W.shape[0], &b[0], m,
                       &Z_out[i, 0])
        return
    # Rows differ in length (Zipf), hence chunks taken as threads come free.
    for i in prange(n, num_threads=n_threads, schedule="dynamic", chunksize=4):
        r = rows[i]
        gather_row(data0, indices0, indptr[r], indptr[r + 1], W0, W.shape[0], &b[0], m,
                   &Z_out[i, 0])


cdef void csr_param_grad(const floating[::1] data, const Py_ssize_t[::1] indices,
                         const Py_ssize_t[::1] indptr, const Py_ssize_t[::1] rows,
                         const floating[:, ::1] delta, floating alpha, floating beta,
                         floating[:, ::1] dW_out, floating[::1] db_out,
                         int n_threads) noexcept nogil:
    """dW := alpha * X[rows].T @ delta + beta * dW;  db := alpha * sum_rows(delta) + beta * db"""
    cdef Py_ssize_t n = rows.shape[0], k = dW_out.shape[0], m = dW_out.shape[1]
    cdef Py_ssize_t line = LINE_BYTES // <Py_ssize_t>sizeof(floating)
    cdef Py_ssize_t n_lines = (m + line - 1) // line
    cdef Py_ssize_t c, n_parts, part, width
    cdef bint parallel
    if m == 0:
        return
    # With k == 0 no index is in range, so there is no nonzero and no pointer into dW is read.
    cdef floating* dW0 = &dW_out[0, 0] if k > 0 else NULL
    if beta != 1 and k > 0:
        if n_threads > 1 and k * m >= PARALLEL_MIN_PRODUCTS:
            for c in prange(k, num_threads=n_threads, schedule="static"):
                scale_row(dW0 + c * m, m, beta)
        else:
            for c in range(k):
                scale_row(dW0 + c * m, m, beta)
    parallel = n_threads > 1 and n_lines > 1 and batch_nonzeros(indptr, rows) * m >= PARALLEL_MIN_PRODUCTS
    n_parts = min(n_threads, n_lines) if parallel else 1
    width = line * ((n_lines + n_parts - 1) // n_parts)
    n_parts = (m + width - 1) // width
    if n_parts == 1:
        param_grad_columns(data, indices, indptr, rows, delta, alpha, beta, dW0, k, db_out, 0, m)
        return
    for part in prange(n_parts, num_threads=n_threads, schedule="static"):
        param_grad_columns(data, indices, indptr, rows, delta, alpha, beta, dW0, k, db_out,
                           part * width, min(width, m - part * width))


cdef inline void scale_row(floating* out, Py_ssize_t m, floating beta) noexcept nogil:
    """out[:m] *= beta; with beta = 0 overwritten with zeros, not scaled: it may hold NaN"""
    cdef Py_ssize_t j
    if beta == 0:
        memset(out, 0, m * sizeof(floating))
    else:
        for j in range(m):
            out[j] *= beta


cdef inline void param_grad_columns(const floating[::1] data, const Py_ssize_t[::1] indices,
                                    const Py_ssize_t[::1] indptr, const Py_ssize_t[::1] rows,
                                    const floating[:, ::1] delta, floating alpha,
                                    floating beta, floating* dW0, Py_ssize_t k,
                                    floating[::1] db_out, Py_ssize_t j0,
                                    Py_ssize_t span) noexcept nogil:
    """csr_param_grad's columns j0 ... j0 + span - 1 of dW (scaled by beta already) and of db"""
    cdef Py_ssize_t n = rows.shape[0], m = delta.shape[1], i, j, p, p1, r, c
    cdef Py_ssize_t prefetch_bytes = min(span * <Py_ssize_t>sizeof(floating),
                                         PREFETCH_WRITE_BYTES)
    cdef bint bad_index = False
    cdef floating s
    cdef floating* out
    cdef const floating* d
    for i in range(n):
        r = rows[i]
        p1 = indptr[r + 1]
        d = &delta[i, j0]
        for p in range(indptr[r], p1):
            if p + PREFETCH < p1:
                prefetch_lines(dW0 + indices[p + PREFETCH] * m + j0, prefetch_bytes, True)
            c = indices[p]
            if outside(c, k):
                bad_index = True
                continue
            s = alpha * data[p]
            out = dW0 + c * m + j0
            for j in range(span):
                out[j] += s * d[j]
    bias_grad(delta, alpha, beta, db_out, j0, j0 + span)
    if bad_index:
        for j in range(j0, j0 + span):
            db_out[j] = NAN


cdef Py_ssize_t first_bad_indptr(const Py_ssize_t[::1] indptr, Py_ssize_t n_data) noexcept nogil:
    """Return the first i with indptr[i] outside [indptr[i - 1], n_data] (indptr[-1] := 0), or -1"""
    cdef Py_ssize_t i, previous = 0
    for i in range(indptr.shape[0]):
        if indptr[i] < previous or indptr[i] > n_data:
            return i
        previous = indptr[i]
    return -1


cdef Py_ssize_t first_bad_index(const Py_ssize_t[::1] indices, Py_ssize_t n_columns) noexcept nogil:
    """Return the first p with indices[p] outside [0, n_columns), or -1"""
    cdef Py_ssize_t p
    cdef bint bad = False
    for p in range(indices.shape[0]):
        # Or-ing, not branching, in the common case: the loop vectorises.
        bad |= outside(indices[p], n_columns)
    if not bad:
        return -1
    for p in range(indices.shape[0]):
        if outside(indices[p], n_columns):
            return p
    return -1


cdef int check_batch(const Py_ssize_t[::1] indptr, const Py_ssize_t[::1] rows,
                     Py_ssize_t n_data, Py_ssize_t* where) noexcept nogil:
    """Return 0 when every r in rows is in [0, len(indptr) - 1) with 0 <= indptr[r] <= indptr[r + 1] <= n_data; else 1 (where := i) or 2 (where := r)"""
    cdef Py_ssize_t i, r, n_rows = indptr.shape[0] - 1
    for i in range(rows.shape[0]):
        r = rows[i]
        if outside(r, n_rows):
            where[0] = i
            return 1
        if not 0 <= indptr[r] <= indptr[r + 1] <= n_data:
            where[0] = r
            return 2
    return 0


# ---- Python wrappers: check dtypes, shapes and the batch, then run a kernel without the GIL. ----

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_INDEX = np.dtype(np.intp)


def _describe(a):
    if isinstance(a, np.ndarray):
        return f"array(shape={a.shape}, dtype={a.dtype})"
    return type(a).__name__


def _check_array(name, a, dtype, ndim, writeable=False):
    """Raise unless a is a C-contiguous ndim-D NumPy array of dtype (and writeable)."""
    if not (isinstance(a, np.ndarray) and a.dtype == dtype):
        raise TypeError(f"Expected {name} a NumPy array of dtype {dtype}. "
                        f"Received: {name}={_describe(a)}")
    if a.ndim != ndim or not a.flags.c_contiguous or (writeable and not a.flags.writeable):
        raise ValueError(
            f"Expected {name} a C-contiguous{' writeable' if writeable else ''} {ndim}-D array. "
            f"Received: {name}.shape={a.shape}, C-contiguous={a.flags.c_contiguous}, "
            f"writeable={a.flags.writeable}")


def _float_dtype(name, a):
    """The dtype of a, which must be float32 or float64."""
    if not (isinstance(a, np.ndarray) and a.dtype in _FLOATS):
        raise TypeError(f"Expected {name} a NumPy array of dtype float32 or float64. "
                        f"Received: {name}={_describe(a)}")
    return a.dtype


def _check_csr_arrays(data, indices, indptr, dtype):
    _check_array("data", data, dtype, 1)
    _check_array("indices", indices, _INDEX, 1)
    _check_array("indptr", indptr, _INDEX, 1)
    if not (data.shape[0] == indices.shape[0] and indptr.shape[0] >= 1):
        raise ValueError(f"Expected data and indices of one length and indptr of at least 1. "
                         f"Received: data.shape={data.shape}, indices.shape={indices.shape}, "
                         f"indptr.shape={indptr.shape}")


def _shape_error(str expected, **arrays):
    received = ", ".join(f"{name}.shape={tuple(a.shape)}" for name, a in arrays.items())
    return ValueError(f"Expected {expected}. Received: {received}")


def _check_batch(const Py_ssize_t[::1] indptr, const Py_ssize_t[::1] rows, Py_ssize_t n_data):
    cdef Py_ssize_t where = -1
    cdef int code
    with nogil:
        code = check_batch(indptr, rows, n_data, &where)
    if code == 1:
        raise ValueError(f"Expected rows in [0, {indptr.shape[0] - 1}) (the matrix's rows). "
                         f"Received: rows[{where}]={rows[where]}")
    if code == 2:
        raise ValueError(f"Expected 0 <= indptr[r] <= indptr[r + 1] <= {n_data} (len(indices)) "
                         f"for every r in rows. Received: r={where}, indptr[r]={indptr[where]}, "
                         f"indptr[r + 1]={indptr[where + 1]}")


def _real(name, x):
    """x, a real number, as a float."""
    if isinstance(x, float):
        # Before the ABC check, whose Python code a signal handler could interrupt between
        # a step's kernels (fastnaive._kernels.run_calls).
        return x
    if not isinstance(x, numbers.Real):
        raise TypeError(f"Expected {name} a real number. Received: {name}={x!r}")
    return float(x)


def _n_threads(n_threads):
    """OpenMP's default for None, else n_threads (at least 1)."""
    if n_threads is None:
        return max_threads()
    if not isinstance(n_threads, (int, np.integer)):
        raise TypeError(f"Expected n_threads None or an int. Received: n_threads={n_threads!r}")
    return max(1, int(n_threads))


def check_csr(data, indices, indptr, n_columns):
    """Raise ValueError unless (data, indices, indptr) is a CSR matrix of n_columns columns:
    indptr non-decreasing from 0 to len(data) == len(indices), every index in [0, n_columns)."""
    _check_csr_arrays(data, indices, indptr, _float_dtype("data", data))
    if not isinstance(n_columns, numbers.Integral) or n_columns < 0:
        raise ValueError(f"Expected n_columns an integer >= 0. Received: n_columns={n_columns!r}")
    cdef const Py_ssize_t[::1] index = indices, starts = indptr
    cdef Py_ssize_t n_data = index.shape[0], n_rows = starts.shape[0] - 1
    cdef Py_ssize_t k = n_columns, bad_start, bad_index
    with nogil:
        bad_start = first_bad_indptr(starts, n_data)
        bad_index = first_bad_index(index, k)
    if starts[0] != 0 or starts[n_rows] != n_data:
        raise ValueError(f"Expected indptr from 0 to {n_data} (len(data) == len(indices)). "
                         f"Received: indptr[0]={starts[0]}, indptr[-1]={starts[n_rows]}")
    if bad_start >= 0:
        raise ValueError(f"Expected indptr non-decreasing within [0, {n_data}]. Received: "
                         f"indptr[{bad_start - 1}]={starts[bad_start - 1]}, "
                         f"indptr[{bad_start}]={starts[bad_start]}")
    if bad_index >= 0:
        raise ValueError(f"Expected every index in [0, {k}) (n_columns). "
                         f"Received: indices[{bad_index}]={index[bad_index]}")


def _csr_forward(const floating[::1] data, const Py_ssize_t[::1] indices,
                 const Py_ssize_t[::1] indptr, const Py_ssize_t[::1] rows,
                 const floating[:, ::1] W, const floating[::1] b, floating[:, ::1] Z_out,
                 int n_threads):
    with nogil:
        csr_forward(data, indices, indptr, rows, W, b, Z_out, n_threads)


def _csr_param_grad(const floating[::1] data, const Py_ssize_t[::1] indices,
                    const Py_ssize_t[::1] indptr, const Py_ssize_t[::1] rows,
                    const floating[:, ::1] delta, floating alpha, floating beta,
                    floating[:, ::1] dW_out, floating[::1] db_out, int n_threads):
    with nogil:
        csr_param_grad(data, indices, indptr, rows, delta, alpha, beta, dW_out, db_out,
                       n_threads)


def csr_forward_checked(data, indices, indptr, rows, W, b, Z_out, n_threads=None):
    """Z_out[i, :] := b + X[rows[i], :] @ W, X the CSR matrix (data, indices, indptr); n_threads None: OpenMP's default

    Arrays: data (nnz,) float, indices (nnz,) intp, indptr (n_rows + 1,) intp, rows (n,) intp,
    W (k, m), b (m,), Z_out (n, m), all C-contiguous, the floats of W's dtype. rows and the
    batch's indptr are checked here; the column indices once by check_csr(..., k): a row with
    one outside [0, k) comes out NaN."""
    dtype = _float_dtype("W", W)
    _check_csr_arrays(data, indices, indptr, dtype)
    _check_array("rows", rows, _INDEX, 1)
    _check_array("W", W, dtype, 2)
    _check_array("b", b, dtype, 1)
    _check_array("Z_out", Z_out, dtype, 2, writeable=True)
    if not (b.shape[0] == W.shape[1] and Z_out.shape[0] == rows.shape[0]
            and Z_out.shape[1] == W.shape[1]):
        raise _shape_error("rows (n,), W (k, m), b (m,) and Z_out (n, m)", rows=rows, W=W, b=b,
                           Z_out=Z_out)
    _check_batch(indptr, rows, data.shape[0])
    _csr_forward(data, indices, indptr, rows, W, b, Z_out, _n_threads(n_threads))


def csr_param_grad_checked(data, indices, indptr, rows, delta, alpha, beta, dW_out, db_out,
                           n_threads=None):
    """dW_out := alpha * X[rows].T @ delta + beta * dW_out;  db_out := alpha * sum_rows(delta) + beta * db_out, X the CSR matrix (data, indices, indptr)

    beta == 0 overwrites; beta == 1 writes only the rows of dW_out that a nonzero hits.
    Arrays: data (nnz,) float, indices (nnz,) intp, indptr (n_rows + 1,) intp, rows (n,) intp,
    delta (n, m), dW_out (k, m), db_out (m,), all C-contiguous, the floats of dW_out's dtype.
    rows and the batch's indptr are checked here; the column indices once by
    check_csr(..., k): a nonzero outside [0, k) is left out and makes db_out NaN."""
    dtype = _float_dtype("dW_out", dW_out)
    _check_csr_arrays(data, indices, indptr, dtype)
    _check_array("rows", rows, _INDEX, 1)
    _check_array("delta", delta, dtype, 2)
    _check_array("dW_out", dW_out, dtype, 2, writeable=True)
    _check_array("db_out", db_out, dtype, 1, writeable=True)
    if not (delta.shape[0] == rows.shape[0] and delta.shape[1] == dW_out.shape[1]
            and db_out.shape[0] == dW_out.shape[1]):
        raise _shape_error("rows (n,), delta (n, m), dW_out (k, m) and db_out (m,)", rows=rows,
                           delta=delta, dW_out=dW_out, db_out=db_out)
    _check_batch(indptr, rows, data.shape[0])
    _csr_param_grad(data, indices, indptr, rows, delta, _real("alpha", alpha),
                    _real("beta", beta), dW_out, db_out, _n_threads(n_threads))
