"""The command line: `fastnaive train | evaluate | info` (also `python -m fastnaive`).

With no subcommand, `train` runs with its defaults: the book's recipe on MNIST.
A malformed command line (an unknown option, a value of the wrong form) prints the usage
and exits 2, as argparse does. Every other failure (missing data, bad option values,
unreadable files, running out of memory) is one line on stderr and exit status 1 (130 for
an interrupt). With --distributed, a failure on any rank ends every rank: the ranks agree
on what they load and build before training, and a failure on one rank alone aborts the job.
"""

import argparse
import contextlib
import importlib
import json
import os
import sys
import time

import numpy as np

import fastnaive
from fastnaive import activations, checkpoints, distributed, initializers, optimizers
from fastnaive._validation import seed as checked_seed

DATASETS = ("mnist", "fashion_mnist")
VERBOSE = {"book": "book", "0": 0, "1": 1, "2": 2}
# Each --loss and the last layer's activation it takes.
HEADS = {
    "sparse_categorical_crossentropy": "softmax",
    "categorical_crossentropy": "softmax",
    "binary_crossentropy": "sigmoid",
    "mse": None,
}
LOSSES = tuple(HEADS)


class UsageError(Exception):
    """A problem with the command line's values, reported as one line."""


# The failures reported as one line, never a traceback.
EXPECTED = (Exception, KeyboardInterrupt)


def hidden_sizes(text):
    """Parse "512" or "256,128" into a tuple of layer sizes."""
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected sizes like 512 or 256,128, got {text!r}")
    return sizes


def add_data_options(parser):
    parser.add_argument("--dataset", choices=DATASETS, default="mnist", help="default: mnist")
    parser.add_argument(
        "--data",
        metavar="PATH",
        help="an .npz or a folder holding it or the four IDX files (default: "
        "$FASTNAIVE_DATA, the Keras cache, then a TensorFlow download)",
    )


def add_train_options(parser):
    add_data_options(parser)
    parser.add_argument("--epochs", type=int, default=10, help="default: 10")
    parser.add_argument("--batch-size", type=int, default=128, help="default: 128")
    parser.add_argument(
        "--lr", type=float, default=None, help="learning rate (default: 1e-3, the book's)"
    )
    parser.add_argument(
        "--optimizer",
        choices=("sgd", "momentum", "adam"),
        default="sgd",
        help="sgd (the book's), momentum (SGD, 0.9) or adam (default: sgd)",
    )
    parser.add_argument(
        "--hidden",
        type=hidden_sizes,
        default=(512,),
        help="hidden layer sizes, e.g. 512 or 256,128 (default: 512)",
    )
    parser.add_argument(
        "--init",
        choices=tuple(initializers.NAMES),
        default="book",
        help="initial weights (default: book, U[0, 0.1))",
    )
    parser.add_argument(
        "--activation",
        choices=[name for name in activations.NAMES if name not in (None, "softmax")],
        default="relu",
        help="the hidden layers' activation (default: relu)",
    )
    parser.add_argument(
        "--loss",
        choices=LOSSES,
        default="sparse_categorical_crossentropy",
        help="sparse_categorical_crossentropy (the book's), categorical_crossentropy (softmax "
        "head, one-hot labels), binary_crossentropy (sigmoid head, one-hot labels) or mse "
        "(linear head, one-hot labels)",
    )
    parser.add_argument(
        "--l2", type=float, default=0.0, help="L2 penalty l2 * sum(W**2) on every layer's W"
    )
    parser.add_argument(
        "--dropout", type=float, default=0.0, metavar="RATE", help="Dropout after each hidden layer"
    )
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--seed", type=int, default=None, help="seed for weights and shuffling")
    parser.add_argument(
        "--threads", type=int, default=None, help="BLAS and OpenMP threads (default: all cores)"
    )
    parser.add_argument("--shuffle", action="store_true", help="reshuffle the samples every epoch")
    parser.add_argument(
        "--validation-split",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="hold out this last fraction of the training set for validation",
    )
    parser.add_argument("--save", metavar="PATH", help="write the trained model (.npz)")
    parser.add_argument("--history", metavar="PATH", help="write the history (.json or .csv)")
    parser.add_argument(
        "--plot",
        metavar="PATH",
        help="write a PNG of the loss and accuracy curves (needs matplotlib)",
    )
    parser.add_argument(
        "--verbose",
        choices=tuple(VERBOSE),
        default=None,
        help="book: the book's lines, 1: a progress bar, 2: a line per epoch, "
        "0: quiet (default: 1 on a terminal, else 2)",
    )
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="share each batch among MPI ranks: mpirun -n N fastnaive train "
        '--distributed (needs mpi4py: pip install "fastnaive[mpi]")',
    )
    parser.add_argument(
        "--checkpoint-dir",
        metavar="DIR",
        help="save the model and optimizer state there after every epoch",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the last checkpoint in --checkpoint-dir",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="remove the checkpoint files (state.npz, model-EEEE.npz) already in "
        "--checkpoint-dir and start afresh (without --resume or --overwrite, such a "
        "folder is refused)",
    )


