"""Conversion between NaiveSequential and keras.Sequential models of Dense and Dropout layers.

Keras is imported inside the functions, so importing this module does not
import TensorFlow or Keras.
"""

from fastnaive import activations
from fastnaive.layers import Dropout, NaiveDense
from fastnaive.models import NaiveSequential

__all__ = ["to_keras", "from_keras"]

_DTYPES = ("float32", "float64")


def to_keras(model):
    """Return a keras.Sequential of Dense (and Dropout) layers with `model`'s weights,
    activations, L2 penalties, dropout rates and dtype (not compiled)."""
    import functools

    import keras

    if not isinstance(model, NaiveSequential):
        raise TypeError(f"Expected model to be a NaiveSequential. Received: {type(model).__name__}")
    model.check_weights()
    dtype = model.dtype.name
    layers = []
    for layer in model.layers:
        if isinstance(layer, Dropout):
            layers.append(keras.layers.Dropout(layer.rate, seed=layer.seed % 2**31, dtype=dtype))
            continue
        activation = layer.activation or "linear"
        if activation == "gelu_tanh":
            activation = functools.partial(keras.activations.gelu, approximate=True)
        regularizer = keras.regularizers.L2(layer.l2) if layer.l2 else None
        layers.append(
            keras.layers.Dense(
                layer.output_size,
                activation=activation,
                dtype=dtype,
                kernel_regularizer=regularizer,
            )
        )
    keras_model = keras.Sequential([keras.Input((model.input_size,), dtype=dtype), *layers])
    keras_model.set_weights(model.get_weights())
    return keras_model


def from_keras(keras_model):
    """Return a NaiveSequential with the weights of a keras.Sequential of Dense layers.

    The Sequential must be built, hold Dense layers with use_bias=True, an activation
    fastnaive has (fastnaive.activations; softmax on the last layer only) and at most an L2
    kernel regularizer, each optionally followed by a Dropout, all of dtype policy float32
    or all float64, and may start with a channels_last Flatten.
    """
    import keras

    if not isinstance(keras_model, keras.Sequential):
        raise TypeError(
            f"Expected keras_model to be a keras.Sequential. Received: {type(keras_model).__name__}"
        )
    layers = _dense_layers(keras_model)
    dense = [layer for layer in layers if isinstance(layer, keras.layers.Dense)]
    dtype = dense[0].dtype_policy.name
    converted = [
        Dropout(layer.rate, seed=layer.seed)
        if isinstance(layer, keras.layers.Dropout)
        else _naive_dense(layer, dtype, last=layer is dense[-1])
        for layer in layers
    ]
    model = NaiveSequential(converted)
    model.set_weights(
        [keras.ops.convert_to_numpy(w) for layer in dense for w in (layer.kernel, layer.bias)]
    )
    return model


def _dense_layers(keras_model):
    """Return the Dense layers of a built Sequential, after checking what precedes them."""
    import keras

    try:
        input_shape = keras_model.input_shape
    except AttributeError as exc:
        raise ValueError(
            "Expected a built keras.Sequential (start it with keras.Input or call "
            f"build()). Received: {keras_model.name!r} with no input shape"
        ) from exc
    layers = list(keras_model.layers)
    if layers and isinstance(layers[0], keras.layers.Flatten):
        flatten = layers.pop(0)
        if flatten.data_format != "channels_last":
            raise _unsupported(
                flatten,
                "a Flatten with data_format='channels_last'",
                f"data_format={flatten.data_format!r}",
            )
    elif len(input_shape) != 2:
        raise ValueError(
            f"Expected inputs of shape (batch, n_features), or a Flatten first. "
            f"Received: {keras_model.name!r} with input_shape={input_shape}"
        )
    if not layers:
        raise ValueError(
            f"Expected at least one Dense layer. Received: {keras_model.name!r} with none"
        )
    for previous, layer in zip([None, *layers], layers):
        dropout_after_dense = (
            isinstance(layer, keras.layers.Dropout)
            and isinstance(previous, keras.layers.Dense)
            and layer is not layers[-1]
        )
        if not (isinstance(layer, keras.layers.Dense) or dropout_after_dense):
            raise _unsupported(
                layer,
                "only Dense layers, each optionally followed by a Dropout (not last), after an "
                "optional leading Flatten",
                f"type {type(layer).__name__}",
            )
    return layers


def _naive_dense(layer, dtype, last):
    """Return a NaiveDense shaped like the Keras Dense `layer`, or raise naming what differs."""
    policy = layer.dtype_policy.name
    if policy not in _DTYPES:
        raise _unsupported(layer, "dtype policy float32 or float64", f"dtype policy {policy}")
    if policy != dtype:
        raise _unsupported(
            layer,
            f"every layer of dtype policy {dtype}, the first layer's",
            f"dtype policy {policy}",
        )
    if not layer.use_bias:
        raise _unsupported(layer, "Dense layers with use_bias=True", "use_bias=False")
    try:
        activation = activations.resolve(layer.activation)
    except ValueError:
        name = getattr(layer.activation, "__name__", repr(layer.activation))
        raise _unsupported(
            layer, "an activation of fastnaive.activations", f"activation {name}"
        ) from None
    if activation == "softmax" and not last:
        raise _unsupported(layer, "softmax only on the last layer", "activation softmax")
    n_features, n_units = layer.kernel.shape
    return NaiveDense(n_features, n_units, activation, dtype=dtype, l2=_l2(layer))


def _l2(layer):
    """The L2 weight of a Dense layer's kernel regularizer (0 for none), or raise."""
    import keras

    if layer.bias_regularizer is not None or layer.activity_regularizer is not None:
        raise _unsupported(layer, "no bias or activity regularizer", "one")
    regularizer = layer.kernel_regularizer
    if regularizer is None:
        return 0.0
    if isinstance(regularizer, keras.regularizers.L2):
        return float(regularizer.l2)
    if isinstance(regularizer, keras.regularizers.L1L2) and not regularizer.l1:
        return float(regularizer.l2)
    raise _unsupported(layer, "an L2 kernel regularizer", f"{type(regularizer).__name__}")


def _unsupported(layer, expected, received):
    """Return the ValueError for a Keras layer that fastnaive cannot represent."""
    return ValueError(f"Expected {expected}. Received: layer {layer.name!r} with {received}")
