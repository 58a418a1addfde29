"""SGD (plain, momentum, Nesterov) and Adam against Keras' optimizers; their checks; fit with them.

Tolerances: after STEPS updates from w0, the displacements agree when
max|(w - w0) - (w_keras - w0)| <= RTOL * max|w_keras - w0|.

    dtype    RTOL    worst measured   why
    float32  1e-5    1.1e-6           Adam: Keras computes its step size in float32,
                                      fastnaive in float64 before rounding it once
    float64  1e-12   0                the same operations; every setting is exact in
                                      float32, so Keras' float32 hyperparameters lose nothing

SGD agrees bit for bit in both dtypes, while a formula error (no bias correction,
steps counted from 0, Nesterov's look-ahead left out) moves the weights by more
than 1e-2 of their displacement.
"""

import keras
import numpy as np
import pytest
from helpers import (
    EXPECTED_RECEIVED,
    Unfused,
    assert_same_weights,
    assert_scaled_close,
    make_data,
    make_model,
)
from threadpoolctl import threadpool_limits

import fastnaive
from fastnaive import SGD, Adam, BatchGenerator, engine, fit, one_training_step, optimizers

RTOL = {"float32": 1e-5, "float64": 1e-12}
STEPS = 8
# Shapes of a layer's W and b: the optimizers keep state per weight array.
SHAPES = [(30, 20), (20,)]
# Settings exactly representable in float32 (Keras keeps hyperparameters as float32 variables).
LEARNING_RATE, MOMENTUM = 0.125, 0.5
ADAM = {"learning_rate": 2**-4, "beta_1": 0.875, "beta_2": 1 - 2**-10, "epsilon": 2**-20}
OPTIMIZER_PAIRS = {
    "sgd": (lambda: SGD(LEARNING_RATE), lambda: keras.optimizers.SGD(LEARNING_RATE)),
    "momentum": (
        lambda: SGD(LEARNING_RATE, momentum=MOMENTUM),
        lambda: keras.optimizers.SGD(LEARNING_RATE, momentum=MOMENTUM),
    ),
    "nesterov": (
        lambda: SGD(LEARNING_RATE, momentum=MOMENTUM, nesterov=True),
        lambda: keras.optimizers.SGD(LEARNING_RATE, momentum=MOMENTUM, nesterov=True),
    ),
    "adam": (lambda: Adam(**ADAM), lambda: keras.optimizers.Adam(**ADAM)),
}
# Optimizers with state: fit applies their element rule in the weight-gradient kernels, to
# each block of the gradients as it is produced (SGD runs inside the GEMMs themselves).
STATEFUL = {
    "momentum": lambda: SGD(0.05, momentum=0.9),
    "nesterov": lambda: SGD(0.05, momentum=0.9, nesterov=True),
    "adam": lambda: Adam(0.01),
}


def random_weights_and_gradients(dtype, seed=0):
    """Weights of SHAPES and STEPS lists of gradients for them, all N(0, 1)."""
    rng = np.random.default_rng(seed)
    weights = [rng.standard_normal(shape).astype(dtype) for shape in SHAPES]
    gradients = [
        [rng.standard_normal(shape).astype(dtype) for shape in SHAPES] for _ in range(STEPS)
    ]
    return weights, gradients


@pytest.mark.parametrize("make, make_keras", OPTIMIZER_PAIRS.values(), ids=OPTIMIZER_PAIRS.keys())
def test_steps_match_keras(dtype, make, make_keras):
    weights, steps = random_weights_and_gradients(dtype)
    initial = [w.copy() for w in weights]
    variables = [keras.Variable(w.copy(), dtype=dtype) for w in weights]
    optimizer, keras_optimizer = make(), make_keras()
    for gradients in steps:
        optimizer.apply_gradients(zip(gradients, weights))
        keras_optimizer.apply_gradients(zip(map(keras.ops.convert_to_tensor, gradients), variables))
    assert optimizer.iterations == STEPS
    for weight, variable, w0 in zip(weights, variables, initial, strict=True):
        assert_scaled_close(weight - w0, keras.ops.convert_to_numpy(variable) - w0, RTOL[dtype])


