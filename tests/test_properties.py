"""Property-based tests over shapes, dtypes, memory layouts and values: every kernel agrees with
fastnaive.reference, softmax rows sum to 1, cross-entropy gradient rows sum to 0, and the
public API's results do not depend on how its inputs are laid out in memory."""

import numpy as np
from helpers import DTYPES, RELU_BACKWARD, SPARSE_SOFTMAX_CROSSENTROPY, assert_close
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastnaive
from fastnaive import _blas, _kernels, reference

SETTINGS = settings(max_examples=60, deadline=None)
dtypes = st.sampled_from(DTYPES)
sizes = st.integers(1, 9)


def arrays(draw, dtype, shape, bound=1.0):
    return draw(hnp.arrays(dtype, shape, elements=st.floats(-bound, bound, width=32)))


@st.composite
def backward_problems(draw):
    """X (n, k), W (k, m), delta and Z (n, m) of one dtype; Z holds zeros to mask."""
    dtype, n, k, m = draw(dtypes), draw(sizes), draw(sizes), draw(sizes)
    Z = np.maximum(arrays(draw, dtype, (n, m)), 0)
    return arrays(draw, dtype, (n, k)), arrays(draw, dtype, (k, m)), arrays(draw, dtype, (n, m)), Z


@SETTINGS
@given(backward_problems(), st.floats(-2, 2), st.sampled_from([0.0, 1.0, 0.5]))
def test_backward_kernels_match_reference(problem, alpha, beta):
    X, W, delta, Z = problem
    masked = delta.copy()
    RELU_BACKWARD(Z, Z, masked)
    np.testing.assert_array_equal(masked, reference.relu_backward(Z, delta))  # a mask is exact
    dX = np.empty_like(X)
    _kernels.dense_input_grad_checked(delta, W, dX)
    assert_close(dX, reference.dense_input_grad(delta, W))
    dW, db = np.full_like(W, 0.25), np.full(W.shape[1], 0.25, W.dtype)
    _kernels.dense_param_grad_checked(X, delta, alpha, beta, dW, db)
    expected_dW, expected_db = reference.dense_param_grad(X, delta)
    assert_close(dW, alpha * expected_dW + beta * 0.25)
    assert_close(db, alpha * expected_db + beta * 0.25)


@st.composite
def logits_and_labels(draw):
    dtype, n, n_classes = draw(dtypes), draw(sizes), draw(st.integers(1, 12))
    logits = arrays(draw, dtype, (n, n_classes), bound=draw(st.sampled_from([1.0, 50.0, 1e4])))
    return logits, draw(hnp.arrays(np.intp, n, elements=st.integers(0, n_classes - 1)))


@SETTINGS
@given(logits_and_labels())
def test_softmax_rows_sum_to_one_and_gradient_rows_to_zero(problem):
    logits, labels = problem
    probabilities, grad = np.empty_like(logits), np.empty_like(logits)
    _kernels.softmax_checked(logits, probabilities)
    loss = SPARSE_SOFTMAX_CROSSENTROPY(logits, labels, grad)
    assert_close(probabilities, reference.softmax(logits))
    assert_close(probabilities.sum(axis=1), np.ones(len(logits)))
    assert np.isfinite(loss) and loss >= 0
    assert_close(grad.sum(axis=1) * len(logits), np.zeros(len(logits)))


@st.composite
def gathers(draw):
    dtype, n, k = draw(dtypes), draw(sizes), draw(sizes)
    rows = draw(hnp.arrays(np.intp, draw(sizes), elements=st.integers(0, n - 1)))
    return arrays(draw, dtype, (n, k)), rows


@SETTINGS
@given(gathers())
def test_gather_rows_copies_rows_exactly(problem):
    src, rows = problem
    out = np.empty((len(rows), src.shape[1]), src.dtype)
    _kernels.gather_rows_checked(src, rows, out)
    np.testing.assert_array_equal(out, src[rows])  # a copy is exact


@st.composite
def gemms(draw):
    dtype, m, n, k = draw(dtypes), draw(sizes), draw(sizes), draw(sizes)
    trans_a, trans_b = draw(st.booleans()), draw(st.booleans())
    A = arrays(draw, dtype, (k, m) if trans_a else (m, k))
    B = arrays(draw, dtype, (n, k) if trans_b else (k, n))
    return A, B, arrays(draw, dtype, (m, n)), trans_a, trans_b


@SETTINGS
@given(gemms(), st.floats(-2, 2), st.floats(-2, 2))
def test_gemm_matches_reference(problem, alpha, beta):
    A, B, C, trans_a, trans_b = problem
    expected = reference.gemm(A, B, C, trans_a, trans_b, alpha, beta)
    _blas.gemm_checked(A, B, C, trans_a, trans_b, alpha, beta)
    assert_close(C, expected)


LAYOUTS = {
    "c-order": lambda x: x,
    "fortran-order": np.asfortranarray,
    "column-slice": lambda x: np.repeat(x, 2, axis=1)[:, ::2],
    "reversed-rows": lambda x: x[::-1].copy()[::-1],
    "read-only": lambda x: np.frombuffer(x.tobytes(), x.dtype).reshape(x.shape),
}


@st.composite
def training_problems(draw):
    dtype, n = draw(dtypes), draw(sizes)
    model = fastnaive.NaiveSequential(
        [
            fastnaive.NaiveDense(6, 5, "relu", dtype=dtype, seed=0),
            fastnaive.NaiveDense(5, 3, "softmax", dtype=dtype, seed=1),
        ]
    )
    # Half zeros, so that both the dense and the sparse first layer are drawn.
    x = arrays(draw, dtype, (n, 6)) * draw(hnp.arrays(np.int8, (n, 6), elements=st.integers(0, 1)))
    labels = draw(hnp.arrays(np.intp, n, elements=st.integers(0, 2)))
    return model, x, labels, draw(st.sampled_from(list(LAYOUTS)))


def near_relus_kink(layer, x):
    """Whether a pre-activation of `layer` on x is nonzero yet within the rounding of any
    order of its sums, or of the sums on the inputs' distances from one of each column's
    values (the first layer's offsets: X @ W = (X - c) @ W + c @ W): there relu's derivative
    takes either side, and a whole row's term of the gradient with it. A pre-activation that
    is exactly 0 (a row of zeros, b = 0) is not near: it must come out 0."""
    w, b = layer.W.astype(np.float64), layer.b.astype(np.float64)
    z = x.astype(np.float64) @ w + b
    largest = np.abs(x).max(axis=0).astype(np.float64)  # bounds |x - c| / 2 and |c|
    bound = (x.shape[1] + 2) * np.finfo(x.dtype).eps * (3 * largest @ np.abs(w) + np.abs(b))
    return bool(np.any((z != 0) & (np.abs(z) <= bound)))


@SETTINGS
@given(training_problems())
def test_results_do_not_depend_on_the_input_layout(problem):
    model, x, labels, layout = problem
    assume(not near_relus_kink(model.layers[0], x))
    loss, gradients = fastnaive.loss_and_gradients(model, LAYOUTS[layout](x), labels)
    expected_loss, expected_gradients = reference.loss_and_gradients(model, x, labels)
    assert_close(np.array(loss, x.dtype), np.array(expected_loss, x.dtype))
    for gradient, expected in zip(gradients, expected_gradients, strict=True):
        assert_close(gradient, expected)
    assert_close(model.predict(LAYOUTS[layout](x)), model.predict(x))