def build_parser():
    parser = argparse.ArgumentParser(
        prog="fastnaive",
        description="Train and evaluate the MLP of Deep Learning with Python, ch. 2, on MNIST or "
        "Fashion-MNIST. With no command, train the book's recipe (784-512 relu-10 "
        "softmax, W ~ U[0, 0.1), SGD 1e-3, batch 128, 10 epochs) on MNIST.",
    )
    parser.add_argument("--version", action="version", version=f"fastnaive {fastnaive.__version__}")
    commands = parser.add_subparsers(dest="command")
    add_train_options(commands.add_parser("train", help="train a model and report test accuracy"))
    evaluate = commands.add_parser("evaluate", help="test accuracy of a saved model")
    evaluate.add_argument("model", help="a model file written by train --save")
    add_data_options(evaluate)
    commands.add_parser("info", help="version, BLAS, threads, OpenMP and where data is found")
    return parser


def load_dataset(name, path):
    """Return the dataset with images flattened to float in [0, 1], labels as given."""
    module = importlib.import_module(f"fastnaive.datasets.{name}")
    (x_train, y_train), (x_test, y_test) = module.load_data(path)

    def scale(x):
        return x.reshape(len(x), -1).astype(np.float32) / 255

    return (scale(x_train), y_train), (scale(x_test), y_test)


def build_model(args):
    """The MLP the options describe: hidden layers of --activation (each followed by a Dropout
    of --dropout), then a head for --loss; --l2 on every layer."""
    rng = np.random.default_rng(args.seed)
    sizes = (784, *args.hidden, 10)
    layers = []
    for n_in, n_out in zip(sizes[:-2], sizes[1:-1]):
        layers.append(
            fastnaive.NaiveDense(
                n_in,
                n_out,
                args.activation,
                dtype=args.dtype,
                seed=rng,
                initializer=args.init,
                l2=args.l2,
            )
        )
        if args.dropout:
            layers.append(fastnaive.Dropout(args.dropout, seed=int(rng.integers(2**63))))
    layers.append(
        fastnaive.NaiveDense(
            sizes[-2],
            10,
            HEADS[args.loss],
            dtype=args.dtype,
            seed=rng,
            initializer=args.init,
            l2=args.l2,
        )
    )
    return fastnaive.NaiveSequential(layers, loss=args.loss)


def targets(model, labels):
    """The model's loss's targets for class labels: the labels, or their one-hot rows."""
    if model.loss.sparse_labels:
        return labels
    return np.eye(model.output_size, dtype=model.dtype)[labels]


