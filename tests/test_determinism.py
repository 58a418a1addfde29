"""Determinism and threads: what holds run to run, across thread counts and between
models trained at the same time in two Python threads.

- Same seed: bit-identical weights (exact equality is the claim: the same deterministic
  sequence of operations).
- At any thread count: bit-identical too. The kernels run in one pool (OpenMP's, its size
  set by threadpoolctl or OMP_NUM_THREADS) with BLAS on one thread inside it, and cut their
  work by the shapes alone (each GEMM into blocks, fastnaive._blas.tile_grid; the sparse
  kernels by columns), never by the number of threads.
- Two models trained at once in two Python threads (the kernels release the
  GIL; each model has its own workspace and each optimizer its own state) end
  bit-identical to the same models trained one after the other.
"""

import threading

import numpy as np
import pytest
import scipy.sparse
from helpers import make_data, make_model, random_model
from threadpoolctl import threadpool_limits

import fastnaive
from fastnaive import _kernels, engine


def train(seed, dtype="float32", optimizer="sgd", threads=None):
    model, (x, y) = make_model(dtype), make_data(300, dtype)
    with threadpool_limits(limits=threads):
        fastnaive.fit(
            model,
            x,
            y,
            epochs=2,
            batch_size=32,
            shuffle=True,
            seed=seed,
            optimizer=optimizer,
            verbose=0,
        )
    return model.get_weights()


def assert_identical(weights, expected):
    for actual, wanted in zip(weights, expected, strict=True):
        np.testing.assert_array_equal(actual, wanted)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_same_seed_same_threads_is_bit_identical(dtype, optimizer):
    assert_identical(train(7, dtype, optimizer), train(7, dtype, optimizer))


def test_another_seed_gives_another_order():
    with pytest.raises(AssertionError):
        assert_identical(train(7), train(8))


def test_thread_counts_give_the_same_gradients_to_the_bit(dtype):
    model, (x, y) = make_model(dtype), make_data(128, dtype)
    results = {}
    for threads in (1, 2):
        with threadpool_limits(limits=threads):
            results[threads] = fastnaive.loss_and_gradients(model, x, y)
    (loss_1, grads_1), (loss_2, grads_2) = results[1], results[2]
    assert loss_1 == loss_2
    assert_identical(grads_2, grads_1)


@pytest.mark.parametrize("inputs", ["dense", "mostly zeros", "mostly offsets", "csr"])
@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_weights_are_the_same_bits_at_1_2_and_3_threads(dtype, inputs, optimizer):
    """Shapes big enough to cut every GEMM into blocks (in rows and columns) and to run the
    sparse kernels in parallel; SGD runs fused into the weight-gradient GEMM, momentum and
    Adam on each block of the gradients as the kernels produce it (after them for the
    scipy.sparse batch). Inputs mostly at one value per feature run the sparse kernels on
    their distances from those values."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((600, 300)).astype(dtype)
    if inputs != "dense":
        x[rng.random(x.shape) < 0.8] = 0  # the first layer runs on the nonzeros
    if inputs == "mostly offsets":
        x += rng.uniform(-1, 1, 300).astype(dtype)  # on the distances from these
    if inputs == "csr":
        x = scipy.sparse.csr_matrix(x)
    y = rng.integers(0, 10, 600)
    if inputs != "csr":
        step = engine.Step(random_model([300, 10], "softmax", dtype, seed=0), 128, x)
        assert (step.offsets is not None) == (inputs == "mostly offsets")
    results = []
    for threads in (1, 2, 3):
        model = random_model([300, 256, 256, 10], "softmax", dtype, seed=0)
        with threadpool_limits(limits=threads):
            assert _kernels.max_threads() == threads  # threadpoolctl sets the kernels' pool
            fastnaive.fit(model, x, y, 2, 128, optimizer=optimizer, shuffle=True, seed=0, verbose=0)
        results.append(model.get_weights())
    assert_identical(results[1], results[0])
    assert_identical(results[2], results[0])


def test_two_models_trained_at_once_equal_one_after_the_other():
    expected = [train(seed) for seed in (1, 2)]
    results = {}
    threads = [
        threading.Thread(target=lambda s=seed: results.__setitem__(s, train(s))) for seed in (1, 2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert_identical(results[1], expected[0])
    assert_identical(results[2], expected[1])
