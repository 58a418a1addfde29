"""fastnaive.keras: NaiveSequential <-> keras.Sequential, checked through their predictions.

Tolerances: Keras' and fastnaive's outputs agree when max|a - b| <= RTOL * max|b|.

    dtype    RTOL    worst measured   why
    float64  1e-12   1.5e-15          a few eps64 from differently blocked GEMMs
    float32  1e-5    9.3e-7           784-term dot products summed in different orders

A conversion copies the weights, so a round trip must return them bit for bit.
"""

import subprocess
import sys

import keras
import numpy as np
import pytest
from helpers import assert_scaled_close, random_model

import fastnaive
from fastnaive.keras import from_keras, to_keras

RTOL = {"float32": 1e-5, "float64": 1e-12}
KERAS_ACTIVATIONS = {"relu": "relu", "softmax": "softmax", None: "linear"}


def predict(keras_model, x):
    """Return the Keras model's outputs for `x` as a NumPy array."""
    return keras.ops.convert_to_numpy(keras_model(x))


def random_inputs(shape, dtype, seed=0):
    """Return MNIST-like inputs in [0, 1) of the given shape."""
    return np.random.default_rng(seed).random(shape).astype(dtype)


@pytest.mark.parametrize("last_activation", ["softmax", None], ids=["softmax", "linear"])
def test_to_keras_computes_the_same_function(dtype, last_activation):
    model = random_model((784, 64, 32, 10), last_activation, dtype, seed=1)
    keras_model = to_keras(model)
    assert keras_model.input_shape == (None, 784)
    assert [layer.dtype_policy.name for layer in keras_model.layers] == [dtype] * 3
    activations = [layer.activation.__name__ for layer in keras_model.layers]
    assert activations == [KERAS_ACTIVATIONS[layer.activation] for layer in model.layers]
    x = random_inputs((300, 784), dtype)
    assert predict(keras_model, x).dtype == dtype
    assert_scaled_close(predict(keras_model, x), model(x), RTOL[dtype])


def test_round_trip_through_keras_keeps_weights_and_predictions(dtype):
    model = random_model((784, 64, 10), "softmax", dtype, seed=2)
    back = from_keras(to_keras(model))
    assert back.dtype == dtype
    assert [layer.activation for layer in back.layers] == ["relu", "softmax"]
    for returned, original in zip(back.weights, model.weights):
        np.testing.assert_array_equal(returned, original)
    x = random_inputs((200, 784), dtype)
    assert_scaled_close(back(x), model(x), RTOL[dtype])


def test_from_keras_computes_the_same_function(dtype):
    keras_model = keras.Sequential(
        [
            keras.Input((28, 28), dtype=dtype),
            keras.layers.Flatten(dtype=dtype),
            keras.layers.Dense(64, activation="relu", dtype=dtype),
            keras.layers.Dense(10, dtype=dtype),
        ]
    )
    rng = np.random.default_rng(3)
    keras_model.set_weights([rng.normal(0, 0.1, w.shape) for w in keras_model.get_weights()])
    model = from_keras(keras_model)
    assert isinstance(model, fastnaive.NaiveSequential) and model.dtype == dtype
    assert [layer.activation for layer in model.layers] == ["relu", None]
    x = random_inputs((200, 28, 28), dtype)
    assert_scaled_close(model(x), predict(keras_model, x), RTOL[dtype])


def dense(units=3, **kwargs):
    """Return a Keras Dense layer of `units` units, 3 unless told."""
    return keras.layers.Dense(units, **kwargs)


