"""fastnaive._program: a Step's sweeps compiled, against NumPy (fastnaive.reference), its
checks at the boundary, and a Step's Program following weight arrays replaced mid-fit."""

import numpy as np
import pytest
from helpers import EXPECTED_RECEIVED, assert_close, read_only

import fastnaive
from fastnaive import _activations, _kernels, _losses, _program, _sparse, engine, reference
from fastnaive.callbacks import LambdaCallback

N_SAMPLES, N_FEATURES, N_HIDDEN, N_CLASSES = 13, 22, 9, 4
FIRST = {"dense": _program.FIRST_DENSE, "sparse": _program.FIRST_SPARSE}


def two_layers(dtype, l2=0.0):
    return [
        fastnaive.NaiveDense(N_FEATURES, N_HIDDEN, "relu", dtype=dtype, seed=0, l2=l2),
        fastnaive.NaiveDense(N_HIDDEN, N_CLASSES, "softmax", dtype=dtype, seed=1),
    ]


def program_for(layers, dtype, first, capacity=N_SAMPLES, narrow=None, delta_copy=None):
    """A Program of `layers` with the buffers a training Step gives it; and those buffers."""
    sizes = [layer.output_size for layer in layers]
    outputs = [np.empty((capacity, m), dtype) for m in sizes]
    deltas = [np.empty((capacity, m), dtype) for m in sizes]
    gradients = [np.empty_like(w) for layer in layers for w in (layer.W, layer.b)]
    codes = [layer.code for layer in layers]  # a softmax head's is linear: the loss absorbs it
    none = [None] * len(layers)
    groups = columns = None
    if first == _program.FIRST_SPARSE:
        n_features = layers[0].input_size
        groups = _sparse.group_buffers(capacity, n_features, dtype, by_rows=True)
        columns = _sparse.group_buffers(n_features, capacity, dtype, by_rows=False)
    program = _program.Program(
        layers,
        none,
        codes,
        codes,
        outputs,
        deltas,
        none,
        none,
        gradients,
        first,
        groups,
        columns,
        narrow,
        delta_copy=delta_copy,
    )
    return program, outputs, deltas, gradients


def sparse_inputs(rng, dtype, n=N_SAMPLES):
    x = rng.uniform(0, 1, (n, N_FEATURES)).astype(dtype)
    x[rng.uniform(size=x.shape) < 0.7] = 0
    return x


@pytest.mark.parametrize("first", FIRST.values(), ids=FIRST.keys())
def test_sweeps_match_numpy(first, dtype, rng):
    """forward, backward and the fused update give NumPy's outputs, deltas and gradients."""
    layers = two_layers(dtype)
    program, outputs, deltas, gradients = program_for(layers, dtype, first)
    n = N_SAMPLES - 2  # fewer rows than the capacity
    x = sparse_inputs(rng, dtype, n)
    program.forward(x, n, training=True)
    hidden = reference.dense_forward(x, layers[0].W, layers[0].b, True)
    logits = reference.dense_forward(hidden, layers[1].W, layers[1].b, False)
    assert_close(outputs[0][:n], hidden)
    assert_close(outputs[1][:n], logits)

    top = rng.standard_normal((n, N_CLASSES)).astype(dtype)
    deltas[1][:n] = top
    program.backward(x, n, True)
    delta_hidden = reference.relu_backward(hidden, reference.dense_input_grad(top, layers[1].W))
    assert_close(deltas[0][:n], delta_hidden)
    for got, wanted in zip(
        gradients,
        [*reference.dense_param_grad(x, delta_hidden), *reference.dense_param_grad(hidden, top)],
        strict=True,
    ):
        assert_close(got, wanted)

    before = [w.copy() for layer in layers for w in (layer.W, layer.b)]
    program.apply(x, n, -0.5)
    for after, start, gradient in zip(
        [w for layer in layers for w in (layer.W, layer.b)], before, gradients, strict=True
    ):
        assert_close(after, start - 0.5 * gradient)


@pytest.mark.parametrize("given", ["another array", "fewer rows"])
def test_a_sparse_first_layer_groups_the_columns_of_the_x_it_is_given(given, dtype, rng):
    """A training forward groups x's columns for the weight gradient as well; a backward
    pass given another array, or fewer of x's rows, groups those: X.T @ delta of its X."""
    layers = two_layers(dtype)
    program, _, deltas, gradients = program_for(layers, dtype, _program.FIRST_SPARSE)
    x = sparse_inputs(rng, dtype)
    program.forward(x, N_SAMPLES, training=True)
    inputs = sparse_inputs(rng, dtype) if given == "another array" else x[: N_SAMPLES - 3]
    n = inputs.shape[0]
    deltas[1][:n] = rng.standard_normal((n, N_CLASSES))
    program.backward(inputs, n, True)
    dW, db = reference.dense_param_grad(inputs, deltas[0][:n])
    assert_close(gradients[0], dW)
    assert_close(gradients[1], db)


def backpropagated(dtype, rng, l2=0.0, first=_program.FIRST_DENSE, gradients=False):
    """A Program of two_layers after a training forward pass on sparse inputs x and a
    backward pass of random top deltas; (layers, program, outputs, deltas, gradients, x)."""
    layers = two_layers(dtype, l2=l2)
    program, outputs, deltas, grads = program_for(layers, dtype, first)
    x = sparse_inputs(rng, dtype)
    program.forward(x, N_SAMPLES, training=True)
    deltas[1][:] = rng.standard_normal((N_SAMPLES, N_CLASSES))
    program.backward(x, N_SAMPLES, gradients)
    return layers, program, outputs, deltas, grads, x


