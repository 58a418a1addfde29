"""Activations, losses, the L2 penalty and dropout: kernels against NumPy, whole models against
TensorFlow's GradientTape, float64 finite differences, saving and training.

The TensorFlow oracle writes each activation with TensorFlow's elementwise ops (tf.math.erf,
tf.tanh, ...), which are exact in float64; tf.nn.gelu and tf.nn.leaky_relu are not (they use
float32 constants; see test_keras_interop.py), so they would blur a 1e-9 comparison.

Tolerances, as max|a - b| <= rtol * max|b|: float64 1e-9 (measured worst 2.8e-15),
float32 2e-5 (TensorFlow's float32 ops against the kernels, summed in other orders; measured
worst 1.05e-6).
"""

import math

import numpy as np
import pytest
from helpers import EXPECTED_RECEIVED, assert_scaled_close, loss_kernel

import fastnaive
from fastnaive import _activations, _losses

RTOL = {"float32": 2e-5, "float64": 1e-9}
ACTIVATIONS = ["relu", "tanh", "sigmoid", "gelu", "gelu_tanh", "leaky_relu", "elu", None]
SQRT_2_OVER_PI = math.sqrt(2 / math.pi)


def numpy_activation(name, z):
    """act(z) in float64 NumPy, the exact formulas."""
    z = np.asarray(z, np.float64)
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return {
        "relu": lambda: np.maximum(z, 0),
        "tanh": lambda: np.tanh(z),
        "sigmoid": lambda: 1 / (1 + np.exp(-z)),
        "gelu": lambda: 0.5 * z * (1 + erf(z / math.sqrt(2))),
        "gelu_tanh": lambda: 0.5 * z * (1 + np.tanh(SQRT_2_OVER_PI * (z + 0.044715 * z**3))),
        "leaky_relu": lambda: np.where(z < 0, 0.2 * z, z),
        "elu": lambda: np.where(z < 0, np.expm1(np.minimum(z, 0)), z),
        None: lambda: z,
    }[name]()


def tf_activation(name, z):
    import tensorflow as tf

    return {
        "relu": lambda: tf.nn.relu(z),
        "tanh": lambda: tf.tanh(z),
        "sigmoid": lambda: tf.sigmoid(z),
        "gelu": lambda: 0.5 * z * (1 + tf.math.erf(z / math.sqrt(2))),
        "gelu_tanh": lambda: 0.5 * z * (1 + tf.tanh(SQRT_2_OVER_PI * (z + 0.044715 * z**3))),
        "leaky_relu": lambda: tf.where(z < 0, 0.2 * z, z),
        "elu": lambda: tf.where(z < 0, tf.math.expm1(tf.minimum(z, 0)), z),
        None: lambda: z,
    }[name]()


# Kernels


@pytest.mark.parametrize("name", ACTIVATIONS[:-1])
def test_activation_kernels_match_the_formulas_and_their_derivatives(name, dtype, rng):
    z = rng.normal(0, 2, (7, 33)).astype(dtype)
    z[0, :3] = [0, 30, -30]  # the kink and saturation
    code = fastnaive.activations.CODES[name]
    a = np.empty_like(z)
    _activations.activate_checked(code, z, a)
    assert_scaled_close(a, numpy_activation(name, z), RTOL[dtype] / 10)
    # The derivative against float64 central differences of the formula.
    delta = rng.normal(0, 1, z.shape).astype(dtype)
    grad = delta.copy()
    _activations.activation_backward_checked(code, a, z, grad)
    h = 1e-6
    z64 = z.astype(np.float64)
    slope = (numpy_activation(name, z64 + h) - numpy_activation(name, z64 - h)) / (2 * h)
    smooth = np.abs(z64) > 1e-3  # away from relu's and leaky_relu's kink
    assert_scaled_close(grad[smooth], (delta * slope)[smooth], 1e-5 if dtype == "float64" else 1e-4)


