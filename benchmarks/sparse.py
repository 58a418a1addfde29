"""The book's first layer on MNIST, dense against sparse, as Markdown tables: its forward pass
Z = relu(X @ W1 + b1) and its fused SGD update W1 -= lr * X.T @ delta1, b1 -= lr * sum(delta1),
per batch of 128 and over an epoch of 469 batches, at 1 and 2 threads.

Run from the repository root, FASTNAIVE_DATA naming a folder holding mnist.npz:

    python benchmarks/sparse.py [--quick] [--repeats N]

Both run as the engine runs them: one OpenMP pool of n_threads, BLAS on one thread inside
it. Dense is fastnaive._kernels (dense_forward_checked; dense_param_grad_checked with
alpha = -lr, beta = 1), each GEMM cut into blocks of single-threaded sgemm calls (SciPy's
OpenBLAS). Sparse is fastnaive._sparse: the batch grouped by rows and by columns (timed
with it), then both products. The paths alternate, with a pause between them
so that the previous one's spinning thread pool is idle; times are the best of --repeats
epochs (default 3). Effective GFLOP/s divide the dense FLOP (4 n k m per batch) by each
path's time, so the sparse path's figure is what dense GEMM would need to match it. The
component table times each call within its path's step, over the first COMPONENT_BATCHES
batches; the width table times the sparse forward alone with W1 of 64 to 2048 columns, per
quad and 64-byte line of W1's row it reads. --quick runs 20 batches once, to check the
script. Nothing here fails on timing.
"""

import argparse
import time
from functools import partial

import numpy as np
import workloads

from fastnaive import _kernels, _sparse

THREADS = (1, 2)
EPOCH_BATCHES = -(-workloads.N_TRAIN // workloads.BATCH_SIZE)  # 469: 468 of 128 and one of 96
COMPONENT_BATCHES = 64
QUICK_BATCHES = 20
WIDTHS = (64, 128, 256, 512, 1024, 2048)  # W1's columns for the width table


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_BATCHES} batches, once, to check the script"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        metavar="N",
        help="epochs per path and thread count, the best reported (default 3, 1 with --quick)",
    )
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    return args


def aligned(shape, dtype, misalignment=0):
    """An empty array starting `misalignment` bytes past a 64-byte boundary."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.empty(size + 128, np.uint8)
    start = -raw.ctypes.data % 64 + misalignment
    return raw[start : start + size].view(dtype).reshape(shape)


class Layer:
    """The first layer's parameters, a fixed delta1 and every buffer both paths need.

    W1 and delta1 start on a 64-byte boundary (NumPy only promises 16), as the sparse
    products want; `misalignment` bytes past one instead shows what they cost otherwise."""

    def __init__(self, misalignment=0, seed=0, batch_size=workloads.BATCH_SIZE):
        rng = np.random.default_rng(seed)
        k, m = workloads.N_FEATURES, workloads.HIDDEN
        self.W = aligned((k, m), np.float32, misalignment)
        self.W[:] = rng.uniform(-0.05, 0.05, (k, m))
        self.b = np.zeros(m, np.float32)
        self.delta = aligned((batch_size, m), np.float32, misalignment)
        self.delta[:] = 1e-2 * rng.standard_normal((batch_size, m))
        self.Z = np.empty((batch_size, m), np.float32)
        self.rows = _sparse.group_buffers(batch_size, k, np.float32, by_rows=True)
        self.pack = _sparse.pack_buffer(k, self.W.shape[1], np.float32)
        self.columns = _sparse.group_buffers(k, batch_size, np.float32, by_rows=False)
        self.alpha = np.float32(-workloads.LEARNING_RATE)

    def dense(self, X, n_threads):
        """Forward and fused update through sgemm blocks on n_threads (BLAS on one thread)."""
        n = X.shape[0]
        _kernels.dense_forward_checked(X, self.W, self.b, True, self.Z[:n], n_threads)
        _kernels.dense_param_grad_checked(
            X, self.delta[:n], self.alpha, 1.0, self.W, self.b, n_threads
        )

    def grouped_rows(self, X, n_threads):
        rows = _sparse.rows_of(self.rows, X.shape[0], X.shape[1])
        _sparse.group_rows_checked(X, *rows, n_threads=n_threads)
        return rows

    def grouped_columns(self, X, n_threads):
        _sparse.group_columns_checked(X, *self.columns, n_threads=n_threads)
        return self.columns

    def sparse(self, X, n_threads):
        """The same step over the nonzeros of X, grouping included."""
        n = X.shape[0]
        rows = self.grouped_rows(X, n_threads)
        _sparse.sparse_forward_checked(
            *rows, self.W, self.b, True, self.Z[:n], n_threads, pack=self.pack
        )
        columns = self.grouped_columns(X, n_threads)
        _sparse.sparse_param_grad_checked(
            *columns, self.delta[:n], self.alpha, 1.0, self.W, self.b, n_threads
        )


def batches_of(x, n_batches):
    size = workloads.BATCH_SIZE
    return [x[start : start + size] for start in range(0, min(len(x), n_batches * size), size)]


def run(step, items, n_threads):
    for item in items:
        step(item, n_threads)


def best_of(function, repeats):
    """Shortest time of `repeats` calls, after a pause for the other path's pool to idle."""
    workloads.settle()
    return workloads.best_seconds(function, repeats)


