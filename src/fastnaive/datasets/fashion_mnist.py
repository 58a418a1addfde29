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

# The SHA-256 of the four files Fashion-MNIST publishes (MD5s 8d4fb7e6..., 25c81989...,
# bef4ecab..., bb300cfd... in its README), which keras.datasets.fashion_mnist downloads.
GZ_SHA256 = {
    "train-labels-idx1-ubyte.gz": (
        "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"
    ),
    "train-images-idx3-ubyte.gz": (
        "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"
    ),
    "t10k-labels-idx1-ubyte.gz": (
        "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"
    ),
    "t10k-images-idx3-ubyte.gz": (
        "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"
    ),
}

_SPEC = DatasetSpec(
    "Fashion-MNIST",
    npz_name="fashion_mnist.npz",
    keras_cache=SUBFOLDER,
    downloads=tuple(GZ_SHA256.items()),
    download_folder=SUBFOLDER,
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
      5. a download of the four .gz files (30 MB) that Keras fetches into that cache,
         each checked by its SHA-256.

    Raises:
      FileNotFoundError: `path` is given but does not exist or holds no Fashion-MNIST source.
      ValueError: a found file is corrupt or does not hold valid Fashion-MNIST
        arrays, or a downloaded file is not the expected one; this is raised rather
        than moving on to the next place.
      TypeError: `path` is neither a str nor an os.PathLike.
      fastnaive.datasets.DatasetNotFoundError (a FileNotFoundError): FASTNAIVE_DATA
        names nothing usable, or no place holds Fashion-MNIST and the download failed;
        the message lists each place searched, why it failed, and where to put the files.
    """
    return load(_SPEC, path)
