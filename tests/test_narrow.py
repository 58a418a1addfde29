"""Tests for the narrow products of fastnaive._sparse (a layer of at most NARROW_WIDTH outputs)
against float64 NumPy on every instruction set the CPU runs, their results the same bits at
any thread count, and the Step's choice of them."""

import numpy as np
import pytest
from helpers import EXPECTED_RECEIVED, SCALES, assert_close, normal

import fastnaive
from fastnaive import _activations, _kernels, _sparse, activations, engine

# (n, k, m): one row and a few (the tiles' row remainders), k below one vector, between
# vectors, past the forward product's 2 KiB tile (1100) and none at all; m of one column up
# to the widest, through each column block the kernels unroll (8, 4, 2, 1).
SHAPES = {
    "n1-k1-m1": (1, 1, 1),
    "n2-k15-m2": (2, 15, 2),
    "n3-k64-m3": (3, 64, 3),
    "n5-k100-m7": (5, 100, 7),
    "n33-k517-m10": (33, 517, 10),
    "n128-k512-m10": (128, 512, 10),
    "n7-k1100-m13": (7, 1100, 13),
    "n64-k256-m16": (64, 256, 16),
}


@pytest.fixture(params=SHAPES.values(), ids=SHAPES.keys())
def shape(request):
    return request.param


def forward(X, W, b, code=_activations.LINEAR, n_threads=1):
    Z = np.full((X.shape[0], W.shape[1]), np.nan, X.dtype)
    _sparse.narrow_forward_checked(X, W, b, code, Z, n_threads)
    return Z


def input_grad(delta, W, n_threads=1, relu_of=None):
    dX = np.full((delta.shape[0], W.shape[0]), np.nan, delta.dtype)
    _sparse.narrow_input_grad_checked(delta, W, dX, n_threads, relu_of)
    return dX


def param_grad(X, delta, alpha, beta, W, b, n_threads=1):
    """(dW, db) := alpha * (X.T @ delta, sum_rows(delta)) + beta * (W, b), on copies."""
    dW, db = W.copy(), b.copy()
    _sparse.narrow_param_grad_checked(X, delta, alpha, beta, dW, db, n_threads)
    return dW, db


def test_narrow_forward(shape, dtype, instruction_set, rng):
    n, k, m = shape
    X, W, b = normal(rng, (n, k), dtype), normal(rng, (k, m), dtype, k**-0.5), normal(rng, m, dtype)
    assert_close(forward(X, W, b), X.astype(np.float64) @ W + b)


def test_narrow_forward_applies_the_activation_as_the_dense_kernel(dtype, instruction_set, rng):
    X, W, b = (
        normal(rng, (9, 300), dtype),
        normal(rng, (300, 10), dtype, 0.06),
        normal(rng, 10, dtype),
    )
    for name in ("relu", "sigmoid", "tanh", "gelu", "elu"):
        code = activations.CODES[name]
        Z = np.empty((9, 10), dtype)
        _kernels.dense_forward_checked(X, W, b, code, Z)
        assert_close(forward(X, W, b, code), Z, err_msg=name)


def test_narrow_forward_of_no_inputs_is_the_bias(dtype):
    b = np.arange(3, dtype=dtype)
    Z = forward(np.empty((4, 0), dtype), np.empty((0, 3), dtype), b)
    np.testing.assert_array_equal(Z, np.tile(b, (4, 1)))


def test_narrow_input_grad(shape, dtype, instruction_set, rng):
    n, k, m = shape
    delta, W = normal(rng, (n, m), dtype), normal(rng, (k, m), dtype)
    assert_close(input_grad(delta, W), delta.astype(np.float64) @ W.T.astype(np.float64))


