"""Where the first layer's kernels on the inputs' nonzeros stop beating the dense GEMMs, as
Markdown tables: the book's first layer (784 -> 512 relu, its forward pass and fused SGD
update, batches of 128) on Fashion-MNIST batches thinned or filled to 10%..100% nonzero, the
sparse path (grouping included) against the dense GEMMs, at 1 and 2 threads, in the engine's
configuration (one OpenMP pool, BLAS on one thread inside it: benchmarks/sparse.py's Layer),
for each instruction set the CPU runs: AVX-512 where it has it, AVX2 and the x86-64
baseline (SSE), with the BLAS's kernels held to the same width (OPENBLAS_CORETYPE), each in
a fresh process.

Run from the repository root (Fashion-MNIST from Debian's dataset-fashion-mnist):

    python benchmarks/crossover.py [--quick] [--repeats N]

Times are the best of --repeats passes (default 3) over BATCHES batches, the two paths
alternating. The last line of each table is the density from which the dense GEMMs win at
every thread count; fastnaive.engine.SPARSE_MAX_DENSITY holds those figures, per instruction
set. --quick runs 8 batches once at three densities, to check the script. Nothing here fails
on timing.
"""

import argparse
import os
import subprocess
import sys
import time

import numpy as np
import workloads
from sparse import Layer
from threadpoolctl import threadpool_limits

from fastnaive import _blas, _sparse, engine
from fastnaive.datasets import fashion_mnist

DENSITIES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0)
QUICK_DENSITIES = (0.2, 0.5, 1.0)
THREADS = (1, 2)
BATCHES = 64
QUICK_BATCHES = 8
# The BLAS kernels of the same vector width as ours, for OpenBLAS's DYNAMIC_ARCH builds.
CORE_TYPES = {"avx512": "SkylakeX", "avx2": "Haswell", "baseline": "Nehalem"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="to check the script")
    parser.add_argument("--repeats", type=int, default=None, metavar="N")
    parser.add_argument("--worker", choices=sorted(CORE_TYPES), help=argparse.SUPPRESS)
    parser.add_argument("--only", choices=sorted(CORE_TYPES), help="one instruction set")
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    return args


def images():
    (x, _), _ = fashion_mnist.load_data()
    return x.reshape(-1, workloads.N_FEATURES).astype(np.float32) / 255


def at_density(x, density, seed=0):
    """x thinned (its smallest values zeroed) or filled (random zeros set to 0.01) to about
    `density` nonzeros."""
    natural = np.count_nonzero(x) / x.size
    x = x.copy()
    if density < natural:
        cut = np.quantile(x[x != 0], 1 - density / natural)
        x[x <= cut] = 0
    elif density > natural:
        rng = np.random.default_rng(seed)
        zeros = x == 0
        x[zeros & (rng.random(x.shape) < (density - natural) / (1 - natural))] = 0.01
    return x


def seconds(step, batches, n_threads):
    start = time.perf_counter()
    for X in batches:
        step(X, n_threads)
    return time.perf_counter() - start


def worker(args):
    """One instruction set's table, in this process."""
    isa = _sparse.select_instruction_set(args.worker)
    _blas.load()
    threadpool_limits(1, user_api="blas")
    x = images()
    n_batches = QUICK_BATCHES if args.quick else BATCHES
    size = workloads.BATCH_SIZE
    rows, crossover = [], None
    for density in QUICK_DENSITIES if args.quick else DENSITIES:
        data = at_density(x[: n_batches * size], density)
        batches = [np.ascontiguousarray(data[i : i + size]) for i in range(0, len(data), size)]
        actual = np.count_nonzero(data) / data.size
        cells, dense_wins = [f"{actual:.0%}"], True
        for n_threads in THREADS:
            layer = Layer()
            best = {"sparse": np.inf, "dense": np.inf}
            for _ in range(args.repeats):
                for path in best:
                    step = getattr(layer, path)
                    step(batches[0], n_threads)
                    best[path] = min(best[path], seconds(step, batches, n_threads))
            ratio = best["sparse"] / best["dense"]
            dense_wins = dense_wins and ratio > 1
            per_batch = {path: t / len(batches) * 1e6 for path, t in best.items()}
            cells += [f"{per_batch['sparse']:.0f}", f"{per_batch['dense']:.0f}", f"{ratio:.2f}"]
        if dense_wins and crossover is None:
            crossover = actual
        elif not dense_wins:
            crossover = None
        rows.append(cells)
    headers = ["nonzeros"]
    for n_threads in THREADS:
        headers += [f"sparse µs ({n_threads} t)", f"dense µs ({n_threads} t)", "sparse / dense"]
    print(f"## {isa} (BLAS: OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')})\n")
    print(workloads.markdown_table(headers, rows))
    where = f"{crossover:.0%}" if crossover is not None else "never, up to the densest"
    print(
        f"\nDense wins at every thread count from: {where} "
        f"(engine.SPARSE_MAX_DENSITY[{isa!r}] = {engine.SPARSE_MAX_DENSITY.get(isa)})\n"
    )


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return
    print(
        f"The book's first layer, sparse against dense, on {workloads.cpu_description()}; "
        f"best of {args.repeats} passes over "
        f"{QUICK_BATCHES if args.quick else BATCHES} batches of {workloads.BATCH_SIZE}.\n",
        flush=True,
    )
    sets = _sparse.INSTRUCTION_SETS  # narrowest first; the CPU runs those up to its widest
    for isa in reversed(sets[: sets.index(_sparse.instruction_set()) + 1]):
        if args.only not in (None, isa):
            continue
        command = [sys.executable, __file__, "--worker", isa, "--repeats", str(args.repeats)]
        command += ["--quick"] if args.quick else []
        env = {**os.environ, "OPENBLAS_CORETYPE": CORE_TYPES[isa]}
        subprocess.run(command, check=True, env=env)


if __name__ == "__main__":
    main()
