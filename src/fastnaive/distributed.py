"""Synchronous data-parallel training over MPI: one gradient Allreduce per step.

Design: every rank holds the whole dataset and a replica of the model. Each
global batch of `batch_size` samples is cut into contiguous per-rank shares;
each rank computes its share's contribution to the batch-mean gradient
straight into one flat buffer [dW0, db0, ..., loss sum, correct count], one
in-place Allreduce sums the buffers, and every rank applies the same optimizer
step to views of the sum. The replicas therefore stay identical, and N ranks
reach the weights of one process over the same samples in the same order, up to
the order of floating-point summation. mpi4py is imported only by `world()`.

Only rank 0 prints and writes checkpoints. A rank that raises during training
prints the error and aborts the whole job (comm.Abort), so no rank waits forever
in a collective; a rank that dies is detected by mpirun, which ends the job.
"""
import math
import os
import sys
import time
import zlib

import numpy as np

from fastnaive import _kernels, engine, optimizers, progress
from fastnaive._validation import positive_int
from fastnaive.callbacks import History
from fastnaive.saving import load_model, save_model, write_npz
from fastnaive.training import _checked_batch, _checked_callbacks, _checked_model, \
    _checked_optimizer, evaluate

__all__ = ["world", "fit_distributed", "train_cli", "STATE_FILE"]

STATE_FILE = "state.npz"


def world():
    """Return MPI.COMM_WORLD, importing mpi4py (the `mpi` extra)."""
    try:
        from mpi4py import MPI
    except ImportError as error:
        raise ImportError('Expected mpi4py for distributed training: pip install '
                          f'"fastnaive[mpi]". Received: {error}') from error
    return MPI.COMM_WORLD


def _mpi():
    from mpi4py import MPI
    return MPI


def _flat_weights(model):
    """Return the model's weights copied into one flat array."""
    return np.concatenate([w.reshape(-1) for w in model.weights])


def _views(flat, arrays):
    """Return views of `flat` shaped like each of `arrays`, in order, laid end to end."""
    views, offset = [], 0
    for array in arrays:
        views.append(flat[offset:offset + array.size].reshape(array.shape))
        offset += array.size
    return views


def _checksum(*arrays):
    """CRC-32 of the arrays' bytes."""
    crc = 0
    for array in arrays:
        crc = zlib.crc32(np.ascontiguousarray(array).view(np.uint8), crc)
    return crc


def _describe(model, x, y, epochs, batch_size, optimizer, shuffle, seed, resume):
    """The arguments that must agree on every rank, as a dict of plain values."""
    return {"architecture": [(layer.input_size, layer.output_size, layer.activation)
                             for layer in model.layers],
            "dtype": str(model.dtype), "samples": x.shape[0], "data checksum": _checksum(x, y),
            "epochs": epochs, "batch_size": batch_size, "optimizer": repr(optimizer),
            "shuffle": bool(shuffle), "seed": seed, "resume": bool(resume)}


def _check_same_arguments(comm, description):
    """Raise the same ValueError on every rank if any rank's arguments failed or differ from 0's.

    `description` is _describe's dict, or the exception this rank's checks raised.
    """
    descriptions = comm.allgather(description if isinstance(description, dict)
                                  else f"{type(description).__name__}: {description}")
    for rank, other in enumerate(descriptions):
        if isinstance(other, str):
            raise ValueError(f"Expected valid arguments on every rank. Received: on rank {rank}, "
                             f"{other}")
    for rank, other in enumerate(descriptions):
        for key, value in other.items():
            if value != descriptions[0][key]:
                raise ValueError(f"Expected the same {key} on every rank. Received: "
                                 f"{key}={value!r} on rank {rank}, "
                                 f"{key}={descriptions[0][key]!r} on rank 0")


def _check_identical(comm, model, when):
    """Raise on every rank unless all ranks hold bit-identical weights."""
    MPI = _mpi()
    crc = _checksum(*model.weights)
    if comm.allreduce(crc, op=MPI.MAX) != comm.allreduce(crc, op=MPI.MIN):
        raise RuntimeError(f"Expected identical weights on every rank {when}. "
                           f"Received: checksums that differ across ranks")


def _broadcast_weights(comm, model):
    """Copy rank 0's weights to every rank with one Bcast."""
    flat = _flat_weights(model)
    comm.Bcast(flat, root=0)
    model.set_weights(_views(flat, model.weights))


def _shuffled_orders(n_samples, seed, first_epoch):
    """Yield each epoch's sample order from first_epoch on, as fit(shuffle=True, seed) draws them.

    The orders of the skipped epochs are drawn and dropped, so epoch e's order
    depends only on (seed, e): a resumed run sees the orders of an uninterrupted one.
    """
    rng = np.random.default_rng(seed)
    order = np.arange(n_samples)
    epoch = 0
    while True:
        rng.shuffle(order)
        if epoch >= first_epoch:
            yield order
        epoch += 1


