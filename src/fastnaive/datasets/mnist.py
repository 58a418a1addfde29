"""MNIST handwritten digits, loaded like keras.datasets.mnist without requiring TensorFlow."""

from fastnaive.datasets._resolve import DatasetSpec, load


def _download():
    """Return MNIST from TensorFlow's Keras loader, which downloads it when it is not cached."""
    import tensorflow as tf

    return tf.keras.datasets.mnist.load_data()


_SPEC = DatasetSpec("MNIST", npz_name="mnist.npz", keras_cache="mnist.npz", download=_download)


def load_data(path=None):
    """Return MNIST as ((x_train, y_train), (x_test, y_test)) like keras.datasets.mnist.load_data().

    x_train is uint8 of shape (60000, 28, 28), y_train uint8 of shape (60000,),
    x_test uint8 of shape (10000, 28, 28) and y_test uint8 of shape (10000,).

    Searched in order, the first hit wins:
      1. `path` (str or os.PathLike): a Keras-layout .npz file (keys x_train,
         y_train, x_test, y_test), or a folder holding mnist.npz or the four
         IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte,
         t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte; plain or .gz, and
         also named like train-images.idx3-ubyte);
      2. the FASTNAIVE_DATA environment variable, read like `path`;
      3. the Keras cache, $KERAS_HOME/datasets/mnist.npz or ~/.keras/datasets/mnist.npz;
      4. tf.keras.datasets.mnist.load_data(), which downloads; needs fastnaive[tf].

    Raises:
      FileNotFoundError: `path` is given but does not exist or holds no MNIST source.
      ValueError: a found file is corrupt or does not hold valid MNIST arrays;
        this is raised rather than moving on to the next place.
      TypeError: `path` is neither a str nor an os.PathLike.
      fastnaive.datasets.DatasetNotFoundError (a FileNotFoundError): no place
        holds MNIST; the message lists each place searched, why it failed, and
        how to provide the data.
    """
    return load(_SPEC, path)
