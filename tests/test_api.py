"""Tests for fastnaive's public API: layers, models, batches, training and their checks."""

import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from helpers import (
    EXPECTED_RECEIVED,
    N_CLASSES,
    N_FEATURES,
    N_HIDDEN,
    assert_close,
    assert_same_weights,
    make_data,
    make_model,
    read_only,
)

import fastnaive
from fastnaive import (
    SGD,
    BatchGenerator,
    NaiveDense,
    NaiveSequential,
    evaluate,
    fit,
    loss_and_gradients,
    one_training_step,
    reference,
    update_weights,
)

# NaiveDense

INIT_CASES = [
    # Seed 176 draws, in float64, a value that float32 would round up to float32(0.1) > 0.1.
    ("float32", 0),
    ("float64", 0),
    ("float64", 176),
    ("float32", 176),
]


@pytest.mark.parametrize("dtype, seed", INIT_CASES, ids=str)
def test_dense_init_is_the_books(dtype, seed):
    layer = NaiveDense(784, 512, "relu", dtype=dtype, seed=seed)
    assert layer.W.shape == (784, 512) and layer.W.dtype == dtype and layer.b.dtype == dtype
    assert 0 <= layer.W.min() and layer.W.max() < 0.1
    np.testing.assert_array_equal(layer.b, np.zeros(512))  # exact: b starts at zero


def test_dense_seed_makes_weights_reproducible():
    first, again, other = (NaiveDense(20, 10, "relu", seed=seed).W for seed in (1, 1, 2))
    np.testing.assert_array_equal(first, again)  # exact: the same draws
    assert not np.array_equal(first, other)


@pytest.mark.parametrize(
    "args, text",
    [
        ((784, 512, "relu", "float32"), "NaiveDense(784 -> 512, relu, float32)"),
        ((512, 10, "softmax", "float64"), "NaiveDense(512 -> 10, softmax, float64)"),
        ((3, 2, None, "float32"), "NaiveDense(3 -> 2, linear, float32)"),
    ],
    ids=["relu", "softmax", "linear"],
)
def test_dense_repr(args, text):
    input_size, output_size, activation, dtype = args
    assert repr(NaiveDense(input_size, output_size, activation, dtype=dtype)) == text


ACCEPTED_ACTIVATIONS = {
    "fastnaive.relu": (fastnaive.relu, "relu"),
    "fastnaive.softmax": (fastnaive.softmax, "softmax"),
    "'relu'": ("relu", "relu"),
    "'softmax'": ("softmax", "softmax"),
    "'linear'": ("linear", None),
    "None": (None, None),
    "tf.nn.relu": (tf.nn.relu, "relu"),
    "tf.nn.softmax": (tf.nn.softmax, "softmax"),
    "tf.keras.activations.relu": (tf.keras.activations.relu, "relu"),
    "tf.keras.activations.softmax": (tf.keras.activations.softmax, "softmax"),
    "'TANH'": ("TANH", "tanh"),
    "tf.nn.tanh": (tf.nn.tanh, "tanh"),
    "tf.nn.sigmoid": (tf.nn.sigmoid, "sigmoid"),
    "tf.nn.gelu": (tf.nn.gelu, "gelu"),
    "tf.nn.leaky_relu": (tf.nn.leaky_relu, "leaky_relu"),
    "tf.nn.elu": (tf.nn.elu, "elu"),
    "keras.activations.gelu": (tf.keras.activations.gelu, "gelu"),
    "keras.activations.leaky_relu": (tf.keras.activations.leaky_relu, "leaky_relu"),
    "'gelu_tanh'": ("gelu_tanh", "gelu_tanh"),
    "fastnaive.activations.elu": (fastnaive.activations.elu, "elu"),
}
REJECTED_ACTIVATIONS = {
    "lambda": lambda x: x,
    "'swish'": "swish",
    "tf.nn.silu": tf.nn.silu,
    "tf.nn.relu6": tf.nn.relu6,
}


@pytest.mark.parametrize(
    "activation, name", ACCEPTED_ACTIVATIONS.values(), ids=ACCEPTED_ACTIVATIONS.keys()
)
def test_activation_is_resolved(activation, name):
    assert NaiveDense(3, 2, activation).activation == name


@pytest.mark.parametrize(
    "activation", REJECTED_ACTIVATIONS.values(), ids=REJECTED_ACTIVATIONS.keys()
)
def test_unknown_activation_raises(activation):
    with pytest.raises(ValueError, match=EXPECTED_RECEIVED + "activation="):
        NaiveDense(3, 2, activation)


