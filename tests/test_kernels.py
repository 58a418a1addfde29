"""Tests for the Cython kernels: every `*_checked` wrapper against fastnaive.reference, and the
buffers Cython rejects, fastnaive._sparse's wrappers included."""

import numpy as np
import pytest
from helpers import (
    DTYPES,
    RELU_BACKWARD,
    SCALES,
    SPARSE_SOFTMAX_CROSSENTROPY,
    TOLERANCES,
    assert_close,
    by_rows,
    f32,
    normal,
    read_only,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fastnaive import _activations, _blas, _kernels, _losses, _sparse, engine, reference

# The cross-entropy loss is accumulated in double whatever the logits' dtype.
LOSS_TOLERANCE = TOLERANCES["float64"]

# (n_samples, n_features, n_units): tiny and odd sizes, the output layer on the
# book's last, short batch (60000 = 468 * 128 + 96) and both layers on a batch of 128.
DENSE_SHAPES = {
    "n1-5x3": (1, 5, 3),
    "n7-13x4": (7, 13, 4),
    "n96-512x10": (96, 512, 10),
    "b128-784x512": (128, 784, 512),
    "b128-512x10": (128, 512, 10),
    # Cut into blocks (fastnaive._blas.tile_grid) on a machine of 2 or more processors: by
    # columns, and by rows where there are too few columns (dW of 2048 x 10, Z of 512 x 10);
    # a deep model's 256 -> 128 layer in two column blocks of 64.
    "b256-784x512-blocks": (256, 784, 512),
    "b512-2048x10-blocks": (512, 2048, 10),
    "b128-256x128-blocks": (128, 256, 128),
}
# (n_samples, n_columns): logits, probabilities, hidden activations.
MATRIX_SHAPES = {
    "n1-c1": (1, 1),
    "n1-c10": (1, 10),
    "n7-c3": (7, 3),
    "n96-c10": (96, 10),
    "b128-c10": (128, 10),
    # The losses keep a row's exponentials on the stack up to 64 classes.
    "n5-c64": (5, 64),
    "n5-c65": (5, 65),
    "b128-c512": (128, 512),
}
# (n_src, n_columns, n_rows); 512 rows of 784 reach the kernel's threaded path (2**18 elements).
GATHER_SHAPES = {
    "n1-of-1x5": (1, 5, 1),
    "n7-of-10x3": (10, 3, 7),
    "n96-of-1000x784": (1000, 784, 96),
    "b128-of-1000x784": (1000, 784, 128),
    "n512-of-1000x784-threaded": (1000, 784, 512),
}
RELU = pytest.mark.parametrize("relu", [True, False], ids=["relu", "identity"])
EXTREME_LOGITS = [[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [1e4, 1e4, -1e4]]


@pytest.fixture(params=DENSE_SHAPES.values(), ids=DENSE_SHAPES.keys())
def dense(request, dtype, rng):
    """X (n, k), W (k, m) scaled by 1 / sqrt(k) so that X @ W is O(1), and b (m,)."""
    n, k, m = request.param
    return normal(rng, (n, k), dtype), normal(rng, (k, m), dtype, k**-0.5), normal(rng, m, dtype)


@pytest.fixture(params=MATRIX_SHAPES.values(), ids=MATRIX_SHAPES.keys())
def matrix_shape(request):
    return request.param


def nan_buffer(shape, dtype):
    """An output buffer full of NaN: a kernel must overwrite every element it owns."""
    return np.full(shape, np.nan, dtype)


def check_dense_forward(X, W, b, relu):
    Z = nan_buffer((len(X), len(b)), X.dtype)
    _kernels.dense_forward_checked(X, W, b, relu, Z)
    assert_close(Z, reference.dense_forward(X, W, b, relu))


@RELU
def test_dense_forward(dense, relu):
    check_dense_forward(*dense, relu)


@RELU
def test_dense_forward_adds_bias(dtype, relu):
    """With X = 0 every product is 0, so each row is exactly act(b)."""
    b = np.array([-1.5, 0.0, 2.0], dtype)
    Z = nan_buffer((4, 3), dtype)
    _kernels.dense_forward_checked(np.zeros((4, 5), dtype), np.ones((5, 3), dtype), b, relu, Z)
    np.testing.assert_array_equal(Z, np.tile(np.maximum(b, 0) if relu else b, (4, 1)))


def test_relu_backward_masks_exactly_where_z_is_not_positive(matrix_shape, dtype, rng):
    """Masking copies or zeroes each element, so the comparison is exact."""
    Z = rng.integers(-1, 2, matrix_shape).astype(dtype)  # -1, 0 and 1: both sides and the edge
    delta = normal(rng, matrix_shape, dtype)
    expected = reference.relu_backward(Z, delta)
    RELU_BACKWARD(Z, Z, delta)
    np.testing.assert_array_equal(delta, expected)
    np.testing.assert_array_equal(delta == 0, Z <= 0)


def test_dense_input_grad(dense, rng):
    X, W, b = dense
    delta = normal(rng, (len(X), len(b)), X.dtype)
    dX = nan_buffer(X.shape, X.dtype)
    _kernels.dense_input_grad_checked(delta, W, dX)
    assert_close(dX, reference.dense_input_grad(delta, W))


@pytest.mark.parametrize("alpha, beta", SCALES.values(), ids=SCALES.keys())
def test_dense_param_grad(dense, rng, alpha, beta):
    X, W, b = dense
    delta = normal(rng, (len(X), len(b)), X.dtype, 1 / len(X))
    dW, db = (
        (W.copy(), b.copy())
        if beta
        else (nan_buffer(W.shape, W.dtype), nan_buffer(b.shape, b.dtype))
    )
    _kernels.dense_param_grad_checked(X, delta, alpha, beta, dW, db)
    expected_dW, expected_db = reference.dense_param_grad(X, delta)
    assert_close(dW, alpha * expected_dW + beta * W)
    assert_close(db, alpha * expected_db + beta * b)


@pytest.mark.parametrize(
    "shape",
    [(256, 784, 512), (512, 2048, 10), (128, 256, 128)],
    ids=["columns", "rows", "hidden-256x128"],
)
def test_the_gemm_kernels_give_the_same_bits_at_any_thread_count(dtype, rng, shape):
    """Their blocks depend on the shapes alone: each element comes from the same BLAS call
    whichever thread runs it."""
    n, k, m = shape
    X, W, b = normal(rng, (n, k), dtype), normal(rng, (k, m), dtype, k**-0.5), normal(rng, m, dtype)
    delta = normal(rng, (n, m), dtype, 1 / n)
    results = []
    for threads in (1, 2, 3):
        Z, dX = np.empty((n, m), dtype), np.empty((n, k), dtype)
        dW, db = W.copy(), b.copy()
        _kernels.dense_forward_checked(X, W, b, 1, Z, threads)
        _kernels.dense_input_grad_checked(delta, W, dX, threads)
        _kernels.dense_param_grad_checked(X, delta, -0.1, 1.0, dW, db, threads)
        results.append([Z, dX, dW, db])
    for other in results[1:]:
        for got, expected in zip(other, results[0], strict=True):
            np.testing.assert_array_equal(got, expected)
    assert_close(results[0][0], reference.dense_forward(X, W, b, True))
    expected_dW, expected_db = reference.dense_param_grad(X, delta)
    assert_close(results[0][2], W - 0.1 * expected_dW)
    assert_close(results[0][3], b - 0.1 * expected_db)


@pytest.mark.parametrize("activation", ["linear", "relu", "tanh", "sigmoid", "gelu", "elu"])
def test_a_forward_in_blocks_of_columns_stores_act_of_the_sum_plus_bias(dtype, rng, activation):
    """Where the product is cut into blocks of columns (a hidden layer of 256 -> 128 units on
    a batch of 128, on two processors or more), each block is computed apart, then stored
    with its bias and activation in one pass: the stored values are act(X @ W + b), the bits
    of the activation applied to the linear layer's outputs, at 1 and 2 threads."""
    n, k, m = 128, 256, 128
    code = getattr(_activations, activation.upper())
    X, W, b = normal(rng, (n, k), dtype), normal(rng, (k, m), dtype, k**-0.5), normal(rng, m, dtype)
    linear = np.empty((n, m), dtype)
    _kernels.dense_forward_checked(X, W, b, _activations.LINEAR, linear)
    assert_close(linear, X.astype(np.float64) @ W + b, dtype)
    expected = np.empty_like(linear)
    _activations.activate_checked(code, linear, expected)
    for threads in (1, 2):
        Z = np.full((n, m), np.nan, dtype)
        _kernels.dense_forward_checked(X, W, b, code, Z, threads)
        np.testing.assert_array_equal(Z, expected)


def test_gemms_are_cut_by_shape_into_blocks_for_the_machines_processors():
    processors = _kernels.processors()
    most = 1 << (processors - 1).bit_length()  # a power of 2, at least the processors
    assert _blas.tile_grid_checked(128, 512, 10) == (1, 1)  # too small to cut
    assert _blas.tile_grid_checked(128, 64, 64) == (1, 1)  # 512k multiply-adds
    rows, cols = _blas.tile_grid_checked(2048, 2048, 2048)
    assert rows * cols == most and cols == min(most, 2048 // 64)
    rows, cols = _blas.tile_grid_checked(2048, 10, 2048)  # too few columns: rows are cut
    assert (rows, cols) == (most, 1)
    # A hidden layer of 256 -> 128 units on a batch of 128 (4M multiply-adds): two column
    # blocks of 64 where there are two processors or more, then its rows in two.
    rows, cols = _blas.tile_grid_checked(128, 128, 256)
    assert cols == min(most, 2) and rows * cols == min(most, 4)


def test_softmax(matrix_shape, dtype, rng):
    logits = normal(rng, matrix_shape, dtype, 5.0)
    probabilities = nan_buffer(matrix_shape, dtype)
    _kernels.softmax_checked(logits, probabilities)
    assert_close(probabilities, reference.softmax(logits))
    assert_close(probabilities.sum(axis=1), np.ones(len(logits), dtype))


def test_softmax_of_extreme_logits_is_finite(dtype):
    logits = np.array(EXTREME_LOGITS, dtype)
    probabilities = nan_buffer(logits.shape, dtype)
    _kernels.softmax_checked(logits, probabilities)
    assert np.isfinite(probabilities).all()
    assert_close(probabilities, reference.softmax(logits))


def check_softmax_crossentropy(logits, labels):
    """Run the kernel and compare its loss and gradient with the reference; return both."""
    grad = nan_buffer(logits.shape, logits.dtype)
    loss = SPARSE_SOFTMAX_CROSSENTROPY(logits, labels, grad)
    expected_loss, expected_grad = reference.softmax_crossentropy(logits, labels)
    np.testing.assert_allclose(loss, expected_loss, **LOSS_TOLERANCE)
    assert_close(grad, expected_grad)
    return loss, grad


def test_softmax_crossentropy(matrix_shape, dtype, rng):
    n, n_classes = matrix_shape
    logits = normal(rng, matrix_shape, dtype, 5.0)
    _, grad = check_softmax_crossentropy(logits, rng.integers(0, n_classes, n))
    np.testing.assert_allclose(grad.sum(axis=1), 0, atol=TOLERANCES[dtype]["atol"])


def test_softmax_crossentropy_of_extreme_logits_is_finite(dtype):
    loss, grad = check_softmax_crossentropy(np.array(EXTREME_LOGITS, dtype), np.array([1, 0, 2]))
    assert np.isfinite(loss) and np.isfinite(grad).all()


def test_softmax_crossentropy_out_of_range_labels_give_nan_rows(dtype, rng):
    labels = np.array([0, -1, 3, 2**62, 2])
    loss, grad = check_softmax_crossentropy(normal(rng, (5, 3), dtype), labels)
    assert np.isnan(loss)
    np.testing.assert_array_equal(np.isnan(grad).any(axis=1), [False, True, True, True, False])


@pytest.mark.parametrize("shape", GATHER_SHAPES.values(), ids=GATHER_SHAPES.keys())
def test_gather_rows(dtype, rng, shape):
    """Rows are copied bit for bit, so the comparison is exact."""
    n_src, n_columns, n_rows = shape
    src = normal(rng, (n_src, n_columns), dtype)
    rows = rng.integers(0, n_src, n_rows)
    out = nan_buffer((n_rows, n_columns), dtype)
    _kernels.gather_rows_checked(src, rows, out)
    np.testing.assert_array_equal(out, reference.gather_rows(src, rows))


def test_gather_rows_out_of_range_rows_give_nan_rows(dtype, rng):
    src = normal(rng, (3, 4), dtype)
    rows = np.array([2, -1, 3, 0, 2**62])
    out = np.zeros((5, 4), dtype)
    _kernels.gather_rows_checked(src, rows, out)
    np.testing.assert_array_equal(out, reference.gather_rows(src, rows))
    np.testing.assert_array_equal(np.isnan(out).all(axis=1), [False, True, True, False, True])


def test_gather_rows_out_of_range_among_a_batch(dtype, rng):
    """A batch on the parallel path, whose rows are asked for ahead of their copy: a row out
    of range, ahead or copied, is neither read nor asked for, and gives a NaN row."""
    src = normal(rng, (300, 784), dtype)
    rows = rng.integers(0, 300, 128)
    bad = [1, 5, 6, 64, 127]
    rows[bad] = [-1, 300, 2**62, -(2**62), 301]
    out = np.zeros((128, 784), dtype)
    _kernels.gather_rows_checked(src, rows, out)
    np.testing.assert_array_equal(out, reference.gather_rows(src, rows))
    assert np.flatnonzero(np.isnan(out).all(axis=1)).tolist() == bad


# Shapes for transpose_block: whole tiles, edges of every remainder, one row or column.
TRANSPOSE_SHAPES = [(8, 8), (16, 64), (13, 77), (9, 8), (8, 9), (1, 5), (5, 1), (130, 200)]


@pytest.mark.parametrize("shape", TRANSPOSE_SHAPES, ids=str)
@pytest.mark.parametrize("registers", [True, False], ids=["registers", "stack"])
def test_transpose_copies_every_element_to_its_place(dtype, rng, shape, registers):
    A = normal(rng, shape, dtype)
    out = nan_buffer(shape[::-1], dtype)
    _kernels.transpose_checked(A, out, registers)
    np.testing.assert_array_equal(out, A.T)


def test_transpose_checks_the_shapes(dtype):
    with pytest.raises(ValueError, match=r"^Expected A \(r, c\) and out \(c, r\)\. Received: "):
        _kernels.transpose_checked(np.zeros((3, 4), dtype), np.zeros((3, 4), dtype))


@pytest.mark.parametrize("trans_a", [False, True], ids=["A", "A.T"])
@pytest.mark.parametrize("trans_b", [False, True], ids=["B", "B.T"])
@pytest.mark.parametrize("alpha, beta", SCALES.values(), ids=SCALES.keys())
def test_gemm(dense, rng, trans_a, trans_b, alpha, beta):
    X, W, b = dense
    A = np.ascontiguousarray(X.T) if trans_a else X
    B = np.ascontiguousarray(W.T) if trans_b else W
    C = normal(rng, (len(X), len(b)), X.dtype) if beta else nan_buffer((len(X), len(b)), X.dtype)
    expected = reference.gemm(A, B, C, trans_a, trans_b, alpha, beta)
    _blas.gemm_checked(A, B, C, trans_a, trans_b, alpha, beta)
    assert_close(C, expected)


@pytest.mark.parametrize("n", [0, 1, 7, 784 * 512], ids=["n0", "n1", "n7", "784x512"])
def test_axpy(dtype, rng, n):
    x, y = normal(rng, n, dtype), normal(rng, n, dtype)
    expected = reference.axpy(x, y, -0.1)
    _kernels.axpy_checked(x, y, -0.1)
    assert_close(y, expected)


def test_read_only_inputs_are_accepted(dtype, rng):
    check_dense_forward(
        *(read_only(normal(rng, shape, dtype)) for shape in [(4, 3), (3, 2), 2]), True
    )


LABELS = np.zeros(3, np.intp)
# A (7, 13) X of ones grouped by rows: the starts, index and quads of sparse_forward_checked.
ONES_BY_ROWS = by_rows(np.ones((7, 13), np.float32))
# (wrapper, *arguments), one shape disagreeing with the others.
SHAPE_MISMATCHES = {
    "dense_forward-inner": (
        _kernels.dense_forward_checked,
        f32(3, 4),
        f32(5, 2),
        f32(2),
        True,
        f32(3, 2),
    ),
    "dense_forward-bias": (
        _kernels.dense_forward_checked,
        f32(3, 4),
        f32(4, 2),
        f32(3),
        True,
        f32(3, 2),
    ),
    "dense_forward-out": (
        _kernels.dense_forward_checked,
        f32(3, 4),
        f32(4, 2),
        f32(2),
        True,
        f32(2, 2),
    ),
    "dense_forward-no-features": (
        _kernels.dense_forward_checked,
        f32(3, 0),
        f32(0, 2),
        f32(2),
        True,
        f32(3, 2),
    ),
    "relu_backward": (RELU_BACKWARD, f32(3, 2), f32(3, 2), f32(2, 3)),
    "dense_input_grad": (_kernels.dense_input_grad_checked, f32(3, 2), f32(4, 3), f32(3, 4)),
    "dense_param_grad-rows": (
        _kernels.dense_param_grad_checked,
        f32(3, 4),
        f32(2, 2),
        1,
        0,
        f32(4, 2),
        f32(2),
    ),
    "dense_param_grad-no-samples": (
        _kernels.dense_param_grad_checked,
        f32(0, 4),
        f32(0, 2),
        1,
        0,
        f32(4, 2),
        f32(2),
    ),
    "softmax_crossentropy-labels": (
        _losses.loss_and_hits,
        _losses.SPARSE_CATEGORICAL,
        f32(2, 4),
        LABELS,
        f32(2, 4),
    ),
    "softmax_crossentropy-grad": (
        _losses.loss_and_hits,
        _losses.SPARSE_CATEGORICAL,
        f32(3, 4),
        LABELS,
        f32(3, 2),
    ),
    "softmax": (_kernels.softmax_checked, f32(3, 2), f32(3, 3)),
    "gather_rows": (_kernels.gather_rows_checked, f32(5, 2), LABELS, f32(3, 3)),
    "gemm": (_blas.gemm_checked, f32(3, 4), f32(5, 2), f32(3, 2)),
    "gemm-transposed": (_blas.gemm_checked, f32(3, 4), f32(3, 2), f32(3, 2), True),
    "axpy": (_kernels.axpy_checked, f32(3), f32(4), 1.0),
}
# (wrapper, *arguments) that Cython's buffer checks reject before any kernel runs.
BAD_BUFFERS = {
    "mixed-dtypes": (
        _kernels.dense_forward_checked,
        f32(3, 4),
        f32(4, 2).astype(np.float64),
        f32(2),
        True,
        f32(3, 2),
    ),
    "float16": (
        _kernels.softmax_checked,
        f32(3, 2).astype(np.float16),
        f32(3, 2).astype(np.float16),
    ),
    "int64": (
        RELU_BACKWARD,
        np.zeros((3, 2), np.int64),
        np.zeros((3, 2), np.int64),
        np.zeros((3, 2), np.int64),
    ),
    "int32-labels": (
        _losses.loss_and_hits,
        _losses.SPARSE_CATEGORICAL,
        f32(3, 2),
        LABELS.astype(np.int32),
        f32(3, 2),
    ),
    "fortran-order": (
        _kernels.dense_input_grad_checked,
        np.asfortranarray(f32(3, 2)),
        f32(4, 2),
        f32(3, 4),
    ),
    "strided-slice": (_kernels.gather_rows_checked, f32(5, 4)[:, ::2], LABELS, f32(3, 2)),
    "read-only-output": (_blas.gemm_checked, f32(3, 4), f32(4, 2), read_only(f32(3, 2))),
    "sparse-int64-index": (
        _sparse.sparse_forward_checked,
        ONES_BY_ROWS[0],
        ONES_BY_ROWS[1].astype(np.int64),
        ONES_BY_ROWS[2],
        f32(13, 4),
        f32(4),
        True,
        f32(7, 4),
    ),
    "sparse-mixed-dtypes": (
        _sparse.sparse_forward_checked,
        *ONES_BY_ROWS,
        f32(13, 4).astype(np.float64),
        f32(4),
        True,
        f32(7, 4),
    ),
    "sparse-strided-X": (_sparse.group_rows_checked, f32(7, 26)[:, ::2], *ONES_BY_ROWS),
    "sparse-read-only-out": (
        _sparse.group_rows_checked,
        f32(7, 13),
        *ONES_BY_ROWS[:2],
        read_only(f32(26, 4)),
    ),
}


@pytest.mark.parametrize("call", SHAPE_MISMATCHES.values(), ids=SHAPE_MISMATCHES.keys())
def test_shape_mismatch_raises(call):
    wrapper, *arguments = call
    with pytest.raises(ValueError, match=r"^Expected .+\. Received: .*shape="):
        wrapper(*arguments)


@pytest.mark.parametrize("call", BAD_BUFFERS.values(), ids=BAD_BUFFERS.keys())
def test_bad_buffer_raises(call):
    wrapper, *arguments = call
    with pytest.raises((ValueError, TypeError)):
        wrapper(*arguments)


@st.composite
def dense_problems(draw):
    """Small X, W, b of one dtype with values in [-1, 1], and relu or identity."""
    dtype = draw(st.sampled_from(DTYPES))
    n, k, m = draw(st.tuples(st.integers(1, 8), st.integers(1, 8), st.integers(1, 8)))
    values = st.floats(-1, 1, width=32)
    X, W, b = (draw(hnp.arrays(dtype, shape, elements=values)) for shape in [(n, k), (k, m), m])
    return X, W, b, draw(st.booleans())


@st.composite
def classification_problems(draw):
    """Small logits of one dtype in [-100, 100] and labels in [0, n_classes)."""
    dtype = draw(st.sampled_from(DTYPES))
    n, n_classes = draw(st.tuples(st.integers(1, 8), st.integers(1, 12)))
    logits = draw(hnp.arrays(dtype, (n, n_classes), elements=st.floats(-100, 100, width=32)))
    labels = draw(hnp.arrays(np.intp, n, elements=st.integers(0, n_classes - 1)))
    return logits, labels


@settings(max_examples=50, deadline=None)
@given(dense_problems())
def test_dense_forward_property(problem):
    check_dense_forward(*problem)


@settings(max_examples=50, deadline=None)
@given(classification_problems())
def test_softmax_crossentropy_property(problem):
    loss, grad = check_softmax_crossentropy(*problem)
    assert loss >= 0


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 33, 1000])
def test_max_abs_is_the_largest_magnitude_and_inf_for_any_nan_or_inf(dtype, n):
    rng = np.random.default_rng(n)
    a = (rng.normal(size=n) * 10.0 ** rng.integers(-30, 30, n)).astype(dtype)
    expected = float(np.abs(a).max()) if n else 0.0
    assert _kernels.max_abs_checked(a) == expected
    assert _kernels.max_abs_rows_checked(a.reshape(1, n)) == expected
    for special in (np.nan, np.inf, -np.inf):
        if n:
            b = a.copy()
            b[rng.integers(n)] = special
            assert _kernels.max_abs_checked(b) == np.inf


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(0, 5), (1, 1), (3, 7), (130, 784), (700, 784)])
def test_scan_counts_the_nonzeros_and_finds_the_largest_magnitude_at_any_thread_count(dtype, shape):
    """The first layer's kernel choice and the inputs' bound: NumPy's count_nonzero (-0 is
    zero, NaN is not) and max |x|, inf for NaN or inf, the same at 1, 2 and 3 threads, over
    arrays below and above the size that runs in parallel."""
    rng = np.random.default_rng(shape[0])
    a = rng.normal(size=shape) * 10.0 ** rng.integers(-30, 30, shape)
    a[rng.random(shape) < 0.6] = 0
    a = a.astype(dtype)
    if a.size:
        a.flat[rng.integers(a.size)] = -0.0
    expected = (np.count_nonzero(a), float(np.abs(a).max()) if a.size else 0.0)
    for threads in (1, 2, 3):
        assert _kernels.scan_rows_checked(a, threads) == expected
    if a.size:
        a.flat[rng.integers(a.size)] = np.nan
        nonzeros, peak = _kernels.scan_rows_checked(a, 2)
        assert (nonzeros, peak) == (np.count_nonzero(a), np.inf)


