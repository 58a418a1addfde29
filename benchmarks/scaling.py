"""How fastnaive.fit scales, as Markdown tables: seconds per epoch against batch size
(32, 64, 128, 256, 1024), hidden width (128, 512, 2048) and BLAS threads (1, 2); and the peak
resident memory of a fresh process that fits one epoch on n = 10000, 30000, 60000 MNIST
samples, against the float32 training set's size + 150 MiB.

Run from the repository root, FASTNAIVE_DATA naming a folder holding mnist.npz:

    python benchmarks/scaling.py [--quick] [--repeats N]

Times are the best of --repeats epochs (default 2) on MNIST's 60000 training images, after
a warm-up. --quick uses 4096 images (and n = 1024, 2048, 4096 for memory) and one epoch, to
check the script. Nothing here fails on timing.
"""

import argparse
import subprocess
import sys
from pathlib import Path

import workloads

BATCH_SIZES = (32, 64, 128, 256, 1024)
HIDDEN_WIDTHS = (128, 512, 2048)
BLAS_THREADS = (1, 2)
MEMORY_SAMPLES = (10000, 30000, 60000)
QUICK_SAMPLES = 4096
QUICK_MEMORY_SAMPLES = (1024, 2048, 4096)
HEADROOM_MIB = 150
MIB = 2**20
# Run in a fresh interpreter: prints ru_maxrss (KiB) after loading the data and after one epoch.
PEAK_RSS_CODE = """
import resource, sys
import workloads
x, y = workloads.mnist_train(int(sys.argv[1]))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
workloads.fit_epoch(workloads.book_model(), x, y)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_SAMPLES} images and one epoch per point, to check the script",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        metavar="N",
        help="epochs per point, the best reported (default 2, 1 with --quick)",
    )
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 2
    return args


def epoch_seconds(x, y, repeats, hidden=workloads.HIDDEN, batch_size=workloads.BATCH_SIZE):
    """Best seconds per fit epoch of a fresh model, after a warm-up on a few batches."""
    model = workloads.book_model(hidden)
    warm = 2 * batch_size
    workloads.fit_epoch(model, x[:warm], y[:warm], batch_size)
    return workloads.best_seconds(lambda: workloads.fit_epoch(model, x, y, batch_size), repeats)


def batch_size_table(x, y, repeats):
    rows = []
    for batch_size in BATCH_SIZES:
        seconds = epoch_seconds(x, y, repeats, batch_size=batch_size)
        rows.append(
            (
                batch_size,
                f"{seconds:.3f}",
                f"{len(x) / seconds:,.0f}",
                f"{workloads.epoch_flop(len(x)) / seconds / 1e9:.1f}",
            )
        )
    return workloads.markdown_table(["batch size", "seconds", "samples/s", "GEMM GFLOP/s"], rows)


def hidden_width_table(x, y, repeats):
    rows = []
    for hidden in HIDDEN_WIDTHS:
        seconds = epoch_seconds(x, y, repeats, hidden=hidden)
        rows.append(
            (
                hidden,
                f"{seconds:.3f}",
                f"{workloads.epoch_flop(len(x), hidden) / seconds / 1e9:.1f}",
            )
        )
    return workloads.markdown_table(["hidden width", "seconds", "GEMM GFLOP/s"], rows)


def threads_table(x, y, repeats):
    seconds = {}
    for n_threads in BLAS_THREADS:
        with workloads.blas_threads(n_threads):
            seconds[n_threads] = epoch_seconds(x, y, repeats)
    one = seconds[BLAS_THREADS[0]]
    return workloads.markdown_table(
        ["BLAS threads", "seconds", "speed-up over 1 thread"],
        [(n, f"{s:.3f}", f"{one / s:.2f}") for n, s in seconds.items()],
    )


def peak_rss_mib(n_samples):
    """Peak RSS in MiB of a fresh process after loading n_samples and after one fit epoch."""
    out = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_CODE, str(n_samples)],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent,
    ).stdout
    loaded, trained = (int(kib) * 1024 / MIB for kib in out.split())
    return loaded, trained


def memory_table(sample_counts):
    rows = []
    for n in sample_counts:
        data = n * workloads.N_FEATURES * 4 / MIB
        loaded, trained = peak_rss_mib(n)
        bound = data + HEADROOM_MIB
        rows.append(
            (
                n,
                f"{data:.0f}",
                f"{bound:.0f}",
                f"{loaded:.0f}",
                f"{trained:.0f}",
                f"{trained - loaded:.0f}",
                "yes" if trained <= bound else "no",
            )
        )
    return workloads.markdown_table(
        [
            "samples",
            "float32 set MiB",
            f"bound: set + {HEADROOM_MIB} MiB",
            "peak RSS after loading MiB",
            "peak RSS after fit MiB",
            "fit adds MiB",
            "within bound",
        ],
        rows,
    )


def main(argv=None):
    args = parse_args(argv)
    x, y = workloads.mnist_train(QUICK_SAMPLES if args.quick else workloads.N_TRAIN)
    print(
        f"fastnaive.fit, one epoch on {len(x)} MNIST images, best of {args.repeats}; "
        "noisy on a busy machine.\n"
    )
    for title, table in [
        ("Epoch time against batch size (hidden 512)", batch_size_table),
        ("Epoch time against hidden width (batch 128)", hidden_width_table),
        ("Epoch time against BLAS threads (hidden 512, batch 128)", threads_table),
    ]:
        print(f"## {title}\n\n{table(x, y, args.repeats)}\n")
    memory = QUICK_MEMORY_SAMPLES if args.quick else MEMORY_SAMPLES
    print(f"## Peak memory of a fresh process fitting one epoch\n\n{memory_table(memory)}")


if __name__ == "__main__":
    main()
