"""A hidden layer's training products on its inputs' nonzeros: where a layer of at least
engine.SPARSE_HIDDEN_MIN_WEIGHTS weights takes a ReLU's outputs, a training step groups them
(by rows for the forward, by columns for the weight gradient) and runs the sparse kernels
while at most SPARSE_HIDDEN_MAX_DENSITY's share of them are nonzero, the GEMMs above; where
the layer is a ReLU's too, its input gradient runs on its deltas' nonzeros (grouped by rows,
on a copy of W.T) while few enough of those are. Against float64 NumPy, against the GEMMs'
path, across thread counts and with the optimizers' rules fused into the gradient."""

import numpy as np
import pytest
from helpers import Unfused, assert_scaled_close, random_model
from threadpoolctl import threadpool_limits

import fastnaive
from fastnaive import SGD, Adam, _sparse, engine, reference

# The smallest hidden layer the sparse gradient takes: 512 x 512 weights.
SIZES = [100, 512, 512, 10]
RTOL = {"float32": 2e-5, "float64": 1e-12}
OPTIMIZERS = {
    "sgd": lambda: SGD(0.05),
    "momentum": lambda: SGD(0.05, momentum=0.9),
    "adam": lambda: Adam(0.01),
}


@pytest.fixture
def limit(monkeypatch):
    """limit(forward, gradient=forward, input_gradient=forward): the hidden layers' sparse
    kernels up to these shares of nonzeros, on this instruction set, for the Steps built
    after."""

    def set_limit(forward, gradient=None, input_gradient=None):
        shares = tuple(
            forward if share is None else share for share in (forward, gradient, input_gradient)
        )
        monkeypatch.setitem(engine.SPARSE_HIDDEN_MAX_DENSITY, _sparse.instruction_set(), shares)

    return set_limit


def data(dtype, n=128, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, SIZES[0])).astype(dtype), rng.integers(0, 10, n)


def hidden_share(model, x):
    """The share of nonzeros in the second layer's inputs, the first layer's ReLU outputs."""
    layer = model.dense_layers[0]
    return np.count_nonzero(np.maximum(x @ layer.W + layer.b, 0)) / (x.shape[0] * layer.W.shape[1])


def delta_share(model, x):
    """The share of nonzeros in the second layer's deltas: its ReLU outputs' (the loss's
    gradient reaches every unit)."""
    first, second = model.dense_layers[:2]
    hidden = np.maximum(np.maximum(x @ first.W + first.b, 0) @ second.W + second.b, 0)
    return np.count_nonzero(hidden) / hidden.size


def gradients(model, x, y):
    loss, grads = fastnaive.loss_and_gradients(model, x, y)
    return loss, [np.array(g) for g in grads]


def test_a_training_step_plans_it_for_large_layers_on_relu_inputs_alone(limit):
    limit(0.5)
    x, _ = data("float32")

    def planned(sizes, activation="relu", training=True):
        model = random_model(sizes, "softmax", "float32", seed=0)
        if activation != "relu":
            model.dense_layers[0].activation = activation
        step = engine.Step(model, 128, x, training=training)
        return [groups is not None for groups in step.hidden_groups]

    assert planned(SIZES) == [False, True, False]
    assert planned([100, 512, 512, 512, 10]) == [False, True, True, False]
    assert planned([100, 256, 256, 10]) == [False, False, False]  # under 512 x 512
    assert planned(SIZES, "tanh") == [False, False, False]  # few zeros
    assert planned(SIZES, training=False) == [False, False, False]
    limit(0.0)
    assert planned(SIZES) == [False, False, False]


def reference_gradients(model, x, y):
    """float64 NumPy's loss and gradients at the model's weights."""
    exact = random_model(SIZES, "softmax", "float64", seed=0)
    for weight, source in zip(exact.weights, model.weights, strict=True):
        weight[...] = source
    return reference.loss_and_gradients(exact, x.astype(np.float64), y)


# Which of the hidden layer's products run on the nonzeros: (forward, gradient, input
# gradient) limits.
PRODUCTS = {
    "forward": (1.0, 0.0, 0.0),
    "gradient": (0.0, 1.0, 0.0),
    "input": (0.0, 0.0, 1.0),
    "all": (1.0, 1.0, 1.0),
}


@pytest.mark.parametrize("products", PRODUCTS)
def test_gradients_on_the_nonzeros_are_float64_numpys(dtype, products, limit):
    limit(*PRODUCTS[products])
    x, y = data(dtype)
    model = random_model(SIZES, "softmax", dtype, seed=1)
    assert 0.3 < hidden_share(model, x) < 0.7
    assert 0.3 < delta_share(model, x) < 0.7
    loss, grads = gradients(model, x, y)
    expected_loss, expected = reference_gradients(model, x, y)
    assert loss == pytest.approx(expected_loss, rel=RTOL[dtype])
    for actual, wanted in zip(grads, expected, strict=True):
        assert_scaled_close(actual, wanted, RTOL[dtype])
    # Other orders of the sums than the GEMMs': the sparse kernels ran, and only where told.
    limit(0.0)
    _, by_gemm = gradients(random_model(SIZES, "softmax", dtype, seed=1), x, y)
    same = [np.array_equal(a, b) for a, b in zip(grads, by_gemm, strict=True)]
    if products == "gradient":  # the rest reads the GEMM's outputs
        assert same == [True, True, False, True, True, True]
    elif products == "input":  # the first layer's deltas alone
        assert same == [False, False, True, True, True, True]
    else:  # the head's gradient reads the hidden layer's outputs
        assert not same[4]


