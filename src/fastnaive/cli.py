"""The command line: `fastnaive train | evaluate | info` (also `python -m fastnaive`).

With no subcommand, `train` runs with its defaults: the book's recipe on MNIST.
A malformed command line (an unknown option, a value of the wrong form) prints the usage
and exits 2, as argparse does. Every other failure (missing data, bad option values,
unreadable files, running out of memory) is one line on stderr and exit status 1 (130 for
an interrupt). With --distributed, a failure on any rank ends every rank: the ranks agree
on what they load and build before training, and a failure on one rank alone aborts the job.

`train` checks what it will write (each output's folder exists and takes a file, matplotlib
for --plot) and builds the model before it loads any data, then says which dataset it
loaded, from where, and its shape and value range. Ctrl-C during training stops at a step
boundary: one line says where, the model of the last complete step is saved if --save asks
for it (with the history and plot asked for), and the status is 130. The saved model records
the dataset and the input scaling it was trained on; `evaluate` refuses another dataset.
"""

import argparse
import contextlib
import importlib
import json
import os
import sys
import tempfile
import time

import numpy as np

import fastnaive
from fastnaive import (
    _cpus,
    activations,
    checkpoints,
    datasets,
    distributed,
    initializers,
    optimizers,
    progress,
    saving,
    training,
)
from fastnaive._validation import seed as checked_seed

DATASETS = datasets.NAMES
VERBOSE = {"auto": "auto", "book": "book", "0": 0, "1": 1, "2": 2}
# How the command line turns uint8 pixels into the model's inputs; saved models record it.
INPUT_SCALING = "x / 255"
# Each --loss and the last layer's activation it takes.
HEADS = {
    "sparse_categorical_crossentropy": "softmax",
    "categorical_crossentropy": "softmax",
    "binary_crossentropy": "sigmoid",
    "mse": None,
}
LOSSES = tuple(HEADS)
INTERRUPTED = 130


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


def add_data_options(parser, default):
    parser.add_argument(
        "--dataset",
        choices=DATASETS,
        default=None,
        help=f"the dataset (default: {default})",
    )
    parser.add_argument(
        "--data",
        metavar="PATH",
        help="an .npz file, or a folder holding mnist.npz, fashion_mnist.npz or the four IDX "
        "files (default: $FASTNAIVE_DATA, the Keras cache ~/.keras/datasets, Debian's "
        "/usr/share/datasets, then a download into the Keras cache)",
    )