def write_history(history, path):
    """Write the per-epoch metrics as JSON ({name: [values]}) or CSV (a row per epoch)."""
    if path.endswith(".json"):
        with open(path, "w") as f:
            json.dump({"epoch": history.epoch, **history.history}, f, indent=1)
    elif path.endswith(".csv"):
        keys = list(history.history)
        with open(path, "w") as f:
            f.write(",".join(["epoch", *keys]) + "\n")
            for i, epoch in enumerate(history.epoch):
                f.write(",".join([str(epoch), *(repr(history.history[k][i]) for k in keys)]) + "\n")
    else:
        raise UsageError(f"--history expects a path ending in .json or .csv, got {path!r}")


def plot_history(history, path):
    """Write a PNG with the loss and the accuracy per epoch, training and validation."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise UsageError('--plot needs matplotlib: pip install "fastnaive[plot]"') from None
    epochs = [e + 1 for e in history.epoch]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for prefix, label in (("", "training"), ("val_", "validation")):
            if prefix + metric in history.history:
                ax.plot(epochs, history.history[prefix + metric], marker="o", label=label)
        ax.set(xlabel="epoch", ylabel=metric, title=metric)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        ax.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def thread_limit(threads):
    """A context limiting BLAS and OpenMP threads, or doing nothing for None."""
    if threads is None:
        return contextlib.nullcontext()
    if threads < 1:
        raise UsageError(f"--threads expects a number >= 1, got {threads}")
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=threads)


def check_options(args):
    """Raise UsageError for option values argparse cannot check alone."""
    if args.history and not args.history.endswith((".json", ".csv")):
        raise UsageError(f"--history expects a path ending in .json or .csv, got {args.history!r}")
    if (args.resume or args.overwrite) and not args.checkpoint_dir:
        raise UsageError(f"--{'resume' if args.resume else 'overwrite'} needs --checkpoint-dir")
    if args.resume and args.overwrite:
        raise UsageError("--resume continues the checkpoint that --overwrite removes: pick one")
    checked_seed(args.seed, "--seed")
    for option in ("save", "history", "plot"):
        path = getattr(args, option)
        if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise UsageError(f"--{option} {path!r} is in a folder that does not exist")


def prepare_checkpoints(args, group):
    """Refuse a --checkpoint-dir that holds a checkpoint unless resuming it, or (rank 0) remove
    that checkpoint for --overwrite."""
    if not args.checkpoint_dir or args.resume:
        return
    if args.overwrite:
        if group.is_root:
            checkpoints.clear(args.checkpoint_dir)
        return
    try:
        checkpoints.check_fresh(args.checkpoint_dir)
    except ValueError as error:
        if not os.path.isdir(args.checkpoint_dir):
            raise
        raise UsageError(
            f"{error}; add --resume to continue it or --overwrite to replace it"
        ) from None


def train(args, group):
    """Train as the options say, alone or as one rank of `mpirun ... --distributed`; rank 0
    reports and writes what --save, --history and --plot ask for."""
    verbose = (
        VERBOSE[args.verbose] if args.verbose is not None else (1 if sys.stdout.isatty() else 2)
    )
    with contextlib.ExitStack() as stack:
        # Every rank loads and builds; all stop together, before training, if any failed.
        error = None
        try:
            check_options(args)
            stack.enter_context(thread_limit(args.threads))
            (x_train, y_train), (x_test, y_test) = load_dataset(args.dataset, args.data)
            model = build_model(args)
            optimizer = optimizers.get(args.optimizer, args.lr)
            prepare_checkpoints(args, group)
        except Exception as raised:  # reported by every rank's agree below
            error = raised
        group.agree(error, dict)
        start = time.perf_counter()
        try:
            history = fastnaive.fit(
                model,
                x_train,
                targets(model, y_train),
                args.epochs,
                args.batch_size,
                optimizer=optimizer,
                shuffle=args.shuffle,
                seed=args.seed,
                validation_split=args.validation_split,
                verbose=verbose if group.is_root else 0,
                comm=group.comm,
                checkpoint_dir=args.checkpoint_dir,
                resume=args.resume,
            )
        except FloatingPointError as raised:  # the reduced loss is every rank's: all raise it
            raise distributed.shared(raised) from None
        seconds = time.perf_counter() - start
        if group.is_root:
            accuracy = fastnaive.evaluate(model, x_test, y_test)
            _report(args, model, history, seconds, accuracy, verbose, group.size)


def _report(args, model, history, seconds, accuracy, verbose, ranks):
    """Print the run's summary and write what --save, --history and --plot ask for."""
    epochs = len(history.epoch)
    if verbose == "book":
        for epoch, loss in zip(history.epoch, history.history["loss"]):
            print(f"epoch {epoch}: mean loss {loss:.4f}")
    where = (
        ""
        if ranks == 1
        else (f" on {ranks} ranks ({history.allreduce_seconds:.1f} s in Allreduce)")
    )
    print(
        f"trained {epochs} epochs{where} in {seconds:.1f} s "
        f"({seconds / max(epochs, 1):.2f} s/epoch); test accuracy: {accuracy:.4f}"
    )
    if args.save:
        model.save(args.save)
        print(f"model saved to {args.save}")
    if args.history:
        write_history(history, args.history)
    if args.plot:
        plot_history(history, args.plot)


