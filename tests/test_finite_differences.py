"""fastnaive.loss_and_gradients against float64 central finite differences of its own loss.

Every entry g of every gradient must satisfy |g - fd| <= RTOL * |fd| + ATOL,
fd = (L(w + h) - L(w - h)) / 2h with h = 1e-6. The truncation error is
~h^2 * |L'''| ~ 1e-12; the rounding error is a few eps64 * |L| / 2h, ~1e-9
for losses of a few units (measured worst 8e-10), hence ATOL = 1e-8 for
entries near zero and RTOL = 1e-6 (measured worst 1e-7) elsewhere.
"""

import itertools

import numpy as np
import pytest

import fastnaive

SIZES = (6, 5, 4, 3)
BATCH_SIZE = 5
H = 1e-6
RTOL = 1e-6
ATOL = 1e-8
# A relu input this close to 0 could cross the kink within a step of H.
KINK_MARGIN = 1e-3


def random_model_and_batch(last_activation, seed):
    rng = np.random.default_rng(seed)
    layers = [
        fastnaive.NaiveDense(n_in, n_out, "relu", dtype="float64")
        for n_in, n_out in zip(SIZES[:-2], SIZES[1:-1])
    ]
    layers.append(fastnaive.NaiveDense(SIZES[-2], SIZES[-1], last_activation, dtype="float64"))
    for layer in layers:
        layer.W = rng.normal(0, 1, layer.W.shape)
        layer.b = rng.normal(0, 0.5, layer.b.shape)
    x = rng.normal(0, 1, (BATCH_SIZE, SIZES[0]))
    y = rng.integers(0, SIZES[-1], BATCH_SIZE)
    return fastnaive.NaiveSequential(layers), x, y


def relu_inputs(model, x):
    """The pre-activations of every relu layer."""
    a, pre_activations = x, []
    for layer in model.layers[:-1]:
        pre_activations.append(a @ layer.W + layer.b)
        a = np.maximum(pre_activations[-1], 0)
    return pre_activations


def model_and_batch_away_from_kinks(last_activation):
    """The first seeded draw whose relu inputs all lie at least KINK_MARGIN from 0."""
    for seed in itertools.count():
        model, x, y = random_model_and_batch(last_activation, seed)
        if all(np.abs(z).min() > KINK_MARGIN for z in relu_inputs(model, x)):
            return model, x, y


def finite_difference_gradients(model, x, y):
    """Central differences of the loss, one weight entry at a time, in model.weights order."""
    gradients = []
    for w in model.weights:
        gradient = np.empty_like(w)
        for index in np.ndindex(w.shape):
            saved = w[index]
            w[index] = up = saved + H
            loss_up, _ = fastnaive.loss_and_gradients(model, x, y)
            w[index] = down = saved - H
            loss_down, _ = fastnaive.loss_and_gradients(model, x, y)
            w[index] = saved
            gradient[index] = (loss_up - loss_down) / (up - down)
        gradients.append(gradient)
    return gradients


@pytest.mark.parametrize("last_activation", ["softmax", None], ids=["softmax", "linear"])
def test_gradients_match_central_differences(last_activation):
    model, x, y = model_and_batch_away_from_kinks(last_activation)
    _, gradients = fastnaive.loss_and_gradients(model, x, y)
    expected = finite_difference_gradients(model, x, y)
    names = [f"{kind}{i}" for i in range(len(model.layers)) for kind in ("dW", "db")]
    for name, gradient, fd in zip(names, gradients, expected):
        np.testing.assert_allclose(gradient, fd, rtol=RTOL, atol=ATOL, err_msg=name)