@pytest.mark.parametrize(
    "make", [pair[0] for pair in OPTIMIZER_PAIRS.values()], ids=OPTIMIZER_PAIRS.keys()
)
def test_state_is_kept_per_weight_array(dtype, make):
    """One optimizer over two same-shaped arrays updates each as if it were alone."""
    rng = np.random.default_rng(1)
    together = [rng.standard_normal(SHAPES[0]).astype(dtype) for _ in range(2)]
    alone = [w.copy() for w in together]
    shared, separate = make(), [make(), make()]
    for _ in range(STEPS):
        gradients = [rng.standard_normal(SHAPES[0]).astype(dtype) for _ in range(2)]
        shared.apply_gradients(zip(gradients, together))
        for optimizer, gradient, weight in zip(separate, gradients, alone):
            optimizer.apply_gradients([(gradient, weight)])
    for weight, expected in zip(together, alone):
        np.testing.assert_array_equal(weight, expected)  # exact: the same elementwise updates


@pytest.mark.parametrize(
    "make", [pair[0] for pair in OPTIMIZER_PAIRS.values()], ids=OPTIMIZER_PAIRS.keys()
)
def test_change_bound_bounds_each_step_and_the_state_it_leaves(dtype, make):
    """The overflow guard's bounds: change_bound(max |g|), asked before each step, bounds
    that step's largest change of a weight and the largest |state| after it, for gradients
    whose magnitude jumps between 1e-3 and 1e3 (to within the rounding of w + change)."""
    rng = np.random.default_rng(2)
    weight = rng.standard_normal(SHAPES[0]).astype(dtype)
    optimizer = make()
    eps = np.finfo(dtype).eps
    for scale in (1.0, 1e3, 1e-3, 10.0, 1.0, 1e2, 1e-2):
        gradient = (scale * rng.standard_normal(SHAPES[0])).astype(dtype)
        change, state = optimizer.change_bound(float(np.abs(gradient).max()))
        before = weight.astype(np.float64)
        optimizer.apply_gradients([(gradient, weight)])
        moved = np.abs(weight - before).max()
        assert 0 < moved <= change * (1 + 4 * eps) + np.spacing(np.abs(before).max(), dtype=dtype)
        for slot in (s for slots in optimizer.get_state()["slots"] for s in slots):
            assert np.abs(slot).max() <= state * (1 + 4 * eps)


@pytest.mark.parametrize("changed", ["beta_1", "beta_2", "learning_rate"])
def test_adams_step_size_follows_a_setting_changed_between_steps(dtype, changed):
    """Adam's step size, lr sqrt(1 - beta_2^t) / (1 - beta_1^t) from float32 betas in the
    weights' dtype (as Keras computes it), is computed again for each step and after a
    setting changes between steps, for the step's rule and its overflow bound alike."""
    optimizer = Adam(**ADAM)
    weights, steps = random_weights_and_gradients(dtype)
    real = np.dtype(dtype).type
    first_moment = 0.0  # the bound of |m| after gradients bounded by 1, as change_bound keeps it
    for i, gradients in enumerate(steps):
        if i == STEPS // 2:
            setattr(optimizer, changed, 0.5)
        alpha = optimizer.element_rule(np.dtype(dtype))[3]
        t = real(optimizer.iterations + 1)
        beta_1, beta_2 = (real(np.float32(b)) for b in (optimizer.beta_1, optimizer.beta_2))
        expected = real(optimizer.learning_rate) * np.sqrt(1 - beta_2**t) / (1 - beta_1**t)
        assert alpha == expected
        first_moment = optimizer.beta_1 * first_moment + (1 - optimizer.beta_1)
        change = optimizer.change_bound(1.0)[0]
        assert change == pytest.approx(alpha * first_moment / optimizer.epsilon, rel=1e-6)
        optimizer.apply_gradients(zip(gradients, weights))


