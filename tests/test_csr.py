"""Tests for fastnaive._csr: the first layer's products on rows of a scipy.sparse CSR matrix,
against SciPy and NumPy in float64, and the checks of its wrappers and of check_csr."""

import numpy as np
import pytest
import scipy.sparse as sp
from helpers import EXPECTED_RECEIVED, assert_close, f32, normal, read_only

from fastnaive import _csr

# (n_rows, n_columns, n_units): single elements, tails of the 4-nonzero groups and of the
# vector loops (13, 3, 70), several 64-byte lines of dW per thread (200), and the bag-of-words
# shape the kernels are for (1e5 columns, 64 units).
SHAPES = {
    "1x1x1": (1, 1, 1),
    "7x13x3": (7, 13, 3),
    "30x50x70": (30, 50, 70),
    "20x300x200": (20, 300, 200),
    "40x100000x64": (40, 100_000, 64),
}
# Shares of nonzeros; every third row is emptied in all of them.
DENSITIES = {"zeros": 0.0, "bag-of-words": 0.005, "sparse": 0.1, "dense": 1.0}
# Every shape at every density, but 1e5 columns only at the densities of text (a float32 sum
# of 1e4 terms and more is beyond the tolerances, and no bag of words is that dense).
PROBLEMS = {
    f"{shape_id}-{density_id}": (shape, density)
    for shape_id, shape in SHAPES.items()
    for density_id, density in DENSITIES.items()
    if shape[1] * density <= 1000
}
# (alpha, beta) of dW := alpha * X.T @ delta + beta * dW: a gradient over a NaN buffer (beta = 0
# must overwrite), the fused SGD update (beta = 1 touches only the hit rows), weight decay.
SCALES = {"beta0-over-nan": (1.0, 0.0), "sgd": (-0.3, 1.0), "weight-decay": (-0.3, 0.9)}


@pytest.fixture(params=PROBLEMS.values(), ids=PROBLEMS.keys())
def problem(request):
    """((n_rows, n_columns, n_units), density)"""
    return request.param