def test_first_overlap_tells_what_may_share_memory_tells():
    """first_overlap(a, arrays): the first of arrays whose bytes' bounds overlap a's, as
    numpy.may_share_memory judges each pair (empty arrays overlap nothing)."""
    flat = np.zeros(1000, np.float32)
    grid = np.zeros((20, 30))
    views = [
        flat[:10],
        flat[5:20],
        flat[20:],
        flat[::-3],
        flat[999:],
        flat[10:10],
        flat[::7][3:9],
        flat[:0:-1],
        flat.view(np.int32)[500:501],
        flat[500:501].reshape(1, 1, 1),
        grid,
        grid[3:5],
        grid[:, 4],
        grid[::-1, ::2],
        grid.T,
        grid[5:5],
        grid[19:, 29:],
        grid[:, ::-1][2:4, 3:1:-1],
        np.zeros(3),
        np.ones(()),
    ]
    for a in views:
        expected = [np.may_share_memory(a, b) for b in views]
        assert _kernels.first_overlap(a, views) == (expected.index(True) if any(expected) else -1)
        for i, b in enumerate(views):
            assert (_kernels.first_overlap(a, [b]) == 0) == expected[i]


def test_intact_weights_takes_what_the_layers_checks_take():
    """intact_weights: True only for C-contiguous, writeable, aligned arrays of the shapes
    and the float dtype asked for."""
    W, b = np.zeros((3, 4), np.float32), np.zeros(4, np.float32)
    assert _kernels.intact_weights([W, b], [(3, 4), (4,)], False)
    assert _kernels.intact_weights([W.astype(np.float64)], [(3, 4)], True)
    unaligned = np.zeros(17, np.uint8)[1:].view(np.float32)
    refused = {
        "shape": ([W, b], [(4, 3), (4,)], False),
        "ndim": ([W.reshape(-1)], [(3, 4)], False),
        "dtype": ([W], [(3, 4)], True),
        "same size, another type": ([W.view(np.int32)], [(3, 4)], False),
        "byte order": ([W.astype(">f4")], [(3, 4)], False),
        "fortran order": ([np.asfortranarray(W)], [(3, 4)], False),
        "read-only": ([read_only(W.copy())], [(3, 4)], False),
        "unaligned": ([unaligned], [(4,)], False),
    }
    for name, (arrays, shapes, is_double) in refused.items():
        assert not _kernels.intact_weights(arrays, shapes, is_double), name


