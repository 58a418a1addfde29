"""Two threads against one, interleaved: fastnaive.fit's thread scaling on the matrix's
workloads, as a Markdown table.

For each workload of matrix.py, one process trains fastnaive from the matrix's initial
weights (its FastnaivePeer, reset before every epoch), one epoch at a time, the epochs
alternating between one thread (every thread pool limited to one, threadpoolctl) and the
process's two CPUs, `--rounds` rounds. Before and after each two-thread epoch a cache line's
round trip between the two CPUs is measured (workloads.core_round_trip), and how much two
threads gain on memory of their own (workloads.pair_scaling): on a virtual machine the host
places the two virtual CPUs near each other or far apart, moves them, and at times runs both
on one core; a two-thread step that hands data between its threads runs at the speed of
that placement, and no step gains much on a shared core. An epoch is near where both round
trips are below workloads.NEAR_NS and both scalings at least workloads.SHARED_SCALING,
shared where the round trips are near but a scaling is not, far where neither round trip is
near, and moved otherwise (the host moved the CPUs while it ran). The table gives the
one-thread epochs' median and best, the same of the near two-thread epochs, the ratios of
the medians and of the bests, the same ratio of the fastest steps (each batch's fastest
step over the rounds, summed: workloads.fastest_steps, timed by a StepClock callback in
every epoch, about a microsecond a step), and the shared, far and moved epochs' medians. A
shared spell lasts 4-400 ms, so the probes beside an epoch miss some of those within it; the
fastest steps leave out whatever slowed a step in some rounds, not in all. Interleaved in one
process, the ratio is steadier than between two runs apart (matrix.py's thread counts run
one after the other, each in its own process).

Run from the repository root, FASTNAIVE_DATA naming a folder holding mnist.npz:

    python benchmarks/threads.py [--quick] [--rounds N] [--workloads NAME ...] [--isa avx2]

--quick trains the matrix's three quick batches per epoch, one round: it checks the command.
--isa avx2 holds fastnaive to AVX2 on a CPU with AVX-512, as matrix.py's does (its sparse
kernels through fastnaive._sparse.select_instruction_set, the BLAS through
matrix.AVX2_ENVIRONMENT; the script runs itself again with those variables set, since a BLAS
reads them as it loads): a stand-in for an AVX2-only CPU. A native run (the default) drops
those variables, so that each library takes the kernels its own detection picks.
Nothing here fails on timing.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
from typing import NamedTuple

import matrix
import peers
import workloads
from threadpoolctl import threadpool_limits

from fastnaive import _sparse

DEFAULT_WORKLOADS = ("book", "fashion", "deep-adam", "dense", "float64", "big-batch")
ROUNDS, QUICK_ROUNDS = 8, 1


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="three batches an epoch, one round")
    parser.add_argument("--rounds", type=int, help=f"rounds of two epochs (default {ROUNDS})")
    matrix.add_workloads_argument(parser, DEFAULT_WORKLOADS)
    parser.add_argument(
        "--isa",
        choices=["native", "avx2"],
        default="native",
        help="avx2: fastnaive held to AVX2 kernels (a stand-in for an AVX2-only CPU)",
    )
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = QUICK_ROUNDS if args.quick else ROUNDS
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if len(os.sched_getaffinity(0)) < 2:
        parser.error("this process may run on one CPU only: there is no second thread to time")
    return args


def timed(epoch, *args):
    start = time.perf_counter()
    epoch(*args)
    return time.perf_counter() - start


class Placement(NamedTuple):
    """Where the two CPUs were around a two-thread epoch: the round trips (ns) and the pair
    scalings before and after it, each pair None where it could not be measured."""

    trips: tuple | None
    scalings: tuple | None


def placed(run, *args):
    """(what run(*args) returns, the Placement around the call)"""
    scaling_before, trip_before = workloads.pair_scaling(), workloads.core_round_trip()
    result = run(*args)
    trip_after, scaling_after = workloads.core_round_trip(), workloads.pair_scaling()
    trips, scalings = (trip_before, trip_after), (scaling_before, scaling_after)
    return result, Placement(
        None if None in trips else trips, None if None in scalings else scalings
    )


def scaling(workload, images, args):
    """(one-thread seconds, [(two-thread seconds, Placement), ...], one thread's fastest steps
    over two threads' (workloads.fastest_steps) or None with fewer than two batches)"""
    x, y = matrix.workload_data(workload, images, args.quick)
    peer = peers.FastnaivePeer(workload, matrix.initial_weights(workload), x, y)
    peer.epoch(matrix.warm_up_batches(len(peer.bounds)))  # plans, pages the buffers in
    ones, twos, steps = [], [], ([], [])
    for _ in range(args.rounds):
        clocks = workloads.StepClock(), workloads.StepClock()
        peer.reset()
        with threadpool_limits(1):
            ones.append(timed(peer.epoch, None, [clocks[0]]))
        peer.reset()
        twos.append(placed(timed, peer.epoch, None, [clocks[1]]))
        for clock, kept in zip(clocks, steps):
            kept.append(clock.steps)
    fastest = None
    if steps[0][0]:
        fastest = workloads.fastest_steps(steps[0]) / workloads.fastest_steps(steps[1])
    return ones, twos, fastest


KINDS = ("near", "shared", "far", "moved")


def placement(where):
    """'near', 'shared', 'far' or 'moved' of a two-thread epoch's Placement; 'far' where the
    round trips are unknown (no second CPU to time, or no C compiler)."""
    if where.trips is None:
        return "far"
    near = [ns < workloads.NEAR_NS for ns in where.trips]
    if not all(near):
        return "far" if not any(near) else "moved"
    scalings = where.scalings or ()
    return "shared" if any(s < workloads.SHARED_SCALING for s in scalings) else "near"


def cell(seconds):
    return f"{statistics.median(seconds):.3f} / {min(seconds):.3f}" if seconds else "-"


def by_placement(twos):
    """{kind: the seconds of the two-thread epochs placed so} for each of KINDS, twos as
    scaling returns them."""
    return {kind: [s for s, where in twos if placement(where) == kind] for kind in KINDS}


def spread(values, digits):
    """'low-high' of the values, '-' without any"""
    return f"{min(values):.{digits}f}-{max(values):.{digits}f}" if values else "-"


def row(workload, ones, twos, fastest):
    near, shared, far, moved = by_placement(twos).values()
    ratios = "-"
    if near:
        ratios = (
            f"{statistics.median(ones) / statistics.median(near):.2f} / {min(ones) / min(near):.2f}"
        )
    trips = [ns for _, where in twos for ns in where.trips or ()]
    scalings = [x for _, where in twos for x in where.scalings or ()]
    return [
        workload.name,
        cell(ones),
        f"{cell(near)} ({len(near)})",
        ratios,
        "-" if fastest is None else f"{fastest:.2f}",
        *(f"{statistics.median(s):.3f} ({len(s)})" if s else "-" for s in (shared, far, moved)),
        spread(trips, 0),
        spread(scalings, 2),
    ]


def main(argv=None):
    args = parse_args(argv)
    env = matrix.isa_environment(args.isa)
    if env != dict(os.environ):
        # The BLAS has loaded with this environment's core type: run again with the right one.
        command = [sys.executable, os.path.abspath(__file__)]
        command += sys.argv[1:] if argv is None else list(argv)
        return subprocess.run(command, env=env).returncode
    if args.isa == "avx2":
        _sparse.select_instruction_set("avx2")
    images = {
        dataset: matrix.load_images(dataset)
        for dataset in {matrix.WORKLOADS[name].dataset for name in args.workloads}
    }
    rows = []
    for name in args.workloads:
        workload = matrix.WORKLOADS[name]
        rows.append(row(workload, *scaling(workload, images, args)))
        print(f"{name}: done", file=sys.stderr, flush=True)
    print(f"# fastnaive.fit, 1 thread against 2, interleaved ({args.rounds} rounds)")
    print()
    print(f"CPU: {workloads.cpu_description()}, CPUs {sorted(os.sched_getaffinity(0))[:2]}")
    print()
    held = ", ".join(f"{k}={v}" for k, v in sorted(matrix.AVX2_ENVIRONMENT.items()))
    print(
        f"Instruction sets: fastnaive's sparse kernels {_sparse.instruction_set()}; "
        + (f"held to AVX2 ({held})" if args.isa == "avx2" else "each library's own detection")
    )
    print()
    headers = [
        "workload",
        "1 thread s, median / best",
        "2 threads near s, median / best (epochs)",
        "1t / 2t near, medians / bests",
        "1t / 2t, fastest steps",
        "2 threads shared s, median (epochs)",
        "2 threads far s, median (epochs)",
        "2 threads moved s, median (epochs)",
        "round trip ns",
        "pair scaling",
    ]
    print(
        f"Near: round trips below {workloads.NEAR_NS:g} ns and pair scalings (two threads' "
        f"throughput on memory of their own, in one thread's) of {workloads.SHARED_SCALING:g} "
        f"or more, before and after the epoch; shared: the round trips near, a scaling not."
    )
    print()
    print(workloads.markdown_table(headers, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