def add_train_options(parser):
    add_data_options(parser, "the one --data holds, told by its labels; else mnist")
    parser.add_argument(
        "--epochs", type=int, default=10, metavar="N", help="passes over the data (default: 10)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=128, metavar="N", help="samples per step (default: 128)"
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=None,
        metavar="RATE",
        help="learning rate (default: 1e-3, the book's)",
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
        metavar="SIZES",
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
        "--l2",
        type=float,
        default=0.0,
        metavar="L",
        help="L2 penalty l2 * sum(W**2) on every layer's W (default: 0)",
    )
    parser.add_argument(
        "--dropout",
        type=float,
        default=0.0,
        metavar="RATE",
        help="a Dropout of this rate after each hidden layer (default: 0, none)",
    )
    parser.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        default="float32",
        help="the weights' and the computation's dtype (default: float32)",
    )
    parser.add_argument(
        "--seed", type=int, default=None, metavar="N", help="seed for weights and shuffling"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="threads to train with, one pool (default: OMP_NUM_THREADS, else all cores; at "
        "most the CPUs this process can keep busy)",
    )
    parser.add_argument("--shuffle", action="store_true", help="reshuffle the samples every epoch")
    parser.add_argument(
        "--validation-split",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="hold out this last fraction of the training set for validation",
    )
    parser.add_argument(
        "--save",
        metavar="PATH",
        help="write the trained model (.npz), with the dataset and input scaling it trained on; "
        "on Ctrl-C, the model of the last complete step",
    )
    parser.add_argument(
        "--history",
        metavar="PATH",
        help="write each epoch's metrics (.json or .csv; epochs numbered from 0, as Keras)",
    )
    parser.add_argument(
        "--plot",
        metavar="PATH",
        help="write a PNG of the loss and accuracy curves, titled with the dataset, model, "
        "optimizer and test accuracy (needs matplotlib)",
    )
    parser.add_argument(
        "--verbose",
        choices=tuple(VERBOSE),
        default="auto",
        help="auto: a progress bar on a terminal, else a line per epoch (the default); "
        "1: a progress bar; 2: a line per epoch; book: the book's lines; 0: quiet",
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
    add_data_options(evaluate, "the one the model was trained on, else the one --data holds")
    commands.add_parser("info", help="version, BLAS, threads, OpenMP and where data is found")
    return parser


def load_dataset(name, path):
    """Return (datasets.Dataset, (x_train, y_train), (x_test, y_test)): `name` (None: the one
    --data holds) with its images flattened and scaled as INPUT_SCALING says."""
    try:
        data = datasets.load(name, path, path_name="--data")
    except datasets.DatasetIdentityError as error:
        choices = " or --dataset ".join(error.choices)
        raise UsageError(f"{error} with --dataset {choices}") from None

    def scale(x):
        return x.reshape(len(x), -1).astype(np.float32) / 255

    (x_train, y_train), (x_test, y_test) = data.train, data.test
    return data, (scale(x_train), y_train), (scale(x_test), y_test)


def describe_data(data):
    """The lines saying which dataset was loaded, from where, its shape and value range."""
    where = data.location if data.location in data.place else f"{data.location} ({data.place})"
    (x_train, _), (x_test, _) = data.train, data.test
    low, high = int(min(x_train.min(), x_test.min())), int(max(x_train.max(), x_test.max()))
    published = "as published" if data.published else "not as published"
    return [
        f"data: {data.title} from {where}",
        f"  {len(x_train)} training and {len(x_test)} test images of "
        f"{x_train.shape[1]}x{x_train.shape[2]}, labels 0-9 {published}",
        f"  pixels {x_train.dtype} in [{low}, {high}]; inputs {INPUT_SCALING} as float32, "
        f"in [{low / 255:g}, {high / 255:g}]",
    ]


def describe_model(model):
    """The model as "784-512-10 (relu, softmax)"."""
    dense = model.dense_layers
    sizes = "-".join(str(n) for n in [dense[0].input_size, *(layer.output_size for layer in dense)])
    names = ", ".join(str(layer.activation or "linear") for layer in dense)
    dropout = " with dropout" if any(model.dropouts) else ""
    return f"{sizes} ({names}){dropout}"


def describe_optimizer(optimizer):
    """The optimizer as "SGD (learning rate 0.001, momentum 0.9)"."""
    settings = [f"learning rate {optimizer.learning_rate:g}"]
    if getattr(optimizer, "momentum", 0):
        nesterov = ", nesterov" if optimizer.nesterov else ""
        settings.append(f"momentum {optimizer.momentum:g}{nesterov}")
    return f"{type(optimizer).__name__} ({', '.join(settings)})"


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
    """Write the per-epoch metrics as JSON ({"epoch": [...], name: [values]}) or CSV (a row per
    epoch); epochs are numbered as History numbers them, from 0."""
    if path.endswith(".json"):
        with open(path, "w") as f:
            json.dump({"epoch": history.epoch, **history.history}, f, indent=1)
    else:
        keys = list(history.history)
        with open(path, "w") as f:
            f.write(",".join(["epoch", *keys]) + "\n")
            for i, epoch in enumerate(history.epoch):
                f.write(",".join([str(epoch), *(repr(history.history[k][i]) for k in keys)]) + "\n")


def history_figure(history, title):
    """A matplotlib Figure of the loss and the accuracy per epoch, training and validation,
    the epochs numbered as in write_history's files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(1, 2, figsize=(10, 4.4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for prefix, label in (("", "training"), ("val_", "validation")):
            if prefix + metric in history.history:
                values = history.history[prefix + metric]
                ax.plot(history.epoch, values, marker="o", label=label)
        ax.set(xlabel="epoch (from 0, as in --history)", ylabel=metric, title=metric)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend()
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def plot_history(history, path, title):
    """Write history_figure as a PNG at `path`, its title also in the PNG's Title field."""
    import matplotlib.pyplot as plt

    figure = history_figure(history, title)
    try:
        figure.savefig(path, dpi=100, metadata={"Title": title})
    finally:
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
    """Raise UsageError for option values argparse cannot check alone, and unless every output
    can be written: each path's folder exists and takes a new file, matplotlib for --plot."""
    if args.history and not args.history.endswith((".json", ".csv")):
        raise UsageError(f"--history expects a path ending in .json or .csv, got {args.history!r}")
    if (args.resume or args.overwrite) and not args.checkpoint_dir:
        raise UsageError(f"--{'resume' if args.resume else 'overwrite'} needs --checkpoint-dir")
    if args.resume and args.overwrite:
        raise UsageError("--resume continues the checkpoint that --overwrite removes: pick one")
    checked_seed(args.seed, "--seed")
    for option in ("save", "history", "plot"):
        path = getattr(args, option)
        if path:
            if os.path.isdir(path):
                raise UsageError(f"--{option} {path!r} is a folder, not a file")
            check_writable(f"--{option} {path!r}", os.path.dirname(os.path.abspath(path)))
    if args.checkpoint_dir:
        folder = os.path.abspath(args.checkpoint_dir)
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise UsageError(f"--checkpoint-dir {args.checkpoint_dir!r} is a file, not a folder")
        where = folder if os.path.isdir(folder) else os.path.dirname(folder)
        check_writable(f"--checkpoint-dir {args.checkpoint_dir!r}", where)
    if args.plot:
        try:
            importlib.import_module("matplotlib.backends.backend_agg")
        except ImportError as error:
            raise UsageError(
                f'--plot needs matplotlib ({error}): pip install "fastnaive[plot]"'
            ) from None


def check_writable(what, folder):
    """Raise UsageError naming `what` unless `folder` exists and a new file can be made in it."""
    if not os.path.isdir(folder):
        raise UsageError(f"{what} is in a folder that does not exist: {folder}")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise UsageError(
            f"{what} is in a folder where no file can be written: {folder} "
            f"({error.strerror or error})"
        ) from None


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


def say(*lines):
    """Print `lines` on stdout at once, as the run goes (a pipe too)."""
    for line in lines:
        print(line)
    sys.stdout.flush()


def train(args, group):
    """Train as the options say, alone or as one rank of `mpirun ... --distributed`; rank 0
    reports and writes what --save, --history and --plot ask for. Return the exit status."""
    with contextlib.ExitStack() as stack:
        # Every rank checks, builds and loads; all stop together, before training, if any failed.
        error = None
        try:
            check_options(args)
            stack.enter_context(thread_limit(args.threads))
            model = build_model(args)
            optimizer = optimizers.get(args.optimizer, args.lr)
            prepare_checkpoints(args, group)
            data, (x_train, y_train), (x_test, y_test) = load_dataset(args.dataset, args.data)
        except Exception as raised:  # reported by every rank's agree below
            error = raised
        group.agree(error, dict)
        report = Report(args, model, optimizer, data)
        if group.is_root:
            report.start()
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
                verbose=VERBOSE[args.verbose] if group.is_root else 0,
                comm=group.comm,
                checkpoint_dir=args.checkpoint_dir,
                resume=args.resume,
            )
        except FloatingPointError as raised:  # the reduced loss is every rank's: all raise it
            raise distributed.shared(raised) from None
        except training.TrainingInterrupted as interrupted:
            if group.size > 1:  # the ranks stop apart: no model of one step to save
                raise
            progress.close_bars()
            print(f"fastnaive: {interrupted}", file=sys.stderr, flush=True)
            outcome = f"interrupted in epoch {interrupted.epoch + 1}"
            report.write(interrupted.history, outcome, interrupted=True)
            return INTERRUPTED
        seconds = time.perf_counter() - start
        if group.is_root:
            accuracy = fastnaive.evaluate(model, x_test, y_test)
            report.finish(history, seconds, accuracy, group.size)
    return 0