def test_labels_in_range_is_numpy_s_range_check():
    rng = np.random.default_rng(4)
    for n in (1, 7, 64, 1000):
        for low, high in ((0, 10), (-1, 10), (0, 11), (-(2**62), 2**62)):
            labels = rng.integers(low, high, n).astype(np.intp)
            expected = bool(labels.min() >= 0 and labels.max() < 10)
            assert _losses.labels_in_range(labels, 10) == expected
    assert not _losses.labels_in_range(np.zeros(3, np.intp), 0)


def test_one_blas_thread_sets_each_openblas_to_one_and_restore_gives_back_its_count():
    """A training call's BLAS policy (fastnaive.engine's pools): every OpenBLAS loaded on one
    thread inside, its own count after, nested or not."""
    from threadpoolctl import threadpool_info, threadpool_limits

    def counts():
        return [i["num_threads"] for i in threadpool_info() if i["internal_api"] == "openblas"]

    pools = engine._blas_pools()
    with threadpool_limits(limits=2, user_api="blas"):
        outside = counts()
        assert outside and set(outside) == {2}  # NumPy's and SciPy's OpenBLAS
        with pools:
            assert counts() == [1] * len(outside)
            with pools:
                assert counts() == [1] * len(outside)
            assert counts() == [1] * len(outside)
        assert counts() == outside