def random_csr(rng, n_rows, n_columns, density, dtype, messy=False):
    """A CSR matrix of normal values, every third row empty; `messy` shuffles each row's
    column indices and repeats some of them (SciPy allows both)."""
    n_nonzeros = rng.binomial(n_rows * n_columns, density)
    at = rng.choice(n_rows * n_columns, n_nonzeros, replace=False)
    at = at[at // n_columns % 3 != 1]  # rows 1, 4, 7, ... empty
    X = sp.csr_matrix(
        (rng.standard_normal(len(at)), (at // n_columns, at % n_columns)), (n_rows, n_columns)
    )
    if messy:
        lengths = np.diff(X.indptr)
        extra = np.minimum(lengths, 2)  # repeat up to two nonzeros of each row
        indices, data, indptr = [], [], [0]
        for r in range(n_rows):
            row = slice(X.indptr[r], X.indptr[r + 1])
            cols = np.concatenate([X.indices[row], X.indices[row][: extra[r]]])
            vals = np.concatenate([X.data[row], rng.standard_normal(extra[r])])
            order = rng.permutation(len(cols))
            indices.append(cols[order])
            data.append(vals[order])
            indptr.append(indptr[-1] + len(cols))
        X = sp.csr_matrix(
            (np.concatenate(data), np.concatenate(indices), indptr), shape=(n_rows, n_columns)
        )
        assert not X.has_canonical_format or X.nnz == 0
    return X.astype(dtype)


def csr_arrays(X):
    """(data, indices, indptr) as the kernels take them: indices as intp (SciPy uses int32)."""
    return X.data, X.indices.astype(np.intp), X.indptr.astype(np.intp)


def random_rows(rng, n_rows, n):
    """n rows of the matrix, in random order, with repeats."""
    return rng.integers(0, n_rows, n).astype(np.intp)


def forward(X, rows, W, b, n_threads=None):
    Z = np.full((len(rows), W.shape[1]), np.nan, W.dtype)
    _csr.csr_forward_checked(*csr_arrays(X), rows, W, b, Z, n_threads)
    return Z


def param_grad(X, rows, delta, alpha, beta, dW, db, n_threads=None):
    """Return (dW, db) := alpha * (X[rows].T @ delta, sum_rows(delta)) + beta * (dW, db)."""
    dW, db = dW.copy(), db.copy()
    _csr.csr_param_grad_checked(*csr_arrays(X), rows, delta, alpha, beta, dW, db, n_threads)
    return dW, db


def expected_forward(X, rows, W, b):
    return X[rows].astype(np.float64) @ W.astype(np.float64) + b


def expected_param_grad(X, rows, delta, alpha, beta, dW, db):
    dW0, db0 = (np.zeros_like(dW), np.zeros_like(db)) if beta == 0 else (dW, db)
    product = (X[rows].T.astype(np.float64) @ delta.astype(np.float64)).reshape(dW.shape)
    return (
        alpha * product + beta * dW0.astype(np.float64),
        alpha * delta.sum(axis=0, dtype=np.float64) + beta * db0,
    )


def weights(rng, X, n_units, dtype):
    """W scaled so that a row's sum is O(1), and b."""
    per_row = max(1.0, X.nnz / max(1, X.shape[0]))
    return normal(rng, (X.shape[1], n_units), dtype, per_row**-0.5), normal(rng, n_units, dtype)


def bits(a):
    """The bytes of a, so that NaN payloads and signed zeros compare too."""
    return np.ascontiguousarray(a).view(np.uint8)


@pytest.mark.parametrize("messy", [False, True], ids=["canonical", "unsorted-repeated"])
def test_csr_forward(problem, dtype, rng, messy):
    (n_rows, n_columns, n_units), density = problem
    X = random_csr(rng, n_rows, n_columns, density, dtype, messy)
    W, b = weights(rng, X, n_units, dtype)
    rows = random_rows(rng, n_rows, 2 * n_rows)
    assert_close(forward(X, rows, W, b), expected_forward(X, rows, W, b))


@pytest.mark.parametrize("messy", [False, True], ids=["canonical", "unsorted-repeated"])
@pytest.mark.parametrize("scales", SCALES.values(), ids=SCALES.keys())
def test_csr_param_grad(problem, dtype, rng, messy, scales):
    (n_rows, n_columns, n_units), density = problem
    alpha, beta = scales
    X = random_csr(rng, n_rows, n_columns, density, dtype, messy)
    rows = random_rows(rng, n_rows, 2 * n_rows)
    delta = normal(rng, (len(rows), n_units), dtype)
    dW, db = normal(rng, (n_columns, n_units), dtype), normal(rng, n_units, dtype)
    if beta == 0:
        dW[:], db[:] = np.nan, np.nan
    expected_dW, expected_db = expected_param_grad(X, rows, delta, alpha, beta, dW, db)
    actual_dW, actual_db = param_grad(X, rows, delta, alpha, beta, dW, db)
    assert_close(actual_dW, expected_dW)
    assert_close(actual_db, expected_db)


def test_row_lengths_zero_to_nine(dtype, rng):
    """Rows of 0 to 9 nonzeros: none, part or all of a group of four, and the tail after."""
    lengths = np.arange(10)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    indices = np.concatenate([rng.choice(50, n, replace=False) for n in lengths])
    X = sp.csr_matrix((rng.standard_normal(indptr[-1]), indices, indptr), shape=(10, 50))
    X = X.astype(dtype)
    W, b = normal(rng, (50, 37), dtype), normal(rng, 37, dtype)
    rows = np.arange(10, dtype=np.intp)
    assert_close(forward(X, rows, W, b), expected_forward(X, rows, W, b))
    delta, dW, db = normal(rng, (10, 37), dtype), normal(rng, (50, 37), dtype), f32(37)
    for actual, expected in zip(
        param_grad(X, rows, delta, 0.5, 1.0, dW, db.astype(dtype)),
        expected_param_grad(X, rows, delta, 0.5, 1.0, dW, db.astype(dtype)),
    ):
        assert_close(actual, expected)


@pytest.mark.parametrize("beta", [1.0, 0.9, 0.0])
def test_beta_and_the_rows_no_nonzero_hits(dtype, rng, beta):
    """beta = 1 leaves the rows of dW that no nonzero hits bit for bit (NaN there stays NaN,
    -0.0 stays -0.0); any other beta scales them, beta = 0 to +0.0."""
    X = random_csr(rng, 30, 2000, 0.005, dtype)
    rows = random_rows(rng, 30, 16)
    hit = np.zeros(2000, bool)
    hit[X[rows].indices] = True
    assert 0 < hit.sum() < 2000
    dW, db = normal(rng, (2000, 64), dtype), normal(rng, 64, dtype)
    dW[~hit, :3] = [np.nan, -0.0, np.inf]
    delta = normal(rng, (16, 64), dtype)
    actual, _ = param_grad(X, rows, delta, -0.3, beta, dW, db)
    expected, _ = expected_param_grad(X, rows, delta, -0.3, beta, dW, db)
    if beta == 0:
        untouched = np.zeros_like(dW[~hit])
    else:
        with np.errstate(invalid="ignore"):
            untouched = np.dtype(dtype).type(beta) * dW[~hit]
    assert np.array_equal(bits(actual[~hit]), bits(untouched))
    assert_close(actual[hit], expected[hit])


@pytest.mark.parametrize("beta", [1.0, 0.9, 0.0])
def test_empty_batch(dtype, rng, beta):
    """No rows: the forward writes nothing; the transpose product is beta * dW, beta * db."""
    X = random_csr(rng, 10, 40, 0.2, dtype)
    rows = np.empty(0, np.intp)
    W, b = normal(rng, (40, 8), dtype), normal(rng, 8, dtype)
    Z = np.empty((0, 8), dtype)
    _csr.csr_forward_checked(*csr_arrays(X), rows, W, b, Z)
    dW, db = param_grad(X, rows, np.empty((0, 8), dtype), -0.3, beta, W, b)
    if beta == 1:
        assert np.array_equal(bits(dW), bits(W)) and np.array_equal(bits(db), bits(b))
    else:
        assert np.array_equal(dW, (beta * W).astype(dtype))
        assert np.array_equal(db, (beta * b).astype(dtype))


def test_no_nonzeros_and_no_columns(dtype, rng):
    """A matrix with no stored entries, and one with no columns (W with no rows): Z = b."""
    for n_columns in (30, 0):
        X = sp.csr_matrix((5, n_columns), dtype=dtype)
        W, b = normal(rng, (n_columns, 6), dtype), normal(rng, 6, dtype)
        rows = np.array([4, 0, 0], np.intp)
        assert np.array_equal(forward(X, rows, W, b), np.tile(b, (3, 1)))
        dW, db = param_grad(X, rows, normal(rng, (3, 6), dtype), 1.0, 0.0, W, b)
        assert np.array_equal(dW, np.zeros_like(W))


def test_repeated_rows_count_each_time(dtype, rng):
    X = random_csr(rng, 6, 500, 0.05, dtype)
    W, b = weights(rng, X, 10, dtype)
    Z = forward(X, np.array([4, 4, 4], np.intp), W, b)
    assert np.array_equal(Z[0], Z[1]) and np.array_equal(Z[0], Z[2])
    delta = normal(rng, (1, 10), dtype)
    once, _ = param_grad(X, np.array([4], np.intp), delta, 1.0, 0.0, W, b)
    thrice, _ = param_grad(X, np.array([4, 4, 4], np.intp), np.repeat(delta, 3, 0), 1.0, 0.0, W, b)
    assert_close(thrice, 3 * once.astype(np.float64))


def test_read_only_inputs(dtype, rng):
    """Inputs are const memoryviews: read-only (memory-mapped) arrays work."""
    X = random_csr(rng, 8, 100, 0.1, dtype)
    data, indices, indptr = (read_only(a.copy()) for a in csr_arrays(X))
    W, b = (read_only(a) for a in weights(rng, X, 5, dtype))
    rows = read_only(np.arange(8, dtype=np.intp))
    Z = np.empty((8, 5), dtype)
    _csr.csr_forward_checked(data, indices, indptr, rows, W, b, Z)
    assert_close(Z, expected_forward(X, rows, W, b))
    delta = read_only(normal(rng, (8, 5), dtype))
    dW, db = np.empty((100, 5), dtype), np.empty(5, dtype)
    _csr.csr_param_grad_checked(data, indices, indptr, rows, delta, 1.0, 0.0, dW, db)
    assert_close(dW, expected_param_grad(X, rows, delta, 1.0, 0.0, dW, db)[0])


@pytest.mark.parametrize("n_threads", [2, 3])
@pytest.mark.parametrize("n_units", [64, 200])
def test_results_do_not_depend_on_the_threads(dtype, rng, n_threads, n_units):
    """Threads own whole rows of Z and whole lines of dW's columns: each sum is made in the
    same order. The batch is large enough for the parallel regions to run."""
    X = random_csr(rng, 200, 100_000, 0.005, dtype, messy=True)
    W, b = weights(rng, X, n_units, dtype)
    rows = random_rows(rng, 200, 128)
    assert np.array_equal(bits(forward(X, rows, W, b, n_threads)), bits(forward(X, rows, W, b, 1)))
    delta = normal(rng, (128, n_units), dtype)
    for alpha, beta in SCALES.values():
        one = param_grad(X, rows, delta, alpha, beta, W, b, 1)
        many = param_grad(X, rows, delta, alpha, beta, W, b, n_threads)
        for a, c in zip(one, many):
            assert np.array_equal(bits(a), bits(c))


def test_check_csr_accepts_what_scipy_builds(dtype, rng):
    for X in (
        random_csr(rng, 20, 1000, 0.01, dtype),
        random_csr(rng, 20, 1000, 0.1, dtype, messy=True),
        sp.csr_matrix((0, 5), dtype=dtype),
        sp.csr_matrix((3, 0), dtype=dtype),
    ):
        assert _csr.check_csr(*csr_arrays(X), X.shape[1]) is None


# Bad arguments. A valid problem: a 4 x 6 CSR matrix (one row empty), a batch of 3 rows, 5 units.
DATA = np.arange(1, 8, dtype=np.float32)
INDICES = np.array([0, 5, 2, 2, 1, 3, 4], np.intp)
INDPTR = np.array([0, 2, 2, 5, 7], np.intp)
ROWS = np.array([3, 0, 1], np.intp)
FORWARD = {"W": f32(6, 5), "b": f32(5), "Z_out": f32(3, 5)}
GRAD = {"delta": f32(3, 5), "alpha": -0.1, "beta": 1.0, "dW_out": f32(6, 5), "db_out": f32(5)}
CSR = {"data": DATA, "indices": INDICES, "indptr": INDPTR}


def with_(arguments, **changes):
    return {**arguments, **changes}


def forward_call(**changes):
    return _csr.csr_forward_checked, with_({**CSR, "rows": ROWS, **FORWARD}, **changes)


def grad_call(**changes):
    return _csr.csr_param_grad_checked, with_({**CSR, "rows": ROWS, **GRAD}, **changes)


def check_call(**changes):
    return _csr.check_csr, with_({**CSR, "n_columns": 6}, **changes)


BAD_CALLS = {
    # the forward product
    "forward-data-float64": forward_call(data=DATA.astype(np.float64)),
    "forward-W-int": forward_call(W=np.zeros((6, 5), np.int64)),
    "forward-indices-int32": forward_call(indices=INDICES.astype(np.int32)),
    "forward-indptr-int32": forward_call(indptr=INDPTR.astype(np.int32)),
    "forward-rows-int32": forward_call(rows=ROWS.astype(np.int32)),
    "forward-rows-list": forward_call(rows=[3, 0, 1]),
    "forward-rows-2d": forward_call(rows=ROWS[:, None]),
    "forward-W-fortran": forward_call(W=np.asfortranarray(f32(6, 5))),
    "forward-Z-strided": forward_call(Z_out=f32(3, 10)[:, ::2]),
    "forward-Z-read-only": forward_call(Z_out=read_only(f32(3, 5))),
    "forward-b-length": forward_call(b=f32(4)),
    "forward-Z-rows": forward_call(Z_out=f32(4, 5)),
    "forward-Z-columns": forward_call(Z_out=f32(3, 6)),
    "forward-data-length": forward_call(data=DATA[:6]),
    "forward-row-past-end": forward_call(rows=np.array([3, 4], np.intp), Z_out=f32(2, 5)),
    "forward-row-negative": forward_call(rows=np.array([0, -1, 2], np.intp)),
    "forward-indptr-decreasing": forward_call(indptr=np.array([0, 2, 1, 5, 7], np.intp)),
    "forward-indptr-past-data": forward_call(indptr=np.array([0, 2, 2, 5, 8], np.intp)),
    "forward-n-threads": forward_call(n_threads="2"),
    # the transpose product
    "grad-delta-float64": grad_call(delta=f32(3, 5).astype(np.float64)),
    "grad-db-float64": grad_call(db_out=f32(5).astype(np.float64)),
    "grad-dW-float16": grad_call(dW_out=f32(6, 5).astype(np.float16)),
    "grad-indices-int32": grad_call(indices=INDICES.astype(np.int32)),
    "grad-dW-read-only": grad_call(dW_out=read_only(f32(6, 5))),
    "grad-db-read-only": grad_call(db_out=read_only(f32(5))),
    "grad-delta-rows": grad_call(delta=f32(2, 5)),
    "grad-delta-columns": grad_call(delta=f32(3, 4)),
    "grad-db-length": grad_call(db_out=f32(6)),
    "grad-row-past-end": grad_call(rows=np.array([0, 4, 1], np.intp)),
    "grad-indptr-decreasing": grad_call(indptr=np.array([0, 2, 2, 5, 4], np.intp)),
    "grad-alpha-str": grad_call(alpha="0.1"),
    "grad-beta-none": grad_call(beta=None),
    # check_csr
    "check-data-int": check_call(data=np.arange(7)),
    "check-indices-int32": check_call(indices=INDICES.astype(np.int32)),
    "check-lengths": check_call(indices=INDICES[:6]),
    "check-indptr-empty": check_call(indptr=np.empty(0, np.intp)),
    "check-indptr-start": check_call(indptr=np.array([1, 2, 2, 5, 7], np.intp)),
    "check-indptr-end": check_call(indptr=np.array([0, 2, 2, 5, 6], np.intp)),
    "check-indptr-decreasing": check_call(indptr=np.array([0, 3, 2, 5, 7], np.intp)),
    "check-index-past-end": check_call(n_columns=5),
    "check-index-negative": check_call(indices=np.array([0, 5, 2, -2, 1, 3, 4], np.intp)),
    "check-n-columns-negative": check_call(n_columns=-1),
    "check-n-columns-float": check_call(n_columns=6.0),
}


def test_the_valid_calls_run():
    """The calls BAD_CALLS breaks one argument of are valid as they stand."""
    for call in (forward_call(), grad_call(), check_call()):
        wrapper, arguments = call
        wrapper(**arguments)


@pytest.mark.parametrize("call", BAD_CALLS.values(), ids=BAD_CALLS.keys())
def test_bad_argument_raises(call):
    wrapper, arguments = call
    with pytest.raises((ValueError, TypeError), match=EXPECTED_RECEIVED):
        wrapper(**arguments)


def test_bad_batch_writes_nothing():
    """A batch the wrapper rejects leaves the outputs as they were."""
    wrapper, arguments = grad_call(
        rows=np.array([0, 1, 4], np.intp), dW_out=np.full((6, 5), 7, np.float32)
    )
    with pytest.raises(ValueError, match=r"rows\[2\]=4"):
        wrapper(**arguments)
    assert np.all(arguments["dW_out"] == 7)


@pytest.mark.parametrize("bad_index", [6, -1, 2**62])
def test_a_column_index_out_of_range_gives_nan(bad_index):
    """check_csr rejects it; a kernel that meets one anyway reads and writes nothing out of
    bounds: the forward pass's row turns NaN, the transpose product leaves the nonzero out and
    turns db NaN."""
    indices = INDICES.copy()
    indices[5] = bad_index  # row 3's first nonzero; rows[0] = 3
    with pytest.raises(ValueError, match=rf"indices\[5\]={bad_index}"):
        _csr.check_csr(DATA, indices, INDPTR, 6)
    W, b, Z = np.ones((6, 5), np.float32), np.zeros(5, np.float32), f32(3, 5)
    _csr.csr_forward_checked(DATA, indices, INDPTR, ROWS, W, b, Z)
    assert np.all(np.isnan(Z[0])) and np.array_equal(Z[1:], [[3] * 5, [0] * 5])
    dW, db = np.zeros((6, 5), np.float32), np.zeros(5, np.float32)
    _csr.csr_param_grad_checked(DATA, indices, INDPTR, ROWS, np.ones((3, 5), np.float32),
                                1.0, 0.0, dW, db)  # fmt: skip
    assert np.all(np.isnan(db))
    expected = np.zeros((6, 5))
    expected[[0, 5, 4]] = [[1] * 5, [2] * 5, [7] * 5]  # row 0's two nonzeros, row 3's second
    assert np.array_equal(dW, expected)
