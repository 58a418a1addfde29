"""Per-kernel benchmarks: each fastnaive kernel beside fastnaive.reference (NumPy) and
TensorFlow (the same ops under tf.function, on tensors), one group per kernel and shape.

- dense_relu_forward: Z = relu(X @ W + b), batch 128, layers 784x512 and 512x10;
- dense_relu_backward: delta = G * (Z > 0), dX = delta @ W.T, dW = X.T @ delta,
  db = sum_rows(delta), same shapes;
- softmax_crossentropy: mean cross-entropy and its gradient for 128 x 10 logits.

Run: python -m pytest benchmarks/test_bench_kernels.py -p no:cacheprovider [--quick]
"""

import functools
import types

import numpy as np
import pytest
import tensorflow as tf

from fastnaive import _activations, _kernels, _losses, reference

BATCH = 128
N_CLASSES = 10
LAYERS = {"b128-784x512": (784, 512), "b128-512x10": (512, 10)}

# The ReLU case of the activations' backward kernel: delta := delta * (A > 0).
RELU_BACKWARD = functools.partial(_activations.activation_backward_checked, _activations.RELU)


@pytest.fixture(scope="module", params=list(LAYERS))
def layer(request):
    """A dense relu layer's arrays: X, W, b, Z = relu(X @ W + b) and an upstream gradient G."""
    n_in, n_out = LAYERS[request.param]
    rng = np.random.default_rng(0)
    X = rng.random((BATCH, n_in), dtype=np.float32)
    W = rng.uniform(-0.1, 0.1, (n_in, n_out)).astype(np.float32)
    b = rng.uniform(-0.1, 0.1, n_out).astype(np.float32)
    G = rng.standard_normal((BATCH, n_out), dtype=np.float32)
    Z = reference.dense_forward(X, W, b, True)
    return types.SimpleNamespace(name=request.param, X=X, W=W, b=b, Z=Z, G=G)


@pytest.fixture(scope="module")
def logits_and_labels():
    rng = np.random.default_rng(0)
    logits = 3 * rng.standard_normal((BATCH, N_CLASSES), dtype=np.float32)
    return logits, rng.integers(0, N_CLASSES, BATCH).astype(np.intp)


def fastnaive_dense_relu_backward(X, W, Z, delta, dX_out, dW_out, db_out):
    RELU_BACKWARD(Z, Z, delta)
    _kernels.dense_input_grad_checked(delta, W, dX_out)
    _kernels.dense_param_grad_checked(X, delta, 1.0, 0.0, dW_out, db_out)


def reference_dense_relu_backward(X, W, Z, G):
    delta = reference.relu_backward(Z, G)
    return (reference.dense_input_grad(delta, W), *reference.dense_param_grad(X, delta))


@tf.function
def tf_dense_relu_forward(X, W, b):
    return tf.nn.relu(tf.matmul(X, W) + b)


@tf.function
def tf_dense_relu_backward(X, W, Z, G):
    delta = tf.where(Z > 0, G, tf.zeros_like(G))
    return (
        tf.matmul(delta, W, transpose_b=True),
        tf.matmul(X, delta, transpose_a=True),
        tf.reduce_sum(delta, axis=0),
    )


@tf.function
def tf_softmax_crossentropy(logits, labels):
    with tf.GradientTape() as tape:
        tape.watch(logits)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
    return loss, tape.gradient(loss, logits)


def run_tf(benchmark, function, *arrays):
    """Benchmark a tf.function on the arrays as tensors, traced before timing."""
    tensors = [tf.constant(a) for a in arrays]
    function(*tensors)
    benchmark(function, *tensors)


def test_dense_relu_forward_fastnaive(benchmark, layer):
    benchmark.group = f"dense_relu_forward {layer.name}"
    Z_out = np.empty_like(layer.Z)
    benchmark(_kernels.dense_forward_checked, layer.X, layer.W, layer.b, True, Z_out)


def test_dense_relu_forward_reference(benchmark, layer):
    benchmark.group = f"dense_relu_forward {layer.name}"
    benchmark(reference.dense_forward, layer.X, layer.W, layer.b, True)


def test_dense_relu_forward_tensorflow(benchmark, layer):
    benchmark.group = f"dense_relu_forward {layer.name}"
    run_tf(benchmark, tf_dense_relu_forward, layer.X, layer.W, layer.b)


def test_dense_relu_backward_fastnaive(benchmark, layer):
    benchmark.group = f"dense_relu_backward {layer.name}"
    # relu_backward masks delta in place; masking again leaves it unchanged.
    delta = layer.G.copy()
    dX_out, dW_out, db_out = np.empty_like(layer.X), np.empty_like(layer.W), np.empty_like(layer.b)
    benchmark(
        fastnaive_dense_relu_backward, layer.X, layer.W, layer.Z, delta, dX_out, dW_out, db_out
    )


def test_dense_relu_backward_reference(benchmark, layer):
    benchmark.group = f"dense_relu_backward {layer.name}"
    benchmark(reference_dense_relu_backward, layer.X, layer.W, layer.Z, layer.G)


def test_dense_relu_backward_tensorflow(benchmark, layer):
    benchmark.group = f"dense_relu_backward {layer.name}"
    run_tf(benchmark, tf_dense_relu_backward, layer.X, layer.W, layer.Z, layer.G)


def test_softmax_crossentropy_fastnaive(benchmark, logits_and_labels):
    benchmark.group = "softmax_crossentropy b128x10"
    logits, labels = logits_and_labels
    grad_out = np.empty_like(logits)
    benchmark(_losses.loss_and_hits, _losses.SPARSE_CATEGORICAL, logits, labels, grad_out)


def test_softmax_crossentropy_reference(benchmark, logits_and_labels):
    benchmark.group = "softmax_crossentropy b128x10"
    benchmark(reference.softmax_crossentropy, *logits_and_labels)


def test_softmax_crossentropy_tensorflow(benchmark, logits_and_labels):
    benchmark.group = "softmax_crossentropy b128x10"
    run_tf(benchmark, tf_softmax_crossentropy, *logits_and_labels)