def test_activation_in_place_equals_out_of_place(rng):
    z = rng.normal(0, 1, (5, 8))
    for name in ACTIVATIONS[:-1]:
        out, inplace = np.empty_like(z), z.copy()
        code = fastnaive.activations.CODES[name]
        _activations.activate_checked(code, z, out)
        _activations.activate_checked(code, inplace, inplace)
        np.testing.assert_array_equal(out, inplace)


def test_dropout_mask_is_bernoulli_scaled_and_reproducible():
    ones = np.ones((512, 256))
    out = np.empty_like(ones)
    _activations.dropout_checked(ones, out, 0.3, 12345, 7, 0)
    kept = out != 0
    assert abs(kept.mean() - 0.7) < 0.01  # 131072 draws: 0.01 is > 7 standard deviations
    np.testing.assert_allclose(out[kept], 1 / 0.7)
    again = np.empty_like(ones)
    _activations.dropout_checked(ones, again, 0.3, 12345, 7, 0)
    np.testing.assert_array_equal(out, again)
    # Rows are keyed by their row in the global batch: a batch's second half, drawn from
    # row 256 on, is the second half of the whole batch's mask.
    half = np.empty((256, 256))
    _activations.dropout_checked(ones[256:], half, 0.3, 12345, 7, 256)
    np.testing.assert_array_equal(half, out[256:])
    for other in [(12346, 7), (12345, 8)]:
        _activations.dropout_checked(ones, again, 0.3, *other, 0)
        assert (again != out).mean() > 0.3


def numpy_loss(name, outputs, targets, weights):
    """Per-sample losses of float64 outputs (logits for the cross-entropies), Keras' way."""
    z = outputs.astype(np.float64)
    if name == "sparse_categorical_crossentropy":
        lse = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)
        per_sample = lse - z[np.arange(len(z)), targets]
    elif name == "categorical_crossentropy":
        log_p = z - (np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1))[:, None]
        per_sample = -(targets * log_p).sum(1)
    elif name == "binary_crossentropy":
        per_sample = (np.maximum(z, 0) - z * targets + np.log1p(np.exp(-np.abs(z)))).mean(1)
    else:
        per_sample = ((z - targets) ** 2).mean(1)
    return per_sample * (1 if weights is None else weights)


LOSS_CODES = {
    "sparse_categorical_crossentropy": _losses.SPARSE_CATEGORICAL,
    "categorical_crossentropy": _losses.CATEGORICAL,
    "binary_crossentropy": _losses.BINARY,
    "mean_squared_error": _losses.MEAN_SQUARED,
}
LOSS_KERNELS = {name: loss_kernel(code) for name, code in LOSS_CODES.items()}


def random_targets(name, n, k, dtype, rng):
    if name == "sparse_categorical_crossentropy":
        return rng.integers(0, k, n).astype(np.intp)
    if name == "categorical_crossentropy":
        t = rng.random((n, k))
        return (t / t.sum(1, keepdims=True)).astype(dtype)  # soft labels
    if name == "binary_crossentropy":
        return (rng.random((n, k)) < 0.5).astype(dtype)
    return rng.normal(0, 1, (n, k)).astype(dtype)


@pytest.mark.parametrize("name", LOSS_KERNELS)
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_loss_kernels_match_numpy_with_their_gradients(name, weighted, dtype, rng):
    n, k = 9, 4
    z = rng.normal(0, 3, (n, k)).astype(dtype)
    t = random_targets(name, n, k, dtype, rng)
    w = rng.random(n).astype(dtype) if weighted else None
    grad = np.full_like(z, np.nan)
    loss = LOSS_KERNELS[name](z, t, grad, w, 1 / 32)
    assert loss == pytest.approx(numpy_loss(name, z, t, w).sum() / 32, rel=1e-12)
    # The gradient against float64 central differences of the NumPy loss.
    h, z64, numeric = 1e-6, z.astype(np.float64), np.empty((n, k))
    for i in range(n):
        for j in range(k):
            up, down = z64.copy(), z64.copy()
            up[i, j] += h
            down[i, j] -= h
            numeric[i, j] = (numpy_loss(name, up, t, w) - numpy_loss(name, down, t, w)).sum()
    assert_scaled_close(grad, numeric / (2 * h) / 32, 1e-6 if dtype == "float64" else 1e-5)


