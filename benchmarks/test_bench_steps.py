"""Per-step benchmarks on the first 128 MNIST training images, in one group "step b128":
fit's fused step (fastnaive.training._train_step on a workspace), the public
one_training_step, fastnaive.reference.sgd_step, and the book's TensorFlow step eager and
under tf.function.

Run: python -m pytest benchmarks/test_bench_steps.py -p no:cacheprovider [--quick]
"""
import numpy as np
import pytest

import fastnaive
import workloads
from fastnaive import engine, optimizers, reference, training

import book_tf  # noqa: E402  (imports TensorFlow: a benchmark requirement)

GROUP = "step b128"


@pytest.fixture(scope="module")
def batch(mnist_train):
    x, y = mnist_train
    return x[:workloads.BATCH_SIZE], y[:workloads.BATCH_SIZE]


def test_step_fit_fused(benchmark, batch):
    benchmark.group = GROUP
    x, y = batch
    model = workloads.book_model()
    workspace = engine.workspace_for(model, len(x))
    workspace.use_sparse_input(engine.is_sparse(x))  # as fit decides, once per data set
    labels = np.ascontiguousarray(y, dtype=np.intp)
    optimizer = fastnaive.SGD(workloads.LEARNING_RATE)
    with engine.threads_for(workspace):
        update = optimizers.updater(optimizer, workspace.gradients, model.weights)
        benchmark(training._train_step, model, workspace, x, labels, optimizer, update)


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
