"""Run fastnaive.fit(comm=...) under mpirun on the arrays in --data, from rank 0's --init.

Ranks other than 0 start from different random weights, so the run checks the
initial broadcast. Rank 0 writes the final weights to --out and the History (its
params, per-epoch metrics, seconds spent waiting for reductions and the threads left
after fit) beside it as JSON.
--fail makes rank 1 raise, die, hang or be interrupted (KeyboardInterrupt) at its third
batch, or raise when fit hands the callbacks the model (before training); --mismatch gives
rank 1 another batch size or a label out of range; --pause makes every rank sleep that long
after each batch (a long run to break into).
"""

import argparse
import json
import os
import signal
import threading
import time

import numpy as np

import fastnaive
from fastnaive.callbacks import LambdaCallback
from fastnaive.distributed import world


def parse():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--init", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--optimizer", default="sgd")
    parser.add_argument("--shuffle", action="store_true")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--checkpoint-dir")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--validation-split", type=float, default=0.0)
    parser.add_argument("--fail", choices=("raise", "kill", "hang", "interrupt", "set-model"))
    parser.add_argument("--pause", type=float, default=0.0)
    parser.add_argument("--mismatch", choices=("batch-size", "labels"))
    return parser.parse_args()


class Failure(LambdaCallback):
    """A callback that makes this rank fail as `kind` says."""

    def __init__(self, kind):
        super().__init__(on_batch_end=self.fail_at_third_batch)
        self.kind = kind

    def set_model(self, model):
        if self.kind == "set-model":
            raise RuntimeError("injected failure in set_model")
        super().set_model(model)

    def fail_at_third_batch(self, batch, logs):
        if batch != 2:
            return
        if self.kind == "raise":
            raise RuntimeError("injected failure")
        if self.kind == "interrupt":
            raise KeyboardInterrupt("injected interrupt")
        if self.kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if self.kind == "hang":
            time.sleep(3600)


def main():
    args = parse()
    comm = world()
    rank = comm.Get_rank()
    model = fastnaive.load_model(args.init)
    if rank != 0:
        rng = np.random.default_rng(1000 + rank)
        model.set_weights([rng.random(w.shape) for w in model.weights])
        for dropout in model.dropouts:
            if dropout is not None:
                dropout.seed += rank  # rank 0's seeds must win

    with np.load(args.data) as data:
        x, y = data["x"], data["y"]
    batch_size = args.batch_size
    if rank == 1 and args.mismatch == "batch-size":
        batch_size //= 2
    if rank == 1 and args.mismatch == "labels":
        y = y.copy()
        y[0] = 10
    callbacks = [Failure(args.fail)] if args.fail and rank == 1 else []
    if args.pause:
        callbacks.append(LambdaCallback(on_batch_end=lambda batch, logs: time.sleep(args.pause)))
    history = fastnaive.fit(
        model,
        x,
        y,
        args.epochs,
        batch_size,
        comm=comm,
        optimizer=fastnaive.optimizers.get(args.optimizer),
        shuffle=args.shuffle,
        seed=args.seed,
        verbose=0,
        callbacks=callbacks,
        validation_split=args.validation_split,
        checkpoint_dir=args.checkpoint_dir,
        resume=args.resume,
    )
    if rank == 0:
        model.save(args.out)
        with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
            json.dump(
                {
                    "params": history.params,
                    "history": history.history,
                    "allreduce_seconds": history.allreduce_seconds,
                    "threads_after_fit": sorted(t.name for t in threading.enumerate()),
                },
                f,
            )


if __name__ == "__main__":
    main()