class Report:
    """What rank 0 says about a training run, and writes at its end or at an interrupt:
    --save (with the dataset and input scaling), --history and --plot."""

    def __init__(self, args, model, optimizer, data):
        self.args, self.model, self.data = args, model, data
        self.model_text = describe_model(model)
        self.optimizer_text = describe_optimizer(optimizer)

    def start(self):
        model = f"model: {self.model_text}, {self.model.dtype}; {self.optimizer_text}"
        say(*describe_data(self.data), model)
        asked, usable = self.args.threads, _cpus.usable_cpus()
        if asked is not None and asked > usable:
            say(f"threads: {usable} (--threads {asked}; this process can keep {usable} CPUs busy)")

    def finish(self, history, seconds, accuracy, ranks):
        epochs = len(history.epoch)
        where = f" on {ranks} ranks ({history.allreduce_seconds:.1f} s waiting for reductions)"
        say(
            f"trained {epochs} epoch{'s' * (epochs != 1)}{where if ranks > 1 else ''} in "
            f"{seconds:.1f} s ({seconds / max(epochs, 1):.2f} s/epoch); "
            f"test accuracy: {accuracy:.4f}"
        )
        self.write(history, f"test accuracy {accuracy:.4f}")

    def write(self, history, outcome, interrupted=False):
        """Write what --save, --history and --plot ask for; `outcome` ends the plot's title."""
        args = self.args
        if args.save:
            metadata = {"dataset": self.data.name, "input_scaling": INPUT_SCALING}
            saving.save_model(self.model, args.save, metadata=metadata)
            state = " (the weights after the last complete step)" if interrupted else ""
            say(f"model saved to {args.save}{state}")
        if (args.history or args.plot) and not history.epoch:
            say("no epoch completed: no --history or --plot written")
            return
        if args.history:
            write_history(history, args.history)
            say(f"history written to {args.history}")
        if args.plot:
            epochs = len(history.epoch)
            title = (
                f"{self.data.title}: {self.model_text}, {self.optimizer_text}\n"
                f"{epochs} epoch{'s' * (epochs != 1)}, {outcome}"
            )
            plot_history(history, args.plot, title)
            say(f"plot written to {args.plot}")