def numpy_hits(name, z, targets):
    """Accuracy's hits: the first argmax against the label or the target's argmax; binary:
    one per output whose logit is > 0 exactly where its target is > 0.5; none for MSE."""
    if name == "sparse_categorical_crossentropy":
        return int((z.argmax(1) == targets).sum())
    if name == "categorical_crossentropy":
        return int((z.argmax(1) == targets.argmax(1)).sum())
    if name == "binary_crossentropy":
        return int(((z > 0) == (targets > 0.5)).sum())
    return 0


@pytest.mark.parametrize("name", LOSS_CODES)
@pytest.mark.parametrize("n", [1, 17, 128, 1029, 5000])
def test_loss_and_hits_are_the_same_on_any_number_of_threads(name, n, dtype, rng):
    """One pass gives the loss, its gradient and accuracy's hits, over blocks of rows that
    the threads share: the same bits on 1, 2 and 3 threads, with NumPy's loss and hits;
    ties in the logits (rounded to halves) count the first maximum. 1029 and 5000 rows take
    blocks of more than the least rows (at most 64 blocks), the last one shorter."""
    k = 10
    z = (np.round(rng.normal(0, 2, (n, k)) * 2) / 2).astype(dtype)
    t = random_targets(name, n, k, dtype, rng)
    w = rng.random(n).astype(dtype)
    code, results = LOSS_CODES[name], []
    for n_threads in (1, 2, 3):
        grad = np.full_like(z, np.nan)
        loss, hits = _losses.loss_and_hits(code, z, t, grad, w, 1 / 32, n_threads)
        results.append((loss, hits, grad))
    for loss, hits, grad in results[1:]:
        assert (loss, hits) == results[0][:2]
        np.testing.assert_array_equal(grad, results[0][2])
    loss, hits, _ = results[0]
    rtol = 1e-12 if dtype == "float64" else 1e-6
    assert loss == pytest.approx(numpy_loss(name, z, t, w).sum() / 32, rel=rtol)
    assert hits == numpy_hits(name, z, t)
    grad = np.empty_like(z)
    assert _losses.loss_and_hits(code, z, t, grad, w, 1 / 32, 2, count=False) == (loss, 0)
    np.testing.assert_array_equal(grad, results[0][2])


def test_loss_and_hits_refuse_what_does_not_fit():
    z, grad = np.zeros((4, 3)), np.zeros((4, 3))
    cases = [
        ((7, z, np.zeros(4, np.intp), grad), "code"),
        ((_losses.SPARSE_CATEGORICAL, z, np.zeros(5, np.intp), grad), "targets"),
        ((_losses.CATEGORICAL, z, np.zeros((4, 2)), grad), "targets"),
        ((_losses.BINARY, z, np.zeros((4, 3)), np.zeros((4, 2))), "grad_out"),
        ((_losses.MEAN_SQUARED, z[:0], np.zeros((0, 3)), grad[:0]), "n, k >= 1"),
    ]
    for arguments, named in cases:
        with pytest.raises(ValueError, match=EXPECTED_RECEIVED) as error:
            _losses.loss_and_hits(*arguments)
        assert named in str(error.value)
    with pytest.raises(ValueError, match="sample_weight"):
        _losses.loss_and_hits(_losses.MEAN_SQUARED, z, z, grad, np.ones(3))


