"""The first layer on the inputs' distances from each feature's most common value.

Inputs whose features each sit mostly at one value other than 0 (images shifted or
standardised: the background) are dense, but their distances from those values, the
offsets c, are sparse. The first layer then runs the sparse kernels on X - c, with
X @ W = (X - c) @ W + c @ W and X.T @ delta = (X - c).T @ delta + outer(c, sum_rows(delta)):
checked here against float64 NumPy and against the GEMMs the same inputs took before.
"""

import numpy as np
import pytest
from helpers import SCALES, assert_close, assert_scaled_close, by_columns, by_rows, normal
from threadpoolctl import threadpool_limits

import fastnaive
from fastnaive import _kernels, _sparse, engine, reference

SHAPES = {"n7-13x4": (7, 13, 4), "n96-784x200": (96, 784, 200), "b128-784x512": (128, 784, 512)}


def offset_matrix(rng, shape, dtype, share=0.8, zero_columns=0.2):
    """Normal values, each replaced with probability `share` by its column's offset (0 in
    a `zero_columns` share of the columns); returns (X, offsets)."""
    X = rng.standard_normal(shape)
    offsets = rng.uniform(0.5, 1.5, shape[1]) * rng.choice([-1, 1], shape[1])
    offsets[rng.random(shape[1]) < zero_columns] = 0
    offsets = offsets.astype(dtype)
    kept = rng.random(shape) < share
    X[kept] = np.broadcast_to(offsets, shape)[kept]
    return X.astype(dtype), offsets


def shifted(X, offsets):
    return (X - offsets).astype(X.dtype)


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_forward_on_the_distances_is_the_product_of_the_inputs(shape, dtype, instruction_set, rng):
    n, k, m = shape
    X, offsets = offset_matrix(rng, (n, k), dtype)
    W, b = normal(rng, (k, m), dtype, k**-0.5), normal(rng, m, dtype)
    groups = by_rows(X, offsets=offsets)
    for relu in (True, False):
        Z = np.full((n, m), np.nan, dtype)
        _sparse.sparse_forward_checked(*groups, W, b, relu, Z, offsets=offsets)
        expected = X.astype(np.float64) @ W + b
        assert_close(Z, np.maximum(expected, 0) if relu else expected)


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_weight_gradient_on_the_distances_is_the_inputs(shape, dtype, instruction_set, rng):
    n, k, m = shape
    X, offsets = offset_matrix(rng, (n, k), dtype)
    delta = normal(rng, (n, m), dtype)
    groups = by_columns(X, offsets=offsets)
    for name, (alpha, beta) in SCALES.items():
        W, b = normal(rng, (k, m), dtype), normal(rng, m, dtype)
        if beta == 0:
            W[:], b[:] = np.nan, np.nan
        dW, db = W.copy(), b.copy()
        _sparse.sparse_param_grad_checked(*groups, delta, alpha, beta, dW, db, offsets=offsets)
        W0, b0 = (np.zeros_like(W), np.zeros_like(b)) if beta == 0 else (W, b)
        assert_close(dW, alpha * (X.T.astype(np.float64) @ delta) + beta * W0, err_msg=name)
        assert_close(db, alpha * delta.sum(axis=0, dtype=np.float64) + beta * b0, err_msg=name)


def test_zero_offsets_change_nothing(dtype, rng):
    """Rows whose offset is 0 are skipped: all-zero offsets leave X @ W + b the same bits,
    and the weight gradient the same to within rounding (its epilogue is compiled apart)."""
    X, _ = offset_matrix(rng, (64, 300), dtype, zero_columns=1.0)
    W, b, delta = (
        normal(rng, (300, 40), dtype),
        normal(rng, 40, dtype),
        normal(rng, (64, 40), dtype),
    )
    zeros = np.zeros(300, dtype)
    Z, Z0 = np.empty((64, 40), dtype), np.empty((64, 40), dtype)
    _sparse.sparse_forward_checked(*by_rows(X), W, b, True, Z)
    _sparse.sparse_forward_checked(*by_rows(X), W, b, True, Z0, offsets=zeros)
    np.testing.assert_array_equal(Z0, Z)
    dW, db, dW0, db0 = W.copy(), b.copy(), W.copy(), b.copy()
    _sparse.sparse_param_grad_checked(*by_columns(X), delta, -0.1, 1.0, dW, db)
    _sparse.sparse_param_grad_checked(*by_columns(X), delta, -0.1, 1.0, dW0, db0, offsets=zeros)
    assert_close(dW0, dW)
    np.testing.assert_array_equal(db0, db)


