"""Per-step benchmarks on the first 128 MNIST training images, in one group "step b128":
fit's step (fastnaive.engine.Step.train, planned as fit plans it), the public
one_training_step, fastnaive.reference.sgd_step, and the book's TensorFlow step eager and
under tf.function.

Run: python -m pytest benchmarks/test_bench_steps.py -p no:cacheprovider [--quick]
"""

import book_tf  # noqa: E402  (imports TensorFlow: a benchmark requirement)
import numpy as np
import pytest
import workloads

import fastnaive
from fastnaive import engine, reference

GROUP = "step b128"


@pytest.fixture(scope="module")
def batch(mnist_train):
    x, y = mnist_train
    return x[: workloads.BATCH_SIZE], y[: workloads.BATCH_SIZE]


def test_step_fit_fused(benchmark, batch):
    benchmark.group = GROUP
    x, y = batch
    model = workloads.book_model()
    labels = np.ascontiguousarray(y, dtype=np.intp)
    step = engine.Step(model, len(x), x, optimizer=fastnaive.SGD(workloads.LEARNING_RATE))
    with step.threads():
        benchmark(step.train, x, labels)


def test_step_one_training_step(benchmark, batch):
    benchmark.group = GROUP
    benchmark(fastnaive.one_training_step, workloads.book_model(), *batch)


def test_step_reference(benchmark, batch):
    benchmark.group = GROUP
    benchmark(reference.sgd_step, workloads.book_model(), *batch, workloads.LEARNING_RATE)


def test_step_tf_eager(benchmark, batch):
    benchmark.group = GROUP
    benchmark(book_tf.one_training_step, book_tf.book_model(), *batch)


def test_step_tf_function(benchmark, batch):
    benchmark.group = GROUP
    step = book_tf.compiled_step(book_tf.book_model())
    step(*batch)
    benchmark(step, *batch)