@pytest.mark.parametrize("name", ["sparse_categorical_crossentropy", "categorical_crossentropy"])
@pytest.mark.parametrize(
    "n, k",
    [(1, 2), (300, 10), (3, 2048), (2, 2049), (5, 683)],
    ids=["1x2", "blocks-of-rows", "one-row-a-block", "wider-than-a-block", "uneven-blocks"],
)
def test_softmax_cross_entropies_match_numpy_across_blocks_of_rows(name, n, k, dtype, rng):
    """The softmaxes exponentiate blocks of whole rows at once (2048 elements) and wider rows
    one by one: the loss and the gradient (softmax - targets, scaled) agree with NumPy's
    float64 ones on every row, with logits spread over 1500 (exp below the range: 0)."""
    z = rng.normal(0, 3, (n, k))
    z[:, 0] -= 1500  # a term whose exponential is below the range of doubles
    z = z.astype(dtype)
    t = random_targets(name, n, k, dtype, rng)
    grad = np.full_like(z, np.nan)
    loss = LOSS_KERNELS[name](z, t, grad, None, 1 / 7)
    rtol = 1e-12 if dtype == "float64" else 1e-6
    assert loss == pytest.approx(numpy_loss(name, z, t, None).sum() / 7, rel=rtol)
    z64 = z.astype(np.float64)
    softmax = np.exp(z64 - z64.max(1, keepdims=True))
    softmax /= softmax.sum(1, keepdims=True)
    onehot = np.eye(k)[t] if name == "sparse_categorical_crossentropy" else t
    expected = (softmax * onehot.sum(1, keepdims=True) - onehot) / 7
    assert_scaled_close(grad, expected, 1e-14 if dtype == "float64" else 1e-6)
    np.testing.assert_array_equal(grad[:, 0], (-onehot[:, 0].astype(float) * (1 / 7)).astype(dtype))


@pytest.mark.parametrize("name", ["sparse_categorical_crossentropy", "categorical_crossentropy"])
def test_softmax_cross_entropies_keep_a_nan_logit_in_its_row(name, dtype):
    """A NaN logit makes its row's loss and gradient NaN, and only its row's gradient."""
    z = np.zeros((4, 3), dtype)
    z[1, 2] = np.nan
    t = random_targets(name, 4, 3, dtype, np.random.default_rng(0))
    grad = np.empty_like(z)
    assert np.isnan(LOSS_KERNELS[name](z, t, grad, None, 1.0))
    assert np.isnan(grad[1]).all()
    assert np.isfinite(np.delete(grad, 1, axis=0)).all()


def test_cross_entropies_from_extreme_logits_are_finite():
    z = np.array([[1000.0, -1000.0], [-1000.0, 1000.0]])
    grad = np.empty_like(z)
    assert np.isfinite(LOSS_KERNELS["binary_crossentropy"](z, np.eye(2), grad))
    assert np.isfinite(grad).all()
    assert np.isfinite(LOSS_KERNELS["categorical_crossentropy"](z, np.eye(2), grad))
    assert np.isfinite(grad).all()


# Whole models against TensorFlow's GradientTape


def make_model(activation, loss, dtype, *, l2=0.0, dropout=None, n_out=3, head=None):
    head = head or {"binary_crossentropy": "sigmoid", "mean_squared_error": None, "mse": None}.get(
        loss, "softmax"
    )
    layers = [
        fastnaive.NaiveDense(
            6, 16, activation, dtype=dtype, seed=0, l2=l2, initializer="glorot_uniform"
        )
    ]
    if dropout is not None:
        layers.append(fastnaive.Dropout(dropout, seed=99))
    layers.append(
        fastnaive.NaiveDense(
            16, 8, activation, dtype=dtype, seed=1, l2=l2 / 2, initializer="glorot_uniform"
        )
    )
    layers.append(
        fastnaive.NaiveDense(8, n_out, head, dtype=dtype, seed=2, initializer="glorot_uniform")
    )
    model = fastnaive.NaiveSequential(layers, loss=loss)
    rng = np.random.default_rng(5)
    for b in model.weights[1::2]:
        b[...] = rng.normal(0, 0.3, b.shape)  # biases off zero: every kink side is visited
    return model