@pytest.mark.parametrize("n_threads", [2, 3])
@pytest.mark.parametrize("n, m", [(128, 512), (128, 136)], ids=["book", "narrow"])
def test_offset_terms_do_not_depend_on_the_threads(dtype, rng, n_threads, n, m):
    """Each part's c @ W and each row's outer term are one sum in the rows' order, whatever
    columns a thread takes (three threads split a part's columns at 256 bytes)."""
    X, offsets = offset_matrix(rng, (n, 784), dtype)
    W, b, delta = normal(rng, (784, m), dtype), normal(rng, m, dtype), normal(rng, (n, m), dtype)
    results = []
    for threads in (1, n_threads):
        Z = np.empty((n, m), dtype)
        groups = by_rows(X, threads, offsets)
        _sparse.sparse_forward_checked(*groups, W, b, True, Z, threads, offsets=offsets)
        dW, db = W.copy(), b.copy()
        _sparse.sparse_param_grad_checked(
            *by_columns(X, threads, offsets), delta, -0.1, 1.0, dW, db, threads, offsets=offsets
        )
        results.append((Z, dW, db))
    for one, many in zip(*results, strict=True):
        np.testing.assert_array_equal(many, one)


def test_offsets_must_match_the_features(dtype, rng):
    X, offsets = offset_matrix(rng, (8, 20), dtype)
    W, b, delta = normal(rng, (20, 3), dtype), normal(rng, 3, dtype), normal(rng, (8, 3), dtype)
    wrong = offsets[:19]
    with pytest.raises(ValueError, match=r"^Expected .+offsets None or \(k,\).+Received: .+"):
        _sparse.sparse_forward_checked(
            *by_rows(X), W, b, True, np.empty((8, 3), dtype), offsets=wrong
        )
    with pytest.raises(ValueError, match=r"^Expected .+offsets None or \(k,\).+Received: .+"):
        _sparse.sparse_param_grad_checked(
            *by_columns(X), delta, 1.0, 0.0, W.copy(), b.copy(), offsets=wrong
        )
    for call in (
        lambda: _kernels.scan_rows_checked(X, offsets=wrong),
        lambda: _sparse.group_rows_checked(
            X, *_sparse.group_buffers(8, 20, dtype, by_rows=True), offsets=wrong
        ),
        lambda: _sparse.group_columns_checked(
            X, *_sparse.group_buffers(20, 8, dtype, by_rows=False), offsets=wrong
        ),
        lambda: _kernels.common_values_checked(X, np.empty(19, dtype)),
    ):
        with pytest.raises(ValueError, match=r"^Expected .+\. Received: .+"):
            call()


GROUPED = {
    "n7-13": (7, 13),
    "n96-784": (96, 784),
    "n130-37": (130, 37),
    "n1030-20": (1030, 20),  # columns past the builder's kept positions (1024)
    "n9-1030": (9, 1030),  # rows past them
}