BAD_SETTINGS = {
    "lr-0": lambda: SGD(0.0),
    "lr-negative": lambda: SGD(-0.1),
    "lr-nan": lambda: Adam(float("nan")),
    "lr-inf": lambda: SGD(float("inf")),
    "lr-set-to-0": lambda: setattr(SGD(0.1), "learning_rate", 0.0),
    "momentum-negative": lambda: SGD(0.1, momentum=-0.1),
    "momentum-1": lambda: SGD(0.1, momentum=1.0),
    "momentum-nan": lambda: SGD(0.1, momentum=float("nan")),
    "beta_1-1": lambda: Adam(beta_1=1.0),
    "beta_2-negative": lambda: Adam(beta_2=-0.5),
    "epsilon-0": lambda: Adam(epsilon=0.0),
    "get-unknown": lambda: optimizers.get("rmsprop"),
    "get-unknown-with-lr": lambda: optimizers.get("nadam", 0.1),
}


@pytest.mark.parametrize("make", BAD_SETTINGS.values(), ids=BAD_SETTINGS.keys())
def test_bad_setting_raises(make):
    with pytest.raises(ValueError, match=EXPECTED_RECEIVED):
        make()


NUMPY_SETTINGS = {
    "lr-float32": lambda: SGD(np.float32(0.125)),
    "momentum-float64": lambda: SGD(0.1, momentum=np.float64(0.5)),
    "beta_1-float32": lambda: Adam(beta_1=np.float32(0.875)),
    "momentum-int64-0": lambda: SGD(0.1, momentum=np.int64(0)),
}


@pytest.mark.parametrize("make", NUMPY_SETTINGS.values(), ids=NUMPY_SETTINGS.keys())
def test_numpy_scalar_settings_are_accepted(make):
    make()


GET_CASES = {
    "sgd": (("sgd",), SGD, {"learning_rate": 1e-3, "momentum": 0.0}),
    "sgd-lr": (("sgd", 0.5), SGD, {"learning_rate": 0.5, "momentum": 0.0}),
    "momentum": (("momentum", 0.01), SGD, {"learning_rate": 0.01, "momentum": 0.9}),
    "adam": (("adam",), Adam, {"learning_rate": 1e-3, "beta_1": 0.9, "beta_2": 0.999}),
}


@pytest.mark.parametrize("args, kind, settings", GET_CASES.values(), ids=GET_CASES.keys())
def test_get_makes_a_new_optimizer(args, kind, settings):
    optimizer = optimizers.get(*args)
    assert type(optimizer) is kind and optimizer is not optimizers.get(*args)
    assert {name: getattr(optimizer, name) for name in settings} == settings


@pytest.mark.parametrize("make", STATEFUL.values(), ids=STATEFUL.keys())
def test_fit_matches_a_loop_of_training_steps(dtype, make):
    """fit in the book's order (shuffle=False ignores the seed) = one_training_step per batch."""
    model, expected, (x, y) = make_model(dtype), make_model(dtype), make_data(dtype=dtype)
    fit(model, x, y, epochs=2, batch_size=16, optimizer=make(), shuffle=False, seed=3, verbose=0)
    optimizer = make()
    for _ in range(2):
        for x_batch, y_batch in BatchGenerator(x, y, batch_size=16):
            one_training_step(expected, x_batch, y_batch, optimizer=optimizer)
    assert_same_weights(model, expected)


def mnist_model(dtype, l2=0.0):
    """784-256-128-10 on MNIST: the first layer on the inputs' nonzeros or GEMMs, the hidden
    one's gradient in two GEMM blocks, the head on the narrow kernels."""
    sizes, activations = (784, 256, 128, 10), ("relu", "relu", "softmax")
    return fastnaive.NaiveSequential(
        [
            fastnaive.NaiveDense(
                n_in, n_out, activation, dtype=dtype, seed=i, l2=l2, initializer="glorot_uniform"
            )
            for i, (n_in, n_out, activation) in enumerate(zip(sizes, sizes[1:], activations))
        ]
    )