def test_narrow_input_grad_applies_relus_derivative_as_its_kernel(
    shape, dtype, instruction_set, rng
):
    """With relu_of, ReLU's outputs of the layer below, the input gradient is zero where they
    are not positive (NaN included) and elsewhere the same bits as without: what the
    product then activation_backward give, in the whole tiles and past them."""
    n, k, m = shape
    delta, W = normal(rng, (n, m), dtype), normal(rng, (k, m), dtype)
    relu_of = np.maximum(normal(rng, (n, k), dtype), 0)
    relu_of.flat[:: max(1, relu_of.size // 5)] = np.nan
    expected = input_grad(delta, W)
    _activations.activation_backward_checked(_activations.RELU, relu_of, relu_of, expected)
    dX = input_grad(delta, W, relu_of=relu_of)
    np.testing.assert_array_equal(dX, expected)
    off = ~(relu_of > 0)
    assert off.any() and (dX[off] == 0).all()


def test_narrow_param_grad(shape, dtype, instruction_set, rng):
    n, k, m = shape
    X, delta = normal(rng, (n, k), dtype), normal(rng, (n, m), dtype)
    for name, (alpha, beta) in SCALES.items():
        W, b = normal(rng, (k, m), dtype), normal(rng, m, dtype)
        if beta == 0:
            W[:], b[:] = np.nan, np.nan
        dW, db = param_grad(X, delta, alpha, beta, W, b)
        W0, b0 = (np.zeros_like(W), np.zeros_like(b)) if beta == 0 else (W, b)
        assert_close(dW, alpha * (X.T.astype(np.float64) @ delta) + beta * W0, err_msg=name)
        assert_close(db, alpha * delta.sum(axis=0, dtype=np.float64) + beta * b0, err_msg=name)


def test_narrow_param_grad_of_no_rows_scales_by_beta(dtype):
    W, b = np.ones((5, 3), dtype), np.ones(3, dtype)
    dW, db = param_grad(np.empty((0, 5), dtype), np.empty((0, 3), dtype), 1.0, 0.5, W, b)
    np.testing.assert_array_equal(dW, 0.5 * W)
    np.testing.assert_array_equal(db, 0.5 * b)


# k = 1100 leaves the last block of 64 rows 12 (no whole vector on AVX-512), 1124 leaves 36
# (whole vectors, then the rest), each through every path of the three products.
@pytest.mark.parametrize("k", [1100, 1124])
@pytest.mark.parametrize("n_threads", [2, 3])
def test_narrow_products_are_the_same_bits_at_any_thread_count(n_threads, k, dtype, rng):
    """Blocks big enough to run in parallel (past PARALLEL_MIN_PRODUCTS)."""
    X, W, b = (
        normal(rng, (200, k), dtype),
        normal(rng, (k, 10), dtype),
        normal(rng, 10, dtype),
    )
    delta = normal(rng, (200, 10), dtype)
    np.testing.assert_array_equal(forward(X, W, b, n_threads=n_threads), forward(X, W, b))
    np.testing.assert_array_equal(input_grad(delta, W, n_threads), input_grad(delta, W))
    relu_of = np.maximum(normal(rng, (200, k), dtype), 0)
    np.testing.assert_array_equal(
        input_grad(delta, W, n_threads, relu_of), input_grad(delta, W, relu_of=relu_of)
    )
    for got, want in zip(
        param_grad(X, delta, 0.5, 1.0, W, b, n_threads), param_grad(X, delta, 0.5, 1.0, W, b)
    ):
        np.testing.assert_array_equal(got, want)


def test_narrow_products_refuse_wider_layers():
    wide = _sparse.NARROW_WIDTH + 1
    X, W, b = np.ones((2, 3), "f4"), np.ones((3, wide), "f4"), np.ones(wide, "f4")
    with pytest.raises(ValueError, match=EXPECTED_RECEIVED):
        _sparse.narrow_forward_checked(X, W, b, 0, np.empty((2, wide), "f4"))
    with pytest.raises(ValueError, match=EXPECTED_RECEIVED):
        _sparse.narrow_input_grad_checked(np.ones((2, wide), "f4"), W, np.empty((2, 3), "f4"))
    with pytest.raises(ValueError, match=EXPECTED_RECEIVED):
        _sparse.narrow_param_grad_checked(X, np.ones((2, wide), "f4"), 1.0, 0.0, W, b)
    with pytest.raises(ValueError, match=EXPECTED_RECEIVED):
        _sparse.narrow_forward_checked(X, W[:2], b, 0, np.empty((2, wide), "f4"))


def book_model():
    return fastnaive.NaiveSequential(
        [
            fastnaive.NaiveDense(784, 512, "relu", seed=0),
            fastnaive.NaiveDense(512, 10, "softmax", seed=1),
        ]
    )


def test_the_step_runs_the_narrow_kernels_on_narrow_layers_where_they_are_faster(
    instruction_set,
):
    fast = instruction_set in engine.NARROW_INSTRUCTION_SETS
    assert engine.Step(book_model(), 128).narrow == [False, fast]
    wide_head = fastnaive.NaiveSequential(
        [fastnaive.NaiveDense(784, 16, "relu"), fastnaive.NaiveDense(16, 17, "softmax")]
    )
    assert engine.Step(wide_head, 128).narrow == [fast, False]


def test_training_on_the_narrow_kernels_agrees_with_the_blas(mnist):
    """An epoch's first 20 steps of the book's model on MNIST, the second layer on the narrow
    kernels and on the BLAS (baseline): the same losses and weights within float32's sums."""
    (x, y), _ = mnist
    x, y = x[:2560], y[:2560]
    results = []
    for widest in ("avx512", "baseline"):
        isa = _sparse.select_instruction_set(widest)
        try:
            model = book_model()
            narrow = isa in engine.NARROW_INSTRUCTION_SETS
            assert engine.narrow_layers(model.dense_layers)[1] is narrow
            history = fastnaive.fit(model, x, y, 1, 128, verbose=0)
            results.append((history.history["loss"][0], model.get_weights()))
        finally:
            _sparse.select_instruction_set()
    (loss, weights), (blas_loss, blas_weights) = results
    assert loss == pytest.approx(blas_loss, rel=1e-6)
    for w, blas_w in zip(weights, blas_weights):
        np.testing.assert_allclose(w, blas_w, rtol=1e-5, atol=1e-6)