def test_adam_alpha_float32_is_numpy_s_float32_arithmetic():
    """Adam's float32 step size, Keras' formula in float32 scalars (powf, sqrt, *, /), bit for
    bit, over many steps and settings, up to a bias correction that rounds to 0."""
    f32 = np.float32
    rng = np.random.default_rng(5)
    steps = [*range(1, 1500), *rng.integers(1500, 10**7, 500).tolist(), 2**24 + 1]
    settings = [(1e-3, 0.9, 0.999), (0.1, 0.5, 0.9), (0.01, 0.0, 0.5), (1.0, 1 - 1e-9, 0.9)]
    settings += [(10 ** rng.uniform(-6, 0), rng.uniform(0, 1), rng.uniform(0, 1)) for _ in range(4)]
    with np.errstate(all="ignore"):
        for lr, beta_1, beta_2 in settings:
            for step in steps:
                t = f32(step)
                root = np.sqrt(f32(1) - f32(beta_2) ** t)
                expected = float(f32(lr) * root / (f32(1) - f32(beta_1) ** t))
                got = _kernels.adam_alpha_float32(lr, beta_1, beta_2, step)
                assert got == expected or (np.isnan(got) and np.isnan(expected)), (lr, step)


def test_run_calls_runs_each_kernel_in_order():
    w = np.zeros(4, np.float32)
    calls = [
        (_kernels.copy_checked, (np.full(4, 5.0, np.float32), w)),
        (_kernels.axpy_checked, (np.ones(4, np.float32), w, 2.0)),
    ]
    counter = np.zeros(1, np.int64)
    _kernels.run_calls([*calls, (_kernels.increment, (counter,))])
    np.testing.assert_array_equal(w, np.full(4, 7.0, np.float32))
    assert counter[0] == 1