@pytest.mark.parametrize("shape", GROUPED.values(), ids=GROUPED.keys())
def test_grouping_subtracts_the_offsets_as_it_reads(shape, dtype, instruction_set, rng):
    """Grouping X with offsets writes the groups of X - offsets, bit for bit: the quads,
    their positions and lists, and the count of nonzero distances, by rows (each part of
    the features, at any cut) and by columns, on one thread and on two."""
    n, k = shape
    X, offsets = offset_matrix(rng, shape, dtype)
    X[1, 2], X[n - 1, k - 1] = np.nan, -0.0  # a NaN distance, and -0 - 0 = -0: a zero
    offsets[k - 1] = 0
    distances = shifted(X, offsets)
    cuts = [None] + [c for c in _sparse.cut_choices(k) if c % 16][:1]  # a part unaligned
    for threads in (1, 2):
        for by_rows_, cut in [(True, c) for c in cuts] + [(False, None)]:
            lines, positions = (n, k) if by_rows_ else (k, n)
            group = _sparse.group_rows_checked if by_rows_ else _sparse.group_columns_checked
            extra = {"cut": cut} if by_rows_ else {}
            made = []
            for source, given in ((distances, None), (X, offsets)):
                buffers = _sparse.group_buffers(lines, positions, dtype, by_rows=by_rows_)
                for buffer in buffers:
                    buffer.fill(0)
                count = group(source, *buffers, threads, offsets=given, **extra)
                made.append((count, buffers))
            (count, expected), (count_shifted, groups) = made
            assert count_shifted == count == np.count_nonzero(distances)
            for ours, theirs in zip(groups, expected, strict=True):
                np.testing.assert_array_equal(ours.view(np.uint8), theirs.view(np.uint8))


def test_scan_takes_the_distances(dtype, rng):
    X, offsets = offset_matrix(rng, (50, 33), dtype)
    moved = shifted(X, offsets)
    nonzeros, peak = _kernels.scan_rows_checked(X, offsets=offsets)
    assert nonzeros == np.count_nonzero(moved)
    assert peak == np.abs(moved).max()
    X[3, 5] = np.nan
    nonzeros, peak = _kernels.scan_rows_checked(X, offsets=offsets)
    assert peak == np.inf and nonzeros == np.count_nonzero(shifted(X, offsets))


def test_common_values_guess_each_columns_most_common_value(dtype):
    X = np.zeros((40, 5), dtype)
    X[:, 0] = 0.25  # every row
    X[:30, 1] = 3.0  # three rows in four, the others 0
    X[:, 2] = np.arange(40)  # no value twice: 0
    X[:, 3] = np.inf  # not finite: 0
    X[:, 4] = -2.0
    X[7, 4] = 5.0
    out = np.full(5, np.nan, dtype)
    assert _kernels.common_values_checked(X, out) == 3
    np.testing.assert_array_equal(out, np.array([0.25, 3.0, 0, 0, -2.0], dtype))
    assert _kernels.common_values_checked(X[:1], out) == 0  # one row: nothing repeats
    np.testing.assert_array_equal(out, 0)


def book_model(dtype, seed=0):
    return fastnaive.NaiveSequential(
        [
            fastnaive.NaiveDense(784, 64, "relu", dtype=dtype, seed=seed),
            fastnaive.NaiveDense(64, 10, "softmax", dtype=dtype, seed=seed + 1),
        ]
    )


@pytest.fixture
def on_gemms(monkeypatch):
    """A context in which every Step runs its first layer on the GEMMs."""

    def gemms():
        monkeypatch.setattr(
            engine, "SPARSE_MAX_DENSITY", dict.fromkeys(engine.SPARSE_MAX_DENSITY, 0)
        )

    return gemms


@pytest.fixture
def shifted_mnist(mnist):
    """2000 MNIST images + 0.01 on every pixel (dense), standardised per pixel, and labels."""
    (images, labels), _ = mnist
    images = images[:2000]
    mean, std = images.mean(axis=0), images.std(axis=0)
    standardised = (images - mean) / np.where(std > 0, std, 1)
    return images + np.float32(0.01), standardised.astype(np.float32), labels[:2000]