def epoch_table(layers, batches, repeats):
    """layers: {path name: (Layer, its step method's name)}."""
    seconds = {}
    for _ in range(repeats):
        for n_threads in THREADS:
            with workloads.blas_threads(1):
                for path, (layer, method) in layers.items():
                    step = getattr(layer, method)
                    elapsed = best_of(lambda s=step, t=n_threads: run(s, batches, t), 1)
                    seconds[path, n_threads] = min(seconds.get((path, n_threads), elapsed), elapsed)
    flop = sum(4 * len(X) * workloads.N_FEATURES * workloads.HIDDEN for X in batches)
    dense = next(iter(layers))
    rows = []
    for (path, n_threads), elapsed in sorted(seconds.items(), key=lambda item: item[0][1]):
        rows.append(
            (
                path,
                n_threads,
                f"{elapsed / len(batches) * 1e6:.0f}",
                f"{elapsed:.3f}",
                f"{seconds[dense, n_threads] / elapsed:.2f}",
                f"{flop / elapsed / 1e9:.0f}",
            )
        )
    return workloads.markdown_table(
        [
            "path",
            "threads",
            "µs per batch",
            f"layer 1, {len(batches)} batches (s)",
            "speed-up over dense",
            "effective GFLOP/s",
        ],
        rows,
    )


def timed_calls(calls, batches, n_threads):
    """Seconds spent in each of calls {name: f(X, n_threads)}, run in order on each batch."""
    seconds = dict.fromkeys(calls, 0.0)
    for X in batches:
        for name, call in calls.items():
            start = time.perf_counter()
            call(X, n_threads)
            seconds[name] += time.perf_counter() - start
    return seconds


def component_table(layer, batches, repeats):
    """µs per batch of each call, timed one by one within each path's step."""
    n = workloads.BATCH_SIZE
    batches = [X for X in batches if len(X) == n]
    layouts = {}

    def group_rows(X, n_threads):
        layouts["rows"] = layer.grouped_rows(X, n_threads)

    def group_columns(X, n_threads):
        layouts["columns"] = layer.grouped_columns(X, n_threads)

    sparse = {
        "group rows": group_rows,
        "sparse forward": lambda X, t: _sparse.sparse_forward_checked(
            *layouts["rows"], layer.W, layer.b, True, layer.Z, t, pack=layer.pack
        ),
        "group columns": group_columns,
        "sparse update": lambda X, t: _sparse.sparse_param_grad_checked(
            *layouts["columns"], layer.delta, layer.alpha, 1.0, layer.W, layer.b, t
        ),
    }
    dense = {
        "dense forward": lambda X, t: _kernels.dense_forward_checked(
            X, layer.W, layer.b, True, layer.Z, t
        ),
        "dense update": lambda X, t: _kernels.dense_param_grad_checked(
            X, layer.delta, layer.alpha, 1.0, layer.W, layer.b, t
        ),
    }
    table = []
    for n_threads in THREADS:
        best = {}
        with workloads.blas_threads(1):
            for _ in range(repeats):
                for calls in (sparse, dense):
                    workloads.settle()
                    for name, seconds in timed_calls(calls, batches, n_threads).items():
                        best[name] = min(best.get(name, seconds), seconds)
        micros = {name: seconds / len(batches) * 1e6 for name, seconds in best.items()}
        sparse_total = sum(micros[name] for name in sparse)
        dense_total = sum(micros[name] for name in dense)
        table.append(
            (
                n_threads,
                *(f"{t:.0f}" for t in micros.values()),
                f"{sparse_total:.0f}",
                f"{dense_total:.0f}",
                f"{dense_total / sparse_total:.2f}",
            )
        )
    return workloads.markdown_table(
        ["threads", *sparse, *dense, "sparse total", "dense total", "speed-up"], table
    )