@pytest.mark.parametrize("inputs", ["nonzeros", "dense"])
@pytest.mark.parametrize("make", STATEFUL.values(), ids=STATEFUL.keys())
def test_rules_in_the_gradient_kernels_give_the_optimizers_steps_to_the_bit(
    dtype, inputs, make, mnist
):
    """Momentum, Nesterov and Adam applied by the weight-gradient kernels to each block as
    they produce it (the sparse first layer's column blocks or the GEMMs' blocks, the hidden
    layer's GEMM blocks, the narrow head's row blocks), on two threads, give the same bits
    as the optimizer's own kernels run over the whole gradients after them: the gradient
    kernels and the element steps are the same, only the order of the blocks differs."""
    (images, labels), _ = mnist
    x = images[:1024].astype(dtype) + (0.01 if inputs == "dense" else 0)
    fused, unfused = mnist_model(dtype), mnist_model(dtype)
    with threadpool_limits(limits=2):
        fit(fused, x, labels[:1024], 2, 128, optimizer=make(), seed=0, verbose=0)
        fit(unfused, x, labels[:1024], 2, 128, optimizer=Unfused(make()), seed=0, verbose=0)
    moved = [np.max(np.abs(w - w0)) for w, w0 in zip(fused.weights, mnist_model(dtype).weights)]
    assert min(moved) > 0
    for actual, expected in zip(fused.weights, unfused.weights, strict=True):
        np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize("n_threads", [2, 3])
@pytest.mark.parametrize("make", [STATEFUL["adam"], STATEFUL["momentum"]], ids=["adam", "momentum"])
def test_rules_on_a_wide_first_layer_give_the_optimizers_steps_to_the_bit(
    dtype, make, n_threads, mnist
):
    """A first layer of 1100 units on MNIST's nonzeros: its update is cut into chunks of rows
    and slabs of columns (3 in float32, 5 in float64, the last one ragged), each stepped by
    the thread that made it; the bits are those of the optimizer's own kernels after the
    gradients."""
    (images, labels), _ = mnist
    x = images[:512].astype(dtype)

    def wide():
        return fastnaive.NaiveSequential(
            [
                fastnaive.NaiveDense(784, 1100, "relu", dtype=dtype, seed=0),
                fastnaive.NaiveDense(1100, 10, "softmax", dtype=dtype, seed=1),
            ]
        )

    fused, unfused = wide(), wide()
    with threadpool_limits(limits=n_threads):
        fit(fused, x, labels[:512], 1, 128, optimizer=make(), verbose=0)
        fit(unfused, x, labels[:512], 1, 128, optimizer=Unfused(make()), verbose=0)
    moved = [np.max(np.abs(w - w0)) for w, w0 in zip(fused.weights, wide().weights)]
    assert min(moved) > 0
    for actual, expected in zip(fused.weights, unfused.weights, strict=True):
        np.testing.assert_array_equal(actual, expected)


def test_rules_in_the_gradient_kernels_read_dropout_and_gelu_layers(dtype, mnist):
    """Adam's fused step takes each layer's input after dropout and GELU's derivative from
    its pre-activations, as the gradients the unfused step reads do: the same bits."""
    (images, labels), _ = mnist
    x = images[:512].astype(dtype)

    def model():
        return fastnaive.NaiveSequential(
            [
                fastnaive.NaiveDense(784, 64, "gelu", dtype=dtype, seed=0),
                fastnaive.Dropout(0.3, seed=5),
                fastnaive.NaiveDense(64, 32, "tanh", dtype=dtype, seed=1),
                fastnaive.NaiveDense(32, 10, "softmax", dtype=dtype, seed=2),
            ]
        )

    fused, unfused = model(), model()
    fit(fused, x, labels[:512], 2, 128, optimizer=Adam(1e-2), seed=0, verbose=0)
    fit(unfused, x, labels[:512], 2, 128, optimizer=Unfused(Adam(1e-2)), seed=0, verbose=0)
    assert min(np.max(np.abs(w - w0)) for w, w0 in zip(fused.weights, model().weights)) > 0
    for actual, expected in zip(fused.weights, unfused.weights, strict=True):
        np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize("make", STATEFUL.values(), ids=STATEFUL.keys())
