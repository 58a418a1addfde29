"""fastnaive's loss, gradients and SGD steps against TensorFlow running the book's code.

Tolerances: an array a agrees with its oracle b when max|a - b| <= RTOL * max|b|
(for a scalar loss, |a - b| <= RTOL * |b|), the error measured against the
array's own scale so that small entries of a large gradient need no atol.

    dtype    RTOL    worst measured   why
    float64  1e-10   2.3e-15          ten eps64; the margin absorbs other BLAS blockings
                                      and still flags any formula error (1.001 is 1e-3)
    float32  1e-5    1.1e-6           both sides sum 784- and 512-term dot products in
                                      different orders: ~sqrt(784) * eps32 = 3e-6 at worst

Weights after SGD steps are compared through their displacement w - w0, with
atol = steps * eps * max|w0| added: each side rounds w once per step, which in
float32 is ~1e-4 of a 1e-3-sized step (measured 1.4e-4 relative).
"""

import numpy as np
import pytest
import tensorflow as tf
from helpers import N_CLASSES, assert_scaled_close, random_model

import fastnaive

RTOL = {"float32": 1e-5, "float64": 1e-10}
BATCH_SIZES = [1, 7, 96, 128]
ARCHITECTURES = [(784, 512, 10), (784, 64, 32, 10)]
ARCHITECTURE_IDS = ["784-512-10", "784-64-32-10"]
# Keras clips probabilities to [EPSILON, 1 - EPSILON] before taking their log.
EPSILON = 1e-7
SGD_STEPS = 3


def random_batch(n, dtype, seed):
    """n MNIST-like images (pixels in [0, 1)) and labels."""
    rng = np.random.default_rng(seed)
    return rng.random((n, 784)).astype(dtype), rng.integers(0, N_CLASSES, n)


def assert_all_scaled_close(actual, expected, rtol, atol=0.0):
    assert len(actual) == len(expected)
    for a, b in zip(actual, expected):
        assert_scaled_close(a, b, rtol, atol)


def reference_forward(model, x):
    """Float64 NumPy forward pass: (inputs of every layer, logits of the last)."""
    inputs = [x.astype(np.float64)]
    for layer in model.layers[:-1]:
        inputs.append(np.maximum(inputs[-1] @ layer.W.astype(np.float64) + layer.b, 0))
    last = model.layers[-1]
    return inputs, inputs[-1] @ last.W.astype(np.float64) + last.b


def reference_backward(model, inputs, logit_gradients):
    """Float64 gradients [dW0, db0, ...] of a loss whose gradient wrt the logits is given."""
    delta, gradients = logit_gradients, []
    for i in reversed(range(len(model.layers))):
        gradients[:0] = [inputs[i].T @ delta, delta.sum(axis=0)]
        if i > 0:
            delta = (delta @ model.layers[i].W.astype(np.float64).T) * (inputs[i] > 0)
    return gradients


def softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def exact_losses(logits, labels):
    """Per-sample -log softmax(z)[y] by log-sum-exp, with no clipping."""
    z_max = logits.max(axis=1)
    log_total = np.log(np.exp(logits - z_max[:, None]).sum(axis=1)) + z_max
    return log_total - logits[np.arange(len(labels)), labels]


def exact_logit_gradients(logits, labels):
    """Gradient of the mean exact loss wrt the logits: (softmax(z) - onehot(y)) / n."""
    n = len(labels)
    gradient = softmax(logits)
    gradient[np.arange(n), labels] -= 1
    return gradient / n


def keras_clipped_losses_and_logit_gradients(logits, labels, dtype):
    """NumPy emulation of Keras' loss on probabilities, and its gradient wrt the logits.

    Keras computes c = clip(p, eps, 1 - eps) (bounds rounded to `dtype`), then
    sparse_softmax_cross_entropy_with_logits(log c): loss = -log c_y + log sum(c).
    clip_by_value passes no gradient where p lies outside the interval.
    """
    n, rows = len(labels), np.arange(len(labels))
    low, high = np.array([EPSILON, 1 - EPSILON], dtype).tolist()
    p = softmax(logits)
    c = np.clip(p, low, high)
    total = c.sum(axis=1, keepdims=True)
    losses = np.log(total[:, 0]) - np.log(c[rows, labels])
    d_c = np.broadcast_to(1 / total, p.shape).copy()
    d_c[rows, labels] -= 1 / c[rows, labels]
    d_p = d_c * ((p >= low) & (p <= high))
    d_logits = p * (d_p - (p * d_p).sum(axis=1, keepdims=True))
    return losses, d_logits / n