def evaluate(args, group):
    model = fastnaive.load_model(args.model)
    _, (x_test, y_test) = load_dataset(args.dataset, args.data)
    loss, _ = fastnaive.evaluate_loss(model, x_test, targets(model, y_test))
    accuracy = fastnaive.evaluate(model, x_test, y_test)
    print(f"test loss: {loss:.4f}; test accuracy: {accuracy:.4f}")


def info(args, group):
    """Print the version, the thread pools and each dataset's places; a place that cannot be
    read is reported as such."""
    from threadpoolctl import threadpool_info

    from fastnaive import _kernels
    from fastnaive.datasets import locations

    print(f"fastnaive {fastnaive.__version__}, numpy {np.__version__}")
    print(f"OpenMP: {'compiled in' if _kernels.openmp_enabled() else 'not compiled in'}")
    for pool in threadpool_info():
        version = f" {pool['version']}" if pool.get("version") else ""
        print(
            f"{pool['user_api']}: {pool['internal_api']}{version} ({pool['prefix']}), "
            f"{pool['num_threads']} threads"
        )
    for name in DATASETS:
        print(f"{name}:")
        for place, state in locations(name):
            print(f"  {place}: {state}")


COMMANDS = {"train": train, "evaluate": evaluate, "info": info}


def main(argv=None):
    """Run the command line; return the exit status."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
        argv = ["train", *argv]
    args = parser.parse_args(argv)
    group = distributed.LocalGroup()
    try:
        if getattr(args, "distributed", False):
            group = distributed.group(distributed.world())
        COMMANDS[args.command](args, group)
    except EXPECTED as error:
        return _failed(group, error)
    except BaseException as error:  # SystemExit: on one rank of many, still end the others
        if group.size > 1:
            group.abort(error)
        raise
    return 0


def _failed(group, error):
    """Report `error` as one line on stderr (rank 0's, for an error every rank raised; the
    failing rank's, aborting the job, for any other) and return the exit status."""
    if group.size > 1 and not distributed.is_shared(error):
        group.abort(error)
    if group.is_root:
        print(f"fastnaive: {_describe(error)}", file=sys.stderr)
    return 130 if isinstance(error, KeyboardInterrupt) else 1


def _describe(error):
    message = " ".join(str(error).split())
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    if isinstance(error, MemoryError):
        return f"error: out of memory{f' ({message})' if message else ''}"
    if isinstance(error, (UsageError, OSError, ValueError, TypeError)) and message:
        return f"error: {message}"
    return f"error: {type(error).__name__}{f': {message}' if message else ''}"
