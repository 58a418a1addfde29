"""Fashion-MNIST clothing images, loaded like keras.datasets.fashion_mnist without TensorFlow.

FASTNAIVE_DATA may hold MNIST and Fashion-MNIST side by side, and the two
datasets' IDX files have the same names. So there, Fashion-MNIST is only
fashion_mnist.npz or the folder fashion-mnist/ (the Keras cache's layout);
IDX files lying directly in FASTNAIVE_DATA, or FASTNAIVE_DATA naming a file,
are MNIST's and ignored here.
"""

from pathlib import Path

from fastnaive.datasets._resolve import DatasetSpec, load

DEBIAN_FOLDER = Path("/usr/share/datasets/fashion-mnist")
SUBFOLDER = "fashion-mnist"


def _download():
    """Return Fashion-MNIST from TensorFlow's Keras loader, which downloads it when not cached."""
    import tensorflow as tf

    return tf.keras.datasets.fashion_mnist.load_data()


_SPEC = DatasetSpec(
    "Fashion-MNIST",
    npz_name="fashion_mnist.npz",
    keras_cache=SUBFOLDER,
    download=_download,
    data_subfolder=SUBFOLDER,
    system_folders=(("Debian package dataset-fashion-mnist", DEBIAN_FOLDER),),
)


def load_data(path=None):
    """Return Fashion-MNIST as ((x_train, y_train), (x_test, y_test)), like Keras' load_data().

    x_train is uint8 of shape (60000, 28, 28), y_train uint8 of shape (60000,),
    x_test uint8 of shape (10000, 28, 28) and y_test uint8 of shape (10000,);
    labels 0-9 are T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal, Shirt,
    Sneaker, Bag and Ankle boot.

    Searched in order, the first hit wins:
      1. `path` (str or os.PathLike): a Keras-layout .npz file (keys x_train,
         y_train, x_test, y_test), or a folder holding fashion_mnist.npz or the
         four IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte,
         t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte; plain or .gz);
      2. the FASTNAIVE_DATA folder: its fashion_mnist.npz, else its fashion-mnist/
         folder read like `path`;
      3. the Keras cache, $KERAS_HOME/datasets/fashion-mnist/ or
         ~/.keras/datasets/fashion-mnist/ (four .gz IDX files);
      4. /usr/share/datasets/fashion-mnist/, from Debian's dataset-fashion-mnist package;
      5. tf.keras.datasets.fashion_mnist.load_data(), which downloads; needs fastnaive[tf].

    Raises:
      FileNotFoundError: `path` is given but does not exist or holds no Fashion-MNIST source.
      ValueError: a found file is corrupt or does not hold valid Fashion-MNIST
        arrays; this is raised rather than moving on to the next place.
      TypeError: `path` is neither a str nor an os.PathLike.
      fastnaive.datasets.DatasetNotFoundError (a FileNotFoundError): no place
        holds Fashion-MNIST; the message lists each place searched and why it failed.
    """
    return load(_SPEC, path)