def _share(start, stop, rank, size):
    """Return the [lo, hi) rows of global batch [start, stop) that `rank` of `size` computes."""
    n = stop - start
    return start + n * rank // size, start + n * (rank + 1) // size


class _Step:
    """One rank's part of a synchronous step: local gradients, one Allreduce, the update."""

    def __init__(self, comm, model, optimizer, batch_size):
        self.comm, self.model, self.optimizer = comm, model, optimizer
        self.workspace = engine.Workspace(model, max(1, math.ceil(batch_size / comm.Get_size())))
        n_weights = sum(w.size for w in model.weights)
        # [dW0, db0, ..., loss sum, correct count]: one message per step.
        self.buffer = np.zeros(n_weights + 2, model.dtype)
        self.workspace.gradients = _views(self.buffer, model.weights)
        self.update = optimizers.updater(optimizer, self.workspace.gradients, model.weights)
        self.allreduce_seconds = 0.0
        MPI = _mpi()
        self.in_place, self.sum = MPI.IN_PLACE, MPI.SUM

    def _local(self, x, y, n_global):
        """Fill the buffer with this share's part of the batch-mean gradient, loss and hits."""
        n = x.shape[0]
        if n == 0:
            self.buffer.fill(0)
            return
        workspace = self.workspace
        logits = engine.forward(self.model, workspace, x)
        self.buffer[-1] = _kernels.count_correct_checked(logits, y)
        self.buffer[-2] = engine.loss_gradient(workspace, y) * n
        # loss_gradient divides by the local n; the batch mean divides by the global one.
        workspace.deltas[-1][:n] *= n / n_global
        engine.backpropagate(self.model, workspace, x)

    def __call__(self, x, y, n_global):
        """Train on this rank's share of a global batch of n_global; return (loss, correct)."""
        self._local(x, y, n_global)
        start = time.perf_counter()
        self.comm.Allreduce(self.in_place, self.buffer, op=self.sum)
        self.allreduce_seconds += time.perf_counter() - start
        loss = float(self.buffer[-2]) / n_global
        if math.isfinite(loss):
            self.update()
        return loss, int(round(float(self.buffer[-1])))


def _optimizer_slots(optimizer, model):
    """Return {"slot{i}_{k}": array} of the optimizer's state for each weight i."""
    slots = {}
    for i, weight in enumerate(model.weights):
        entry = optimizer._slots.get(id(weight))
        if entry is not None and entry[0] is weight:
            for k, array in enumerate(entry[1]):
                slots[f"slot{i}_{k}"] = array
    return slots


def _restore_slots(optimizer, model, slots):
    """Give the optimizer the saved state arrays of each of the model's weights."""
    for i, weight in enumerate(model.weights):
        arrays = [slots[key] for key in sorted(k for k in slots if k.startswith(f"slot{i}_"))]
        if arrays:
            optimizer._slots[id(weight)] = (weight, [a.astype(weight.dtype) for a in arrays])


def _save_checkpoint(folder, model, optimizer, epochs_done, seed):
    """Write the model after `epochs_done` epochs, then the state naming it; drop the older one."""
    os.makedirs(folder, exist_ok=True)
    name = f"model-{epochs_done:04d}.npz"
    save_model(model, os.path.join(folder, name))
    state_path = os.path.join(folder, STATE_FILE)
    previous = _read_state(state_path)["model"] if os.path.exists(state_path) else None
    write_npz(state_path, {"model": np.array(name), "epochs_done": np.array(epochs_done),
                           "seed": np.array(seed), "iterations": np.array(optimizer.iterations),
                           "optimizer": np.array(type(optimizer).__name__),
                           **_optimizer_slots(optimizer, model)})
    if previous is not None and previous != name:
        os.unlink(os.path.join(folder, previous))


def _read_state(path):
    """Return the checkpoint state at `path` as {key: value}, strings and ints unwrapped."""
    with np.load(path, allow_pickle=False) as data:
        state = {key: data[key] for key in data.files}
    for key in ("model", "optimizer"):
        state[key] = str(state[key])
    for key in ("epochs_done", "seed", "iterations"):
        state[key] = int(state[key])
    return state


