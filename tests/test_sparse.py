"""Tests for fastnaive._sparse: the grouped layouts and both products against NumPy, on every
instruction set the CPU runs, and against the dense kernels they replace."""

import numpy as np
import pytest
from helpers import DTYPES, SCALES, assert_close, by_columns, by_rows, f32, normal
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from threadpoolctl import threadpool_limits

import fastnaive
from fastnaive import _kernels, _sparse, engine

# (n_samples, n_features, n_units): groups of four rows or columns with one to three lines
# short (n = 1, 5, 7; k = 5, 13), whole and partial tiles of columns (m = 1, 3, 118, 200, 512;
# 118 floats on AVX-512: a tile of 64, then tiles of two vectors, of one, and a masked one
# of 6), the hidden layer on the book's last, short batch (96) and on a batch of 128.
SHAPES = {
    "n1-5x3": (1, 5, 3),
    "n3-4x1": (3, 4, 1),
    "n7-13x4": (7, 13, 4),
    "n5-6x118": (5, 6, 118),
    "n96-784x200": (96, 784, 200),
    "b128-784x512": (128, 784, 512),
}
# Fractions of nonzeros in X; "rows" cycles whole rows of zeros, of nonzeros and of MNIST's 19%.
DENSITIES = {"zeros": 0.0, "sparse": 0.05, "mnist": 0.19, "dense": 1.0, "rows": None}


@pytest.fixture(params=SHAPES.values(), ids=SHAPES.keys())
def shape(request):
    return request.param


@pytest.fixture(params=DENSITIES.values(), ids=DENSITIES.keys())
def density(request):
    return request.param


def sparse_matrix(rng, shape, dtype, density):
    """Normal values (half negative) kept with probability density (per row for None)."""
    X = rng.standard_normal(shape)
    if density is None:
        density = np.resize([0.0, 1.0, 0.19], shape[0])[:, None]
    X[rng.random(shape) >= density] = 0
    return X.astype(dtype)


def forward(X, W, b, relu, n_threads=None):
    Z = np.full((X.shape[0], W.shape[1]), np.nan, X.dtype)
    _sparse.sparse_forward_checked(*by_rows(X), W, b, relu, Z, n_threads)
    return Z


def param_grad(X, delta, alpha, beta, W, b, n_threads=None):
    """Return (dW, db) := alpha * (X.T @ delta, sum_rows(delta)) + beta * (W, b)."""
    dW, db = W.copy(), b.copy()
    _sparse.sparse_param_grad_checked(*by_columns(X), delta, alpha, beta, dW, db, n_threads)
    return dW, db


def expected_forward(X, W, b, relu):
    Z = X.astype(np.float64) @ W + b
    return np.maximum(Z, 0) if relu else Z


