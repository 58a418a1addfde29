"""Datasets for fastnaive, loaded without TensorFlow: from a local copy, or downloaded once.

`mnist.load_data()` and `fashion_mnist.load_data()` return the arrays as Keras does;
`load()` also says where they came from and tells the two datasets apart by their labels.
"""

import hashlib
import importlib
from dataclasses import dataclass

import numpy as np

from fastnaive.datasets import fashion_mnist, mnist
from fastnaive.datasets._resolve import DatasetNotFoundError, describe, find, read, source

__all__ = [
    "NAMES",
    "Dataset",
    "DatasetNotFoundError",
    "DatasetIdentityError",
    "fashion_mnist",
    "identify",
    "load",
    "locations",
    "mnist",
]

NAMES = ("mnist", "fashion_mnist")
# SHA-256 of the published datasets' labels, y_train's bytes then y_test's (uint8): their
# order tells the two datasets apart whatever the files' encoding (.npz, IDX, gzipped).
LABELS_SHA256 = {
    "mnist": "671ff9d70b4811116d55c3dd479efa7a981e2e62753ef7a6d5c15fea81e63d27",
    "fashion_mnist": "8ab940a680640f36c0bf1d2549cb2f3b3d4068c12547116cc7b1161b1d26663d",
}


class DatasetIdentityError(ValueError):
    """Raised when a path's dataset cannot be told, or its labels are another dataset's;
    `choices` are the names that would do."""

    def __init__(self, message, choices=NAMES):
        super().__init__(message)
        self.choices = choices


@dataclass(frozen=True)
class Dataset:
    """A loaded dataset: which one, where it was read, its uint8 arrays as Keras gives them."""

    name: str  # "mnist" or "fashion_mnist"
    title: str  # "MNIST" or "Fashion-MNIST"
    place: str  # how it was found: "path", "FASTNAIVE_DATA=...", "Keras cache ...", ...
    location: str  # the .npz file or the folder of IDX files read
    train: tuple  # (x_train, y_train)
    test: tuple  # (x_test, y_test)
    published: bool  # its labels are the published dataset's, in order (identify)


def locations(name):
    """Return [(place, state)] for where load_data() of dataset `name` would look, in order."""
    return describe(_spec(name))


def identify(y_train, y_test):
    """Return "mnist" or "fashion_mnist" when the labels are that published dataset's, in its
    order, else None (another dataset, a subset, a shuffled copy)."""
    labels = [np.ascontiguousarray(y, np.uint8).tobytes() for y in (y_train, y_test)]
    digest = hashlib.sha256(b"".join(labels)).hexdigest()
    return next((name for name, known in LABELS_SHA256.items() if known == digest), None)


def load(name=None, path=None, *, path_name="path"):
    """Return the Dataset `name` ("mnist" or "fashion_mnist"), read from `path` or, without it,
    from the first place its load_data() searches (downloading it when none holds it).

    With name=None and a `path`, the dataset is the one whose published labels `path` holds,
    else the one its file's name names (mnist.npz, fashion_mnist.npz); with neither given, MNIST.
    `path_name` names `path` in errors (an option's name, for a command line).

    Raises what load_data() raises, and DatasetIdentityError (a ValueError) when the labels
    are the other published dataset's, or, for name None, when the dataset cannot be told.
    """
    if name is None and path is None:
        name = "mnist"
    if name is not None:
        spec = _spec(name)
        place, location = find(spec, path, path_name)
        return _dataset(name, spec, place, source(spec, location), path_name)
    found = {}
    for candidate in NAMES:
        spec = _spec(candidate)
        try:
            place, location = find(spec, path, path_name)
        except FileNotFoundError as error:
            missing = error
            continue
        found.setdefault(source(spec, location), (candidate, spec, place))
    if not found:
        raise missing
    if len(found) > 1:
        raise DatasetIdentityError(
            f"Expected {path_name} to hold one dataset. Received: {path_name}={str(path)!r} "
            f"holding {' and '.join(str(file) for file in found)}; name the dataset"
        )
    [(location, (_, spec, place))] = found.items()
    return _dataset(None, spec, place, location, path_name)


def _spec(name):
    """The DatasetSpec of dataset `name`, looked up when called (tests may replace it)."""
    if name not in NAMES:
        raise ValueError(f"Expected a dataset name in {NAMES}. Received: name={name!r}")
    return importlib.import_module(f"fastnaive.datasets.{name}")._SPEC


def _dataset(name, spec, place, location, path_name):
    """The Dataset read at `location`: `name`'s, checked against its labels; or, for name None,
    the one its labels say, else the one its file's name says."""
    (x_train, y_train), (x_test, y_test) = read(spec, location)
    identified = identify(y_train, y_test)
    if name is None:
        name = identified or next((n for n in NAMES if _spec(n).npz_name == location.name), None)
        if name is None:
            raise DatasetIdentityError(
                f"Expected {path_name} to hold MNIST or Fashion-MNIST: their published labels, "
                "or a file named mnist.npz or fashion_mnist.npz. Received: "
                f"{path_name}={str(location)!r}, whose labels are neither's; name the dataset"
            )
    elif identified not in (None, name):
        raise DatasetIdentityError(
            f"Expected {_spec(name).name} from {place} ({location}). Received: the published "
            f"{_spec(identified).name}, by its labels; name the dataset",
            (identified,),
        )
    return Dataset(
        name,
        _spec(name).name,
        place,
        str(location),
        (x_train, y_train),
        (x_test, y_test),
        identified == name,
    )
