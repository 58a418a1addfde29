"""Determinism and threads: what holds run to run, across BLAS thread counts and between
models trained at the same time in two Python threads.

- Same seed, same thread count: bit-identical weights (exact equality is the claim:
  the same deterministic sequence of operations).
- Across BLAS thread counts: each step agrees to float rounding, not to the bit
  (OpenBLAS splits a GEMM differently for 1 and 2 threads, changing the order of
  its sums).
- Two models trained at once in two Python threads (the kernels release the
  GIL; each model has its own workspace and each optimizer its own state) end
  bit-identical to the same models trained one after the other.
"""

import threading

import numpy as np
import pytest
from helpers import TOLERANCES, make_data, make_model
from threadpoolctl import threadpool_limits

import fastnaive


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


def test_thread_counts_agree_to_rounding_per_step(dtype):
    model, (x, y) = make_model(dtype), make_data(128, dtype)
    results = {}
    for threads in (1, 2):
        with threadpool_limits(limits=threads):
            results[threads] = fastnaive.loss_and_gradients(model, x, y)
    (loss_1, grads_1), (loss_2, grads_2) = results[1], results[2]
    np.testing.assert_allclose(loss_1, loss_2, **TOLERANCES[dtype])
    for g1, g2 in zip(grads_1, grads_2, strict=True):
        np.testing.assert_allclose(g1, g2, **TOLERANCES[dtype])


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