def with_dropout(model, rate=0.3):
    """The model with Dropout(rate) after its first layer (the hidden layer reads the kept
    ReLU outputs, scaled)."""
    first, *rest = model.layers
    return fastnaive.NaiveSequential([first, fastnaive.Dropout(rate, seed=4), *rest])


@pytest.mark.parametrize("variant", ["tanh", "gelu", "dropout"])
def test_other_layers_around_it_take_the_gemms_results(dtype, variant, limit):
    """tanh after the sparse forward, GELU from its pre-activations, dropout between the ReLU
    and the layer: the GEMMs' results within rounding."""
    x, y = data(dtype)
    results = []
    for share in (1.0, 0.0):
        limit(share)
        model = random_model(SIZES, "softmax", dtype, seed=1)
        if variant == "dropout":
            model = with_dropout(model)
        else:
            model.dense_layers[1].activation = variant
        assert (engine.Step(model, 128, x).hidden_groups[1] is not None) == (share > 0)
        results.append(gradients(model, x, y))
    (loss, grads), (gemm_loss, by_gemm) = results
    assert loss == pytest.approx(gemm_loss, rel=RTOL[dtype])
    for actual, wanted in zip(grads, by_gemm, strict=True):
        assert_scaled_close(actual, wanted, RTOL[dtype])
    assert not np.array_equal(grads[2], by_gemm[2])


def test_above_the_limit_the_gemm_runs(dtype, limit):
    x, y = data(dtype)
    results = []
    for share in (0.0, 0.2):  # about half of the hidden layer's inputs are nonzero
        limit(share)
        results.append(gradients(random_model(SIZES, "softmax", dtype, seed=1), x, y))
    (loss, grads), (gemm_loss, by_gemm) = results
    assert loss == gemm_loss
    for actual, wanted in zip(grads, by_gemm, strict=True):
        np.testing.assert_array_equal(actual, wanted)


@pytest.mark.parametrize("products", ["forward", "gradient", "input"])
def test_the_choice_follows_the_batchs_share_of_nonzeros(dtype, products, limit):
    """Just above the inputs' (or deltas') share the sparse kernels run, just under it the
    GEMMs."""
    x, y = data(dtype)
    shares = {"input": delta_share}
    share = shares.get(products, hidden_share)(random_model(SIZES, "softmax", dtype, seed=1), x)
    runs = {}
    for limit_share in (0.0, share - 0.002, share + 0.002):
        limit(*(limit_share if PRODUCTS[products][j] else 0.0 for j in range(3)))
        runs[limit_share] = gradients(random_model(SIZES, "softmax", dtype, seed=1), x, y)[1]
    changed = {"forward": 4, "gradient": 2, "input": 0}[products]
    np.testing.assert_array_equal(runs[share - 0.002][changed], runs[0.0][changed])
    assert not np.array_equal(runs[share + 0.002][changed], runs[0.0][changed])


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_training_gives_the_same_bits_at_1_2_and_3_threads(dtype, optimizer, limit):
    limit(1.0)
    x, y = data(dtype, 600)
    results = []
    for threads in (1, 2, 3):
        model = random_model(SIZES, "softmax", dtype, seed=2)
        with threadpool_limits(limits=threads):
            fastnaive.fit(model, x, y, 2, 128, optimizer=OPTIMIZERS[optimizer](), seed=0, verbose=0)
        results.append(model.get_weights())
    for weights in results[1:]:
        for actual, wanted in zip(weights, results[0], strict=True):
            np.testing.assert_array_equal(actual, wanted)


@pytest.mark.parametrize("l2", [0.0, 1e-3])
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_the_update_fused_into_it_gives_the_optimizers_own_step(dtype, optimizer, l2, limit):
    """SGD inside the kernel (W := (1 + 2 s l2) W + s X.T @ delta), momentum and Adam on each
    block as it is made: the bits of the optimizer's own kernels run after the gradients."""
    limit(1.0)
    x, y = data(dtype, 384)

    def model():
        built = random_model(SIZES, "softmax", dtype, seed=3)
        hidden = built.dense_layers[1]
        layer = fastnaive.NaiveDense(512, 512, "relu", dtype=dtype, l2=l2)
        layer.W, layer.b = hidden.W, hidden.b
        return fastnaive.NaiveSequential([built.dense_layers[0], layer, built.dense_layers[2]])

    fused, unfused = model(), model()
    start = [w.copy() for w in fused.weights]
    with threadpool_limits(limits=2):
        fastnaive.fit(fused, x, y, 2, 128, optimizer=OPTIMIZERS[optimizer](), verbose=0)
        unfused_optimizer = Unfused(OPTIMIZERS[optimizer]())
        fastnaive.fit(unfused, x, y, 2, 128, optimizer=unfused_optimizer, verbose=0)
    assert np.max(np.abs(fused.weights[2] - start[2])) > 0
    for actual, wanted in zip(fused.weights, unfused.weights, strict=True):
        if optimizer == "sgd":  # W + s (X.T @ delta) in the kernel against W - lr * gradient
            assert_scaled_close(actual, wanted, RTOL[dtype])
        else:
            np.testing.assert_array_equal(actual, wanted)
