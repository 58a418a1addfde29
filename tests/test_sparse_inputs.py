"""scipy.sparse matrices as inputs: fit, predict, evaluate, evaluate_loss and
loss_and_gradients on CSR, CSC and COO give the dense input's results (to float rounding: the
first layer sums its nonzeros in another order), and never densify the matrix."""

import numpy as np
import pytest
import scipy.sparse as sp
from helpers import EXPECTED_RECEIVED, TOLERANCES

import fastnaive

N, K, CLASSES = 300, 2000, 4


@pytest.fixture
def data(dtype):
    rng = np.random.default_rng(0)
    x = sp.random(N, K, density=0.01, format="lil", random_state=1, dtype=dtype)
    x[5] = 0  # an empty row
    return x.tocsr(), rng.integers(0, CLASSES, N)


def model(dtype, **kwargs):
    return fastnaive.NaiveSequential(
        [
            fastnaive.NaiveDense(
                K, 16, "tanh", dtype=dtype, seed=0, initializer="glorot_uniform", **kwargs
            ),
            fastnaive.Dropout(0.1, seed=3),
            fastnaive.NaiveDense(
                16, CLASSES, "softmax", dtype=dtype, seed=1, initializer="glorot_uniform"
            ),
        ]
    )


class NoDensify:
    """A sparse matrix whose densifying methods raise."""

    def __init__(self, matrix):
        self.matrix = matrix

    def tocsr(self):
        return self.matrix.tocsr()

    @property
    def shape(self):
        return self.matrix.shape

    def toarray(self, *args):
        raise AssertionError("densified")

    todense = __array__ = toarray


def assert_same_weights(a, b, dtype):
    for u, v in zip(a.weights, b.weights, strict=True):
        np.testing.assert_allclose(u, v, **TOLERANCES[dtype])


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_fit_on_a_sparse_matrix_equals_fit_on_its_dense_array(data, dtype, fmt, optimizer):
    x, y = data
    on_sparse, on_dense = model(dtype, l2=0.01), model(dtype, l2=0.01)
    kwargs = dict(optimizer=optimizer, shuffle=True, seed=2, verbose=0, validation_split=0.2)
    history = fastnaive.fit(on_sparse, NoDensify(x.asformat(fmt)), y, 2, 32, **kwargs)
    expected = fastnaive.fit(on_dense, x.toarray(), y, 2, 32, **kwargs)
    assert_same_weights(on_sparse, on_dense, dtype)
    for key, values in expected.history.items():
        np.testing.assert_allclose(history.history[key], values, rtol=1e-5, err_msg=key)


def test_predict_evaluate_and_gradients_on_a_sparse_matrix(data, dtype):
    x, y = data
    m, dense = model(dtype), x.toarray()
    np.testing.assert_allclose(m.predict(NoDensify(x)), m.predict(dense), **TOLERANCES[dtype])
    assert fastnaive.evaluate(m, NoDensify(x), y) == fastnaive.evaluate(m, dense, y)
    loss, accuracy = fastnaive.evaluate_loss(m, NoDensify(x), y, batch_size=64)
    assert (loss, accuracy) == pytest.approx(fastnaive.evaluate_loss(m, dense, y), rel=1e-5)
    # Fresh models: the same dropout step in both.
    sparse_loss, sparse_grads = fastnaive.loss_and_gradients(model(dtype), x[:40], y[:40])
    dense_loss, dense_grads = fastnaive.loss_and_gradients(model(dtype), dense[:40], y[:40])
    assert sparse_loss == pytest.approx(dense_loss, rel=1e-5)
    for got, want in zip(sparse_grads, dense_grads, strict=True):
        np.testing.assert_allclose(got, want, **TOLERANCES[dtype])


def test_one_training_step_on_sparse_batches(data, dtype):
    x, y = data
    on_sparse, on_dense = model(dtype), model(dtype)
    for start in range(0, N, 50):
        fastnaive.one_training_step(on_sparse, x[start : start + 50], y[start : start + 50])
        fastnaive.one_training_step(
            on_dense, x[start : start + 50].toarray(), y[start : start + 50]
        )
    assert_same_weights(on_sparse, on_dense, dtype)


BAD_MATRICES = {
    "columns": (lambda: sp.random(10, K + 1, density=0.1, format="csr"), ValueError),
    "empty": (lambda: sp.csr_matrix((0, K)), ValueError),
    "complex": (lambda: sp.csr_matrix(np.eye(10, K) * 1j), TypeError),
}


@pytest.mark.parametrize("make, error", BAD_MATRICES.values(), ids=BAD_MATRICES.keys())
def test_bad_sparse_matrices_are_refused(make, error):
    with pytest.raises(error, match=EXPECTED_RECEIVED):
        fastnaive.fit(model("float32"), make(), np.zeros(10, int), 1, verbose=0)