def test_penalised_update_matches_numpy(dtype, rng):
    """apply on a layer with L2: W := (1 + 2 s l2) W + s dW, b := b + s db."""
    layers, program, _, _, gradients, x = backpropagated(dtype, rng, l2=0.1, gradients=True)
    dW, db = gradients[0].copy(), gradients[1].copy()
    W, b = layers[0].W.copy(), layers[0].b.copy()
    program.apply(x, N_SAMPLES, -0.25)
    assert_close(layers[0].W, (1 - 2 * 0.25 * 0.1) * W - 0.25 * dW)
    assert_close(layers[0].b, b - 0.25 * db)


def test_fused_bound_bounds_the_update(dtype, rng):
    """fused_bound is at least the largest |w| apply leaves."""
    layers, program, _, _, _, x = backpropagated(dtype, rng)
    weights = max(np.abs(w).max() for layer in layers for w in (layer.W, layer.b))
    bound = program.fused_bound(x, N_SAMPLES, -3.0, float(weights), float(np.abs(x).max()))
    program.apply(x, N_SAMPLES, -3.0)
    assert max(np.abs(w).max() for layer in layers for w in (layer.W, layer.b)) <= bound


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_weight_bound_is_the_largest_magnitude_of_the_weights(dtype, threads, rng):
    """weight_bound: max |w| over every W and b, inf for a NaN or inf in any, read from the
    live arrays at each call, the same on any number of threads, with a W small enough for
    one thread and one large enough for several (the largest anywhere in it)."""
    layers = [
        fastnaive.NaiveDense(N_FEATURES, 12000, "relu", dtype=dtype, seed=0),
        fastnaive.NaiveDense(12000, N_CLASSES, None, dtype=dtype, seed=1),
    ]
    codes = [_activations.RELU, _activations.LINEAR]
    outputs = [np.empty((1, layer.output_size), dtype) for layer in layers]
    none = [None, None]
    program = _program.Program(layers, none, codes, codes, outputs, none, none, none)
    arrays = [w for layer in layers for w in (layer.W, layer.b)]
    for w in arrays:
        w[...] = rng.normal(0, 1, w.shape)
    for w in arrays:
        for at in (0, w.size // 3, w.size - 1):
            saved = w.flat[at]
            w.flat[at] = -7.5
            assert program.weight_bound(threads) == 7.5
            for special in (np.nan, np.inf, -np.inf):
                w.flat[at] = special
                assert program.weight_bound(threads) == np.inf
            w.flat[at] = saved
    assert program.weight_bound(threads) == max(float(np.abs(w).max()) for w in arrays)


def test_holds_tells_the_arrays_it_was_built_on():
    layers = two_layers("float32")
    program = program_for(layers, "float32", _program.FIRST_DENSE)[0]
    arrays = [w for layer in layers for w in (layer.W, layer.b)]
    assert program.holds(arrays) and program.holds(list(arrays))
    assert not program.holds(arrays[:3])
    assert not program.holds([arrays[0], arrays[1], arrays[2], arrays[3].copy()])
    layers[0].W = layers[0].W.copy()
    assert program.holds(arrays) and not program.holds([layers[0].W, *arrays[1:]])


def expected_fused_bound(input_bound, hidden, deltas, scale, weight_bound):
    """fused_bound's value in NumPy for a two-layer Program: per layer, the largest of
    n max|delta| max(max|input|, 1) and weight_bound + |scale| times it (input_bound
    standing for the first layer's max|x|)."""
    bound = 0.0
    for largest, delta in zip([input_bound, np.abs(hidden).max()], deltas, strict=True):
        sums = delta.shape[0] * float(np.abs(delta).max()) * max(float(largest), 1.0)
        bound = max(bound, sums, weight_bound + abs(scale) * sums)
    return bound


@pytest.mark.parametrize("column", [0, -1], ids=["vectors", "scalar tail"])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_fused_bound_of_a_narrow_head_is_measured_by_the_input_gradient(
    threads, column, dtype, instruction_set, rng
):
    """Under a narrow head (no BLAS), the input gradient measures the hidden layer's outputs
    and deltas as it stores them, in slices of rows on the threads: fused_bound is the same
    value as from the arrays themselves, and a NaN there makes it inf. A forward pass
    forgets what it measured (the arrays are scanned again). The largest outputs and deltas
    lie in the last thread's rows, in a column of the kernel's vectors or of its scalar
    tail (700 columns: not a whole number of tiles on any instruction set)."""
    n, hidden, scale, weight_bound = 96, 700, -0.5, 2.0  # a product worth two threads
    layers = [
        fastnaive.NaiveDense(N_FEATURES, hidden, "relu", dtype=dtype, seed=0),
        fastnaive.NaiveDense(hidden, N_CLASSES, "softmax", dtype=dtype, seed=1),
    ]
    program, outputs, deltas, _ = program_for(
        layers, dtype, _program.FIRST_DENSE, capacity=n, narrow=[False, True]
    )
    layers[0].W[:, column] *= 50
    layers[1].W[column] *= 50
    x = sparse_inputs(rng, dtype, n)
    x[-1] *= 50
    x_bound = float(np.abs(x).max())
    program.forward(x, n, training=True)
    deltas[1][:] = rng.standard_normal((n, N_CLASSES))
    deltas[1][-1] *= 50
    program.backward(x, n, False, n_threads=threads)
    assert_close(deltas[0], reference.relu_backward(outputs[0], deltas[1] @ layers[1].W.T))
    # The hidden layer's deltas weigh most with a large bound of |x|, its outputs without.
    for input_bound in (x_bound, 1e6 * x_bound):
        expected = expected_fused_bound(input_bound, outputs[0], deltas, scale, weight_bound)
        assert program.fused_bound(x, n, scale, weight_bound, input_bound) == expected

    outputs[0][n // 2, 3] = np.nan
    program.backward(x, n, False, n_threads=threads)
    assert program.fused_bound(x, n, scale, weight_bound, x_bound) == np.inf

    program.forward(x, n, training=True)
    deltas[0][:] = 0
    deltas[0][n - 1, 0] = 1e3
    expected = expected_fused_bound(1e6, outputs[0], deltas, scale, weight_bound)
    assert program.fused_bound(x, n, scale, weight_bound, 1e6) == expected


@pytest.mark.parametrize("activation", ["relu", "tanh", "gelu"])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_a_dense_input_gradient_applies_the_derivative_and_measures_its_blocks(
    threads, activation, dtype, rng
):
    """The GEMM input gradient of a hidden layer applies the previous layer's activation
    derivative in each block as it stores it, with the bits of the derivative applied after
    the whole product; without gradients it measures that layer's outputs and deltas there
    too: fused_bound is the value from the arrays themselves, a NaN in them makes it inf,
    and the largest values lie in the last column block of a product cut in blocks where
    the machine has several processors (2.1M multiply-adds)."""
    n, hidden, classes, scale, weight_bound = 128, 260, 64, -0.5, 2.0
    layers = [
        fastnaive.NaiveDense(N_FEATURES, hidden, activation, dtype=dtype, seed=0),
        fastnaive.NaiveDense(hidden, classes, "softmax", dtype=dtype, seed=1),
    ]
    code = getattr(_activations, activation.upper())
    pre = np.empty((n, hidden), dtype) if code in _activations.NEEDS_PRE_ACTIVATION else None
    outputs = [np.empty((n, m), dtype) for m in (hidden, classes)]
    deltas = [np.empty((n, m), dtype) for m in (hidden, classes)]
    program = _program.Program(
        layers,
        [None, None],
        [code, _activations.LINEAR],
        [code, _activations.LINEAR],
        outputs,
        deltas,
        [None, None],
        [pre, None],
        [np.empty_like(w) for layer in layers for w in (layer.W, layer.b)],
        _program.FIRST_DENSE,
        narrow=[False, False],
    )
    layers[0].W[:, -1] *= 50
    layers[1].W[-1] *= 50
    x = sparse_inputs(rng, dtype, n)
    program.forward(x, n, training=True)
    deltas[1][:] = rng.standard_normal((n, classes))
    deltas[1][-1] *= 50
    expected = np.empty_like(deltas[0])
    _kernels.dense_input_grad_checked(deltas[1], layers[1].W, expected)
    z = outputs[0] if pre is None else pre
    _activations.activation_backward_checked(code, outputs[0], z, expected)
    for gradients in (True, False):
        program.backward(x, n, gradients, n_threads=threads)
        np.testing.assert_array_equal(deltas[0], expected)
    for input_bound in (1.0, 1e6):
        bound = expected_fused_bound(input_bound, outputs[0], deltas, scale, weight_bound)
        assert program.fused_bound(x, n, scale, weight_bound, input_bound) == bound

    outputs[0][n // 2, -2] = np.nan
    program.backward(x, n, False, n_threads=threads)
    assert program.fused_bound(x, n, scale, weight_bound, 1.0) == np.inf


def test_fused_bound_of_a_sparse_first_layer_takes_the_batch_it_grouped(dtype, rng):
    """A training forward pass on the sparse kernels measures max |x| as it groups x's rows:
    fused_bound takes it where the caller's bound of |x| is larger (inf: unknown), plus the
    offsets' largest magnitude when it groups x's distances from them. For an x it did not
    group, the caller's bound stands."""
    n, scale, weight_bound = N_SAMPLES, -0.5, 2.0
    layers = two_layers(dtype)
    program, outputs, deltas, _ = program_for(layers, dtype, _program.FIRST_SPARSE)
    x = sparse_inputs(rng, dtype, n)
    x[n - 1, N_FEATURES - 1] = 40.0
    program.forward(x, n, training=True)
    deltas[1][:] = rng.standard_normal((n, N_CLASSES))
    program.backward(x, n, False)
    for given in (np.inf, 1e6, 40.0, 20.0):
        expected = expected_fused_bound(min(given, 40.0), outputs[0], deltas, scale, 2.0)
        assert program.fused_bound(x, n, scale, weight_bound, given) == expected
    other = x.copy()
    assert program.fused_bound(other, n, scale, weight_bound, np.inf) == np.inf

    x[0, 0] = np.nan
    program.forward(x, n, training=True)
    program.backward(x, n, False)
    assert program.fused_bound(x, n, scale, weight_bound, np.inf) == np.inf

    offsets = np.full(N_FEATURES, -3.0, dtype)
    shifted = _program.Program(
        layers,
        [None, None],
        [_activations.RELU, _activations.LINEAR],
        [_activations.RELU, _activations.LINEAR],
        outputs,
        deltas,
        [None, None],
        [None, None],
        [np.empty_like(w) for layer in layers for w in (layer.W, layer.b)],
        _program.FIRST_SPARSE,
        _sparse.group_buffers(n, N_FEATURES, dtype, by_rows=True),
        _sparse.group_buffers(N_FEATURES, n, dtype, by_rows=False),
        None,
        offsets,
    )
    inputs = sparse_inputs(rng, dtype, n) + offsets
    shifted.forward(inputs, n, training=True)
    shifted.backward(inputs, n, False)
    largest = float(np.abs(inputs - offsets).max()) + 3.0
    assert largest >= np.abs(inputs).max()
    expected = expected_fused_bound(largest, outputs[0], deltas, scale, weight_bound)
    assert shifted.fused_bound(inputs, n, scale, weight_bound, np.inf) == expected


def zero_state(layers, per_array, dtype="float32"):
    return [
        [np.zeros(w.size, dtype) for _ in range(per_array)]
        for layer in layers
        for w in (layer.W, layer.b)
    ]


def test_element_rules_match_numpy(dtype, rng):
    """apply_rule: each layer's gradients X.T @ delta + 2 l2 W and sum_rows(delta) in the
    gradient buffers, and Adam's or Nesterov momentum's step on every weight and its state."""
    for kind, per_array in ((_kernels.ADAM_RULE, 2), (_kernels.NESTEROV_RULE, 1)):
        layers, program, outputs, deltas, gradients, x = backpropagated(
            dtype, rng, l2=0.1, first=_program.FIRST_SPARSE
        )
        hidden = outputs[0].copy()
        expected = [
            *reference.dense_param_grad(x, deltas[0]),
            *reference.dense_param_grad(hidden, deltas[1]),
        ]
        expected[0] = expected[0] + 2 * 0.1 * layers[0].W
        state = zero_state(layers, per_array, dtype)
        for entry in state:
            for a in entry:
                a[:] = rng.uniform(0.5, 1, a.shape)
        before = [w.copy() for layer in layers for w in (layer.W, layer.b)]
        slots = [[a.copy() for a in entry] for entry in state]
        rule = (kind, 0.25, 0.5, 0.01, 0.1, 0.001, 1e-3)
        program.apply_rule(x, N_SAMPLES, rule, state)
        after = [w for layer in layers for w in (layer.W, layer.b)]
        for got, wanted in zip(gradients, expected, strict=True):
            assert_close(got, wanted)
        for w, w0, g, s0, s1 in zip(after, before, expected, slots, state, strict=True):
            g = g.reshape(-1)
            if kind == _kernels.ADAM_RULE:
                m = s0[0] + (g - s0[0]) * 0.1
                v = s0[1] + (g * g - s0[1]) * 0.001
                assert_close(s1[0], m)
                assert_close(s1[1], v)
                assert_close(w.reshape(-1), w0.reshape(-1) - m * 0.01 / (np.sqrt(v) + 1e-3))
            else:
                velocity = 0.5 * s0[0] - 0.25 * g
                assert_close(s1[0], velocity)
                assert_close(w.reshape(-1), w0.reshape(-1) + 0.5 * velocity - 0.25 * g)


def test_a_held_tuple_state_steps_its_arrays(dtype):
    """apply_rule takes a tuple of tuples it has bound as it is (Update.rule gives one at every
    step): three steps on it leave the bits three steps on a list leave, which is checked at
    every call; given with another rule's kind, the tuple is checked again."""
    results = []
    for container in (list, tuple):
        layers, program, _, _, _, x = backpropagated(dtype, np.random.default_rng(5))
        state = container(container(entry) for entry in zero_state(layers, 2, dtype))
        for _ in range(3):
            program.apply_rule(x, N_SAMPLES, ADAM, state)
        weights = [w.copy() for layer in layers for w in (layer.W, layer.b)]
        results.append([a.copy() for entry in state for a in entry] + weights)
    for got, wanted in zip(results[1], results[0], strict=True):
        np.testing.assert_array_equal(got, wanted)
    momentum = (_kernels.MOMENTUM_RULE, 0.1, 0.9, 0.0, 0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="1 state array"):
        program.apply_rule(x, N_SAMPLES, momentum, state)


def test_gradient_bound_bounds_the_gradients(dtype, rng):
    """gradient_bound is at least the largest |g| apply_rule feeds its rule (with L2)."""
    layers, program, _, _, gradients, x = backpropagated(dtype, rng, l2=0.5)
    weights = max(np.abs(w).max() for layer in layers for w in (layer.W, layer.b))
    bound = program.gradient_bound(x, N_SAMPLES, float(weights), float(np.abs(x).max()))
    rule = (_kernels.MOMENTUM_RULE, 0.1, 0.9, 0.0, 0.0, 0.0, 0.0)
    program.apply_rule(x, N_SAMPLES, rule, zero_state(layers, 1, dtype))
    assert max(np.abs(g).max() for g in gradients) <= bound


@pytest.mark.parametrize("scale", [-0.5, None], ids=["fused", "rule"])
@pytest.mark.parametrize("first", FIRST.values(), ids=FIRST.keys())
def test_train_is_the_passes_it_stands_for(first, scale, dtype, rng):
    """train: the training forward, the loss into the last deltas, backward without
    gradients and the update's bound (fused_bound with a scale, gradient_bound without),
    bit for bit as the separate calls give them, with the penalty added to the loss."""
    n = N_SAMPLES - 2
    x = sparse_inputs(rng, dtype, n)
    labels = rng.integers(0, N_CLASSES, n).astype(np.intp)
    weights = rng.uniform(0.5, 2, n).astype(dtype)
    separate, together = (program_for(two_layers(dtype, l2=0.1), dtype, first) for _ in range(2))
    program, outputs, deltas, _ = separate
    program.forward(x, n, training=True, first_row=3, iteration=7)
    loss, hits = _losses.loss_and_hits(
        _losses.SPARSE_CATEGORICAL, outputs[1][:n], labels, deltas[1][:n], weights, 0.25
    )
    program.backward(x, n, False, 3, 7)
    if scale is None:
        bound = program.gradient_bound(x, n, 2.0, 1.0)
    else:
        bound = program.fused_bound(x, n, scale, 2.0, 1.0)

    program, outputs_, deltas_, _ = together
    got = program.train(
        x, n, _losses.SPARSE_CATEGORICAL, labels, weights, 0.25, 0.125, 3, 7, scale, 2.0, 1.0
    )
    assert got == (loss + 0.125, hits, bound)
    for a, b in zip(outputs + deltas, outputs_ + deltas_, strict=True):
        np.testing.assert_array_equal(a[:n], b[:n])


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("hidden", ["relu", "tanh"])
@pytest.mark.parametrize("first", FIRST.values(), ids=FIRST.keys())
def test_train_of_a_narrow_head_is_the_passes_it_stands_for(first, hidden, threads, dtype, rng):
    """Under a narrow linear head, train runs the head's product, the loss and the head's
    input gradient as one pass over the loss's blocks of rows, each thread on its own
    blocks, and there adds the sparse first layer's partial sums where its threads left
    them (300 features: two parts): bit for bit what the separate passes give, and the same
    bits at any number of threads. 120 rows: 8 blocks, the last one short; 120 x 160 x 10
    multiply-adds: worth a parallel region."""
    n, n_features, n_hidden, n_classes = 120, 300, 160, 10
    layers = [
        fastnaive.NaiveDense(n_features, n_hidden, hidden, dtype=dtype, seed=0),
        fastnaive.NaiveDense(n_hidden, n_classes, "softmax", dtype=dtype, seed=1),
    ]
    x = rng.uniform(0, 1, (n, n_features)).astype(dtype)
    x[rng.uniform(size=x.shape) < 0.5] = 0
    labels = rng.integers(0, n_classes, n).astype(np.intp)
    weights = rng.uniform(0.5, 2, n).astype(dtype)
    args = (x, n, _losses.SPARSE_CATEGORICAL, labels, weights, 1 / n, 0.125, 3, 7, -0.5, 2.0, 1.0)

    program, outputs, deltas, _ = program_for(layers, dtype, first, n, narrow=[False, True])
    program.forward(x, n, training=True, first_row=3, iteration=7, n_threads=threads)
    loss, hits = _losses.loss_and_hits(
        _losses.SPARSE_CATEGORICAL, outputs[1], labels, deltas[1], weights, 1 / n, threads
    )
    program.backward(x, n, False, 3, 7, n_threads=threads)
    bound = program.fused_bound(x, n, -0.5, 2.0, 1.0)
    separate = [a.copy() for a in outputs + deltas]

    for n_threads in (threads, 1):
        program, outputs, deltas, _ = program_for(layers, dtype, first, n, narrow=[False, True])
        assert program.train(*args, n_threads) == (loss + 0.125, hits, bound)
        for a, b in zip(separate, outputs + deltas, strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("narrow", [None, [False, True]], ids=["BLAS head", "narrow head"])
def test_train_stops_at_a_loss_that_is_not_finite(narrow, rng):
    """A NaN in the inputs: train returns the loss with no bound, before the backward pass
    (under a narrow head, whose input gradient runs with the loss, before the layers below
    the head)."""
    program, _, deltas, _ = program_for(
        two_layers("float32"), "float32", _program.FIRST_DENSE, narrow=narrow
    )
    x = sparse_inputs(rng, "float32")
    x[2, 3] = np.nan
    deltas[0].fill(7)
    labels = np.zeros(N_SAMPLES, np.intp)
    loss, _, bound = program.train(
        x, N_SAMPLES, _losses.SPARSE_CATEGORICAL, labels, None, 1.0, 0.0, 0, 0, -1.0, 1.0, 1.0
    )
    assert np.isnan(loss) and bound is None
    if narrow is None:
        assert (deltas[0] == 7).all()


STEPS = {
    "sgd": (-0.5, None, 0),
    "momentum": (None, (_kernels.NESTEROV_RULE, 0.25, 0.5, 0.0, 0.0, 0.0, 0.0), 1),
    "adam": (None, (_kernels.ADAM_RULE, 0.0, 0.0, 0.01, 0.1, 0.001, 1e-3), 2),
}


def train_arguments(x, labels, weights, scale):
    """Program.train's arguments for the rows of x (its loss's scale 0.25, a penalty of
    0.125, from row 3 at step 7, weight and input bounds 2 and 1)."""
    n = x.shape[0]
    return (x, n, _losses.SPARSE_CATEGORICAL, labels, weights, 0.25, 0.125, 3, 7, scale, 2.0, 1.0)


def train_and_update_arguments(x, labels, weights, scale, rule, state, slots, limit, counters):
    """Program.train_and_update's: train_arguments', one thread, then the step's."""
    return (*train_arguments(x, labels, weights, scale), 1, rule, state, slots, limit, *counters)


@pytest.mark.parametrize("step", STEPS.values(), ids=STEPS.keys())
@pytest.mark.parametrize("first", FIRST.values(), ids=FIRST.keys())
def test_train_and_update_is_train_then_the_guarded_step(first, step, dtype, rng):
    """train_and_update: train's passes, then the step's bound (with a rule, the change
    bound of _kernels.change_bound_checked on the gradient bound, its slots advanced) and,
    below the limit, apply's or apply_rule's step with both counters counted: the same bits,
    state and bound as those calls one after the other. At or above the limit, nothing is
    written but the slots, advanced once, and the bound is returned for the guarded step."""
    scale, rule, per_array = step
    n = N_SAMPLES - 2
    x = sparse_inputs(rng, dtype, n)
    labels = rng.integers(0, N_CLASSES, n).astype(np.intp)
    weights = rng.uniform(0.5, 2, n).astype(dtype)
    results = []
    for together in (False, True):
        layers = two_layers(dtype, l2=0.1)
        program, outputs, deltas, _ = program_for(layers, dtype, first)
        state = tuple(tuple(entry) for entry in zero_state(layers, per_array, dtype))
        slots, counters = np.array([0.5, 0.25]), (np.zeros(1, np.int64), np.zeros(1, np.int64))
        if together:
            got = program.train_and_update(
                *train_and_update_arguments(
                    x, labels, weights, scale, rule, state, slots, np.inf, counters
                )
            )
        else:
            loss, hits, bound = program.train(*train_arguments(x, labels, weights, scale))
            if rule is None:
                program.apply(x, n, scale)
            else:
                change, state_bound = _kernels.change_bound_checked(rule, slots, bound)
                bound = _kernels.largest_bound_checked(2.0 + change, state_bound, bound)
                program.apply_rule(x, n, rule, state)
            got = (loss, hits, bound, True)
            for counter in counters:
                counter += 1
        arrays = [w for layer in layers for w in (layer.W, layer.b)]
        arrays += [a for entry in state for a in entry] + [slots, *counters]
        results.append((got, [a.copy() for a in arrays] + [a[:n].copy() for a in outputs + deltas]))
    assert results[1][0] == results[0][0]
    assert results[1][0][2] > 0
    for got, wanted in zip(results[1][1], results[0][1], strict=True):
        np.testing.assert_array_equal(got, wanted)

    # At the limit: the passes and the slots alone.
    layers = two_layers(dtype, l2=0.1)
    program, _, _, _ = program_for(layers, dtype, first)
    before = [w.copy() for layer in layers for w in (layer.W, layer.b)]
    state = tuple(tuple(entry) for entry in zero_state(layers, per_array, dtype))
    slots, counters = np.array([0.5, 0.25]), (np.zeros(1, np.int64), np.zeros(1, np.int64))
    bound = results[0][0][2]
    got = program.train_and_update(
        *train_and_update_arguments(x, labels, weights, scale, rule, state, slots, bound, counters)
    )
    assert got == (*results[0][0][:3], False)
    for w, w0 in zip((w for layer in layers for w in (layer.W, layer.b)), before, strict=True):
        np.testing.assert_array_equal(w, w0)
    assert all((a == 0).all() for entry in state for a in entry)
    np.testing.assert_array_equal(slots, results[0][1][len(before) + len(state) * per_array])
    assert [int(c[0]) for c in counters] == [0, 0]


def test_train_and_update_takes_no_step_after_a_loss_that_is_not_finite(rng):
    """A NaN in the inputs: no bound, no step, the slots and counters as they were."""
    layers = two_layers("float32")
    program, _, _, _ = program_for(layers, "float32", _program.FIRST_DENSE)
    before = [w.copy() for layer in layers for w in (layer.W, layer.b)]
    x = sparse_inputs(rng, "float32")
    x[2, 3] = np.nan
    labels = np.zeros(N_SAMPLES, np.intp)
    slots, counters = np.array([0.5, 0.25]), (np.zeros(1, np.int64), np.zeros(1, np.int64))
    state = tuple(tuple(entry) for entry in zero_state(layers, 2, "float32"))
    loss, _, bound, applied = program.train_and_update(
        *train_and_update_arguments(
            x, labels, None, None, STEPS["adam"][1], state, slots, np.inf, counters
        )
    )
    assert np.isnan(loss) and bound is None and not applied
    for w, w0 in zip((w for layer in layers for w in (layer.W, layer.b)), before, strict=True):
        np.testing.assert_array_equal(w, w0)
    np.testing.assert_array_equal(slots, [0.5, 0.25])
    assert [int(c[0]) for c in counters] == [0, 0]


def test_change_bound_is_each_optimizers_bound(rng):
    """_kernels.change_bound_checked, what every optimizer's change_bound and a Program's
    train_and_update compute: SGD's learning_rate * g; momentum's velocity bound v := m v + lr
    g (Nesterov's step m v + lr g); Adam's alpha m / epsilon with the moments' bounds m :=
    beta_1 m + (1 - beta_1) g, v := beta_2 v + (1 - beta_2) g^2 and the state's bound the
    largest of g + m, g^2 + v (the kernel's intermediates) and m alpha; inf for a NaN."""
    g = 3.0
    slots = np.array([0.5, 0.25])
    plain = (_kernels.PLAIN_RULE, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0)
    assert _kernels.change_bound_checked(plain, slots, g) == (0.1 * g, 0.0)
    np.testing.assert_array_equal(slots, [0.5, 0.25])
    nesterov = (_kernels.NESTEROV_RULE, 0.1, 0.9, 0.0, 0.0, 0.0, 0.0)
    velocity = 0.9 * 0.5 + 0.1 * g
    assert _kernels.change_bound_checked(nesterov, slots, g) == (0.9 * velocity + 0.1 * g, velocity)
    np.testing.assert_array_equal(slots, [velocity, 0.25])
    slots = np.array([0.5, 0.25])
    adam = (_kernels.ADAM_RULE, 0.0, 0.0, 0.01, 0.1, 0.001, 1e-3)
    m, v = 0.9 * 0.5 + 0.1 * g, 0.999 * 0.25 + 0.001 * g * g
    change, state = _kernels.change_bound_checked(adam, slots, g)
    assert change == pytest.approx(0.01 * m / 1e-3, rel=1e-15)
    assert state == pytest.approx(max(g + 0.5, g * g + 0.25, m * 0.01), rel=1e-15)
    np.testing.assert_allclose(slots, [m, v], rtol=1e-15)
    assert _kernels.change_bound_checked(adam, slots, np.nan)[1] == np.inf
    assert _kernels.largest_bound_checked(1.0, np.nan, 2.0) == np.inf
    assert _kernels.largest_bound_checked(1.0, 3.0, 2.0) == 3.0
    with pytest.raises(ValueError, match="Expected slots of 2 elements"):
        _kernels.change_bound_checked(adam, np.zeros(1), g)
    with pytest.raises(ValueError, match="kind in"):
        _kernels.change_bound_checked((7, *adam[1:]), slots, g)


ADAM = (_kernels.ADAM_RULE, 0.0, 0.0, 0.01, 0.1, 0.001, 1e-7)


def bad_step(scale, rule=None, per_array=0, slots=None, counters=(1, 1)):
    """A call of train_and_update with these arguments (state arrays: per_array a weight;
    counters: their sizes)."""

    def call(program, x):
        state = zero_state(two_layers("float32"), per_array) if per_array else None
        counts = tuple(np.zeros(size, np.int64) for size in counters)
        labels = np.zeros(N_SAMPLES, np.intp)
        arguments = (x, labels, None, scale, rule, state, slots, 1.0, counts)
        return program.train_and_update(*train_and_update_arguments(*arguments))

    return call


BAD_CALLS = {
    "more rows than the capacity": lambda p, x: p.forward(x, N_SAMPLES + 1),
    "x of other rows than n": lambda p, x: p.forward(x[:3], 4),
    "x of other features": lambda p, x: p.backward(x[:, :-1], N_SAMPLES, True),
    "no x": lambda p, x: p.apply(None, N_SAMPLES, 1.0),
    "negative first row": lambda p, x: p.forward(x, N_SAMPLES, first_row=-1),
    "out of another shape": lambda p, x: p.forward(x, N_SAMPLES, out=np.empty((N_SAMPLES, 3))),
    "a rule of no kind": lambda p, x: p.apply_rule(
        x, N_SAMPLES, (0, *ADAM[1:]), zero_state(two_layers("float32"), 2)
    ),
    "a rule too short": lambda p, x: p.apply_rule(
        x, N_SAMPLES, ADAM[:-1], zero_state(two_layers("float32"), 2)
    ),
    "one state array for Adam": lambda p, x: p.apply_rule(
        x, N_SAMPLES, ADAM, zero_state(two_layers("float32"), 1)
    ),
    "state of another dtype": lambda p, x: p.apply_rule(
        x, N_SAMPLES, ADAM, zero_state(two_layers("float32"), 2, "float64")
    ),
    "read-only state": lambda p, x: p.apply_rule(
        x,
        N_SAMPLES,
        ADAM,
        [[read_only(a) for a in e] for e in zero_state(two_layers("float32"), 2)],
    ),
    "state of one layer": lambda p, x: p.apply_rule(
        x, N_SAMPLES, ADAM, zero_state(two_layers("float32")[:1], 2)
    ),
    "labels of other rows": lambda p, x: p.train(
        x, N_SAMPLES, 0, np.zeros(N_SAMPLES - 1, np.intp), None, 1.0, 0.0, 0, 0, -1.0, 1.0, 1.0
    ),
    "sample weights of other rows": lambda p, x: p.train(
        x,
        N_SAMPLES,
        0,
        np.zeros(N_SAMPLES, np.intp),
        np.ones(2, "float32"),
        1.0,
        0.0,
        0,
        0,
        -1.0,
        1.0,
        1.0,
    ),
    "a step of no rule nor scale": bad_step(None),
    "a step of a rule and a scale": bad_step(-1.0, ADAM, 2, np.zeros(2)),
    "Adam's slots of one element": bad_step(None, ADAM, 2, np.zeros(1)),
    "a counter of two elements": bad_step(-1.0, counters=(2, 1)),
    "a loss of no code": lambda p, x: p.train(
        x, N_SAMPLES, 9, np.zeros(N_SAMPLES, np.intp), None, 1.0, 0.0, 0, 0, -1.0, 1.0, 1.0
    ),
}


@pytest.mark.parametrize("call", BAD_CALLS.values(), ids=BAD_CALLS.keys())
def test_bad_calls_raise(call, rng):
    program = program_for(two_layers("float32"), "float32", _program.FIRST_SPARSE)[0]
    with pytest.raises(ValueError, match=EXPECTED_RECEIVED):
        call(program, sparse_inputs(rng, "float32"))


def test_training_sweeps_need_training_buffers(rng):
    layers = two_layers("float32")
    codes = [_activations.RELU, _activations.LINEAR]
    outputs = [np.empty((5, N_HIDDEN), "float32"), np.empty((5, N_CLASSES), "float32")]
    deltas = [None, np.empty((5, N_CLASSES), "float32")]
    program = _program.Program(
        layers, [None] * 2, codes, codes, outputs, deltas, [None] * 2, [None] * 2
    )
    x = sparse_inputs(rng, "float32", 5)
    program.forward(x, 5)
    assert_close(outputs[1], reference.forward(fastnaive.NaiveSequential(layers), x)[1])
    for call in (
        lambda: program.backward(x, 5, False),
        lambda: program.fused_bound(x, 5, 1.0, 1.0, 1.0),
        lambda: program.apply(x, 5, 1.0),
        lambda: program.train(x, 5, 0, np.zeros(5, np.intp), None, 1.0, 0.0, 0, 0, 1.0, 1.0, 1.0),
    ):
        with pytest.raises(ValueError, match=EXPECTED_RECEIVED):
            call()


def test_bad_buffers_raise():
    layers = two_layers("float32")
    codes = [_activations.RELU, _activations.LINEAR]
    outputs = [np.empty((5, N_HIDDEN), "float32"), np.empty((5, N_CLASSES + 1), "float32")]
    with pytest.raises(ValueError, match=EXPECTED_RECEIVED):
        _program.Program(
            layers, [None, None], codes, codes, outputs, [None, None], [None] * 2, [None] * 2
        )
    outputs[1] = np.empty((5, N_CLASSES), "float32")
    with pytest.raises(ValueError, match=EXPECTED_RECEIVED):
        _program.Program(
            layers, [None, None], codes, [0, 99], outputs, [None] * 2, [None] * 2, [None] * 2
        )
    with pytest.raises(ValueError, match=EXPECTED_RECEIVED):
        _program.Program(
            layers,
            [None, None],
            codes,
            codes,
            outputs,
            [None] * 2,
            [None] * 2,
            [None] * 2,
            first=_program.FIRST_SPARSE,
            row_groups=_sparse.group_buffers(2, N_FEATURES, "float32", by_rows=True),
        )


@pytest.mark.parametrize(
    "first, rows, width, dtype",
    [
        (_program.FIRST_SPARSE, N_SAMPLES - 1, N_HIDDEN + 16, "float32"),
        (_program.FIRST_SPARSE, N_SAMPLES, N_HIDDEN, "float32"),
        (_program.FIRST_DENSE, N_SAMPLES, N_HIDDEN + 16, "float32"),
        (_program.FIRST_SPARSE, N_SAMPLES, N_HIDDEN + 16, "float64"),
    ],
    ids=["too-few-rows", "not-wider", "dense-first-layer", "other-dtype"],
)
def test_a_bad_delta_copy_raises(first, rows, width, dtype):
    """The weight gradient's copy of delta (sparse_param_grad's padded) must hold every row
    of a batch in longer rows of the layers' dtype, and serves only a sparse first layer."""
    layers = two_layers("float32")
    copy = np.empty((rows, width), dtype)
    with pytest.raises(
        ValueError, match=r"^Expected (delta_copy None|offsets, cut and delta_copy)"
    ):
        program_for(layers, "float32", first, delta_copy=copy)


def test_weights_replaced_during_fused_fit_are_the_ones_trained(rng):
    """A callback may assign layer.W a new array: with the update fused into the GEMMs (SGD),
    the step writes that array, exactly as if nothing had been replaced."""

    def replace(batch, logs):
        layer = model.layers[batch % 2]
        layer.W = layer.W.copy()

    x = sparse_inputs(rng, "float32", 64)
    y = rng.integers(0, N_CLASSES, 64)
    model, expected = (
        fastnaive.NaiveSequential(two_layers("float32")),
        fastnaive.NaiveSequential(two_layers("float32")),
    )
    callbacks = [LambdaCallback(on_batch_end=replace)]
    optimizer = fastnaive.optimizers.SGD(0.1)
    fastnaive.fit(model, x, y, 2, 16, optimizer=optimizer, verbose=0, callbacks=callbacks)
    fastnaive.fit(expected, x, y, 2, 16, optimizer=fastnaive.optimizers.SGD(0.1), verbose=0)
    for got, wanted in zip(model.weights, expected.weights, strict=True):
        np.testing.assert_array_equal(got, wanted)


def test_weights_replaced_between_training_steps_are_the_ones_trained(rng):
    """The per-batch API keeps a Step per model: a W assigned between calls is the one the
    next step reads and writes."""
    x = sparse_inputs(rng, "float32", 16)
    y = rng.integers(0, N_CLASSES, 16)
    model, expected = (
        fastnaive.NaiveSequential(two_layers("float32")),
        fastnaive.NaiveSequential(two_layers("float32")),
    )
    for net in (model, expected):
        fastnaive.one_training_step(net, x, y)
    model.layers[0].W = model.layers[0].W * 0.5
    expected.layers[0].W[...] *= 0.5
    for net in (model, expected):
        fastnaive.one_training_step(net, x, y)
    for got, wanted in zip(model.weights, expected.weights, strict=True):
        np.testing.assert_array_equal(got, wanted)


@pytest.mark.parametrize("density", [0.2, 1.0], ids=["sparse", "dense"])
def test_a_training_steps_buffers_start_on_cache_lines(density, rng):
    """Each layer's outputs, deltas, dropout outputs and pre-activations start on a 64-byte
    boundary (a large NumPy array starts 16 or 48 bytes past one), so that no vector load or
    store of the kernels on their rows crosses a cache line."""
    model = fastnaive.NaiveSequential(
        [
            fastnaive.NaiveDense(100, 64, "gelu", seed=0),
            fastnaive.Dropout(0.5, seed=0),
            fastnaive.NaiveDense(64, 10, "softmax", seed=1),
        ]
    )
    x = rng.random((128, 100)).astype(np.float32)
    x[rng.random(x.shape) >= density] = 0
    step = engine.Step(model, 128, x)
    assert step.sparse_input is (density < 1)
    buffers = [*step.outputs, *step.deltas]
    buffers += [a for a in (*step.dropped, *step.pre) if a is not None]
    assert len(buffers) == 2 + 2 + 1 + 1
    assert [a.ctypes.data % 64 for a in buffers] == [0] * len(buffers)
    step.compiled()  # the Program takes them (views of byte buffers)