# Case: (a function making the layers after keras.Input((5,)), the expected message).
UNSUPPORTED = {
    "no-bias": (
        lambda: [dense(use_bias=False, name="bad")],
        "use_bias=True. Received: layer 'bad' with use_bias=False",
    ),
    "swish": (
        lambda: [dense(activation="swish", name="bad")],
        "activation of fastnaive.activations. Received: layer 'bad' with activation",
    ),
    "l1": (
        lambda: [dense(kernel_regularizer=keras.regularizers.L1(0.1), name="bad")],
        "an L2 kernel regularizer. Received: layer 'bad' with L1",
    ),
    "bias-regularizer": (
        lambda: [dense(bias_regularizer=keras.regularizers.L2(0.1), name="bad")],
        "no bias or activity regularizer. Received: layer 'bad'",
    ),
    "softmax-first": (
        lambda: [dense(activation="softmax", name="bad"), dense()],
        "softmax only on the last layer. Received: layer 'bad'",
    ),
    "dropout": (
        lambda: [keras.layers.Dropout(0.5, name="bad"), dense()],
        "each optionally followed by a Dropout .* Received: layer 'bad' with type Dropout",
    ),
    "mixed-precision": (
        lambda: [dense(dtype="mixed_float16", name="bad")],
        "float32 or float64. Received: layer 'bad' with dtype policy mixed_float16",
    ),
    "mixed-dtypes": (
        lambda: [dense(dtype="float64"), dense(name="bad")],
        "dtype policy float64, the first layer's. Received: layer 'bad'",
    ),
    "channels-first-flatten": (
        lambda: [keras.layers.Flatten(data_format="channels_first", name="bad"), dense()],
        "Received: layer 'bad' with data_format='channels_first'",
    ),
    "no-dense": (lambda: [keras.layers.Flatten()], "at least one Dense layer"),
}


@pytest.mark.parametrize("case", UNSUPPORTED)
def test_from_keras_rejects_what_fastnaive_cannot_represent(case):
    make_layers, pattern = UNSUPPORTED[case]
    with pytest.raises(ValueError, match=pattern):
        from_keras(keras.Sequential([keras.Input((5,)), *make_layers()]))


# TensorFlow computes these in float64 with float32 constants (leaky_relu's alpha is a float32
# attribute) or approximations: against float64 NumPy of the exact formulas (which fastnaive
# matches to 4e-16) it errs by up to 2.3e-8 (leaky_relu), 5e-9 (gelu), 9e-10 (gelu_tanh).
TF_INEXACT_FLOAT64 = {"leaky_relu": 1e-7, "gelu": 2e-8, "gelu_tanh": 1e-8}


@pytest.mark.parametrize(
    "activation", ["tanh", "sigmoid", "gelu", "gelu_tanh", "leaky_relu", "elu"]
)
def test_new_layers_round_trip_and_compute_the_same_function(dtype, activation):
    """Every activation, an L2 penalty and a Dropout go to Keras and come back unchanged; the
    Keras model computes the same outputs (dropout is off outside training in both)."""
    model = fastnaive.NaiveSequential(
        [
            fastnaive.NaiveDense(
                12, 8, activation, dtype=dtype, seed=0, l2=0.01, initializer="glorot_uniform"
            ),
            fastnaive.Dropout(0.25, seed=7),
            fastnaive.NaiveDense(
                8, 3, "softmax", dtype=dtype, seed=1, initializer="glorot_uniform"
            ),
        ]
    )
    keras_model = to_keras(model)
    assert [type(layer).__name__ for layer in keras_model.layers] == ["Dense", "Dropout", "Dense"]
    assert float(keras_model.layers[0].kernel_regularizer.l2) == pytest.approx(0.01)
    x = random_inputs((50, 12), dtype)
    rtol = TF_INEXACT_FLOAT64.get(activation, RTOL[dtype]) if dtype == "float64" else RTOL[dtype]
    assert_scaled_close(model(x), predict(keras_model, x), rtol)
    back = from_keras(keras_model)
    assert repr(back) == repr(model)
    for got, expected in zip(back.weights, model.weights, strict=True):
        np.testing.assert_array_equal(got, expected)


def test_from_keras_rejects_dense_on_unflattened_inputs():
    keras_model = keras.Sequential([keras.Input((4, 5)), dense()])
    with pytest.raises(ValueError, match=r"Received: .* with input_shape=\(None, 4, 5\)"):
        from_keras(keras_model)


def test_from_keras_rejects_an_unbuilt_model():
    with pytest.raises(ValueError, match="Expected a built keras.Sequential"):
        from_keras(keras.Sequential([dense()]))


def test_conversions_reject_other_model_types():
    inputs = keras.Input((5,))
    functional = keras.Model(inputs, dense()(inputs))
    with pytest.raises(TypeError, match="Expected keras_model to be a keras.Sequential"):
        from_keras(functional)
    with pytest.raises(TypeError, match="Expected model to be a NaiveSequential"):
        to_keras(functional)


def test_import_does_not_import_tensorflow_or_keras():
    code = (
        "import fastnaive.keras, sys; "
        "assert not {'tensorflow', 'keras'} & set(sys.modules), sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