def tf_loss_and_gradients(model, x, y, w, masks):
    """The GradientTape of the same model: loss (Keras' reduction, plus L2) and gradients."""
    import keras
    import tensorflow as tf

    variables = [tf.Variable(v) for v in model.weights]
    with tf.GradientTape() as tape:
        a = tf.constant(x)
        dense = model.dense_layers
        for i, layer in enumerate(dense):
            z = tf.matmul(a, variables[2 * i]) + variables[2 * i + 1]
            # A head the loss absorbs (softmax, sigmoid) stays logits: from_logits=True.
            absorbed = i == len(dense) - 1 and layer.activation == model.loss.absorbs
            a = z if absorbed else tf_activation(layer.activation, z)
            if masks[i] is not None:
                a = a * masks[i]
        per_sample = {
            "sparse_categorical_crossentropy": lambda: keras.losses.sparse_categorical_crossentropy(
                y, a, from_logits=True
            ),
            "categorical_crossentropy": lambda: keras.losses.categorical_crossentropy(
                y, a, from_logits=True
            ),
            "binary_crossentropy": lambda: keras.losses.binary_crossentropy(y, a, from_logits=True),
            "mean_squared_error": lambda: keras.losses.mean_squared_error(y, a),
        }[model.loss.name]()
        if w is not None:
            per_sample = per_sample * w
        loss = tf.reduce_sum(per_sample) / len(x)
        for i, layer in enumerate(dense):
            loss += layer.l2 * tf.reduce_sum(variables[2 * i] ** 2)
    return float(loss), [g.numpy() for g in tape.gradient(loss, variables)]


def dropout_masks(model, n):
    """Each dense layer's mask (kept / (1 - rate), or 0) for a first training step."""
    masks = []
    for dropout, layer in zip(model.dropouts, model.dense_layers):
        if dropout is None:
            masks.append(None)
            continue
        mask = np.empty((n, layer.output_size), model.dtype)
        ones = np.ones_like(mask)
        _activations.dropout_checked(ones, mask, dropout.rate, dropout.seed, 0, 0)
        masks.append(mask)
    return masks


def check_against_tensorflow(model, y, weighted=False, n=11):
    rng = np.random.default_rng(6)
    x = rng.normal(0, 1, (n, 6)).astype(model.dtype)
    w = rng.random(n).astype(model.dtype) if weighted else None
    expected_loss, expected = tf_loss_and_gradients(model, x, y, w, dropout_masks(model, n))
    loss, gradients = fastnaive.loss_and_gradients(model, x, y, sample_weight=w)
    rtol = RTOL[model.dtype.name]
    assert loss == pytest.approx(expected_loss, rel=rtol)
    for got, want in zip(gradients, expected, strict=True):
        assert_scaled_close(got, want, rtol)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_each_activation_matches_tensorflow(activation, dtype):
    model = make_model(activation, "sparse_categorical_crossentropy", dtype)
    check_against_tensorflow(model, np.arange(11) % 3)


def targets_for(loss, dtype, n=11, k=3):
    return random_targets(loss, n, k, dtype, np.random.default_rng(7))


@pytest.mark.parametrize("loss", list(LOSS_KERNELS))
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_each_loss_matches_tensorflow(loss, weighted, dtype):
    model = make_model("tanh", loss, dtype)
    check_against_tensorflow(model, targets_for(loss, dtype), weighted)


def test_mean_squared_error_through_a_sigmoid_head_matches_tensorflow(dtype):
    model = make_model("elu", "mse", dtype, head="sigmoid")
    check_against_tensorflow(model, np.random.default_rng(1).random((11, 3)).astype(dtype))


def test_l2_penalty_matches_tensorflow(dtype):
    model = make_model("relu", "sparse_categorical_crossentropy", dtype, l2=0.05)
    check_against_tensorflow(model, np.arange(11) % 3)


def test_dropout_in_training_matches_tensorflow_with_the_same_mask(dtype):
    model = make_model("gelu", "sparse_categorical_crossentropy", dtype, dropout=0.4)
    check_against_tensorflow(model, np.arange(11) % 3)


