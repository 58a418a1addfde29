"""A hidden layer's training products on its inputs' nonzeros against the GEMMs, as Markdown
tables: the forward relu(X @ W + b) and the fused SGD update W += alpha X.T @ delta of a
layer whose inputs X are a ReLU's outputs, and the input gradient delta @ W.T of one whose
outputs are (delta as sparse as X), by the share of them nonzero, on hidden layers of
benchmarks/matrix.py's workloads and beside them, at 1 and 2 threads, for each instruction
set the CPU runs (fastnaive._sparse.select_instruction_set). The sparse side is what a
training step runs there: X grouped by rows (forward) or columns (gradient), then the sparse
kernels (the gradient with delta's padded copy where _sparse.delta_stride gives one); for
the input gradient, delta grouped by rows and the forward's kernels on W's slabs transposed
as they are packed (sparse_forward_checked's transposed). The GEMM side, the engine's GEMMs
with the BLAS on one thread per block (fastnaive._kernels.dense_forward_checked,
dense_param_grad_checked, dense_input_grad_checked; a step's input gradient then applies
the ReLU's derivative, a pass over its output on either side).

Run from the repository root:

    python benchmarks/hidden.py [--quick] [--repeats N]

Times are the best of --repeats (default 5) rounds, the two sides alternating, in
milliseconds per call; "sparse / GEMM" below 1 is where the sparse kernels win.
fastnaive.engine.SPARSE_HIDDEN_MAX_DENSITY and SPARSE_HIDDEN_MIN_WEIGHTS come from these
tables. X's nonzeros are spread at random (a standard normal thresholded at the share's
quantile). The BLAS keeps the CPU's own kernels in every table: for the AVX2 table of an
AVX-512 CPU to stand in for an AVX2-only one, run with OPENBLAS_CORETYPE=Haswell. --quick
runs one small shape once, to check the script. Nothing here fails on timing.
"""

import argparse
import timeit

import numpy as np
import workloads
from threadpoolctl import threadpool_limits

from fastnaive import _activations, _blas, _kernels, _sparse
from fastnaive._memory import aligned_empty

RELU = _activations.RELU

# (name, rows n, inputs k, outputs m, dtype)
SHAPES = (
    ("deep Adam's second", 128, 256, 128, np.float32),
    ("book-sized", 128, 512, 512, np.float32),
    ("1024 wide", 128, 1024, 1024, np.float32),
    ("wide's second", 256, 2048, 2048, np.float32),
    ("big batch", 1024, 512, 512, np.float32),
    ("book-sized float64", 128, 512, 512, np.float64),
)
QUICK_SHAPES = (("book-sized", 128, 512, 512, np.float32),)
SHARES = (0.3, 0.5, 0.6, 0.7, 0.8)
THREADS = (1, 2)


def calls(n, k, m, dtype, share, n_threads):
    """{product: (sparse call, GEMM call)}, X a ReLU's outputs with `share` of them
    nonzero."""
    rng = np.random.default_rng(0)
    z = rng.standard_normal((n, k))
    X = aligned_empty((n, k), dtype)
    X[...] = np.where(z > np.quantile(z, 1 - share), z, 0)
    delta = aligned_empty((n, m), dtype)
    delta[...] = rng.standard_normal((n, m))
    # The deltas of a layer whose outputs are a ReLU's: zero where those are.
    sparse_delta = aligned_empty((n, m), dtype)
    sparse_delta[...] = np.where(rng.random((n, m)) < share, delta, 0)
    W = aligned_empty((k, m), dtype)
    W[...] = rng.standard_normal((k, m))
    b = np.zeros(m, dtype)
    Z, partial = aligned_empty((n, m), dtype), aligned_empty((n, m), dtype)
    rows = _sparse.group_buffers(n, k, dtype, by_rows=True)
    pack = _sparse.pack_buffer(k, m, dtype)
    columns = _sparse.group_buffers(k, n, dtype, by_rows=False)
    stride = _sparse.delta_stride(m, dtype)
    padded = aligned_empty((n, stride), dtype) if stride > m else None
    alpha, one = dtype(-1e-9), dtype(1)
    dX = aligned_empty((n, k), dtype)
    delta_rows = _sparse.group_buffers(n, m, dtype, by_rows=True)
    transposed_pack = _sparse.pack_buffer(m, k, dtype)
    dX_partial, no_bias = aligned_empty((n, k), dtype), np.zeros(k, dtype)

    def sparse_forward():
        _sparse.group_rows_checked(X, *rows, n_threads)
        _sparse.sparse_forward_checked(*rows, W, b, True, Z, n_threads, partial, pack=pack)

    def gemm_forward():
        _kernels.dense_forward_checked(X, W, b, RELU, Z, n_threads)

    def sparse_gradient():
        _sparse.group_columns_checked(X, *columns, n_threads)
        _sparse.sparse_param_grad_checked(
            *columns, delta, alpha, one, W, b, n_threads, padded=padded
        )

    def gemm_gradient():
        _kernels.dense_param_grad_checked(X, delta, alpha, one, W, b, n_threads)

    def sparse_input_gradient():
        _sparse.group_rows_checked(sparse_delta, *delta_rows, n_threads)
        _sparse.sparse_forward_checked(
            *delta_rows,
            W,
            no_bias,
            False,
            dX,
            n_threads,
            dX_partial,
            pack=transposed_pack,
            transposed=True,
        )

    def gemm_input_gradient():
        _kernels.dense_input_grad_checked(sparse_delta, W, dX, n_threads)

    return {
        "relu(X @ W + b)": (sparse_forward, gemm_forward),
        "W += a X.T @ delta": (sparse_gradient, gemm_gradient),
        "delta @ W.T": (sparse_input_gradient, gemm_input_gradient),
    }


def best_times(pair, repeats, seconds=0.05):
    """The best time per call of each of pair, in rounds of about `seconds`, alternating."""
    number = max(1, int(seconds / max(timeit.timeit(pair[1], number=1), 1e-6)))
    best = [np.inf, np.inf]
    for _ in range(repeats):
        for which, call in enumerate(pair):
            best[which] = min(best[which], timeit.timeit(call, number=number) / number)
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="to check the script")
    parser.add_argument("--repeats", type=int, default=5, metavar="N")
    args = parser.parse_args(argv)
    shapes, shares, repeats = (
        (QUICK_SHAPES, (0.5,), 1) if args.quick else (SHAPES, SHARES, args.repeats)
    )
    _blas.load()
    print(f"CPU: {workloads.cpu_description()}\n")
    headers = ("layer", "threads", "product", "GEMM ms") + tuple(f"{s:.0%} nonzero" for s in shares)
    with threadpool_limits(limits=1, user_api="blas"):
        for isa in workloads.each_instruction_set():
            print(f"### {isa}: sparse / GEMM time\n")
            rows = []
            for name, n, k, m, dtype in shapes:
                for n_threads in THREADS:
                    ratios, gemm_ms = {}, {}
                    for share in shares:
                        products = calls(n, k, m, dtype, share, n_threads)
                        for product, pair in products.items():
                            sparse, gemm = best_times(pair, repeats)
                            ratios.setdefault(product, []).append(f"{sparse / gemm:.2f}")
                            gemm_ms.setdefault(product, []).append(gemm * 1e3)
                    for product in ratios:
                        rows.append(
                            (
                                f"{name} {n}x{k}x{m} {np.dtype(dtype).name}",
                                n_threads,
                                product,
                                f"{min(gemm_ms[product]):.2f}",
                                *ratios[product],
                            )
                        )
            print(workloads.markdown_table(headers, rows) + "\n")


if __name__ == "__main__":
    main()
