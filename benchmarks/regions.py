"""Where a step's time goes on several threads, as Markdown tables: for each workload of
matrix.py, fastnaive.fit's epochs (its FastnaivePeer) with every OpenMP parallel region timed
by tests/gomp_regions.c, preloaded in a process of its own. Per region of a step, in order:
its kernel (the function OpenMP runs, by its symbol), the median of its time, of each
thread's time inside the kernel and of each thread's wait (the region's time less its own:
for the region to start, or at its closing barrier), and of the gap before it, where the
calling thread runs alone (Python, and the compiled glue between two kernels) while the
others wait. The steps are told apart by a mark at each Step.train call; those whose
regions run another sequence than most (the first, which measures the weights' bound, and
a short last batch) are left out.

Run from the repository root, FASTNAIVE_DATA naming a folder holding mnist.npz:

    python benchmarks/regions.py [--quick] [--epochs N] [--threads N]
                                 [--workloads NAME ...] [--isa avx2]

--quick traces the matrix's three quick batches, once: it checks the command. --isa avx2
holds fastnaive and the BLAS to AVX2 as matrix.py's does. The round trip of a cache line
between the first two CPUs (workloads.core_round_trip) is measured before each epoch: a
two-thread step runs at the speed of the virtual CPUs' placement. Nothing here fails on
timing; a region's time includes the trace's own, about 0.1 us.
"""

import argparse
import collections
import ctypes
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import matrix
import peers
import workloads
from threadpoolctl import threadpool_limits

from fastnaive import _sparse, engine

