"""The narrow kernels against the BLAS, as Markdown tables: the three products of a layer
with 10 outputs (a classifier's head), X @ W + b, delta @ W.T and the fused SGD update
W += alpha X.T @ delta, on the heads of benchmarks/matrix.py's workloads, at 1 and 2 threads,
for each instruction set the CPU runs (fastnaive._sparse.select_instruction_set); the BLAS on
one thread per block, as the engine runs it (fastnaive._kernels.dense_*).

Run from the repository root:

    python benchmarks/narrow.py [--quick] [--repeats N]

Times are the best of --repeats (default 5) runs of NUMBER calls each, the two kernels
alternating, in microseconds per call; "BLAS / narrow" above 1 is where the narrow kernels
win. fastnaive.engine.NARROW_INSTRUCTION_SETS lists the instruction sets where they win on
the book's head. --quick runs one small shape once, to check the script. Nothing here fails
on timing.
"""

import argparse
import timeit

import numpy as np
import workloads
from threadpoolctl import threadpool_info, threadpool_limits

from fastnaive import _blas, _kernels, _sparse

# (name, rows n, inputs k, outputs m, dtype): the heads of matrix.py's workloads.
SHAPES = (
    ("book", 128, 512, 10, np.float32),
    ("deep Adam", 128, 128, 10, np.float32),
    ("wide", 256, 2048, 10, np.float32),
    ("big batch", 1024, 512, 10, np.float32),
    ("float64", 128, 512, 10, np.float64),
)
QUICK_SHAPES = (("book", 128, 512, 10, np.float32),)
THREADS = (1, 2)
NUMBER = 200


def products(n, k, m, dtype, n_threads):
    """{product: (BLAS call, narrow call)} on random operands of the shape."""
    rng = np.random.default_rng(0)
    X, W, b = (rng.standard_normal(s).astype(dtype) for s in ((n, k), (k, m), m))
    delta = rng.standard_normal((n, m)).astype(dtype)
    Z, dX = np.empty((n, m), dtype), np.empty((n, k), dtype)
    alpha, one = dtype(-1e-9), dtype(1)
    return {
        "X @ W + b": (
            lambda: _kernels.dense_forward_checked(X, W, b, 0, Z, n_threads),
            lambda: _sparse.narrow_forward_checked(X, W, b, 0, Z, n_threads),
        ),
        "delta @ W.T": (
            lambda: _kernels.dense_input_grad_checked(delta, W, dX, n_threads),
            lambda: _sparse.narrow_input_grad_checked(delta, W, dX, n_threads),
        ),
        "W += a X.T @ delta": (
            lambda: _kernels.dense_param_grad_checked(X, delta, alpha, one, W, b, n_threads),
            lambda: _sparse.narrow_param_grad_checked(X, delta, alpha, one, W, b, n_threads),
        ),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="to check the script")
    parser.add_argument("--repeats", type=int, default=5, metavar="N")
    args = parser.parse_args(argv)
    shapes, repeats = (QUICK_SHAPES, 1) if args.quick else (SHAPES, args.repeats)
    number = 10 if args.quick else NUMBER
    _blas.load()
    cores = sorted(
        {f"{pool['internal_api']} {pool.get('architecture')}" for pool in threadpool_info()}
        - {"openmp None"}
    )
    print(f"CPU: {workloads.cpu_description()}; BLAS: {', '.join(cores)}\n")
    with threadpool_limits(limits=1, user_api="blas"):
        for isa in workloads.each_instruction_set():
            print(f"### {isa}\n")
            rows = []
            for name, n, k, m, dtype in shapes:
                for n_threads in THREADS:
                    for product, calls in products(n, k, m, dtype, n_threads).items():
                        best = [np.inf, np.inf]
                        for _ in range(repeats):
                            for which, call in enumerate(calls):
                                seconds = timeit.timeit(call, number=number) / number
                                best[which] = min(best[which], seconds)
                        rows.append(
                            (
                                f"{name} {n}x{k}x{m} {np.dtype(dtype).name}",
                                n_threads,
                                product,
                                f"{best[0] * 1e6:.1f}",
                                f"{best[1] * 1e6:.1f}",
                                f"{best[0] / best[1]:.2f}",
                            )
                        )
            headers = ("head", "threads", "product", "BLAS us", "narrow us", "BLAS / narrow")
            print(workloads.markdown_table(headers, rows) + "\n")


if __name__ == "__main__":
    main()