def forward_all(grouped, W, b, Z, pack):
    for starts, index, values in grouped:
        _sparse.sparse_forward_checked(starts, index, values, W, b, True, Z, 1, pack=pack)


def width_table(batches, repeats, widths=WIDTHS):
    """The sparse forward alone, one thread, with W1 of each width: what a quad costs per
    64-byte line of W1's row that it reads, as W1's footprint grows past L2."""
    rng = np.random.default_rng(1)
    k, n = workloads.N_FEATURES, workloads.BATCH_SIZE
    grouped, quads = [], 0
    for X in (X for X in batches if len(X) == n):
        starts, index, values = _sparse.group_buffers(n, k, np.float32, by_rows=True)
        _sparse.group_rows_checked(X, starts, index, values, n_threads=1)
        lists = starts.reshape(-1, 16)
        quads += int((lists[:, 15] - lists[:, 0]).sum())
        grouped.append((starts, index, values))
    table = []
    for m in widths:
        W = aligned((k, m), np.float32)
        W[:] = rng.uniform(-0.05, 0.05, (k, m))
        b, Z = np.zeros(m, np.float32), np.empty((n, m), np.float32)
        best = best_of(
            partial(forward_all, grouped, W, b, Z, _sparse.pack_buffer(k, m, np.float32)), repeats
        )
        lines = quads * m * 4 / 64
        table.append(
            (
                m,
                f"{W.nbytes / 1024:.0f}",
                f"{best / len(grouped) * 1e6:.0f}",
                f"{best / lines * 1e9:.2f}",
            )
        )
    return workloads.markdown_table(
        ["W1 columns", "W1 KB", "µs per batch", "ns per quad and 64-byte line of W1"], table
    )


def main(argv=None):
    args = parse_args(argv)
    x, _ = workloads.mnist_train()
    batches = batches_of(x, QUICK_BATCHES if args.quick else EPOCH_BATCHES)
    layer, misaligned = Layer(), Layer(misalignment=16)
    for X in batches[:4]:  # loads SciPy's BLAS (for threadpoolctl to see it) and warms up
        layer.dense(X, 1)
        layer.sparse(X, 1)
    nonzero = np.mean([np.count_nonzero(X) / X.size for X in batches])
    print(
        f"Layer 1 (784 -> 512, relu) of the book's MLP on {len(batches)} MNIST batches of "
        f"{workloads.BATCH_SIZE} ({nonzero:.1%} of pixels nonzero), kernels on "
        f"{_sparse.instruction_set()}, best of {args.repeats}; noisy on a busy machine.\n"
    )
    layers = {
        "dense (sgemm)": (layer, "dense"),
        "sparse": (layer, "sparse"),
        "sparse, W1 and delta1 16 B past 64": (misaligned, "sparse"),
    }
    print(
        f"## Forward and fused SGD update, per batch and over the batches\n\n"
        f"{epoch_table(layers, batches, args.repeats)}\n"
    )
    component_batches = batches[: QUICK_BATCHES if args.quick else COMPONENT_BATCHES]
    print(
        f"## Each call, µs per batch of {workloads.BATCH_SIZE} (first "
        f"{len(component_batches)} batches)\n\n"
        f"{component_table(layer, component_batches, args.repeats)}\n"
    )
    widths = WIDTHS[:2] if args.quick else WIDTHS
    print(
        f"## The sparse forward alone by W1's width, one thread (first "
        f"{len(component_batches)} batches; the µs include the wrapper's check of the lists)\n\n"
        f"{width_table(component_batches, args.repeats, widths)}"
    )


if __name__ == "__main__":
    main()