# Long enough for the vector loops, their tails and the parallel chunks (8192 elements each).
UPDATE_LENGTH = 9 * 8192 + 5


@pytest.mark.parametrize("nesterov", [False, True], ids=["momentum", "nesterov"])
def test_momentum_kernel_rounds_each_operation_as_numpy_does(dtype, nesterov):
    """The element steps are compiled per instruction set with no fused multiply-adds
    (updates.h): the clone this CPU runs must give the bits of NumPy's element-wise
    operations, in every chunk a thread takes. (The clones differ in vector width alone; a
    contracted multiply-add in any of them changes the bits, and this test then fails on
    the CPUs that run it.)"""
    rng = np.random.default_rng(5)
    w, g, velocity = (rng.standard_normal(UPDATE_LENGTH).astype(dtype) for _ in range(3))
    lr, momentum = np.dtype(dtype).type(0.01), np.dtype(dtype).type(0.9)
    expected_velocity = momentum * velocity - lr * g
    step = momentum * expected_velocity - lr * g if nesterov else expected_velocity
    expected_w = w + step
    _kernels.momentum_update_checked(w, g, velocity, lr, momentum, nesterov)
    np.testing.assert_array_equal(velocity, expected_velocity)
    np.testing.assert_array_equal(w, expected_w)


def test_adam_kernel_rounds_each_operation_as_numpy_does(dtype):
    rng = np.random.default_rng(6)
    w, g, m = (rng.standard_normal(UPDATE_LENGTH).astype(dtype) for _ in range(3))
    v = rng.random(UPDATE_LENGTH).astype(dtype)
    cast = np.dtype(dtype).type
    alpha, decay_1, decay_2, epsilon = cast(1e-3), cast(0.1), cast(1e-3), cast(1e-7)
    expected_m = m + (g - m) * decay_1
    expected_v = v + (g * g - v) * decay_2
    expected_w = w - expected_m * alpha / (np.sqrt(expected_v) + epsilon)
    _kernels.adam_update_checked(w, g, m, v, alpha, decay_1, decay_2, epsilon)
    np.testing.assert_array_equal(m, expected_m)
    np.testing.assert_array_equal(v, expected_v)
    np.testing.assert_array_equal(w, expected_w)