def test_rules_in_the_gradient_kernels_add_the_l2_gradient(dtype, make, mnist):
    """With L2 the rule adds 2 l2 W to each block of W's gradient (by the BLAS axpy the
    unfused path runs over the whole gradient) before its step, and b's gradient gains
    none: the same bits as the optimizer's steps after the whole gradients, on two threads."""
    (images, labels), _ = mnist
    x = images[:512].astype(dtype)
    fused, unfused, plain = (mnist_model(dtype, l2) for l2 in (1e-2, 1e-2, 0.0))
    with threadpool_limits(limits=2):
        fit(fused, x, labels[:512], 1, 128, optimizer=make(), seed=0, verbose=0)
        fit(unfused, x, labels[:512], 1, 128, optimizer=Unfused(make()), seed=0, verbose=0)
        fit(plain, x, labels[:512], 1, 128, optimizer=make(), seed=0, verbose=0)
    for actual, expected in zip(fused.weights, unfused.weights, strict=True):
        np.testing.assert_array_equal(actual, expected)
    # The penalty moved W away from where the unpenalised steps took it.
    initial = mnist_model(dtype).weights
    assert np.max(np.abs(fused.weights[0] - plain.weights[0])) > 1e-2 * np.max(
        np.abs(plain.weights[0] - initial[0])
    )


@pytest.mark.parametrize(
    "make", [pair[0] for pair in OPTIMIZER_PAIRS.values()], ids=OPTIMIZER_PAIRS
)
def test_a_step_in_one_call_is_the_step_pass_by_pass(dtype, make, mnist, monkeypatch):
    """fit's steps as one compiled call each (Program.train_and_update: the passes, the
    change bound and the fused step) and pass by pass (Step.compiled_passes off, as
    benchmarks/phases.py times them: the bound and change_bound back in Python, then the
    step's calls) train the same bits, count the same steps and leave the same state and
    state bounds, on two threads."""
    (images, labels), _ = mnist
    x = images[:512].astype(dtype)
    results = []
    for compiled in (True, False):
        monkeypatch.setattr(engine.Step, "compiled_passes", compiled)
        model, optimizer = mnist_model(dtype, 1e-3), make()
        with threadpool_limits(limits=2):
            fit(model, x, labels[:512], 2, 128, optimizer=optimizer, seed=0, verbose=0)
        slots = [a for slot in optimizer.get_state()["slots"] for a in slot]
        # The bounds of |state| the steps advanced, read by one more bound.
        bound = optimizer.change_bound(1.0)
        results.append((model.weights, slots, optimizer.iterations, bound))
    (weights, slots, iterations, bound), expected = results
    assert iterations == expected[2] == 8
    assert bound == expected[3]
    for actual, wanted in zip(weights + slots, expected[0] + expected[1], strict=True):
        np.testing.assert_array_equal(actual, wanted)


def test_an_element_rule_counts_its_steps_and_keeps_its_state(mnist):
    """The fused steps count the optimizer's iterations and leave its state where its own
    kernels would: get_state after fit equals get_state after the unfused fit."""
    (images, labels), _ = mnist
    fused, unfused = Adam(1e-3), Adam(1e-3)
    fit(mnist_model("float32"), images[:640], labels[:640], 1, 128, optimizer=fused, verbose=0)
    fit(
        mnist_model("float32"),
        images[:640],
        labels[:640],
        1,
        128,
        optimizer=Unfused(unfused),
        verbose=0,
    )
    assert fused.iterations == unfused.iterations == 5
    for slot, expected in zip(fused.get_state()["slots"], unfused.get_state()["slots"]):
        for actual, wanted in zip(slot, expected, strict=True):
            np.testing.assert_array_equal(actual, wanted)


@pytest.mark.parametrize(
    "make", [lambda: SGD(0.1), *STATEFUL.values()], ids=["sgd", *STATEFUL.keys()]
)
def test_fit_counts_iterations(make):
    optimizer = make()
    fit(make_model(), *make_data(50), epochs=2, batch_size=16, optimizer=optimizer, verbose=0)
    assert optimizer.iterations == 2 * 4  # 50 samples in batches of 16, twice