@pytest.mark.parametrize("batch_size", BATCH_SIZES, ids=[f"batch{n}" for n in BATCH_SIZES])
@pytest.mark.parametrize("sizes", ARCHITECTURES, ids=ARCHITECTURE_IDS)
def test_logits_loss_and_gradients_match_tf(book, dtype, sizes, batch_size):
    model = random_model(sizes, None, dtype, seed=batch_size)
    x, y = random_batch(batch_size, dtype, seed=batch_size)
    loss, gradients = fastnaive.loss_and_gradients(model, x, y)
    tf_loss, tf_gradients = book.loss_and_gradients(book.copy_of(model), x, y, from_logits=True)
    assert_scaled_close(loss, tf_loss, RTOL[dtype])
    assert_all_scaled_close(gradients, [g.numpy() for g in tf_gradients], RTOL[dtype])


@pytest.mark.parametrize("batch_size", BATCH_SIZES, ids=[f"batch{n}" for n in BATCH_SIZES])
@pytest.mark.parametrize("sizes", ARCHITECTURES, ids=ARCHITECTURE_IDS)
def test_probability_loss_and_gradients_match_the_books(book, dtype, sizes, batch_size):
    model = random_model(sizes, "softmax", dtype, seed=batch_size)
    x, y = random_batch(batch_size, dtype, seed=batch_size)
    probabilities = model(x)
    assert probabilities.min() > 10 * EPSILON and probabilities.max() < 1 - 10 * EPSILON
    loss, gradients = fastnaive.loss_and_gradients(model, x, y)
    tf_loss, tf_gradients = book.loss_and_gradients(book.copy_of(model), x, y)
    assert_scaled_close(loss, tf_loss, RTOL[dtype])
    assert_all_scaled_close(gradients, [g.numpy() for g in tf_gradients], RTOL[dtype])


def batch_with_saturated_rows(model, dtype):
    """32 samples: 16 ordinary ones, then 8 with p_y < 1e-9, then 8 with p_y > 1 - 1e-9.

    Scaling an image by 40 scales its logits about as much: its lowest class
    falls far below EPSILON, and its highest rises above 1 - EPSILON when the
    top two logits were apart to begin with.
    """
    x, y = random_batch(16 + 64, dtype, seed=5)
    x[16:] *= 40
    p = softmax(reference_forward(model, x)[1])
    certain = 16 + np.flatnonzero(p[16:].max(axis=1) > 1 - 1e-9)[:8]
    unlikely = np.setdiff1d(np.arange(16, len(x)), certain)[:8]
    y[unlikely], y[certain] = p[unlikely].argmin(axis=1), p[certain].argmax(axis=1)
    assert len(certain) == len(unlikely) == 8
    rows = np.concatenate([np.arange(16), unlikely, certain])
    p_y = p[rows, y[rows]]
    assert 10 * EPSILON < p_y[:16].min() and p_y[:16].max() < 1 - 10 * EPSILON
    assert p_y[16:24].max() < 1e-9 and p_y[24:].min() > 1 - 1e-9
    return x[rows], y[rows]