def test_dropout_is_off_in_predict_and_evaluate(dtype):
    with_dropout = make_model("relu", "sparse_categorical_crossentropy", dtype, dropout=0.5)
    without = make_model("relu", "sparse_categorical_crossentropy", dtype)
    x = np.random.default_rng(2).normal(0, 1, (20, 6)).astype(dtype)
    y = np.arange(20) % 3
    np.testing.assert_array_equal(with_dropout.predict(x), without.predict(x))
    assert fastnaive.evaluate_loss(with_dropout, x, y) == fastnaive.evaluate_loss(without, x, y)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("loss", list(LOSS_KERNELS))
def test_float64_finite_differences(activation, loss):
    """Every (activation, loss) pair, with L2 and sample weights, against central
    differences of the loss over a few weights of each array."""
    model = make_model(activation, loss, "float64", l2=0.01)
    rng = np.random.default_rng(8)
    x = rng.normal(0, 1, (7, 6))
    y = targets_for(loss, "float64", n=7)
    w = rng.random(7)
    _, gradients = fastnaive.loss_and_gradients(model, x, y, sample_weight=w)
    h = 1e-6
    for weight, gradient in zip(model.weights, gradients, strict=True):
        for index in list(np.ndindex(weight.shape))[:: max(1, weight.size // 5)]:
            original = weight[index]
            weight[index] = original + h
            up = fastnaive.evaluate_loss(model, x, y, sample_weight=w)[0]
            weight[index] = original - h
            down = fastnaive.evaluate_loss(model, x, y, sample_weight=w)[0]
            weight[index] = original
            slope = (up - down) / (2 * h)
            # relu's kink: a unit exactly at 0 has no derivative; biases keep them away.
            assert gradient[index] == pytest.approx(slope, rel=1e-5, abs=1e-8)


# Models of every kind: saving, training, and what is refused


KINDS = {
    "tanh-sparse": ("tanh", "sparse_categorical_crossentropy", 0.0, None),
    "gelu-dropout-categorical": ("gelu", "categorical_crossentropy", 0.0, 0.3),
    "elu-l2-binary": ("elu", "binary_crossentropy", 0.01, None),
    "leaky-mse-dropout-l2": ("leaky_relu", "mse", 0.001, 0.2),
}


@pytest.mark.parametrize("kind", KINDS.values(), ids=KINDS.keys())
def test_models_of_every_kind_round_trip(tmp_path, kind, dtype):
    activation, loss, l2, dropout = kind
    model = make_model(activation, loss, dtype, l2=l2, dropout=dropout)
    model.save(tmp_path / "m.npz")
    loaded = fastnaive.load_model(tmp_path / "m.npz")
    assert repr(loaded) == repr(model) and loaded.architecture() == model.architecture()
    x = np.random.default_rng(0).normal(0, 1, (9, 6)).astype(dtype)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


@pytest.mark.parametrize("kind", KINDS.values(), ids=KINDS.keys())
def test_training_lowers_the_loss(kind):
    activation, loss, l2, dropout = kind
    model = make_model(activation, loss, "float32", l2=l2, dropout=dropout)
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, (256, 6)).astype(np.float32)
    scores = x @ rng.normal(0, 1, (6, 3))
    y = {
        "sparse_categorical_crossentropy": scores.argmax(1),
        "categorical_crossentropy": np.eye(3)[scores.argmax(1)],
        "binary_crossentropy": (scores > 0).astype(np.float32),
        "mse": np.tanh(scores),
    }[loss]
    history = fastnaive.fit(
        model, x, y, 20, 32, optimizer=fastnaive.Adam(0.01), verbose=0, shuffle=True, seed=0
    )
    losses = history.history["loss"]
    assert losses[-1] < 0.6 * losses[0]
    assert ("accuracy" in history.history) == (loss != "mse")


BAD_MODELS = {
    "softmax-head-mse": lambda: fastnaive.NaiveSequential(
        [fastnaive.NaiveDense(3, 2, "softmax")], loss="mse"
    ),
    "softmax-head-binary": lambda: fastnaive.NaiveSequential(
        [fastnaive.NaiveDense(3, 2, "softmax")], loss="binary_crossentropy"
    ),
    "sigmoid-head-categorical": lambda: fastnaive.NaiveSequential(
        [fastnaive.NaiveDense(3, 2, "sigmoid")], loss="categorical_crossentropy"
    ),
    "unknown-loss": lambda: fastnaive.NaiveSequential(
        [fastnaive.NaiveDense(3, 2, None)], loss="hinge"
    ),
    "dropout-first": lambda: fastnaive.NaiveSequential(
        [fastnaive.Dropout(0.5), fastnaive.NaiveDense(3, 2, None)]
    ),
    "dropout-last": lambda: fastnaive.NaiveSequential(
        [fastnaive.NaiveDense(3, 2, None), fastnaive.Dropout(0.5)]
    ),
    "dropout-rate-1": lambda: fastnaive.Dropout(1.0),
    "l2-negative": lambda: fastnaive.NaiveDense(3, 2, None, l2=-0.1),
}


@pytest.mark.parametrize("make", BAD_MODELS.values(), ids=BAD_MODELS.keys())
def test_bad_models_are_refused(make):
    with pytest.raises(ValueError, match=EXPECTED_RECEIVED):
        make()


BAD_TARGETS = {
    "categorical-class-indices": ("categorical_crossentropy", np.arange(4) % 3),
    "binary-out-of-range": ("binary_crossentropy", np.full((4, 3), 2.0)),
    "mse-wrong-width": ("mse", np.zeros((4, 2))),
    "sparse-one-hot": ("sparse_categorical_crossentropy", np.eye(3)[[0, 1, 2, 0]]),
}


@pytest.mark.parametrize("loss, targets", BAD_TARGETS.values(), ids=BAD_TARGETS.keys())
def test_bad_targets_are_refused(loss, targets):
    model = make_model("relu", loss, "float32")
    with pytest.raises((ValueError, TypeError), match=EXPECTED_RECEIVED):
        fastnaive.fit(model, np.zeros((4, 6)), targets, 1, verbose=0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_loss_gradients_flush_subnormal_elements_to_zero_and_keep_the_rest(dtype):
    """A saturated softmax (or sigmoid) gives probabilities below the smallest normal number:
    their gradient elements are stored as 0, every normal element as before, NaN as NaN."""
    tiny = np.finfo(dtype).tiny
    n, k = 64, 10
    rng = np.random.default_rng(0)
    spread = 2 * -np.log(tiny)  # logits far enough apart for exp to reach subnormals
    logits = (rng.uniform(0, spread, (n, k))).astype(dtype)
    logits[0, 0] = np.nan
    labels = rng.integers(0, k, n)
    onehot = np.eye(k, dtype=dtype)[labels]
    # The gradient in float64 (longdouble for float64 inputs) from NumPy, flushed by hand.
    wide = np.longdouble if dtype == "float64" else np.float64
    z = logits.astype(wide)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    cases = {
        "sparse softmax": (
            LOSS_KERNELS["sparse_categorical_crossentropy"],
            labels,
            (p - onehot) / n,
        ),
        "softmax": (LOSS_KERNELS["categorical_crossentropy"], onehot, (p - onehot) / n),
        "sigmoid": (
            LOSS_KERNELS["binary_crossentropy"],
            onehot,
            (1 / (1 + np.exp(-z)) - onehot) / (n * k),
        ),
    }
    for name, (loss, targets, expected) in cases.items():
        grad = np.empty((n, k), dtype)
        loss(logits, targets, grad)
        subnormal = np.abs(expected) < tiny
        assert subnormal[1:].any(), name  # the case is there
        assert not np.any((grad != 0) & (np.abs(grad) < tiny)), name
        assert np.all(grad[subnormal & ~np.isnan(expected)] == 0), name
        normal = ~subnormal & ~np.isnan(expected)
        # p - 1 for the label cancels: absolute rounding at the scale of 1 / n.
        atol = 4 * np.finfo(dtype).eps / n
        np.testing.assert_allclose(
            grad[normal], expected[normal].astype(dtype), rtol=1e-5, atol=atol, err_msg=name
        )
        assert np.isnan(grad[0, 0]), name