def test_dense_images_with_a_common_value_per_pixel_run_on_the_distances(shifted_mnist, rng):
    plus, standardised, _ = shifted_mnist
    model = book_model("float32")
    for x in (plus, standardised):
        step = engine.Step(model, 128, x)
        assert step.sparse_input and step.offsets is not None
        assert step.offsets.shape == (784,)
    np.testing.assert_array_equal(engine.Step(model, 128, plus).offsets, np.float32(0.01))
    noise = rng.random((500, 784)).astype(np.float32)  # no common values: the GEMMs
    step = engine.Step(model, 128, noise)
    assert not step.sparse_input and step.offsets is None
    images = plus - np.float32(0.01)  # zeros already: no offsets
    step = engine.Step(model, 128, images)
    assert step.sparse_input and step.offsets is None


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("shuffle", [True, False], ids=["gathered", "sliced"])
def test_training_on_the_distances_matches_the_gemms(
    shifted_mnist, on_gemms, dtype, optimizer, shuffle
):
    """fit, evaluate_loss and predict on the distances against the same calls on the GEMMs:
    the same model to within the dtype's rounding."""
    x, _, y = shifted_mnist
    x = x[:600].astype(dtype)
    y = y[:600]
    results = []
    for use_gemms in (False, True):
        if use_gemms:
            on_gemms()
        model = book_model(dtype)
        assert (engine.Step(model, 128, x).offsets is None) == use_gemms
        fastnaive.fit(
            model,
            x,
            y,
            2,
            128,
            optimizer=optimizer,
            shuffle=shuffle,
            seed=0,
            verbose=0,
            validation_data=(x[:200], y[:200]),
        )
        results.append(
            (model.get_weights(), fastnaive.evaluate_loss(model, x, y), model.predict(x[:300]))
        )
    (weights, evaluated, predicted), (weights_gemms, evaluated_gemms, predicted_gemms) = results
    scale = {"float32": 1e-4, "float64": 1e-12}[dtype]
    for w, w_gemms in zip(weights, weights_gemms, strict=True):
        np.testing.assert_allclose(w, w_gemms, rtol=scale, atol=scale)
    np.testing.assert_allclose(evaluated, evaluated_gemms, rtol=scale)
    np.testing.assert_allclose(predicted, predicted_gemms, rtol=scale, atol=scale)


def test_per_batch_calls_match_the_gemms(shifted_mnist, on_gemms, dtype):
    """loss_and_gradients and one_training_step choose per batch: on the distances here."""
    _, standardised, y = shifted_mnist
    x, y = standardised[:128].astype(dtype), y[:128]
    results = []
    for use_gemms in (False, True):
        if use_gemms:
            on_gemms()
        model = book_model(dtype)
        loss, gradients = fastnaive.loss_and_gradients(model, x, y)
        assert (engine.step_for(model, x).offsets is None) == use_gemms
        stepped = fastnaive.one_training_step(model, x, y, optimizer=fastnaive.Adam())
        results.append((loss, gradients, stepped, model.get_weights()))
    scale = {"float32": 2e-5, "float64": 1e-12}[dtype]
    (loss, gradients, stepped, weights), (loss_g, gradients_g, stepped_g, weights_g) = results
    np.testing.assert_allclose([loss, stepped], [loss_g, stepped_g], rtol=scale)
    for a, b in zip(gradients + weights, gradients_g + weights_g, strict=True):
        np.testing.assert_allclose(a, b, rtol=scale, atol=scale)


def test_distances_give_the_same_bits_at_1_2_and_3_threads(shifted_mnist):
    _, x, y = shifted_mnist
    results = []
    for threads in (1, 2, 3):
        model = book_model("float32")
        with threadpool_limits(limits=threads):
            fastnaive.fit(model, x, y, 1, 128, optimizer="adam", shuffle=True, seed=0, verbose=0)
        results.append(model.get_weights())
    for weights in results[1:]:
        for a, b in zip(weights, results[0], strict=True):
            np.testing.assert_array_equal(a, b)


def test_a_program_checks_its_offsets(shifted_mnist):
    plus, _, _ = shifted_mnist
    step = engine.Step(book_model("float32"), 128, plus)
    step.offsets = step.offsets[:783]
    with pytest.raises(ValueError, match=r"^Expected offsets of shape \(784,\)\. Received: "):
        step.compiled()
    step.offsets, step.sparse_input = np.zeros(784, np.float32), False
    expected = r"^Expected offsets, cut and delta_copy only with first=FIRST_SPARSE\. "
    with pytest.raises(ValueError, match=expected):
        step.compiled()