def test_saturated_probabilities_exact_in_fastnaive_clipped_in_tf(book, dtype):
    """Where Keras clips, fastnaive keeps the exact loss; the two differ by a known bound.

    Per sample, with c = clip(p, eps, 1 - eps), eps = 1e-7 and C classes,
    Keras' loss is -log c_y + log sum(c) and fastnaive's is -log p_y, so

        |keras - exact| <= max(0, -log p_y - (-log eps)) + (C + 1) * eps:

    a sample with p_y < eps counts as -log eps = 16.1 in Keras however wrong
    it is, and sum(c) lies in [1 - eps, 1 + (C - 1) * eps]. No gradient flows
    through a clipped probability in TensorFlow, so such a sample no longer
    pulls its label's logit up; fastnaive's gradient stays softmax(z) - onehot(y).
    """
    model = random_model((784, 64, 10), "softmax", dtype, seed=3)
    x, y = batch_with_saturated_rows(model, dtype)
    inputs, logits = reference_forward(model, x)
    exact = exact_losses(logits, y)
    keras_losses, keras_logit_gradients = keras_clipped_losses_and_logit_gradients(logits, y, dtype)

    loss, gradients = fastnaive.loss_and_gradients(model, x, y)
    assert_scaled_close(loss, exact.mean(), RTOL[dtype])
    assert_all_scaled_close(
        gradients, reference_backward(model, inputs, exact_logit_gradients(logits, y)), RTOL[dtype]
    )

    tf_model = book.copy_of(model)
    tf_losses = tf.keras.losses.sparse_categorical_crossentropy(y, tf_model(x)).numpy()
    assert_scaled_close(tf_losses, keras_losses, RTOL[dtype])
    tf_loss, tf_gradients = book.loss_and_gradients(tf_model, x, y)
    assert_scaled_close(tf_loss, keras_losses.mean(), RTOL[dtype])
    assert_all_scaled_close(
        [g.numpy() for g in tf_gradients],
        reference_backward(model, inputs, keras_logit_gradients),
        RTOL[dtype],
    )

    p_y = softmax(logits)[np.arange(len(y)), y]
    bound = np.maximum(0, np.log(EPSILON) - np.log(p_y)) + (N_CLASSES + 1) * EPSILON
    assert np.all(np.abs(tf_losses - exact) <= bound + RTOL[dtype] * np.abs(exact))


@pytest.mark.parametrize("last_activation", [None, "softmax"], ids=["logits", "probabilities"])
def test_logits_of_1e4_give_finite_exact_loss_and_gradients(dtype, last_activation):
    model = random_model((784, 64, 10), last_activation, dtype, seed=4)
    model.layers[-1].b[:2] = [1e4, -1e4]
    x, _ = random_batch(7, dtype, seed=4)
    y = np.array([0, 1, 2, 0, 1, 2, 9])
    loss, gradients = fastnaive.loss_and_gradients(model, x, y)
    assert np.isfinite(loss) and all(np.isfinite(g).all() for g in gradients)
    inputs, logits = reference_forward(model, x)
    assert_scaled_close(loss, exact_losses(logits, y).mean(), RTOL[dtype])
    assert_all_scaled_close(
        gradients, reference_backward(model, inputs, exact_logit_gradients(logits, y)), RTOL[dtype]
    )
    assert np.isfinite(model(x)).all()


def fit_one_epoch(model, images, labels):
    return fastnaive.fit(model, images, labels, epochs=1)


@pytest.mark.parametrize(
    "call",
    [fastnaive.loss_and_gradients, fastnaive.one_training_step, fit_one_epoch],
    ids=["loss_and_gradients", "one_training_step", "fit"],
)
@pytest.mark.parametrize("label", [-1, N_CLASSES], ids=["negative", "n_classes"])
def test_out_of_range_label_raises_value_error(call, label):
    model = random_model((784, 64, 10), "softmax", np.float32, seed=0)
    weights_before = [w.copy() for w in model.weights]
    x, y = random_batch(7, np.float32, seed=0)
    y[3] = label
    with pytest.raises(ValueError, match="labels"):
        call(model, x, y)
    assert all(np.array_equal(w, w0) for w, w0 in zip(model.weights, weights_before))


def book_step_from_fastnaive(model, images_batch, labels_batch):
    """The book's one_training_step, with fastnaive's loss_and_gradients and update_weights."""
    average_loss, gradients = fastnaive.loss_and_gradients(model, images_batch, labels_batch)
    fastnaive.update_weights(gradients, model.weights, learning_rate=1e-3)
    return average_loss


@pytest.mark.parametrize(
    "step",
    [fastnaive.one_training_step, book_step_from_fastnaive],
    ids=["one_training_step", "loss_and_gradients+update_weights"],
)
def test_sgd_steps_match_the_books(book, dtype, step):
    model = random_model((784, 512, 10), "softmax", dtype, seed=2)
    tf_model = book.copy_of(model)
    initial_weights = [w.copy() for w in model.weights]
    for seed in range(SGD_STEPS):
        x, y = random_batch(128, dtype, seed)
        assert_scaled_close(step(model, x, y), book.one_training_step(tf_model, x, y), RTOL[dtype])
    for w, tf_w, w0 in zip(model.weights, tf_model.weights, initial_weights):
        rounding = SGD_STEPS * np.finfo(dtype).eps * np.abs(w0).max()
        assert_scaled_close(w - w0, tf_w.numpy() - w0, RTOL[dtype], atol=rounding)