def _load_checkpoint(folder, model, optimizer):
    """Load the last checkpoint in `folder` into `model`; return its state (optimizer's, epochs)."""
    path = os.path.join(folder, STATE_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Expected a checkpoint to resume from. Received: no {STATE_FILE} "
                                f"in checkpoint_dir={folder!r}")
    state = _read_state(path)
    if state["optimizer"] != type(optimizer).__name__:
        raise ValueError(f"Expected the checkpoint's optimizer {state['optimizer']}. "
                         f"Received: optimizer={optimizer!r}")
    saved = load_model(os.path.join(folder, state["model"]))
    if [w.shape for w in saved.weights] != [w.shape for w in model.weights] \
            or saved.dtype != model.dtype:
        raise ValueError(f"Expected a model shaped like the checkpoint's {saved!r}. "
                         f"Received: {model!r}")
    model.set_weights(saved.weights)
    return state


def _starting_state(comm, model, optimizer, seed, checkpoint_dir, resume):
    """Return (epochs done, seed) agreed by all ranks, with weights and optimizer state set.

    Rank 0 reads the checkpoint (or draws a seed when none is given) and
    broadcasts it and its weights; an error reading it is raised on every rank.
    """
    state = None
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % 2**63)
    if comm.Get_rank() == 0:
        try:
            state = _load_checkpoint(checkpoint_dir, model, optimizer) if resume else \
                {"epochs_done": 0, "seed": seed}
        except (OSError, ValueError) as error:
            state = error
    state = comm.bcast(state, root=0)
    if isinstance(state, Exception):
        raise state
    if resume:
        _restore_slots(optimizer, model, state)
        optimizer.iterations = state["iterations"]
    _broadcast_weights(comm, model)
    _check_identical(comm, model, "after the initial broadcast")
    return state["epochs_done"], state["seed"]


def _checked_run(model, images, labels, epochs, batch_size, optimizer, callbacks, verbose,
                 checkpoint_dir, resume, validation):
    """Validate fit_distributed's arguments on this rank; return (x, y, epochs, ...)."""
    _checked_model(model)
    x, y = _checked_batch(model, images, labels)
    epochs = positive_int(epochs, "epochs", minimum=0)
    batch_size = positive_int(batch_size, "batch_size")
    optimizer = _checked_optimizer(optimizer, allow_name=True)
    if any(validation):
        raise ValueError("Expected no validation_data or validation_split with comm. "
                         "Received: a validation request; evaluate on rank 0 after fit instead")
    if resume and checkpoint_dir is None:
        raise ValueError("Expected checkpoint_dir with resume=True. Received: checkpoint_dir=None")
    log = progress.logger(verbose)
    return x, y, epochs, batch_size, optimizer, [c for c in [log] if c], \
        _checked_callbacks(callbacks)


def fit_distributed(model, images, labels, epochs, batch_size=128, *, comm, optimizer=None,
                    shuffle=False, seed=None, verbose="book", callbacks=None, checkpoint_dir=None,
                    resume=False, validation_data=None, validation_split=0.0):
    """Train like fastnaive.fit with the batches shared among comm's ranks; return a History.

    batch_size is the global batch: each batch of the (same on every rank)
    sample order is cut into contiguous per-rank shares, and its gradient is
    the Allreduce of the shares'. Every rank must pass the same arguments and
    data; rank 0's initial weights are broadcast. Callbacks run on every rank
    with the same logs; only rank 0 prints. With checkpoint_dir, rank 0 writes
    the model and the optimizer state after every epoch; resume=True continues
    from the last checkpoint there, on any number of ranks. An error on one
    rank during training aborts the job (comm.Abort(1)) after printing it.
    """
    try:
        x, y, epochs, batch_size, optimizer, loggers, callbacks = _checked_run(
            model, images, labels, epochs, batch_size, optimizer, callbacks, verbose,
            checkpoint_dir, resume, (validation_data is not None, validation_split))
        description = _describe(model, x, y, epochs, batch_size, optimizer, shuffle, seed, resume)
    except (TypeError, ValueError) as error:
        description = error
    _check_same_arguments(comm, description)
    first_epoch, seed = _starting_state(comm, model, optimizer, seed, checkpoint_dir, resume)
    history = History()
    callbacks = (loggers if comm.Get_rank() == 0 else []) + callbacks + [history]
    params = {"epochs": epochs, "batch_size": batch_size, "samples": x.shape[0],
              "steps": math.ceil(x.shape[0] / batch_size), "shuffle": bool(shuffle),
              "ranks": comm.Get_size(), "initial_epoch": first_epoch}
    for callback in callbacks:
        callback.set_model(model)
        callback.set_params(params)
    run = _Run(comm, model, x, y, batch_size, optimizer, callbacks)
    orders = _shuffled_orders(x.shape[0], seed, first_epoch) if shuffle else None
    try:
        run.epochs(first_epoch, epochs, orders, checkpoint_dir, seed)
    except FloatingPointError:
        raise  # the reduced loss is the same on every rank: all raise it together
    except Exception as error:
        _abort(comm, error)
    history.params = params
    history.allreduce_seconds = run.step.allreduce_seconds
    return history


