"""Two builds of fastnaive side by side: seconds per epoch of the book's workload, interleaved.

Each build is a source tree whose extensions were built in place (`python setup.py
build_ext --inplace`), or "installed" for the fastnaive that Python imports. Every round
runs one fresh process per build, alternating, each timing one epoch of fastnaive.fit and
one of the book's loop (BatchGenerator and one_training_step) after a warm-up epoch; the
table gives the median and best over the rounds. For example, against the previous release:

    git worktree add /tmp/before v0.1.0 && (cd /tmp/before && python setup.py build_ext --inplace)
    python benchmarks/versions.py /tmp/before installed [--rounds 5] [--threads N]

Run from the repository root, FASTNAIVE_DATA naming a folder holding mnist.npz.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import workloads

WORKER = """
import json, sys, time
sys.path.insert(0, {benchmarks!r})
import fastnaive, workloads
x, y = workloads.mnist_train()
timings = {{}}
for name, epoch in (("fit", workloads.fit_epoch), ("book loop", workloads.one_training_step_epoch)):
    model = workloads.book_model()
    epoch(model, x, y)
    start = time.perf_counter()
    epoch(model, x, y)
    timings[name] = time.perf_counter() - start
print(json.dumps({{"file": fastnaive.__file__, **timings}}))
"""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("builds", nargs=2, help='source trees, or "installed"')
    parser.add_argument("--rounds", type=int, default=5, help="default 5")
    parser.add_argument("--threads", type=int, default=None, help="BLAS and OpenMP threads")
    return parser.parse_args(argv)


def run(build, threads):
    """One fresh process of `build`: its epoch seconds, as the worker's JSON."""
    env = dict(os.environ)
    if build != "installed":
        env["PYTHONPATH"] = str(Path(build).resolve() / "src")
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["OPENBLAS_NUM_THREADS"] = str(threads)
    code = WORKER.format(benchmarks=str(Path(__file__).resolve().parent))
    output = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env, cwd="/"
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def main(argv=None):
    args = parse_args(argv)
    results = {build: [] for build in args.builds}
    for _ in range(args.rounds):
        for build in args.builds:
            results[build].append(run(build, args.threads))
    threads = args.threads or "default"
    print(f"{workloads.cpu_description()}; threads: {threads}; {args.rounds} rounds, interleaved\n")
    rows = []
    for build, runs in results.items():
        for name in ("fit", "book loop"):
            seconds = [r[name] for r in runs]
            rows.append(
                (
                    build,
                    runs[0]["file"],
                    name,
                    f"{statistics.median(seconds):.3f}",
                    f"{min(seconds):.3f}",
                )
            )
    print(
        workloads.markdown_table(("build", "imported from", "epoch of", "median s", "best s"), rows)
    )


if __name__ == "__main__":
    main()
