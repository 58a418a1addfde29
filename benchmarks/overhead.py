"""The cost of a training step beyond its arithmetic: Python, dispatch, buffers, the
overflow guard, the thread pool. A tiny model (16 features, 16 hidden units, 4 classes,
batch 8) leaves almost nothing to compute, so its time per step is the overhead, for
fastnaive.fit (the loop of every entry point; with SGD, momentum and Adam),
fastnaive.one_training_step (the book's per-batch API), and, side by side in the same run,
PyTorch's eager step and a jit-compiled JAX step (SGD) where they are installed.

Run from the repository root:

    python benchmarks/overhead.py [--quick] [--repeats N] [--threads N]

The figure is the median of --repeats epochs (default 5) of STEPS steps, divided by STEPS,
at --threads threads (default 1: the pool's wake-up is part of what is measured at 2).
--quick runs 200 steps once, to check the script. Nothing here fails on timing.
"""

import argparse
import statistics
import time

import numpy as np
import workloads
from threadpoolctl import threadpool_limits

import fastnaive

FEATURES, HIDDEN, CLASSES, BATCH = 16, 16, 4, 8
STEPS = 5000
QUICK_STEPS = 200


def data(steps, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((steps * BATCH, FEATURES)).astype(np.float32)
    return x, rng.integers(0, CLASSES, steps * BATCH)


def tiny_model():
    return fastnaive.NaiveSequential(
        [
            fastnaive.NaiveDense(FEATURES, HIDDEN, "relu", seed=0),
            fastnaive.NaiveDense(HIDDEN, CLASSES, "softmax", seed=1),
        ]
    )


def fastnaive_trainers(x, y):
    step_model = tiny_model()

    def fit_epoch(optimizer):
        model = tiny_model()
        return lambda: fastnaive.fit(model, x, y, 1, BATCH, optimizer=optimizer, verbose=0)

    def step_epoch():
        for i in range(0, len(x), BATCH):
            fastnaive.one_training_step(step_model, x[i : i + BATCH], y[i : i + BATCH])

    return {
        "fastnaive.fit": fit_epoch(fastnaive.optimizers.SGD(1e-3)),
        "fastnaive.fit, momentum 0.9": fit_epoch(fastnaive.optimizers.SGD(1e-3, momentum=0.9)),
        "fastnaive.fit, Adam": fit_epoch(fastnaive.optimizers.Adam(1e-3)),
        "fastnaive.one_training_step": step_epoch,
    }


def torch_trainer(x, y):
    try:
        import torch
    except ImportError:
        return {}
    model = torch.nn.Sequential(
        torch.nn.Linear(FEATURES, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, CLASSES)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    loss = torch.nn.CrossEntropyLoss()
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)

    def epoch():
        for i in range(0, len(xs), BATCH):
            optimizer.zero_grad(set_to_none=True)
            loss(model(xs[i : i + BATCH]), ys[i : i + BATCH]).backward()
            optimizer.step()

    return {"PyTorch eager": epoch}


def jax_trainer(x, y):
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return {}
    rng = np.random.default_rng(0)
    params = [
        jnp.asarray(rng.uniform(0, 0.1, shape).astype(np.float32))
        for shape in ((FEATURES, HIDDEN), (HIDDEN,), (HIDDEN, CLASSES), (CLASSES,))
    ]

    def loss(params, xb, yb):
        w1, b1, w2, b2 = params
        logits = jnp.maximum(xb @ w1 + b1, 0) @ w2 + b2
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(xb.shape[0]), yb])

    @jax.jit
    def step(params, xb, yb):
        grads = jax.grad(loss)(params, xb, yb)
        return [p - 1e-3 * g for p, g in zip(params, grads)]

    batches = [
        (jnp.asarray(x[i : i + BATCH]), jnp.asarray(y[i : i + BATCH]))
        for i in range(0, len(x), BATCH)
    ]
    state = {"params": params}

    def epoch():
        p = state["params"]
        for xb, yb in batches:
            p = step(p, xb, yb)
        jax.block_until_ready(p)
        state["params"] = p

    return {"JAX jit": epoch}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 steps, once")
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs (default: 5)")
    parser.add_argument("--threads", type=int, default=1, help="threads (default: 1)")
    args = parser.parse_args(argv)
    steps = QUICK_STEPS if args.quick else STEPS
    repeats = 1 if args.quick else args.repeats
    x, y = data(steps)
    trainers = {**fastnaive_trainers(x, y), **torch_trainer(x, y), **jax_trainer(x, y)}
    print(f"CPU: {workloads.cpu_description()}; {args.threads} thread(s)")
    print(
        f"A tiny model ({FEATURES}-{HIDDEN}-{CLASSES}, batch {BATCH}, SGD unless named), "
        f"{steps} steps an epoch, median of {repeats}: microseconds per step\n"
    )
    rows = []
    with threadpool_limits(limits=args.threads):
        try:
            import torch

            torch.set_num_threads(args.threads)
        except ImportError:
            pass
        for name, epoch in trainers.items():
            epoch()  # warm-up: buffers, BLAS, jit
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                epoch()
                times.append(time.perf_counter() - start)
            rows.append((name, f"{statistics.median(times) / steps * 1e6:.1f}"))
    print(workloads.markdown_table(("trainer", "us per step"), rows))


if __name__ == "__main__":
    main()