@pytest.mark.parametrize(
    "make", [pair[0] for pair in OPTIMIZER_PAIRS.values()], ids=OPTIMIZER_PAIRS.keys()
)
def test_set_state_continues_where_get_state_stopped(dtype, make):
    """Half the steps, state copied to a new optimizer and new arrays, the other half there."""
    weights, steps = random_weights_and_gradients(dtype)
    moved = [w.copy() for w in weights]
    whole, first = make(), make()
    for gradients in steps[: STEPS // 2]:
        whole.apply_gradients(zip(gradients, weights))
        first.apply_gradients(zip(gradients, moved))
    state = first.get_state()
    second = make()
    second.set_state(state)
    moved = [w.copy() for w in moved]
    for gradients in steps[STEPS // 2 :]:
        whole.apply_gradients(zip(gradients, weights))
        second.apply_gradients(zip(gradients, moved))
    assert second.iterations == whole.iterations == STEPS
    for weight, expected in zip(moved, weights):
        np.testing.assert_array_equal(weight, expected)


@pytest.mark.parametrize("make", STATEFUL.values(), ids=STATEFUL.keys())
def test_state_set_between_fused_steps_is_the_state_the_next_step_takes(make):
    """one_training_step keeps a model's Step, with the optimizer's fused rule and its state
    arrays, from call to call: after set_state between two calls, the next step continues
    the state given, not the arrays the previous step used."""
    x, y = make_data(32)
    model, twin = make_model(), make_model()
    optimizer, twin_optimizer = make(), make()
    one_training_step(model, x, y, optimizer=optimizer)
    for _ in range(3):  # the twin's own, other state
        one_training_step(twin, x[::-1], y[::-1], optimizer=twin_optimizer)
    twin_optimizer.set_state(optimizer.get_state())
    twin.set_weights(model.get_weights())
    one_training_step(model, x, y, optimizer=optimizer)
    one_training_step(twin, x, y, optimizer=twin_optimizer)
    for a, b in zip(twin.weights, model.weights, strict=True):
        np.testing.assert_array_equal(a, b)
    state, twin_state = optimizer.get_state(), twin_optimizer.get_state()
    assert twin_state["iterations"] == state["iterations"] == 2
    for slot, twin_slot in zip(state["slots"], twin_state["slots"], strict=True):
        for a, b in zip(slot, twin_slot, strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("restored", [False, True], ids=["new", "set_state"])
def test_state_arrays_start_apart_from_their_weight_within_a_page(dtype, restored):
    """Adam's m and v start 1 and 2 KiB after their weight within a 4 KiB page, new or
    given by set_state, whatever offset the weight has: at one offset, loads of one wait on
    stores to another (4K aliasing)."""
    from fastnaive import _memory

    weights = [_memory.zeros_at(5000, dtype, offset) for offset in (0, 16, 3072, 4032)]
    gradients = [np.ones_like(w) for w in weights]
    optimizer = Adam()
    if restored:
        optimizer.set_state({"iterations": 0, "slots": [[np.zeros(5000, dtype)] * 2] * 4})
    optimizer.apply_gradients(zip(gradients, weights))
    for weight, slot in zip(weights, optimizer._slots):
        start = _memory.page_offset(weight)
        assert [_memory.page_offset(a) for a in slot] == [
            (start + 1024) % 4096,
            (start + 2048) % 4096,
        ]
        assert slot[1].dtype == weight.dtype and np.all(slot[1] > 0)


BAD_STATES = {
    "not-a-dict": [1, 2],
    "negative-iterations": {"iterations": -1, "slots": []},
    "wrong-slot-count": {"iterations": 1, "slots": [[np.zeros(3)] * 3]},
    "text-slots": {"iterations": 1, "slots": [[np.array(["a", "b"])] * 2]},
}


@pytest.mark.parametrize("state", BAD_STATES.values(), ids=BAD_STATES.keys())
def test_bad_state_raises(state):
    with pytest.raises(ValueError, match=EXPECTED_RECEIVED):
        Adam().set_state(state)


@pytest.mark.parametrize("make", STATEFUL.values(), ids=STATEFUL.keys())
def test_state_follows_a_weight_array_replaced_during_fit(make):
    """A callback may assign layer.W a new array: the optimizer then updates that array,
    with the state the old one had, exactly as if nothing had been replaced."""
    from fastnaive.callbacks import LambdaCallback

    def replace(batch, logs):
        layer = model.layers[batch % 2]
        layer.W = layer.W.copy()

    (x, y), model, expected = make_data(), make_model(), make_model()
    fit(
        model,
        x,
        y,
        2,
        16,
        optimizer=make(),
        verbose=0,
        callbacks=[LambdaCallback(on_batch_end=replace)],
    )
    fit(expected, x, y, 2, 16, optimizer=make(), verbose=0)
    for got, wanted in zip(model.weights, expected.weights, strict=True):
        np.testing.assert_array_equal(got, wanted)