def test_gelu_dropout_and_l2_on_the_distances_match_the_gemms(shifted_mnist, on_gemms):
    """The offset term enters the first layer's pre-activation (GELU keeps it for its
    derivative) and, with L2, the fused update W := (1 + 2 lr l2) W - lr dW."""
    _, x, y = shifted_mnist
    x, y = x[:512], y[:512]
    results = []
    for use_gemms in (False, True):
        if use_gemms:
            on_gemms()
        model = fastnaive.NaiveSequential(
            [
                fastnaive.NaiveDense(784, 64, "gelu", seed=0, l2=1e-3),
                fastnaive.Dropout(0.2, seed=3),
                fastnaive.NaiveDense(64, 10, "softmax", seed=1),
            ]
        )
        assert (engine.Step(model, 128, x).offsets is None) == use_gemms
        for optimizer in ("sgd", "adam"):
            fastnaive.fit(model, x, y, 1, 128, optimizer=optimizer, shuffle=True, seed=0, verbose=0)
        results.append(model.get_weights())
    for ours, gemms in zip(*results, strict=True):
        np.testing.assert_allclose(ours, gemms, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("threads", [1, 2])
def test_rows_of_zeros_take_the_bias_exactly(shifted_mnist, dtype, instruction_set, threads):
    """On the distances, X @ W + b of a row of zeros is -c @ W + (b + c @ W), two sums in
    different orders; the dense product gives b exactly, and at a zero bias relu's derivative
    is 0 there. The rows of zeros take act(b) exactly, so the gradients match the reference
    (which they did not: a rounding's sign took the derivative), and so does a training
    step's update (on two threads it leaves the first layer's partial sums to the head's
    pass, which must add nothing to those rows)."""
    _, standardised, y = shifted_mnist
    x, y = standardised[:128].astype(dtype), y[:128]
    zero_rows = [0, 5, 77, 127]
    x[zero_rows] = 0
    model = book_model(dtype)
    b = model.layers[0].b
    b[:4] = [-1e-3, 1e-3, -0.0, 0.5]  # the rest 0: the kink
    with threadpool_limits(limits=threads):
        assert engine.step_for(model, x).offsets is not None
        _, gradients = fastnaive.loss_and_gradients(model, x, y)
        hidden = fastnaive.NaiveSequential([model.layers[0]]).predict(x)
    _, expected = reference.loss_and_gradients(model, x, y)
    for gradient, oracle in zip(gradients, expected, strict=True):
        assert_close(gradient, oracle)
    np.testing.assert_array_equal(hidden[zero_rows], np.broadcast_to(np.maximum(b, 0), (4, 64)))
    assert_close(hidden, np.maximum(x.astype(np.float64) @ model.layers[0].W + b, 0))
    before = [weights.astype(np.float64) for weights in model.weights]
    with threadpool_limits(limits=threads):
        fastnaive.one_training_step(model, x, y)  # the book's SGD, learning rate 1e-3
    rtol = {"float32": 1e-3, "float64": 1e-9}[dtype]
    for old, new, oracle in zip(before, model.weights, expected, strict=True):
        assert_scaled_close(new - old, -1e-3 * oracle, rtol)


def test_a_row_of_zeros_among_rows_at_the_offsets(dtype):
    """Three rows, two at each feature's most common value (1) and one of zeros, whose
    distances are all -1: the first layer's bias gradient is the reference's."""
    model = fastnaive.NaiveSequential(
        [
            fastnaive.NaiveDense(6, 5, "relu", dtype=dtype, seed=0),
            fastnaive.NaiveDense(5, 3, "softmax", dtype=dtype, seed=1),
        ]
    )
    x = np.array([[0] * 6, [1] * 6, [1] * 6], dtype)
    labels = np.zeros(3, np.intp)
    assert engine.step_for(model, x).offsets is not None
    _, gradients = fastnaive.loss_and_gradients(model, x, labels)
    _, expected = reference.loss_and_gradients(model, x, labels)
    for gradient, oracle in zip(gradients, expected, strict=True):
        assert_close(gradient, oracle)