SHIM_SOURCE = Path(__file__).resolve().parent.parent / "tests" / "gomp_regions.c"
DEFAULT_WORKLOADS = ("book", "deep-adam")
EPOCHS, QUICK_EPOCHS = 2, 1
# Cython's name of a prange's outlined function: __pyx_f_9fastnaive_<length><module>_<name>.
PYX_FUNCTION = re.compile(r"__pyx_f_9fastnaive_(\d+)(\w+?)\._omp_fn\.(\d+)$")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="three batches, one epoch")
    parser.add_argument("--epochs", type=int, help=f"epochs traced (default {EPOCHS})")
    parser.add_argument("--threads", type=int, default=2, help="threads (default 2)")
    matrix.add_workloads_argument(parser, DEFAULT_WORKLOADS)
    parser.add_argument("--isa", choices=["native", "avx2"], default="native")
    parser.add_argument("--worker", metavar="NAME", help=argparse.SUPPRESS)
    parser.add_argument("--shim", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.epochs is None:
        args.epochs = QUICK_EPOCHS if args.quick else EPOCHS
    if args.epochs < 1 or args.threads < 2:
        parser.error("--epochs must be at least 1 and --threads at least 2")
    if len(os.sched_getaffinity(0)) < args.threads:
        parser.error(f"this process may run on fewer than {args.threads} CPUs")
    return args


def symbol_names(path):
    """{offset in the object: symbol} from its symbol table (nm), {} without nm."""
    if shutil.which("nm") is None:
        return {}
    result = subprocess.run(["nm", "--defined-only", path], capture_output=True, text=True)
    names = {}
    for line in result.stdout.splitlines():
        fields = line.split()
        if len(fields) == 3:
            names.setdefault(int(fields[0], 16), fields[2])
    return names


def kernel_name(shim, function, tables):
    """A short name of the function a region runs: module.function of a Cython prange."""
    path = ctypes.create_string_buffer(4096)
    base = ctypes.c_void_p()
    if shim.fastnaive_function_origin(function, path, len(path), ctypes.byref(base)) != 0:
        return hex(function)
    where = path.value.decode()
    if where not in tables:
        tables[where] = symbol_names(where)
    symbol = tables[where].get(function - (base.value or 0))
    if symbol is None:
        return f"{os.path.basename(where)}+{hex(function - (base.value or 0))}"
    match = PYX_FUNCTION.search(symbol)
    if match is None:
        return symbol
    length, rest, number = int(match.group(1)), match.group(2), int(match.group(3))
    name = f"{rest[:length].lstrip('_')}.{rest[length:].lstrip('_')}"
    return name + (f" ({number + 1})" if number else "")


def worker(args):
    """Trace args.worker's epochs; print {"steps": [[region, ...], ...], "trips": [...]},
    each region [kernel, start, end, then each thread's entry and exit] in seconds."""
    shim = ctypes.CDLL(args.shim)
    shim.fastnaive_trace_regions.argtypes = [ctypes.c_int]
    shim.fastnaive_traced_regions.restype = ctypes.c_long
    shim.fastnaive_traced_region.argtypes = [
        ctypes.c_long,
        ctypes.POINTER(ctypes.c_double),
        ctypes.POINTER(ctypes.c_void_p),
    ]
    shim.fastnaive_function_origin.argtypes = [
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.POINTER(ctypes.c_void_p),
    ]
    threads = shim.fastnaive_trace_threads()
    if args.isa == "avx2":
        _sparse.select_instruction_set("avx2")
    workload = matrix.WORKLOADS[args.worker]
    images = {workload.dataset: matrix.load_images(workload.dataset)}
    x, y = matrix.workload_data(workload, images, args.quick)
    peer = peers.FastnaivePeer(workload, matrix.initial_weights(workload), x, y)
    train, mark = engine.Step.train, shim.fastnaive_trace_mark

    def marked_train(step, *arguments, **keywords):
        mark()
        return train(step, *arguments, **keywords)

    engine.Step.train = marked_train
    steps, trips, tables = [], [], {}
    with threadpool_limits(args.threads):
        peer.epoch(matrix.warm_up_batches(len(peer.bounds)))
        peer.epoch()  # pages the buffers in, as the traced epochs find them
        for _ in range(args.epochs):
            peer.reset()
            trips.append(workloads.core_round_trip())
            if shim.fastnaive_trace_regions(1) != 0:
                raise MemoryError("no memory for the trace")
            peer.epoch()
            shim.fastnaive_trace_regions(0)
            times = (ctypes.c_double * (2 + 2 * threads))()
            function = ctypes.c_void_p()
            for i in range(shim.fastnaive_traced_regions()):
                shim.fastnaive_traced_region(i, times, ctypes.byref(function))
                if function.value is None:
                    steps.append([])
                elif steps:
                    steps[-1].append([kernel_name(shim, function.value, tables), *times])
    print(json.dumps({"steps": steps, "trips": trips}))


def table(steps, shown_threads):
    """A line on the steps that run the most common sequence of regions, then their regions
    as a Markdown table (the gap before the first: since the previous step's last region)."""
    sequences = collections.Counter(tuple(r[0] for r in step) for step in steps[1:] if step)
    if not sequences:
        return "no parallel region in a step"
    sequence, count = sequences.most_common(1)[0]
    picked = [
        (i, step)
        for i, step in enumerate(steps)
        if i > 0 and tuple(r[0] for r in step) == sequence and steps[i - 1]
    ]
    k = len(sequence)
    gaps = [[] for _ in range(k)]
    durations = [[] for _ in range(k)]
    inside = [[[] for _ in range(shown_threads)] for _ in range(k)]
    waits = [[[] for _ in range(shown_threads)] for _ in range(k)]
    totals = []
    for i, step in picked:
        previous_end = steps[i - 1][-1][2]
        totals.append(step[-1][2] - previous_end)
        for j, region in enumerate(step):
            start, end = region[1], region[2]
            gaps[j].append(start - (step[j - 1][2] if j else previous_end))
            durations[j].append(end - start)
            for t in range(shown_threads):
                entered, left = region[3 + 2 * t], region[4 + 2 * t]
                if entered:
                    inside[j][t].append(left - entered)
                    waits[j][t].append((end - start) - (left - entered))

    def us(values):
        return f"{statistics.median(values) * 1e6:.1f}" if values else "-"

    rows = []
    for j in range(k):
        rows.append(
            [
                str(j + 1),
                sequence[j],
                us(durations[j]),
                *(us(inside[j][t]) for t in range(shown_threads)),
                *(us(waits[j][t]) for t in range(shown_threads)),
                us(gaps[j]),
            ]
        )
    region_sum = sum(statistics.median(d) for d in durations) * 1e6
    gap_sum = sum(statistics.median(g) for g in gaps) * 1e6
    columns = ["#", "kernel", "region us"]
    columns += [f"thread {t} in it" for t in range(shown_threads)]
    columns += [f"thread {t} waits" for t in range(shown_threads)] + ["gap before"]
    return (
        f"{len(picked)} steps of {len(steps)} run this sequence of {k} regions; a step "
        f"{statistics.median(totals) * 1e6:.1f} us (median, from the previous step's last "
        f"region), its regions' medians {region_sum:.1f} us, its gaps' {gap_sum:.1f} us\n\n"
        + workloads.markdown_table(columns, rows)
    )


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    env = matrix.isa_environment(args.isa)
    with tempfile.TemporaryDirectory(prefix="regions") as folder:
        shim = workloads.build_library(SHIM_SOURCE, folder, ["-ldl"])
        if shim is None:
            print("regions.py: no C compiler to build tests/gomp_regions.c", file=sys.stderr)
            return 1
        # A sanitizer's runtime, where one is preloaded, must stay first.
        env["LD_PRELOAD"] = " ".join(filter(None, [env.get("LD_PRELOAD"), shim]))
        env.pop("OMP_NUM_THREADS", None)
        shown = min(args.threads, 2)
        print(f"# A step's parallel regions on {args.threads} threads")
        print()
        print(f"CPU: {workloads.cpu_description()}, CPUs {sorted(os.sched_getaffinity(0))}")
        print(f"Instruction sets: {'held to AVX2' if args.isa == 'avx2' else 'native'}")
        for name in args.workloads:
            command = [sys.executable, os.path.abspath(__file__), "--worker", name]
            command += ["--shim", shim, "--epochs", str(args.epochs), "--isa", args.isa]
            command += ["--threads", str(args.threads)] + (["--quick"] if args.quick else [])
            result = subprocess.run(command, env=env, capture_output=True, text=True)
            if result.returncode != 0:
                print(result.stderr[-3000:], file=sys.stderr)
                return 1
            traced = json.loads(result.stdout.splitlines()[-1])
            trips = [round(ns) for ns in traced["trips"] if ns is not None]
            placement = f"round trip {min(trips)}-{max(trips)} ns" if trips else "no round trip"
            print(f"\n## {name} ({placement})\n\n{table(traced['steps'], shown)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
