"""Each activation, loss, the L2 penalty and dropout: fit's step time beside the book's
ReLU/softmax step, and the bytes a step leaves allocated, as a Markdown table.

Every row is the book's model (784-512-10, float32, SGD 1e-3) on the first 128 MNIST
training images, planned as fit plans it (engine.Step.train, the first layer on the
inputs' nonzeros), with one thing changed. Times are the best of --repeats runs of 200 steps,
all rows interleaved within each repeat; "allocated" is what tracemalloc still holds after
200 more steps (flat: the step allocates nothing that stays).

Run from the repository root, FASTNAIVE_DATA naming a folder holding mnist.npz:

    python benchmarks/model_kit.py [--quick] [--repeats N]
"""

import argparse
import time
import tracemalloc

import numpy as np
import workloads

import fastnaive
from fastnaive import engine

HIDDEN, CLASSES = 512, 10


def variants():
    """{name: (hidden activation, head, loss, l2, dropout rate)}."""
    rows = {"relu / softmax (the book's)": ("relu", "softmax", None, 0.0, None)}
    for activation in ["tanh", "sigmoid", "gelu", "gelu_tanh", "leaky_relu", "elu"]:
        rows[f"{activation} / softmax"] = (activation, "softmax", None, 0.0, None)
    rows["relu / categorical_crossentropy"] = (
        "relu",
        "softmax",
        "categorical_crossentropy",
        0.0,
        None,
    )
    rows["relu / sigmoid, binary_crossentropy"] = (
        "relu",
        "sigmoid",
        "binary_crossentropy",
        0.0,
        None,
    )
    rows["relu / linear, mse"] = ("relu", None, "mse", 0.0, None)
    rows["relu / softmax, L2 1e-4"] = ("relu", "softmax", None, 1e-4, None)
    rows["relu / softmax, Dropout 0.2"] = ("relu", "softmax", None, 0.0, 0.2)
    return rows


def planned_step(x, labels, activation, head, loss, l2, dropout):
    layers = [fastnaive.NaiveDense(x.shape[1], HIDDEN, activation, seed=0, l2=l2)]
    if dropout is not None:
        layers.append(fastnaive.Dropout(dropout, seed=0))
    layers.append(fastnaive.NaiveDense(HIDDEN, CLASSES, head, seed=1, l2=l2))
    model = fastnaive.NaiveSequential(layers, loss=loss)
    targets = labels if model.loss.sparse_labels else np.eye(CLASSES, dtype=np.float32)[labels]
    step = engine.Step(model, len(x), x, optimizer=fastnaive.SGD(workloads.LEARNING_RATE))
    return step, targets


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 steps, 1 repeat")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    steps, repeats = (10, 1) if args.quick else (200, args.repeats)
    x, y = workloads.mnist_train(workloads.BATCH_SIZE)
    labels = np.ascontiguousarray(y, dtype=np.intp)
    plans = {name: planned_step(x, labels, *spec) for name, spec in variants().items()}
    best = dict.fromkeys(plans, float("inf"))
    with next(iter(plans.values()))[0].threads():
        for _ in range(repeats):
            for name, (step, targets) in plans.items():
                start = time.perf_counter()
                for _ in range(steps):
                    step.train(x, targets)
                best[name] = min(best[name], (time.perf_counter() - start) / steps)
        held = {}
        for name, (step, targets) in plans.items():
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(steps):
                step.train(x, targets)
            held[name] = tracemalloc.get_traced_memory()[0] - before
            tracemalloc.stop()
    base = best["relu / softmax (the book's)"]
    print(f"{workloads.cpu_description()}; batch {len(x)}, best of {repeats} x {steps} steps\n")
    rows = [
        (name, f"{seconds * 1e6:.0f}", f"{seconds / base:.2f}", f"{held[name]} B")
        for name, seconds in best.items()
    ]
    print(
        workloads.markdown_table(
            (
                "hidden activation / head, loss",
                "us per step",
                "x the book's step",
                "allocated after the steps",
            ),
            rows,
        )
    )


if __name__ == "__main__":
    main()
