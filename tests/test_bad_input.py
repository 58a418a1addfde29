"""The rows of docs/robustness.md not covered in test_api.py: bad input gets a clear error or a
documented result, never a crash and never corrupted weights."""

import numpy as np
import pytest
from helpers import (
    EXPECTED_RECEIVED,
    N_FEATURES,
    assert_same_weights,
    make_data,
    make_model,
    read_only,
)

from fastnaive import NaiveDense, evaluate, fit, loss_and_gradients, one_training_step, optimizers

API_CALLS = {
    "fit": lambda model, x, y: fit(model, x, y, epochs=1, batch_size=4, verbose=0),
    "loss_and_gradients": loss_and_gradients,
    "one_training_step": one_training_step,
    "evaluate": evaluate,
}
BAD_DATA = {
    "labels-nan": (lambda x, y: (x, np.where(y > 4, np.nan, y)), TypeError),
    "labels-wrapped-uint8": (lambda x, y: (x, np.where(y > 4, -1, y).astype(np.uint8)), ValueError),
    "labels-2d": (lambda x, y: (x, np.stack([y, y], axis=1)), ValueError),
    "images-1d": (lambda x, y: (x[0], y), ValueError),
    "images-object": (lambda x, y: (x.astype(object), y), TypeError),
}


@pytest.mark.parametrize("corrupt, error", BAD_DATA.values(), ids=BAD_DATA.keys())
@pytest.mark.parametrize("call", API_CALLS.values(), ids=API_CALLS.keys())
def test_bad_data_raises_and_leaves_weights(call, corrupt, error):
    model, untouched = make_model(), make_model()
    with pytest.raises(error, match=EXPECTED_RECEIVED):
        call(model, *corrupt(*make_data(10)))
    assert_same_weights(model, untouched)


def memory_mapped(x, tmp_path):
    np.save(tmp_path / "x.npy", x)
    return np.load(tmp_path / "x.npy", mmap_mode="r")


LAYOUTS = {
    "fortran-order": lambda x, tmp_path: np.asfortranarray(x),
    "column-slice": lambda x, tmp_path: np.repeat(x, 2, axis=1)[:, ::2],
    "read-only": lambda x, tmp_path: read_only(x.copy()),
    "memory-mapped": memory_mapped,
    "float16": lambda x, tmp_path: x.astype(np.float16),
}


@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_training_on_any_layout_equals_a_contiguous_copy(layout, tmp_path):
    x, y = make_data(40)
    x = x.astype(np.float16).astype(np.float32)  # exact in every layout, float16 included
    model, expected = make_model(), make_model()
    fit(model, layout(x, tmp_path), y, epochs=2, batch_size=8, verbose=0)
    fit(expected, x, y, epochs=2, batch_size=8, verbose=0)
    assert_same_weights(model, expected)


@pytest.mark.parametrize("value", [np.nan, np.inf], ids=["nan", "inf"])
def test_non_finite_images_give_non_finite_results_for_their_rows_only(value):
    model, (x, y) = make_model(), make_data(6)
    x[2, 5] = value
    outputs = model(x)
    assert np.isnan(outputs[2]).all() and np.isfinite(np.delete(outputs, 2, axis=0)).all()
    loss, _ = loss_and_gradients(model, x, y)
    assert np.isnan(loss)


def test_weight_reshaped_in_place_is_caught_at_the_next_call():
    model, (x, y) = make_model(), make_data(4)
    model.layers[0].W.shape = (N_FEATURES // 2, -1)
    for call in API_CALLS.values():
        with pytest.raises(ValueError, match=r"^Expected W of shape"):
            call(model, x, y)


SIZES_BEYOND_BLAS = {
    "input_size": lambda: NaiveDense(2**31, 1, "relu"),
    "output_size": lambda: NaiveDense(1, 2**31, "relu"),
    "n_samples": lambda: make_model()(np.broadcast_to(np.float32(0), (2**31, N_FEATURES))),
}


@pytest.mark.parametrize("call", SIZES_BEYOND_BLAS.values(), ids=SIZES_BEYOND_BLAS.keys())
def test_sizes_beyond_32_bit_blas_raise_before_allocating(call):
    with pytest.raises(ValueError, match=r"32-bit BLAS"):
        call()


BAD_NAMES = {
    "optimizer-name": lambda model, x, y: fit(model, x, y, epochs=1, optimizer="rmsprop"),
    "optimizer-get": lambda model, x, y: optimizers.get("adamw"),
    "optimizer-object": lambda model, x, y: fit(model, x, y, epochs=1, optimizer=object()),
    "optimizer-name-per-step": lambda model, x, y: one_training_step(model, x, y, optimizer="adam"),
    "verbose": lambda model, x, y: fit(model, x, y, epochs=1, verbose=3),
    "validation-split": lambda model, x, y: fit(model, x, y, epochs=1, validation_split=1.0),
}


@pytest.mark.parametrize("call", BAD_NAMES.values(), ids=BAD_NAMES.keys())
def test_unknown_settings_raise(call):
    with pytest.raises((ValueError, TypeError), match=EXPECTED_RECEIVED):
        call(make_model(), *make_data(10))
