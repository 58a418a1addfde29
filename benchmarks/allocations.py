"""Whether a training step allocates in steady state: 1000 steps of fit's step
(fastnaive.engine.Step.train, planned as fit plans it) and 1000
of the public one_training_step, on the first 128 MNIST images, under tracemalloc (which
also sees NumPy's array buffers). Prints the traced bytes when tracing starts, after the
steps, after as many steps again, and after gc.collect(), and the peak above the start.
Memory held across steps should not grow from the first count to the second; what grows and
then vanishes at gc.collect() is CPython's bounded free lists (or cyclic garbage), not a leak.

Run from the repository root, FASTNAIVE_DATA naming a folder holding mnist.npz:

    python benchmarks/allocations.py [--steps N]
"""

import argparse
import functools
import gc
import tracemalloc

import numpy as np
import workloads

import fastnaive
from fastnaive import engine


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000, help="steps traced (default 1000)")
    return parser.parse_args(argv)


def traced_bytes(step, n_steps):
    """Traced bytes at the start, after n_steps calls of step(), after n_steps more and after
    gc.collect(); and the peak above the start."""
    step()
    tracemalloc.start()
    counts = [tracemalloc.get_traced_memory()[0]]
    for _ in range(2):
        for _ in range(n_steps):
            step()
        counts.append(tracemalloc.get_traced_memory()[0])
    gc.collect()
    after_collect, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return (*counts, after_collect, peak - counts[0])


def fit_step(x, y):
    """fit's step on x, y, planned as fit plans it."""
    model = workloads.book_model()
    labels = np.ascontiguousarray(y, dtype=np.intp)
    step = engine.Step(model, len(x), x, optimizer=fastnaive.SGD(workloads.LEARNING_RATE))
    return functools.partial(step.train, x, labels)


def main(argv=None):
    args = parse_args(argv)
    x, y = workloads.mnist_train(workloads.BATCH_SIZE)
    steps = {
        "fit's step (engine.Step.train)": fit_step(x, y),
        "one_training_step": functools.partial(
            fastnaive.one_training_step, workloads.book_model(), x, y
        ),
    }
    print(
        f"tracemalloc over 2 x {args.steps} steps on a batch of {len(x)}, after one untraced step\n"
    )
    print(
        workloads.markdown_table(
            [
                "step",
                "bytes at start",
                f"after {args.steps} steps",
                f"after {2 * args.steps}",
                "after gc.collect()",
                "peak above start",
            ],
            [(name, *traced_bytes(step, args.steps)) for name, step in steps.items()],
        )
    )


if __name__ == "__main__":
    main()