def evaluate(args, group):
    """Print the test loss and accuracy of a saved model, on the dataset it was trained on:
    another dataset, or inputs it was not trained on, are refused."""
    model = fastnaive.load_model(args.model)
    metadata = saving.read_metadata(args.model)
    trained_on, scaling = metadata.get("dataset"), metadata.get("input_scaling")
    if scaling not in (None, INPUT_SCALING):
        raise UsageError(
            f"{args.model} was trained on inputs scaled as {scaling!r}, which this command "
            f"line does not make (it scales by {INPUT_SCALING!r})"
        )
    if args.dataset and trained_on and args.dataset != trained_on:
        raise UsageError(
            f"{args.model} was trained on {trained_on}, not --dataset {args.dataset}: its "
            f"accuracy there would mean nothing; drop --dataset, or pass --dataset {trained_on}"
        )
    name = args.dataset or (trained_on if args.data is None else None)
    data, _, (x_test, y_test) = load_dataset(name, args.data)
    if trained_on and data.name != trained_on:
        raise UsageError(
            f"{args.model} was trained on {trained_on}, but --data {args.data!r} holds "
            f"{data.name}: its accuracy there would mean nothing"
        )
    say(*describe_data(data))
    if not trained_on:
        say(f"note: {args.model} does not record its dataset; evaluating on {data.title}")
    loss, _ = fastnaive.evaluate_loss(model, x_test, targets(model, y_test))
    accuracy = fastnaive.evaluate(model, x_test, y_test)
    say(f"test loss: {loss:.4f}; test accuracy: {accuracy:.4f}")
    return 0


def info(args, group):
    """Print the version, the thread pools and each dataset's places; a place that cannot be
    read is reported as such."""
    from threadpoolctl import threadpool_info

    from fastnaive import _kernels

    print(f"fastnaive {fastnaive.__version__}, numpy {np.__version__}")
    print(f"OpenMP: {'compiled in' if _kernels.openmp_enabled() else 'not compiled in'}")
    quota = _cpus.cgroup_cpu_limit()
    print(
        f"CPUs training can use: {_cpus.usable_cpus()} (may run on {_cpus.affinity_cpus()}; "
        f"cgroup CPU quota: {'none' if quota is None else f'{quota:g} CPUs'})"
    )
    for pool in threadpool_info():
        version = f" {pool['version']}" if pool.get("version") else ""
        print(
            f"{pool['user_api']}: {pool['internal_api']}{version} ({pool['prefix']}), "
            f"{pool['num_threads']} threads"
        )
    for name in DATASETS:
        print(f"{name}:")
        for place, state in datasets.locations(name):
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
        return COMMANDS[args.command](args, group) or 0
    except EXPECTED as error:
        return _failed(group, error)
    except BaseException as error:  # SystemExit: on one rank of many, still end the others
        if group.size > 1:
            group.abort(error)
        raise


def _failed(group, error):
    """Report `error` as one line on stderr (rank 0's, for an error every rank raised; the
    failing rank's, aborting the job, for any other) and return the exit status."""
    if group.size > 1 and not distributed.is_shared(error):
        group.abort(error)
    if group.is_root:
        print(f"fastnaive: {_describe(error)}", file=sys.stderr)
    return INTERRUPTED if isinstance(error, KeyboardInterrupt) else 1


def _describe(error):
    message = " ".join(str(error).split())
    if isinstance(error, KeyboardInterrupt):
        return message or "interrupted"  # TrainingInterrupted says where
    if isinstance(error, MemoryError):
        return f"error: out of memory{f' ({message})' if message else ''}"
    if isinstance(error, (UsageError, OSError, ValueError, TypeError)) and message:
        return f"error: {message}"
    return f"error: {type(error).__name__}{f': {message}' if message else ''}"