def rebuild(starts, index, quads, n_lines, n_positions):
    """The (n_lines, n_positions) matrix a grouped layout holds; checks each list's patterns."""
    out = np.zeros((n_lines, n_positions), quads.dtype)
    for g in range(len(starts) // 16):
        for pattern in range(1, 16):
            entries = slice(starts[16 * g + pattern - 1], starts[16 * g + pattern])
            lines = [r for r in range(4) if pattern >> r & 1 and 4 * g + r < n_lines]
            np.testing.assert_array_equal(
                quads[entries] != 0,
                np.resize([pattern >> r & 1 for r in range(4)], quads[entries].shape).astype(bool),
            )
            # The sublists by position mod 4, each in the order of the positions.
            positions = index[entries].tolist()
            assert positions == sorted(positions, key=lambda j: (j % 4, j))
            for r in lines:
                out[4 * g + r, index[entries]] = quads[entries, r]
    return out


def part_lists(starts, index, quads, n_samples, n_features, cut=None):
    """Row groups cut into each part's lists: (starts, index, quads, first feature, width)."""
    bounds = _sparse.part_bounds(n_features, cut)
    stride = -(-n_samples // 4)
    return [
        (
            starts[16 * stride * part : 16 * stride * (part + 1)],
            index[stride * f0 : stride * f1],
            quads[stride * f0 : stride * f1],
            f0,
            f1 - f0,
        )
        for part, (f0, f1) in enumerate(zip(bounds, bounds[1:]))
    ]


def rebuild_rows(groups, n_samples, n_features, cut=None):
    """The (n_samples, n_features) matrix that row groups hold, each part from its lists."""
    return np.hstack(
        [
            rebuild(starts, index, quads, n_samples, width)
            for starts, index, quads, _, width in part_lists(*groups, n_samples, n_features, cut)
        ]
    )


def test_group_rows_holds_every_nonzero_once(shape, density, dtype, instruction_set, rng):
    X = sparse_matrix(rng, shape[:2], dtype, density)
    np.testing.assert_array_equal(rebuild_rows(by_rows(X), *X.shape), X)


def test_group_columns_holds_every_nonzero_once(shape, density, dtype, instruction_set, rng):
    X = sparse_matrix(rng, shape[:2], dtype, density)
    np.testing.assert_array_equal(rebuild(*by_columns(X), X.shape[1], X.shape[0]), X.T)


def written(starts, index, quads):
    """The entries a grouped layout holds (each group's lists; what lies past them is unread)."""
    P = len(index) // (len(starts) // 16)
    used = np.concatenate([np.arange(g * P, starts[16 * g + 15]) for g in range(len(starts) // 16)])
    return starts, index[used], quads[used]


@pytest.mark.parametrize("shape", [(128, 784), (96, 784), (1024, 784), (37, 45)])
def test_group_layouts_are_the_same_on_every_instruction_set(mnist, shape, rng):
    # MNIST's pixels (float32: AVX-512 builds the groups of four lines by its own pass),
    # sixteen-position blocks cut short, a NaN and negative zeros.
    images = mnist[0][0]
    X = np.array(images[rng.choice(len(images), shape[0])][:, : shape[1]])
    X[rng.random(X.shape) < 0.05] = -0.0
    X[shape[0] // 2, shape[1] // 3] = np.nan
    layouts = {}
    try:
        for isa in _sparse.INSTRUCTION_SETS:
            _sparse.select_instruction_set(isa)
            rows = part_lists(*by_rows(X), *X.shape)
            layouts[isa] = [written(*part[:3]) for part in rows] + [written(*by_columns(X))]
    finally:
        _sparse.select_instruction_set()
    for isa, layout in layouts.items():
        for got, expected in zip(layout, layouts["baseline"]):
            for a, b in zip(got, expected):
                np.testing.assert_array_equal(a, b, err_msg=isa)


# Groups of more positions than the builder keeps on the stack (1024) are read twice instead.
LONG_GROUPS = {"rows-of-1100": (9, 1100), "columns-of-1100": (1100, 9)}


@pytest.mark.parametrize("shape", LONG_GROUPS.values(), ids=LONG_GROUPS.keys())
def test_long_groups_hold_every_nonzero_once(shape, density, dtype, rng):
    X = sparse_matrix(rng, shape, dtype, density)
    np.testing.assert_array_equal(rebuild_rows(by_rows(X), *X.shape), X)
    np.testing.assert_array_equal(rebuild(*by_columns(X), X.shape[1], X.shape[0]), X.T)


def test_sparse_forward(shape, density, dtype, instruction_set, rng):
    n, k, m = shape
    X, W, b = (
        sparse_matrix(rng, (n, k), dtype, density),
        normal(rng, (k, m), dtype, k**-0.5),
        normal(rng, m, dtype),
    )
    for relu in (True, False):
        assert_close(forward(X, W, b, relu), expected_forward(X, W, b, relu))


def test_sparse_param_grad(shape, density, dtype, instruction_set, rng):
    n, k, m = shape
    X, delta = sparse_matrix(rng, (n, k), dtype, density), normal(rng, (n, m), dtype)
    for name, (alpha, beta) in SCALES.items():
        W, b = normal(rng, (k, m), dtype), normal(rng, m, dtype)
        if beta == 0:
            W[:], b[:] = np.nan, np.nan
        dW, db = param_grad(X, delta, alpha, beta, W, b)
        W0, b0 = (np.zeros_like(W), np.zeros_like(b)) if beta == 0 else (W, b)
        assert_close(dW, alpha * (X.T.astype(np.float64) @ delta) + beta * W0, err_msg=name)
        assert_close(db, alpha * delta.sum(axis=0, dtype=np.float64) + beta * b0, err_msg=name)


def test_delta_stride_puts_rows_an_odd_number_of_lines_apart(dtype, instruction_set):
    """A copy of delta has rows on 64-byte boundaries an odd number of lines apart, the
    fewest that hold m elements, where delta's rows are off those boundaries or a multiple
    of PAD_LINES lines apart (AVX2: 2, AVX-512: 64, the baseline: never); elsewhere the
    kernels read delta itself."""
    itemsize = np.dtype(dtype).itemsize
    every = _sparse.PAD_LINES[_sparse.INSTRUCTION_SETS.index(instruction_set)]
    for m in (1, 10, 16, 490, 500, 512, 1024, 2048):
        stride, lines = _sparse.delta_stride(m, dtype), -(-m * itemsize // 64)
        if every and (m * itemsize % 64 or lines % every == 0):
            assert stride * itemsize == 64 * (lines + 1 - lines % 2), m
        else:
            assert stride == m, m
    with pytest.raises(ValueError, match=r"^Expected m >= 1\. Received: m=0$"):
        _sparse.delta_stride(0, dtype)


@pytest.mark.parametrize("n_threads", [1, 2, 3])
@pytest.mark.parametrize("shifted", [False, True], ids=["zeros", "offsets"])
def test_a_copy_of_delta_gives_the_same_bits(shifted, n_threads, dtype, instruction_set, rng):
    """The weight gradient reading a copy of delta with longer rows (delta_stride's, or 16
    elements longer where the kernels read delta itself) gives the same dW and db bit for
    bit, on any number of threads, with the offsets' column sums made beside the copy. The
    copy's rows past delta's and its columns past m hold NaN: nothing reads them."""
    n, k, m = 128, 784, 512
    X = sparse_matrix(rng, (n, k), dtype, 0.5)
    delta = normal(rng, (n, m), dtype)
    W, b = normal(rng, (k, m), dtype), normal(rng, m, dtype)
    offsets = normal(rng, k, dtype) if shifted else None
    columns = by_columns(X, offsets=offsets)
    stride = max(_sparse.delta_stride(m, dtype), m + 16)
    copy = np.full((n + 5, stride), np.nan, dtype)
    kept = delta.copy()
    results = []
    for padded in (None, copy):
        dW, db = W.copy(), b.copy()
        _sparse.sparse_param_grad_checked(
            *columns, delta, -0.1, 1.0, dW, db, n_threads, offsets, None, padded
        )
        results.append((dW, db))
    np.testing.assert_array_equal(results[1][0], results[0][0])
    np.testing.assert_array_equal(results[1][1], results[0][1])
    np.testing.assert_array_equal(copy[:n, :m], delta)
    np.testing.assert_array_equal(delta, kept)


def test_training_on_avx2_reads_a_copy_of_delta_to_the_same_bits(mnist, monkeypatch):
    """A Step whose first layer runs the sparse kernels held to AVX2 gives its weight
    gradient a copy of delta with rows of 528 floats (_delta_copy), and trains to the same
    weights bit for bit as without it."""
    (x, y), _ = mnist
    x, y = x[:1024], y[:1024]
    made = []
    delta_copy = engine._delta_copy

    def recorded(capacity, m, dtype):
        made.append(delta_copy(capacity, m, dtype))
        return made[-1]

    weights = []
    try:
        if _sparse.select_instruction_set("avx2") != "avx2":
            pytest.fail("Expected a CPU with AVX2 and FMA", pytrace=False)
        for copy in (recorded, lambda capacity, m, dtype: None):
            monkeypatch.setattr(engine, "_delta_copy", copy)
            model = fastnaive.NaiveSequential(
                [
                    fastnaive.NaiveDense(784, 512, "relu", seed=0),
                    fastnaive.NaiveDense(512, 10, "softmax", seed=1),
                ]
            )
            fastnaive.fit(model, x, y, epochs=1, batch_size=128, verbose=0)
            weights.append([w.copy() for w in model.weights])
    finally:
        _sparse.select_instruction_set()
    assert [copy.shape for copy in made] == [(128, 528)]
    for copied, read in zip(*weights, strict=True):
        np.testing.assert_array_equal(copied, read)


@pytest.mark.parametrize("k", [300, 2100, 4200], ids=["1KB-blocks", "512B-blocks", "256B-blocks"])
@pytest.mark.parametrize("density", [0.19, 0.5, None], ids=["mnist", "fashion", "rows"])
def test_whole_tiles_give_the_same_bits_in_any_call(density, k, dtype, instruction_set, rng):
    """Each output element is its tile's sums whichever call computes it: the products over
    all of W's 200 columns (whole tiles of 256 bytes, three in float32 and six in float64,
    then narrower ones and single columns) equal, bit for bit, those over slices of 64
    columns (the threads split columns at multiples of 256 bytes). Every pattern of lines
    occurs (MNIST's, Fashion-MNIST's density, and rows of zeros, of nonzeros and of 19%).
    X @ W's blocks narrow as the parts of the features grow (forward_width: two parts of
    1050 and 2100 features take 512- and 256-byte blocks): the same bits."""
    n, m = 96, 200
    X, delta = sparse_matrix(rng, (n, k), dtype, density), normal(rng, (n, m), dtype)
    W, b = normal(rng, (k, m), dtype, k**-0.5), normal(rng, m, dtype)
    rows, columns = by_rows(X), by_columns(X)
    whole = np.empty((n, m), dtype)
    _sparse.sparse_forward_checked(*rows, W, b, True, whole, 1)
    dW, db = W.copy(), b.copy()
    _sparse.sparse_param_grad_checked(*columns, delta, -0.1, 1.0, dW, db, 1)
    for j in range(0, m, 64):
        part = slice(j, min(j + 64, m))
        Z = np.empty((n, part.stop - j), dtype)
        _sparse.sparse_forward_checked(*rows, W[:, part].copy(), b[part].copy(), True, Z, 1)
        np.testing.assert_array_equal(Z, whole[:, part])
        dW_part, db_part = W[:, part].copy(), b[part].copy()
        _sparse.sparse_param_grad_checked(
            *columns, delta[:, part].copy(), -0.1, 1.0, dW_part, db_part, 1
        )
        np.testing.assert_array_equal(dW_part, dW[:, part])
        np.testing.assert_array_equal(db_part, db[part])


def test_products_match_the_dense_kernels(dtype, rng):
    """The hidden layer's step on a batch of 128: forward, then the fused SGD update."""
    X = np.clip(sparse_matrix(rng, (128, 784), dtype, 0.19), 0, 1)
    W, b = normal(rng, (784, 512), dtype, 784**-0.5), normal(rng, 512, dtype)
    delta = normal(rng, (128, 512), dtype, 1e-2)
    Z_dense = np.empty((128, 512), dtype)
    _kernels.dense_forward_checked(X, W, b, True, Z_dense)
    assert_close(forward(X, W, b, True), Z_dense)
    W_dense, b_dense = W.copy(), b.copy()
    _kernels.dense_param_grad_checked(X, delta, -1e-3, 1.0, W_dense, b_dense)
    W_sparse, b_sparse = param_grad(X, delta, -1e-3, 1.0, W, b)
    assert_close(W_sparse, W_dense)
    assert_close(b_sparse, b_dense)


@pytest.mark.parametrize("n_threads", [1, 2, 3])
@pytest.mark.parametrize(
    "n, k, m",
    # The update's columns in one slab; in 3 (float32) or 5 (float64); a part of X @ W's
    # features shared by two of three threads, split at 256 bytes, the last block ending in
    # a partial tile; its columns past the last whole tile in every kind of tile (118);
    # parts of 1050 features, in X @ W's 512-byte blocks (forward_width).
    [(128, 784, 512), (160, 784, 1100), (128, 784, 136), (128, 784, 118), (64, 2100, 600)],
    ids=["book", "wide", "narrow", "tails", "many-features"],
)
def test_results_do_not_depend_on_the_threads(dtype, rng, n_threads, n, k, m):
    """Threads own disjoint parts of the outputs (X @ W's parts of the features, fixed by
    the shape, and column blocks of them, whole tiles wide; chunks of rows in slabs of
    columns of the update), so every sum is made in the same order."""
    X = sparse_matrix(rng, (n, k), dtype, 0.19)
    W, b = normal(rng, (k, m), dtype), normal(rng, m, dtype)
    delta = normal(rng, (n, m), dtype)
    assert np.array_equal(forward(X, W, b, True, n_threads), forward(X, W, b, True, 1))
    row_lists = [part_lists(*by_rows(X, threads), *X.shape) for threads in (1, n_threads)]
    column_lists = [[(*by_columns(X, threads),)] for threads in (1, n_threads)]
    for one_parts, many_parts in (row_lists, column_lists):
        for one, many in zip(one_parts, many_parts, strict=True):
            assert np.array_equal(one[0], many[0])
            for g in range(0, len(one[0]), 16):
                listed = slice(one[0][g], one[0][g + 15])
                assert np.array_equal(one[1][listed], many[1][listed])
                assert np.array_equal(one[2][listed], many[2][listed])
    for one, many in zip(
        param_grad(X, delta, -0.1, 1.0, W, b, 1), param_grad(X, delta, -0.1, 1.0, W, b, n_threads)
    ):
        assert np.array_equal(one, many)


@pytest.mark.parametrize("relu", [True, False], ids=["relu", "identity"])
def test_zero_batch_gives_the_bias_and_leaves_w(dtype, relu):
    """With X = 0 no product is made: each row is exactly act(b), and W is untouched."""
    X, W, b = np.zeros((7, 5), dtype), np.ones((5, 3), dtype), np.array([-1.5, 0.0, 2.0], dtype)
    act_b = np.maximum(b, 0) if relu else b
    np.testing.assert_array_equal(forward(X, W, b, relu), np.tile(act_b, (7, 1)))
    delta = np.full((7, 3), 2.0, dtype)
    dW, db = param_grad(X, delta, -0.5, 1.0, W, b)
    np.testing.assert_array_equal(dW, W)
    np.testing.assert_array_equal(db, b - 7.0)
    dW, db = param_grad(X, delta, 1.0, 0.0, np.full_like(W, np.nan), b)
    np.testing.assert_array_equal(dW, 0)


@pytest.mark.parametrize("relu", [True, False], ids=["relu", "identity"])
def test_nan_in_x_spreads_like_the_dense_product(dtype, rng, relu):
    """NaN is nonzero, so it is kept: a NaN in X[i, c] makes row i of X @ W and row c of
    X.T @ delta NaN (NaN * 0 is NaN), exactly where the dense kernels put NaN."""
    X = sparse_matrix(rng, (9, 20), dtype, 0.3)
    X[2, 5] = X[6, 17] = np.nan
    W, b, delta = normal(rng, (20, 6), dtype), normal(rng, 6, dtype), normal(rng, (9, 6), dtype)
    delta[:, 0] = 0
    Z_dense = np.empty((9, 6), dtype)
    _kernels.dense_forward_checked(X, W, b, relu, Z_dense)
    Z = forward(X, W, b, relu)
    np.testing.assert_array_equal(np.isnan(Z), np.isnan(Z_dense))
    assert np.isnan(Z[[2, 6]]).all() and not np.isnan(np.delete(Z, [2, 6], axis=0)).any()
    dW_dense, db_dense = np.empty((20, 6), dtype), np.empty(6, dtype)
    _kernels.dense_param_grad_checked(X, delta, 1.0, 0.0, dW_dense, db_dense)
    dW, _ = param_grad(X, delta, 1.0, 0.0, np.empty((20, 6), dtype), np.empty(6, dtype))
    np.testing.assert_array_equal(np.isnan(dW), np.isnan(dW_dense))
    assert np.isnan(dW[[5, 17]]).all() and not np.isnan(np.delete(dW, [5, 17], axis=0)).any()


def test_inf_in_w_reaches_only_rows_whose_x_is_nonzero_there(dtype, rng):
    """Zeros of X are skipped, so W[c] = inf reaches only rows with X[i, c] != 0. (The dense
    product makes every row NaN: 0 * inf = NaN.) The same holds for NaN in W or in delta."""
    X = sparse_matrix(rng, (8, 12), dtype, 0.4)
    X[:, 3] = 0
    X[[1, 4], 3] = 1
    W, b = normal(rng, (12, 5), dtype), normal(rng, 5, dtype)
    W[3] = np.inf
    Z = forward(X, W, b, False)
    assert np.isinf(Z[[1, 4]]).all()
    finite = [0, 2, 3, 5, 6, 7]
    W_without = W.copy()
    W_without[3] = 0
    assert_close(Z[finite], expected_forward(X, W_without, b, False)[finite])


def test_read_only_inputs_are_accepted(dtype, rng):
    X = sparse_matrix(rng, (6, 9), dtype, 0.3)
    W, b, delta = normal(rng, (9, 4), dtype), normal(rng, 4, dtype), normal(rng, (6, 4), dtype)
    rows, columns = by_rows(X), by_columns(X)
    for array in (X, W, b, delta, *rows, *columns):
        array.setflags(write=False)
    Z = np.empty((6, 4), dtype)
    _sparse.sparse_forward_checked(*rows, W, b, True, Z)
    assert_close(Z, expected_forward(X, W, b, True))
    dW, db = np.empty((9, 4), dtype), np.empty(4, dtype)
    _sparse.sparse_param_grad_checked(*columns, delta, 1.0, 0.0, dW, db)
    assert_close(dW, X.T.astype(np.float64) @ delta)
    _sparse.group_rows_checked(X, *_sparse.group_buffers(6, 9, dtype, by_rows=True))


def test_select_instruction_set():
    assert _sparse.instruction_set() in _sparse.INSTRUCTION_SETS
    assert _sparse.select_instruction_set("baseline") == "baseline" == _sparse.instruction_set()
    widest = _sparse.select_instruction_set()
    assert widest == _sparse.instruction_set()
    with pytest.raises(ValueError, match=r"^Expected widest in .*Received: widest='sse'"):
        _sparse.select_instruction_set("sse")


def i32(*shape):
    return np.zeros(shape, np.intc)


# starts (32,), index (26,), quads (26, 4); starts (64,), index (28,), quads (28, 4)
ROWS_7x13 = _sparse.group_buffers(7, 13, np.float32, by_rows=True)
COLUMNS_7x13 = _sparse.group_buffers(13, 7, np.float32, by_rows=False)


def grad_with_copy(padded):
    """The weight gradient's call on COLUMNS_7x13 (delta (7, 4)) with a copy of delta there."""
    call = (_sparse.sparse_param_grad_checked, *COLUMNS_7x13, f32(7, 4), 1.0, 0.0)
    return (*call, f32(13, 4), f32(4), None, None, None, padded)


# (wrapper, *arguments), one shape disagreeing with the others.
SHAPE_MISMATCHES = {
    "group_rows-starts": (_sparse.group_rows_checked, f32(7, 13), i32(16), *ROWS_7x13[1:]),
    "group_rows-index": (
        _sparse.group_rows_checked,
        f32(7, 13),
        ROWS_7x13[0],
        i32(25),
        ROWS_7x13[2],
    ),
    "group_rows-quads": (_sparse.group_rows_checked, f32(7, 13), *ROWS_7x13[:2], f32(26, 3)),
    "group_columns-starts": (_sparse.group_columns_checked, f32(7, 13), *ROWS_7x13),
    "forward-bias": (
        _sparse.sparse_forward_checked,
        *ROWS_7x13,
        f32(13, 4),
        f32(3),
        True,
        f32(7, 4),
    ),
    "forward-out": (
        _sparse.sparse_forward_checked,
        *ROWS_7x13,
        f32(13, 4),
        f32(4),
        True,
        f32(7, 3),
    ),
    "forward-rows": (
        _sparse.sparse_forward_checked,
        *ROWS_7x13,
        f32(13, 4),
        f32(4),
        True,
        f32(9, 4),
    ),
    "forward-partial": (
        _sparse.sparse_forward_checked,
        *ROWS_7x13,
        f32(13, 4),
        f32(4),
        True,
        f32(7, 4),
        None,
        f32(7, 3),
    ),
    "forward-no-features": (
        _sparse.sparse_forward_checked,
        *ROWS_7x13,
        f32(0, 4),
        f32(4),
        True,
        f32(7, 4),
    ),
    "forward-pack-short": (
        _sparse.sparse_forward_checked,
        *ROWS_7x13,
        f32(13, 4),
        f32(4),
        True,
        f32(7, 4),
        None,
        None,
        None,
        None,
        f32(len(_sparse.pack_buffer(13, 4, np.float32)) - 1),
    ),
    "param_grad-db": (
        _sparse.sparse_param_grad_checked,
        *COLUMNS_7x13,
        f32(7, 4),
        1.0,
        0.0,
        f32(13, 4),
        f32(3),
    ),
    "param_grad-dW": (
        _sparse.sparse_param_grad_checked,
        *COLUMNS_7x13,
        f32(7, 4),
        1.0,
        0.0,
        f32(12, 4),
        f32(4),
    ),
    "param_grad-no-samples": (
        _sparse.sparse_param_grad_checked,
        *COLUMNS_7x13,
        f32(0, 4),
        1.0,
        0.0,
        f32(13, 4),
        f32(4),
    ),
    "param_grad-copy-rows": grad_with_copy(f32(6, 20)),
    "param_grad-copy-not-wider": grad_with_copy(f32(7, 4)),
}


def lists(starts=None, index=None):
    """A valid grouped X (7, 13) by rows, with starts or index replaced."""
    good = by_rows(np.ones((7, 13), np.float32))
    return (good[0] if starts is None else starts, good[1] if index is None else index, good[2])


def bad_index(value):
    index = lists()[1].copy()
    index[3] = value
    return index


def bad_starts(position, value):
    starts = lists()[0].copy()
    starts[position] = value
    return starts


# Lists that would read out of bounds: the wrappers must refuse them.
BAD_LISTS = {
    "index-too-large": lists(index=bad_index(13)),
    "index-negative": lists(index=bad_index(-1)),
    "starts-decreasing": lists(starts=bad_starts(20, 5)),
    "starts-negative": lists(starts=bad_starts(0, -1)),
    "starts-past-the-buffers": lists(starts=bad_starts(31, 27)),
}


@pytest.mark.parametrize("call", SHAPE_MISMATCHES.values(), ids=SHAPE_MISMATCHES.keys())
def test_shape_mismatch_raises(call):
    wrapper, *arguments = call
    with pytest.raises(ValueError, match=r"^Expected .+\. Received: .*shape="):
        wrapper(*arguments)


@pytest.mark.parametrize("grouped", BAD_LISTS.values(), ids=BAD_LISTS.keys())
def test_lists_out_of_range_raise(grouped):
    with pytest.raises(ValueError, match=r"^Expected starts .+\. Received: starts in "):
        _sparse.sparse_forward_checked(*grouped, f32(13, 4), f32(4), True, f32(7, 4))


def test_each_parts_lists_are_checked_against_its_features():
    """X @ W over 160 features sums two parts of 80, each part's lists indexing its own rows
    of W: an index valid for W but past its part's 80 rows must be refused."""
    assert _sparse.part_bounds(160) == [0, 80, 160]
    assert _sparse.part_bounds(13) == [0, 13]
    starts, index, quads = by_rows(np.ones((7, 160), np.float32))
    W, b = np.ones((160, 4), np.float32), np.zeros(4, np.float32)
    Z = np.empty((7, 4), np.float32)
    _sparse.sparse_forward_checked(starts, index, quads, W, b, False, Z)
    np.testing.assert_array_equal(Z, 160)
    # Part 1's entries start after part 0's: 2 groups of 80 positions each.
    assert starts[32] == 0 and index[160] == 0
    index[160] = 80
    with pytest.raises(ValueError, match=r"^Expected starts .+ index in \[0, 80\)"):
        _sparse.sparse_forward_checked(starts, index, quads, W, b, False, Z)


# Batches and weights (n, k, m): W's rows a power of two of lines apart (512, 2048 columns)
# or not (520, 300, 1400: blocks and shares ending off whole lines), in two parts of the
# features (784, 1024) or one (100); parts of W's rows of 512 KB or more in float32 (so in
# float64) but for 784 x 64; groups that reuse each row of W 8 to 56 times, below and above
# each instruction set's PACK_MIN_QUADS.
PACKED_SHAPES = {
    "n128-784x512": (128, 784, 512),
    "n240-784x520": (240, 784, 520),
    "n64-784x520": (64, 784, 520),
    "n36-1024x300": (36, 1024, 300),
    "n192-1024x2048": (192, 1024, 2048),
    "n33-100x1400": (33, 100, 1400),
    "n97-100x1400": (97, 100, 1400),
    "n256-784x64": (256, 784, 64),
}


def copied_parts(X, m, offsets):
    """Per part of X's features (fastnaive._sparse.part_bounds), whether X @ W reads W's
    slabs from their copy: the part's rows of W span 512 KB or more, and its groups of four
    rows hold PACK_MIN_QUADS (of this instruction set) nonzero quads per feature."""
    n, k = X.shape
    shifted = X if offsets is None else X - offsets
    padded = np.zeros((-(-n // 4) * 4, k), X.dtype)
    padded[:n] = shifted
    quads = (padded.reshape(-1, 4, k) != 0).any(axis=1).sum(axis=0)
    least = _sparse.PACK_MIN_QUADS[_sparse.INSTRUCTION_SETS.index(_sparse.instruction_set())]
    bounds = _sparse.part_bounds(k)
    return [
        (f0, f1, (f1 - f0) * m * X.itemsize >= 1 << 19 and quads[f0:f1].sum() >= least * (f1 - f0))
        for f0, f1 in zip(bounds, bounds[1:])
    ]


@pytest.mark.parametrize("n, k, m", PACKED_SHAPES.values(), ids=PACKED_SHAPES.keys())
@pytest.mark.parametrize("shifted", [False, True], ids=["zeros", "offsets"])
def test_the_forward_on_copied_slabs_of_w_is_each_group_alone(
    n, k, m, shifted, dtype, instruction_set, rng
):
    """X @ W + b (ReLU) reads a part's slabs of W from their copy in `pack` where the part
    is large and its rows reused enough (copied_parts), else W itself; pack's contents
    before the call do not matter. Each group of four rows takes the same quads in the same
    order as it does alone (four rows: W read in place), so both are the same bits, on 1, 2
    and 3 threads, and agree with NumPy's."""
    X = sparse_matrix(rng, (n, k), dtype, 0.5)
    W, b = normal(rng, (k, m), dtype, 0.05), normal(rng, m, dtype)
    offsets = np.where(rng.random(k) < 0.5, 0.25, 0).astype(dtype) if shifted else None
    pack = _sparse.pack_buffer(k, m, dtype)
    parts = copied_parts(X, m, offsets)
    Z = {}
    for threads in (1, 2, 3):
        pack.fill(np.nan)
        Z[threads] = np.full((n, m), np.nan, dtype)
        rows = by_rows(X, threads, offsets)
        _sparse.sparse_forward_checked(
            *rows, W, b, True, Z[threads], threads, offsets=offsets, pack=pack
        )
        # Where a part's slabs were copied, the copy holds its rows of W; else none of them.
        for f0, f1, copied in parts:
            assert np.isin(W[f0:f1], pack).all() == copied
            assert np.isin(W[f0:f1], pack).any() == copied
    alone = np.full((n, m), np.nan, dtype)
    for g in range(0, n, 4):
        part = np.ascontiguousarray(X[g : g + 4])
        _sparse.sparse_forward_checked(
            *by_rows(part, 1, offsets), W, b, True, alone[g : g + 4], 1, offsets=offsets
        )
    for threads in (1, 2, 3):
        np.testing.assert_array_equal(Z[threads], alone)
    expected = np.maximum(X.astype(np.float64) @ W + b, 0)
    assert_close(Z[1], expected, dtype)


@pytest.mark.parametrize("n, k, m", PACKED_SHAPES.values(), ids=PACKED_SHAPES.keys())
def test_the_forward_on_w_transposed_as_it_is_packed_is_the_forwards_bits(
    n, k, m, dtype, instruction_set, rng
):
    """X @ W + b given W.T (transposed=True: every slab packed from it, transposed) is the
    product on W itself, bit for bit, on 1, 2 and 3 threads, whatever pack held before."""
    X = sparse_matrix(rng, (n, k), dtype, 0.5)
    W, b = normal(rng, (k, m), dtype, 0.05), normal(rng, m, dtype)
    WT = np.ascontiguousarray(W.T)
    pack = _sparse.pack_buffer(k, m, dtype)
    expected = np.full((n, m), np.nan, dtype)
    _sparse.sparse_forward_checked(*by_rows(X, 1), W, b, False, expected, 1)
    for threads in (1, 2, 3):
        pack.fill(np.nan)
        Z = np.full((n, m), np.nan, dtype)
        rows = by_rows(X, threads)
        _sparse.sparse_forward_checked(*rows, WT, b, False, Z, threads, pack=pack, transposed=True)
        np.testing.assert_array_equal(Z, expected)
    with pytest.raises(ValueError, match=r"^Expected .*None if transposed"):
        _sparse.sparse_forward_checked(
            *by_rows(X, 1), WT, b, False, Z, 1, offsets=np.zeros(k, dtype), transposed=True
        )


def test_the_shapes_copy_w_and_read_it_in_place_on_every_instruction_set(instruction_set, rng):
    """Some of PACKED_SHAPES read W's slabs from their copy and some W itself (float32, no
    offsets), on every instruction set's PACK_MIN_QUADS: the test above runs both paths."""
    copied = set()
    for n, k, m in PACKED_SHAPES.values():
        X = sparse_matrix(rng, (n, k), np.float32, 0.5)
        copied.update(part for _, _, part in copied_parts(X, m, None))
    assert copied == {True, False}


@pytest.mark.parametrize("cut", [64, 408, 720])
def test_the_features_cut_anywhere_give_the_same_products_on_any_threads(mnist, cut, dtype, rng):
    """X @ W sums two parts of the features, the second from `cut`: the row groups hold each
    part's features, and X @ W + b (ReLU) and the fused SGD update W - 0.1 X.T @ delta, b -
    0.1 sum_rows(delta) agree with NumPy's and are the same bits on 1, 2 and 3 threads."""
    images = mnist[0][0]
    X = np.array(images[rng.choice(len(images), 128)], dtype)
    W, b = normal(rng, (784, 96), dtype, 0.05), normal(rng, 96, dtype)
    delta = normal(rng, (128, 96), dtype)
    assert _sparse.part_bounds(784, cut) == [0, cut, 784]
    results = []
    for threads in (1, 2, 3):
        rows = _sparse.group_buffers(128, 784, dtype, by_rows=True)
        _sparse.group_rows_checked(X, *rows, n_threads=threads, cut=cut)
        np.testing.assert_array_equal(rebuild_rows(rows, 128, 784, cut), X)
        Z = np.full((128, 96), np.nan, dtype)
        _sparse.sparse_forward_checked(*rows, W, b, True, Z, n_threads=threads, cut=cut)
        columns = by_columns(X, threads)
        dW, db = W.copy(), b.copy()
        _sparse.sparse_param_grad_checked(
            *columns, delta, -0.1, 1.0, dW, db, n_threads=threads, cut=cut
        )
        results.append((Z, dW, db))
    for result in results[1:]:
        for actual, expected in zip(result, results[0], strict=True):
            np.testing.assert_array_equal(actual, expected)
    Z, dW, db = results[0]
    X64 = X.astype(np.float64)
    assert_close(Z, expected_forward(X64, W, b, True))
    assert_close(dW, W - 0.1 * X64.T @ delta)
    assert_close(db, b - 0.1 * delta.astype(np.float64).sum(0))


@pytest.mark.parametrize("cut", [406, 60, 724, 392.0, "400"])
def test_a_cut_off_the_groups_or_leaving_a_part_too_narrow_is_refused(cut):
    X = np.ones((8, 784), np.float32)
    rows = _sparse.group_buffers(8, 784, np.float32, by_rows=True)
    for call in (
        lambda: _sparse.part_bounds(784, cut),
        lambda: _sparse.group_rows_checked(X, *rows, cut=cut),
    ):
        with pytest.raises(
            ValueError, match=r"^Expected cut None or a multiple of 4 in \[64, 720\]"
        ):
            call()


def test_training_cuts_the_features_where_the_inputs_nonzeros_halve(rng):
    """Inputs whose nonzeros crowd the last features: a training Step cuts the first
    layer's features where about half of them lie on each side (each thread's share of the
    sparse work), not at the middle; fit then ends with the same bits on 1, 2 and 3
    threads. An evaluating Step keeps the middle."""
    x = np.zeros((600, 256), np.float32)
    density = np.linspace(0.02, 0.6, 256)  # nonzeros grow along the features
    mask = rng.random(x.shape) < density
    x[mask] = rng.random(np.count_nonzero(mask))
    y = rng.integers(0, 10, 600)
    nonzeros = np.count_nonzero(x, axis=0).cumsum()

    def model():
        return fastnaive.NaiveSequential(
            [
                fastnaive.NaiveDense(256, 64, "relu", seed=0),
                fastnaive.NaiveDense(64, 10, "softmax", seed=1),
            ]
        )

    step = engine.Step(model(), 128, x)
    assert step.sparse_input
    assert step.cut % 4 == 0 and step.cut > _sparse.part_bounds(256)[1]
    assert abs(nonzeros[step.cut - 1] / nonzeros[-1] - 0.5) < 0.02
    assert step.compiled().cut == step.cut
    assert engine.Step(model(), 128, x, training=False).compiled().cut == 128
    weights = []
    for threads in (1, 2, 3):
        trained = model()
        with threadpool_limits(threads, "openmp"):
            fastnaive.fit(trained, x, y, 2, 128, verbose=0)
        weights.append(trained.get_weights())
    for other in weights[1:]:
        for actual, expected in zip(other, weights[0], strict=True):
            np.testing.assert_array_equal(actual, expected)


@st.composite
def sparse_problems(draw):
    """Small X (mostly zeros), W and delta of one dtype with values in [-1, 1]."""
    dtype = draw(st.sampled_from(DTYPES))
    n, k, m = draw(st.tuples(st.integers(1, 9), st.integers(1, 9), st.integers(1, 20)))
    values = st.floats(-1, 1, width=32)
    X = draw(hnp.arrays(dtype, (n, k), elements=st.one_of(st.just(0.0), values)))
    W, delta = (draw(hnp.arrays(dtype, shape, elements=values)) for shape in [(k, m), (n, m)])
    return X, W, delta


@settings(max_examples=50, deadline=None)
@given(sparse_problems())
def test_products_property(problem):
    X, W, delta = problem
    b = np.zeros(W.shape[1], X.dtype)
    assert_close(forward(X, W, b, False), expected_forward(X, W, b, False))
    dW, db = param_grad(X, delta, 1.0, 0.0, W, b)
    assert_close(dW, X.T.astype(np.float64) @ delta)


@pytest.mark.mnist
def test_mnist_batch_matches_the_dense_kernels(mnist, rng):
    """The first 128 training images, whose zeros are MNIST's, through both kernels."""
    (train_images, _), _ = mnist
    X = np.ascontiguousarray(train_images[:128])
    W, b = normal(rng, (784, 512), np.float32, 784**-0.5), normal(rng, 512, np.float32)
    Z_dense = np.empty((128, 512), np.float32)
    _kernels.dense_forward_checked(X, W, b, True, Z_dense)
    assert_close(forward(X, W, b, True), Z_dense)
    delta = normal(rng, (128, 512), np.float32, 1e-2)
    W_dense, b_dense = W.copy(), b.copy()
    _kernels.dense_param_grad_checked(X, delta, -1e-3, 1.0, W_dense, b_dense)
    for sparse, dense in zip(param_grad(X, delta, -1e-3, 1.0, W, b), (W_dense, b_dense)):
        assert_close(sparse, dense)


def test_the_first_layer_runs_on_the_nonzeros_below_its_instruction_sets_measured_density(
    instruction_set,
):
    """A Step that does not train (and a per-batch one) chooses the products on the nonzeros
    at up to SPARSE_MAX_DENSITY of the instruction set they run on (measured per set:
    benchmarks/crossover.py), and the dense GEMMs above it."""
    limit = engine.SPARSE_MAX_DENSITY[instruction_set]
    model = fastnaive.NaiveSequential([fastnaive.NaiveDense(100, 8, "relu", seed=0)])
    for density, expected in ((limit - 0.02, True), (limit + 0.02, False)):
        x = inputs_of_density(density)
        step = engine.Step(model, 50, x, training=False)
        assert step.sparse_input is expected, (instruction_set, density)
        assert step.offsets is None
        assert engine.step_for(model, x).sparse_input is expected


def inputs_of_density(density, shape=(50, 100)):
    """float32 inputs with that share nonzero, no value but 0 repeating in a column (so
    that no offset makes them sparser)."""
    x = np.zeros(shape, np.float32)
    count = round(density * x.size)
    x.flat[:count] = 1.0 + np.arange(count) / count
    return x


@pytest.mark.parametrize(
    "times, below, above",
    # (sparse s, dense s): clearly faster either way, and within the margin (the limit's)
    [((1.0, 2.0), True, True), ((2.0, 1.0), False, False), ((1.0, 0.95), True, False)],
    ids=["sparse-faster", "dense-faster", "level"],
)
def test_near_the_limit_a_training_step_takes_the_kernels_measured_faster(
    instruction_set, monkeypatch, times, below, above
):
    """Within MEASURED_BAND of the limit a training Step times both and leaves the limit's
    choice where the other kernels are faster by MEASURED_MARGIN (once per process and
    shape: later Steps reuse the choice); outside the band the limit decides, untimed."""
    limit = engine.SPARSE_MAX_DENSITY[instruction_set]
    calls = []

    def timed(x, layer, offsets, narrow):
        calls.append(x.shape)
        return times

    monkeypatch.setattr(engine, "_measured_choices", {})
    monkeypatch.setattr(engine, "_first_layer_times", timed)
    model = fastnaive.NaiveSequential([fastnaive.NaiveDense(100, 8, "relu", seed=0)])
    for density, expected in ((limit - 0.1, below), (limit + 0.1, above)):
        assert engine.Step(model, 50, inputs_of_density(density)).sparse_input is expected
    assert calls == [(50, 100), (50, 100)]
    engine.Step(model, 50, inputs_of_density(limit + 0.1))
    assert len(calls) == 2  # measured once for that density
    for density, expected in ((limit - engine.MEASURED_BAND - 0.05, True), (0.99, False)):
        assert engine.Step(model, 50, inputs_of_density(density)).sparse_input is expected
    assert len(calls) == 2


@pytest.mark.parametrize("narrow", [False, True], ids=["gemm", "narrow"])
def test_the_measurement_times_both_kernels_on_one_thread(fashion_like, narrow, monkeypatch):
    """The timing runs both kernels for real (with offsets too) and its choice is kept; on
    buffers that start on 64-byte boundaries, as a Step's (misaligned rows slow the sparse
    products by a quarter or more, enough to tip the choice)."""
    x, offsets = fashion_like
    width = 8 if narrow else 256
    layer = fastnaive.NaiveDense(x.shape[1], width, "relu", seed=0)
    runs = []
    # The arrays each kernel writes or reads by rows: Z and partial; delta and dW.
    rows = {"sparse_forward_checked": (6, 8), "sparse_param_grad_checked": (3, 6)}
    for name in ("sparse_forward_checked", "sparse_param_grad_checked"):
        original = getattr(_sparse, name)

        def spy(*args, _original=original, _name=name, **kwargs):
            runs.append((_name, args[7] if _name == "sparse_forward_checked" else args[8]))
            assert all(args[i].ctypes.data % 64 == 0 for i in rows[_name]), _name
            return _original(*args, **kwargs)

        monkeypatch.setattr(_sparse, name, spy)
    for chosen in (None, offsets):
        batch = x if chosen is None else (x - chosen).astype(np.float32)
        sparse, dense = engine._first_layer_times(batch, layer, chosen, narrow)
        assert 0 < sparse < 1 and 0 < dense < 1
    assert len(runs) == 2 * 2 * (1 + engine.MEASURE_ROUNDS)
    assert {threads for _, threads in runs} == {1}


@pytest.fixture
def fashion_like(rng):
    """128 x 784 inputs about half nonzero, and per-feature offsets."""
    x = rng.random((128, 784)).astype(np.float32)
    x[rng.random(x.shape) < 0.5] = 0
    return x, rng.random(784).astype(np.float32)
