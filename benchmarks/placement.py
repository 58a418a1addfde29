"""Where the two CPUs sit, and what it costs two threads to share one weight matrix.

Each round measures a cache line's round trip between the process's first two CPUs
(workloads.core_round_trip), then times two threads (pinned to those CPUs) sweeping one
784 x 512 float matrix, the book's W1: per iteration a read pass, then a read-modify-write
pass, a barrier after each, each pass split by rows (R: half the rows each), by columns (C:
half of every row each, as X @ W's column blocks are) or, for reading, not at all (A: both
read all of it) (placement.c). The table gives, per split, the median microseconds per
iteration over the rounds whose round trip was below --near-ns (the two CPUs near each
other: one chiplet) and over the others (far).

Run from the repository root: python benchmarks/placement.py [--rounds N] [--quick]
"""

import argparse
import os
import statistics
import sys

import workloads

SPLITS = ("RR", "CR", "AR", "RC", "CC")
ROWS, COLS = 784, 512


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


def main(argv=None):
    args = parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    library = workloads.placement_library()
    if len(cpus) < 2 or library is None:
        print("placement.py needs two CPUs and a C compiler")
        return 0
    times = {split: {"near": [], "far": []} for split in SPLITS}
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
