"""The command line: `python -m fastnaive` (or `fastnaive`) trains the book's model on MNIST."""
import argparse
import sys
import time

import numpy as np

import fastnaive
from fastnaive.callbacks import LambdaCallback
from fastnaive.datasets import mnist


def build_parser():
    parser = argparse.ArgumentParser(
        prog="fastnaive",
        description="Train the MLP of Deep Learning with Python, ch. 2 (784-512 relu-10 softmax, "
                    "W ~ U[0, 0.1), SGD) on MNIST and print each epoch's loss and the test accuracy.")
    parser.add_argument("--data", metavar="PATH",
                        help="mnist.npz or a folder holding it or the four IDX files "
                             "(default: $FASTNAIVE_DATA, the Keras cache, then a TensorFlow download)")
    parser.add_argument("--epochs", type=int, default=10, help="passes over the training set (default: 10)")
    parser.add_argument("--batch-size", type=int, default=128, help="samples per step (default: 128)")
    parser.add_argument("--lr", type=float, default=1e-3, help="SGD learning rate (default: 1e-3)")
    parser.add_argument("--hidden", type=int, default=512, help="hidden units (default: 512)")
    parser.add_argument("--seed", type=int, default=None, help="seed for the initial weights")
    return parser


def load_mnist(path):
    """Return MNIST the book's way: images (n, 784) float32 in [0, 1], labels uint8."""
    (x_train, y_train), (x_test, y_test) = mnist.load_data(path)
    def scale(x):
        return x.reshape(len(x), -1).astype(np.float32) / 255
    return (scale(x_train), y_train), (scale(x_test), y_test)


def train(args):
    (x_train, y_train), (x_test, y_test) = load_mnist(args.data)
    rng = np.random.default_rng(args.seed)
    model = fastnaive.NaiveSequential([
        fastnaive.NaiveDense(784, args.hidden, "relu", seed=rng),
        fastnaive.NaiveDense(args.hidden, 10, "softmax", seed=rng),
    ])
    report = LambdaCallback(on_epoch_end=lambda epoch, logs: print(
        f"epoch {epoch}: mean loss {logs['loss']:.4f}"))
    start = time.perf_counter()
    fastnaive.fit(model, x_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                  optimizer=fastnaive.SGD(args.lr), callbacks=[report])
    seconds = time.perf_counter() - start
    accuracy = fastnaive.evaluate(model, x_test, y_test)
    print(f"trained {args.epochs} epochs in {seconds:.1f} s; test accuracy: {accuracy:.4f}")


def main(argv=None):
    """Run the command line; return the exit status."""
    args = build_parser().parse_args(argv)
    try:
        train(args)
    except (OSError, ValueError, TypeError) as error:
        print(f"fastnaive: error: {error}", file=sys.stderr)
        return 1
    return 0