def test_import_does_not_import_tensorflow():
    code = (
        "import sys, fastnaive; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("index", [0, 1], ids=["relu", "softmax"])
def test_dense_call_matches_reference(dtype, index):
    model, (x, _) = make_model(dtype), make_data(7, dtype)
    a = [x, *reference.forward(model, x)]  # a[i] is layer i's input; the logits last
    layer = model.layers[index]
    expected = reference.softmax(a[index + 1]) if layer.activation == "softmax" else a[index + 1]
    assert_close(layer(a[index]), expected, dtype)


# Live weights


def test_writing_into_weights_changes_outputs(dtype):
    model, (x, _) = make_model(dtype), make_data(5, dtype)
    last = model.layers[-1]
    counts = np.arange(1.0, N_CLASSES + 1)
    last.W[...] = 0
    last.b[...] = np.log(counts)
    expected = counts / counts.sum()
    assert_close(model(x), np.tile(expected, (5, 1)), dtype)


def test_assigning_a_new_weight_is_live():
    model, (x, _) = make_model(), make_data(5)
    W, b = np.zeros((N_HIDDEN, N_CLASSES), np.float32), np.zeros(N_CLASSES, np.float32)
    model.layers[-1].W, model.layers[-1].b = W, b
    assert model.weights[2] is W and model.weights[3] is b
    assert_close(model(x), np.full((5, N_CLASSES), 1 / N_CLASSES), "float32")


BAD_WEIGHTS = {
    "W-list": ("W", lambda w: w.tolist(), TypeError, "Received: list"),
    "W-wrong-shape": ("W", lambda w: w.T.copy(), ValueError, f"W.shape={(N_HIDDEN, N_FEATURES)}"),
    "W-float64": ("W", lambda w: w.astype(np.float64), TypeError, "W.dtype=float64"),
    "W-fortran-order": ("W", np.asfortranarray, ValueError, "c_contiguous=False"),
    "W-read-only": ("W", lambda w: read_only(w.copy()), ValueError, "writeable=False"),
    "b-wrong-shape": ("b", lambda b: b[:-1].copy(), ValueError, f"b.shape={(N_HIDDEN - 1,)}"),
}


@pytest.mark.parametrize(
    "name, make_bad, error, received", BAD_WEIGHTS.values(), ids=BAD_WEIGHTS.keys()
)
def test_assigning_a_bad_weight_raises(name, make_bad, error, received):
    layer = NaiveDense(N_FEATURES, N_HIDDEN, "relu")
    before = getattr(layer, name)
    with pytest.raises(error, match=rf"^Expected {name} .+{re.escape(received)}"):
        setattr(layer, name, make_bad(before))
    assert getattr(layer, name) is before


# NaiveSequential

BAD_STACKS = {
    "size-mismatch": ([NaiveDense(4, 3, "relu"), NaiveDense(2, 5, None)], ValueError),
    "dtype-mismatch": (
        [NaiveDense(4, 3, "relu"), NaiveDense(3, 5, None, dtype="float64")],
        TypeError,
    ),
    "softmax-not-last": ([NaiveDense(4, 3, "softmax"), NaiveDense(3, 5, None)], ValueError),
    "no-layers": ([], ValueError),
    "not-a-layer": ([NaiveDense(4, 3, "relu"), "dense"], TypeError),
}


@pytest.mark.parametrize("layers, error", BAD_STACKS.values(), ids=BAD_STACKS.keys())
def test_bad_layer_stack_raises(layers, error):
    with pytest.raises(error, match=EXPECTED_RECEIVED):
        NaiveSequential(layers)


def test_weights_are_the_live_arrays_in_order():
    model = make_model()
    first, second = model.layers
    assert list(map(id, model.weights)) == list(map(id, [first.W, first.b, second.W, second.b]))


@pytest.mark.parametrize("last", ["softmax", None], ids=["softmax", "linear"])
@pytest.mark.parametrize("n_samples", [1, 7, 2100], ids=["n1", "n7", "n2100-two-chunks"])
def test_model_call_matches_reference(dtype, last, n_samples):
    model, (x, _) = make_model(dtype, last), make_data(n_samples, dtype)
    logits = reference.forward(model, x)[-1]
    assert_close(model(x), reference.softmax(logits) if last else logits, dtype)


INPUT_FORMS = {
    "uint8": lambda x: x.astype(np.uint8),
    "float16": lambda x: x.astype(np.float16),
    "float64": lambda x: x.astype(np.float64),
    "n-28-28": lambda x: x.reshape(len(x), 28, 28),
    "fortran-order": np.asfortranarray,
    "column-slice": lambda x: np.repeat(x, 2, axis=1)[:, ::2],
    "row-slice": lambda x: np.repeat(x, 2, axis=0)[::2],
    "read-only": lambda x: read_only(x.copy()),
}


@pytest.mark.parametrize("form", INPUT_FORMS.values(), ids=INPUT_FORMS.keys())
def test_model_accepts_any_real_input_form(dtype, form):
    model = make_model(dtype)
    x = (
        np.random.default_rng(2).integers(0, 4, (7, N_FEATURES)).astype(dtype)
    )  # exact in every form
    assert_close(model(form(x)), model(x), dtype)


# BatchGenerator


@pytest.mark.parametrize(
    "n_samples, batch_size, num_batches",
    [(10, 4, 3), (8, 4, 2), (1, 128, 1), (60000, 128, 469)],
    ids=["short-last", "exact", "one-sample", "mnist"],
)
def test_num_batches(n_samples, batch_size, num_batches):
    batches = BatchGenerator(np.zeros((n_samples, 1)), np.zeros(n_samples), batch_size)
    assert batches.num_batches == len(batches) == num_batches


def ten_samples():
    return np.arange(20).reshape(10, 2), np.arange(10)


def test_next_goes_in_order_and_wraps_around():
    images, labels = ten_samples()
    batches = BatchGenerator(images, labels, batch_size=4)
    got = [batches.next() for _ in range(5)]
    assert [y.tolist() for _, y in got] == [
        [0, 1, 2, 3],
        [4, 5, 6, 7],
        [8, 9],
        [0, 1, 2, 3],
        [4, 5, 6, 7],
    ]
    for x, y in got:
        np.testing.assert_array_equal(x, images[y])  # exact: slices of integers


def test_iteration_is_one_pass_from_the_start():
    images, labels = ten_samples()
    batches = BatchGenerator(images, labels, batch_size=4)
    batches.next()
    assert [y.tolist() for _, y in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_batch_generator_length_mismatch_raises():
    with pytest.raises(ValueError, match=EXPECTED_RECEIVED + "len"):
        BatchGenerator(np.zeros((10, 2)), np.zeros(9))


# Training


@pytest.mark.parametrize("last", ["softmax", None, "relu"], ids=["softmax", "linear", "relu"])
def test_loss_and_gradients_match_reference(dtype, last):
    model, (x, y) = make_model(dtype, last), make_data(dtype=dtype)
    loss, gradients = loss_and_gradients(model, x, y)
    expected_loss, expected_gradients = reference.loss_and_gradients(model, x, y)
    assert_close(loss, expected_loss, dtype)
    for gradient, expected in zip(gradients, expected_gradients, strict=True):
        assert_close(gradient, expected, dtype)


@pytest.mark.parametrize("learning_rate", [None, 0.1], ids=["default-sgd", "sgd-0.1"])
def test_one_training_step_matches_reference(dtype, learning_rate):
    model, expected, (x, y) = make_model(dtype), make_model(dtype), make_data(dtype=dtype)
    optimizer = None if learning_rate is None else SGD(learning_rate)
    loss = one_training_step(model, x, y, optimizer=optimizer)
    assert_close(
        loss, reference.sgd_step(expected, x, y, learning_rate or 1e-3), dtype
    )  # the book's 1e-3
    assert_same_weights(model, expected)


UPDATES = {
    "update_weights": lambda gradients, weights: update_weights(
        gradients, weights, learning_rate=0.5
    ),
    "SGD.apply_gradients": lambda gradients, weights: SGD(0.5).apply_gradients(
        zip(gradients, weights)
    ),
}


@pytest.mark.parametrize("update", UPDATES.values(), ids=UPDATES.keys())
def test_update_is_in_place(dtype, update):
    model = make_model(dtype)
    before = [w.copy() for w in model.weights]
    update([np.full_like(w, 2.0) for w in model.weights], model.weights)
    for weight, old in zip(model.weights, before, strict=True):
        assert_close(weight, old - 1.0, dtype)


def test_fit_matches_the_books_loop_of_training_steps(dtype):
    """fit fuses SGD into the weight-gradient GEMM; the book's loop applies it after."""
    model, expected, (x, y) = make_model(dtype), make_model(dtype), make_data(dtype=dtype)
    losses = fit(model, x, y, epochs=2, batch_size=16, optimizer=SGD(0.1)).history["loss"]
    expected_losses = []
    for _ in range(2):
        batches = BatchGenerator(x, y, batch_size=16)
        step_losses = [
            one_training_step(expected, *batches.next(), optimizer=SGD(0.1))
            for _ in range(batches.num_batches)
        ]
        expected_losses.append(np.average(step_losses, weights=[16, 16, 16, 2]))  # 50 samples
    assert_close(losses, expected_losses, dtype)
    assert_same_weights(model, expected)


def test_fit_prints_the_books_lines(capsys):
    model, (x, y) = make_model(), make_data(250)
    fit(model, x, y, epochs=2, batch_size=2)
    lines = [re.sub(r"\d+\.\d\d$", "x.xx", line) for line in capsys.readouterr().out.splitlines()]
    assert lines == [
        "Epoch 0",
        "loss at batch 0: x.xx",
        "loss at batch 100: x.xx",
        "Epoch 1",
        "loss at batch 0: x.xx",
        "loss at batch 100: x.xx",
    ]


def test_fit_stops_at_nan_with_the_last_finite_weights(dtype):
    model, expected, (x, y) = make_model(dtype), make_model(dtype), make_data(dtype=dtype)
    x[20, 3] = np.nan  # in batch 1, rows 16 to 31
    with pytest.raises(FloatingPointError, match="epoch 0, batch 1"):
        fit(model, x, y, epochs=2, batch_size=16, optimizer=SGD(0.1))
    one_training_step(expected, x[:16], y[:16], optimizer=SGD(0.1))
    assert_same_weights(model, expected)


def test_evaluate_is_the_share_of_argmax_hits():
    model, (x, y) = make_model(), make_data(200)
    predictions = np.argmax(reference.forward(model, x)[-1], axis=1)
    y[:100] = predictions[:100]
    assert evaluate(model, x, y) == np.mean(predictions == y)  # exact: the same count over 200


# Validation


def with_first_label(value):
    def corrupt(x, y):
        y = y.copy()
        y[0] = value
        return x, y

    return corrupt


BAD_DATA = {
    "labels-float": lambda x, y: (x, y.astype(np.float64)),
    "labels-bool": lambda x, y: (x, y > 4),
    "labels-negative": with_first_label(-1),
    "labels-n_classes": with_first_label(N_CLASSES),
    "labels-wrong-length": lambda x, y: (x, y[:-1]),
    "images-empty": lambda x, y: (x[:0], y[:0]),
    "images-wrong-feature-size": lambda x, y: (x[:, :-1], y),
    "images-complex": lambda x, y: (x.astype(np.complex128), y),
    "images-bool": lambda x, y: (x > 0, y),
}
API_CALLS = {
    "fit": lambda model, x, y: fit(model, x, y, epochs=1),
    "loss_and_gradients": loss_and_gradients,
    "one_training_step": one_training_step,
    "evaluate": evaluate,
}
BAD_SETTINGS = {
    "epochs-negative": lambda model, x, y: fit(model, x, y, epochs=-1),
    "epochs-float": lambda model, x, y: fit(model, x, y, epochs=1.0),
    "batch_size-0": lambda model, x, y: fit(model, x, y, epochs=1, batch_size=0),
    "learning_rate-0": lambda model, x, y: fit(model, x, y, epochs=1, optimizer=SGD(0.0)),
    "learning_rate-negative": lambda model, x, y: SGD(-0.1),
    "learning_rate-nan": lambda model, x, y: update_weights([], [], learning_rate=float("nan")),
}


@pytest.mark.parametrize("corrupt", BAD_DATA.values(), ids=BAD_DATA.keys())
@pytest.mark.parametrize("call", API_CALLS.values(), ids=API_CALLS.keys())
def test_bad_data_raises(call, corrupt):
    with pytest.raises((ValueError, TypeError), match=EXPECTED_RECEIVED):
        call(make_model(), *corrupt(*make_data(10)))


@pytest.mark.parametrize("call", BAD_SETTINGS.values(), ids=BAD_SETTINGS.keys())
def test_bad_setting_raises(call):
    with pytest.raises((ValueError, TypeError), match=EXPECTED_RECEIVED):
        call(make_model(), *make_data(10))
