"""Where the two CPUs sit, and what it costs two threads to share one weight matrix.

Each round measures a cache line's round trip between the process's first two CPUs
(workloads.core_round_trip), then times two threads (pinned to those CPUs) sweeping one
784 x 512 float matrix, the book's W1: per iteration a read pass, then a read-modify-write
pass, a barrier after each, each pass split by rows (R: half the rows each), by columns (C:
half of every row each, as X @ W's column blocks are) or, for reading, not at all (A: both
read all of it) (placement.c). The table gives, per split, the median microseconds per
iteration over the rounds whose round trip was below --near-ns (the two CPUs near each
other: one chiplet) and over the others (far).

A second table times deep Adam's middle input gradient as fastnaive._kernels.dense_input_grad
cuts it: dX (128 x 256) := delta (128 x 128) @ W.T in two blocks of 128 columns, one SciPy
sgemm call each (BLAS on one thread), on one thread or on the two CPUs with a barrier after
each iteration: the BLAS zeroing each block (beta = 0, what the kernel does), each thread
zeroing its own block then beta = 1, and beta = 0 with the second block written to an array
of its own (no line of dX shared: the ceiling).

Run from the repository root: python benchmarks/placement.py [--rounds N] [--quick]
"""

import argparse
import os
import statistics
import sys

import workloads

SPLITS = ("RR", "CR", "AR", "RC", "CC")
ROWS, COLS = 784, 512
# (mode, its name) of placement.c's GEMM blocks; the product's (m, n, k); iterations per
# --iterations of the sweeps (a product takes about 20 times a sweep's time).
GEMM_MODES = (
    (b"B", "beta = 0, the BLAS zeroes each block"),
    (b"Z", "each thread zeroes its block, beta = 1"),
    (b"S", "beta = 0, a separate array per block"),
)
GEMM_SHAPE = (128, 256, 128)
GEMM_SHARE = 20


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=12, help="default 12")
    parser.add_argument("--iterations", type=int, default=2000, help="a split's, default 2000")
    parser.add_argument(
        "--near-ns", type=float, default=workloads.NEAR_NS, help=f"default {workloads.NEAR_NS:g}"
    )
    parser.add_argument("--quick", action="store_true", help="one round of 20 iterations")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.iterations = 1, 20
    return args


def sgemm_address():
    """The address of SciPy's BLAS sgemm (the one fastnaive's kernels call), its thread
    pool then limited to one thread for the process."""
    import ctypes

    from scipy.linalg import cython_blas
    from threadpoolctl import threadpool_limits

    capsule = cython_blas.__pyx_capi__["sgemm"]
    get_name, get_pointer = (
        ctypes.pythonapi.PyCapsule_GetName,
        ctypes.pythonapi.PyCapsule_GetPointer,
    )
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get_pointer.restype = ctypes.c_void_p
    get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    threadpool_limits(1, user_api="blas")
    return get_pointer(capsule, get_name(capsule))


def main(argv=None):
    args = parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    library = workloads.placement_library()
    if len(cpus) < 2 or library is None:
        print("placement.py needs two CPUs and a C compiler")
        return 0
    times = {split: {"near": [], "far": []} for split in SPLITS}
    gemm = {(mode, t): {"near": [], "far": []} for mode, _ in GEMM_MODES for t in (1, 2)}
    sgemm = sgemm_address()
    gemm_iterations = max(1, args.iterations // GEMM_SHARE)
    trips = []
    for _ in range(args.rounds):
        trip = workloads.core_round_trip()
        if trip is None:
            sys.exit(f"placement.py: CPUs {cpus[0]} and {cpus[1]} could not be used")
        trips.append(trip)
        kind = "near" if trip < args.near_ns else "far"
        for split in SPLITS:
            read, write = (c.encode() for c in split)
            micro = library.fastnaive_bench_sweeps(
                cpus[0], cpus[1], ROWS, COLS, read, write, args.iterations
            )
            if micro < 0:
                sys.exit(f"placement.py: CPUs {cpus[0]} and {cpus[1]} could not be used")
            times[split][kind].append(micro)
        for mode, _ in GEMM_MODES:
            for threads in (1, 2):
                micro = library.fastnaive_bench_gemm_blocks(
                    cpus[0], cpus[1], sgemm, *GEMM_SHAPE, mode, threads, gemm_iterations
                )
                if micro < 0:
                    sys.exit(f"placement.py: CPUs {cpus[0]} and {cpus[1]} could not be used")
                gemm[mode, threads][kind].append(micro)
    print(
        f"{workloads.cpu_description()}; CPUs {cpus[0]} and {cpus[1]}; round trips "
        f"{min(trips):.0f}-{max(trips):.0f} ns (near: below {args.near_ns:g}); "
        f"{ROWS} x {COLS} float32, {args.rounds} rounds of {args.iterations} iterations\n"
    )
    rows = []
    for split in SPLITS:
        cells = []
        for kind in ("near", "far"):
            values = times[split][kind]
            cells.append(f"{statistics.median(values):.1f} ({len(values)})" if values else "")
        rows.append((f"read {split[0]}, write {split[1]}", *cells))
    header = ("passes", "near: us / iteration (rounds)", "far")
    print(workloads.markdown_table(header, rows))
    m, n, k = GEMM_SHAPE
    print(
        f"\ndX ({m} x {n}) := delta ({m} x {k}) @ W.T in two blocks of {n // 2} columns, "
        f"SciPy's sgemm, {gemm_iterations} iterations a round\n"
    )
    rows = []
    for mode, name in GEMM_MODES:
        cells = []
        for kind in ("near", "far"):
            for threads in (1, 2):
                values = gemm[mode, threads][kind]
                cells.append(f"{statistics.median(values):.1f}" if values else "")
        rows.append((name, *cells))
    header = ("blocks", "near: us, 1 thread", "2 threads", "far: 1 thread", "2 threads")
    print(workloads.markdown_table(header, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