def _abort(comm, error):
    """Print this rank's error and end every rank of the job with exit status 1."""
    print(f"fastnaive: error on rank {comm.Get_rank()} of {comm.Get_size()}: "
          f"{type(error).__name__}: {error}; aborting all ranks", file=sys.stderr, flush=True)
    comm.Abort(1)


class _Run:
    """The epochs of one fit_distributed call on one rank."""

    def __init__(self, comm, model, x, y, batch_size, optimizer, callbacks):
        self.comm, self.model, self.x, self.y = comm, model, x, y
        self.batch_size, self.optimizer, self.callbacks = batch_size, optimizer, callbacks
        self.step = _Step(comm, model, optimizer, batch_size)
        self.step.workspace.use_sparse_input(engine.is_sparse(x))

    def epochs(self, first_epoch, epochs, orders, checkpoint_dir, seed):
        """Train epochs first_epoch..epochs-1, checkpointing after each on rank 0 if asked."""
        self.model.stop_training = False
        logs = {}
        for callback in self.callbacks:
            callback.on_train_begin({})
        for epoch in range(first_epoch, epochs):
            for callback in self.callbacks:
                callback.on_epoch_begin(epoch, {})
            with engine.threads_for(self.step.workspace):
                logs = self.epoch(epoch, next(orders) if orders is not None else None)
            _check_identical(self.comm, self.model, f"after epoch {epoch}")
            if checkpoint_dir is not None and self.comm.Get_rank() == 0:
                _save_checkpoint(checkpoint_dir, self.model, self.optimizer, epoch + 1, seed)
            for callback in self.callbacks:
                callback.on_epoch_end(epoch, logs)
            if self.model.stop_training:
                break
        for callback in self.callbacks:
            callback.on_train_end(logs)

    def epoch(self, epoch, order):
        """Train one pass over the data, in `order` if given; return its loss and accuracy."""
        n_samples, rank, size = self.x.shape[0], self.comm.Get_rank(), self.comm.Get_size()
        total_loss, correct = 0.0, 0
        for batch, start in enumerate(range(0, n_samples, self.batch_size)):
            stop = min(start + self.batch_size, n_samples)
            lo, hi = _share(start, stop, rank, size)
            if order is not None and hi > lo:
                xb, yb = self.step.workspace.gathered(self.x, self.y, order[lo:hi])
            else:
                xb, yb = self.x[lo:hi], self.y[lo:hi]
            loss, batch_correct = self.step(xb, yb, stop - start)
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"The loss became {loss} at epoch {epoch}, batch {batch}; training stopped "
                    f"with the weights of the last finite step on every rank.")
            total_loss += loss * (stop - start)
            correct += batch_correct
            for callback in self.callbacks:
                callback.on_batch_end(batch, {"loss": loss})
        return {"loss": total_loss / n_samples, "accuracy": correct / n_samples}


def train_cli(args):
    """Run `fastnaive train --distributed` on MPI.COMM_WORLD; only rank 0 reports and writes."""
    from fastnaive import cli
    comm = world()
    root = comm.Get_rank() == 0
    verbose = cli.VERBOSE[args.verbose] if args.verbose is not None else \
        (1 if sys.stdout.isatty() else 2)
    (x_train, y_train), (x_test, y_test) = cli.load_dataset(args.dataset, args.data)
    model = cli.build_model(args)
    optimizer = optimizers.get(args.optimizer, args.lr)
    start = time.perf_counter()
    with cli.thread_limit(args.threads):
        history = fit_distributed(model, x_train, y_train, args.epochs, args.batch_size,
                                  comm=comm, optimizer=optimizer, shuffle=args.shuffle,
                                  seed=args.seed, verbose=verbose if root else 0,
                                  checkpoint_dir=args.checkpoint_dir, resume=args.resume,
                                  validation_split=args.validation_split)
        seconds = time.perf_counter() - start
        accuracy = evaluate(model, x_test, y_test) if root else None
    if root:
        _report(args, model, history, seconds, accuracy, comm.Get_size())


def _report(args, model, history, seconds, accuracy, ranks):
    """Print the run's summary on rank 0 and write what --save, --history and --plot ask for."""
    from fastnaive import cli
    epochs = len(history.epoch)
    print(f"trained {epochs} epochs on {ranks} ranks in {seconds:.1f} s "
          f"({seconds / max(epochs, 1):.2f} s/epoch, {history.allreduce_seconds:.1f} s in "
          f"Allreduce); test accuracy: {accuracy:.4f}")
    if args.save:
        model.save(args.save)
        print(f"model saved to {args.save}")
    if args.history:
        cli.write_history(history, args.history)
    if args.plot:
        cli.plot_history(history, args.plot)
