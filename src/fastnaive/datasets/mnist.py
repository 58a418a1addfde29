"""MNIST handwritten digits, loaded like keras.datasets.mnist without requiring TensorFlow."""

from fastnaive.datasets._resolve import DatasetSpec, load

# The SHA-256 of the mnist.npz that keras.datasets.mnist downloads (keras/src/datasets/mnist.py).
NPZ_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"

_SPEC = DatasetSpec(
    "MNIST", npz_name="mnist.npz", keras_cache="mnist.npz", downloads=(("mnist.npz", NPZ_SHA256),)
)


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
      4. a download of Keras' mnist.npz (11 MB) into that cache, checked by its SHA-256.

    Raises:
      FileNotFoundError: `path` is given but does not exist or holds no MNIST source.
      ValueError: a found file is corrupt or does not hold valid MNIST arrays, or the
        downloaded file is not the expected one; this is raised rather than moving on.
      TypeError: `path` is neither a str nor an os.PathLike.
      fastnaive.datasets.DatasetNotFoundError (a FileNotFoundError): FASTNAIVE_DATA
        names nothing usable, or no place holds MNIST and the download failed; the
        message lists each place searched, why it failed, and where to put the file.
    """
    return load(_SPEC, path)
