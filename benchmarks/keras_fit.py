"""Keras' `model.fit` against `fastnaive.keras.fit` on the same compiled Keras model: epoch
times side by side, measured in one run.

Run from the repository root, FASTNAIVE_DATA naming a folder holding mnist.npz:

    python benchmarks/keras_fit.py [--quick] [--repeats N] [--batch-size B] [--json PATH]

Workloads, on MNIST's 60000 training images (float32 in [0, 1]), each with Keras' defaults
(shuffle=True, batch_size 32 unless --batch-size says), verbose=0:
- "784-512-10, SGD": the book's MLP (relu, softmax head), sparse categorical cross-entropy,
  SGD(0.01), accuracy;
- "784-512-256-128-10, Adam": three relu layers, Adam(1e-3), the same loss and metric.

Each workload's model is compiled once; both trainers train that same model, epoch after
epoch, interleaved (Keras, fastnaive, Keras, ...), after one untimed warm-up epoch each (Keras
traces its train step then). Between phases a pause lets the previous phase's thread pools go
idle. The machine may be shared: the load average is printed at the start and the end, and
the medians and minima of --repeats epochs are reported. --quick runs one repeat on 4096
samples to check that the command works; nothing here fails on timing.
"""

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import workloads  # noqa: E402

import fastnaive.keras  # noqa: E402

QUICK_SAMPLES = 4096
WORKLOADS = {
    "784-512-10, SGD": ((512,), lambda: keras.optimizers.SGD(0.01)),
    "784-512-256-128-10, Adam": ((512, 256, 128), lambda: keras.optimizers.Adam(1e-3)),
}
TRAINERS = {
    "Keras model.fit": lambda model, x, y, **kwargs: model.fit(x, y, **kwargs),
    "fastnaive.keras.fit": fastnaive.keras.fit,
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help=f"one repeat on {QUICK_SAMPLES} samples"
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed epochs per trainer")
    parser.add_argument("--batch-size", type=int, default=32, help="Keras' default: 32")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.repeats < 1 or args.batch_size < 1:
        parser.error("expected --repeats >= 1 and --batch-size >= 1")
    return args


def compiled_model(hidden, optimizer):
    keras.utils.set_random_seed(0)
    layers = [keras.layers.Dense(n, activation="relu") for n in hidden]
    model = keras.Sequential(
        [keras.Input((workloads.N_FEATURES,)), *layers, keras.layers.Dense(10, "softmax")]
    )
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def epoch_seconds(trainer, model, x, y, batch_size):
    start = time.perf_counter()
    history = TRAINERS[trainer](model, x, y, batch_size=batch_size, epochs=1, verbose=0)
    return time.perf_counter() - start, history.history["accuracy"][-1]


def measure(name, x, y, repeats, batch_size):
    """{trainer: [epoch seconds]} for one workload, the trainers interleaved on one model."""
    hidden, optimizer = WORKLOADS[name]
    model = compiled_model(hidden, optimizer())
    times = {trainer: [] for trainer in TRAINERS}
    for repeat in range(repeats + 1):
        for trainer in TRAINERS:
            workloads.settle()
            seconds, accuracy = epoch_seconds(trainer, model, x, y, batch_size)
            label = "warm-up" if repeat == 0 else f"epoch {repeat}"
            print(f"  {name}: {trainer}, {label}: {seconds:.3f} s (accuracy {accuracy:.4f})")
            if repeat:
                times[trainer].append(seconds)
    return times


def main(argv=None):
    args = parse_args(argv)
    n_samples = QUICK_SAMPLES if args.quick else workloads.N_TRAIN
    x, y = workloads.mnist_train(n_samples)
    load_start = os.getloadavg()
    print(f"CPU: {workloads.cpu_description()}, {os.cpu_count()} cores")
    print(f"keras {keras.__version__} (backend {keras.backend.backend()}), fastnaive")
    print("Load average at start (1, 5, 15 min): {:.2f} {:.2f} {:.2f}".format(*load_start))
    print(f"{n_samples} samples, batch_size {args.batch_size}, {args.repeats} timed epochs each")
    results = {name: measure(name, x, y, args.repeats, args.batch_size) for name in WORKLOADS}
    load_end = os.getloadavg()
    print("Load average at end (1, 5, 15 min): {:.2f} {:.2f} {:.2f}".format(*load_end))
    print()
    rows = []
    keras_name, fast_name = TRAINERS
    for name, times in results.items():
        medians = {trainer: statistics.median(seconds) for trainer, seconds in times.items()}
        rows.append(
            [
                name,
                f"{medians[keras_name]:.3f} (min {min(times[keras_name]):.3f})",
                f"{medians[fast_name]:.3f} (min {min(times[fast_name]):.3f})",
                f"{medians[keras_name] / medians[fast_name]:.1f}",
            ]
        )
    print(
        workloads.markdown_table(
            ["workload", f"{keras_name}, s/epoch", f"{fast_name}, s/epoch", "speedup (medians)"],
            rows,
        )
    )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(
                {
                    "cpu": workloads.cpu_description(),
                    "samples": n_samples,
                    "batch_size": args.batch_size,
                    "load_average": [load_start, load_end],
                    "epoch_seconds": results,
                },
                out,
                indent=2,
            )


if __name__ == "__main__":
    main()
