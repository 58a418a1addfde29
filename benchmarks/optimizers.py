"""What each optimizer costs over plain SGD: the deep Adam workload's model (784-256 relu-128
relu-10 softmax, glorot, float32, batch 128) trained one MNIST epoch with SGD, momentum,
Nesterov and Adam, the rounds interleaved in a rotated order; and, apart, one optimizer step
on the model's parameters from the first batch's gradients (`optimizer.apply_gradients`):
the arithmetic an optimizer adds to SGD's step, which no fusing removes.

Run from the repository root, FASTNAIVE_DATA naming a folder holding mnist.npz:

    python benchmarks/optimizers.py [--quick] [--rounds N] [--threads N]

Prints seconds per epoch (median and best of --rounds, default 5), the ratio to SGD's, the
ratio of the sums of each batch's fastest step over the rounds (workloads.fastest_steps,
the steadiest on a shared machine), and the ratio SGD's epoch plus one apply_gradients a
step would give ("floor"). --quick trains
1024 samples, once, to check the script. Nothing here fails on timing.
"""

import argparse
import math
import statistics
import time

import workloads
from threadpoolctl import threadpool_limits

import fastnaive

SIZES = (784, 256, 128, 10)
QUICK_SAMPLES = 1024
OPTIMIZERS = {
    "SGD": lambda: fastnaive.SGD(1e-3),
    "momentum 0.9": lambda: fastnaive.SGD(1e-3, momentum=0.9),
    "Nesterov 0.9": lambda: fastnaive.SGD(1e-3, momentum=0.9, nesterov=True),
    "Adam": lambda: fastnaive.Adam(1e-3),
}


def deep_model():
    activations = ["relu"] * (len(SIZES) - 2) + ["softmax"]
    layers = [
        fastnaive.NaiveDense(n_in, n_out, activation, initializer="glorot_uniform", seed=i)
        for i, (n_in, n_out, activation) in enumerate(zip(SIZES, SIZES[1:], activations))
    ]
    return fastnaive.NaiveSequential(layers)


def epoch_seconds(x, y, initial, make_optimizer):
    """One epoch of fit from `initial`, after a warm-up on its first batches: its seconds,
    and its steps' (workloads.StepClock)."""
    model = deep_model()
    model.set_weights(initial)
    fastnaive.fit(model, x[:384], y[:384], 1, 128, optimizer=make_optimizer(), verbose=0)
    model.set_weights(initial)
    clock = workloads.StepClock()
    start = time.perf_counter()
    fastnaive.fit(model, x, y, 1, 128, optimizer=make_optimizer(), verbose=0, callbacks=[clock])
    return time.perf_counter() - start, clock.steps


def update_seconds(x, y, initial, make_optimizer, repeats):
    """The best time of one apply_gradients on the model's parameters, from the first batch's
    gradients (real ones: the divider's time depends on the operands, zeros are quick)."""
    model = deep_model()
    model.set_weights(initial)
    _, gradients = fastnaive.loss_and_gradients(model, x[:128], y[:128])
    weights = model.get_weights()
    optimizer = make_optimizer()
    optimizer.apply_gradients(zip(gradients, weights))
    return workloads.best_seconds(
        lambda: optimizer.apply_gradients(zip(gradients, weights)), repeats
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1024 samples, once")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="threads (default 1)")
    args = parser.parse_args(argv)
    x, y = workloads.mnist_train(QUICK_SAMPLES if args.quick else workloads.N_TRAIN)
    rounds = 1 if args.quick else args.rounds
    steps = math.ceil(len(x) / 128)
    initial = deep_model().get_weights()
    names = list(OPTIMIZERS)
    times = {name: [] for name in names}
    steps_of = {name: [] for name in names}
    with threadpool_limits(limits=args.threads):
        updates = {name: update_seconds(x, y, initial, OPTIMIZERS[name], 200) for name in names}
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                seconds, steps_taken = epoch_seconds(x, y, initial, OPTIMIZERS[name])
                times[name].append(seconds)
                steps_of[name].append(steps_taken)
    print(f"CPU: {workloads.cpu_description()}; {args.threads} thread(s)")
    print(
        f"{'-'.join(map(str, SIZES))}, batch 128, {len(x)} samples ({steps} steps), "
        f"{rounds} interleaved round(s)\n"
    )
    sgd = statistics.median(times["SGD"])
    sgd_best = min(times["SGD"])
    sgd_fastest = workloads.fastest_steps(steps_of["SGD"])
    rows = []
    for name in names:
        median, best = statistics.median(times[name]), min(times[name])
        fastest = workloads.fastest_steps(steps_of[name])
        floor = (sgd + steps * (updates[name] - updates["SGD"])) / sgd
        rows.append(
            (
                name,
                f"{median:.3f}",
                f"{best:.3f}",
                f"{median / sgd:.2f}",
                f"{best / sgd_best:.2f}",
                f"{fastest / sgd_fastest:.2f}",
                f"{updates[name] * 1e6:.0f}",
                f"{floor:.2f}",
            )
        )
    headers = ("optimizer", "median s", "best s", "/ SGD", "best / best SGD")
    headers += ("fastest steps / SGD's", "one update us", "floor / SGD")
    print(workloads.markdown_table(headers, rows))


if __name__ == "__main__":
    main()
