"""Tests for fastnaive.datasets.fashion_mnist: search order, sharing FASTNAIVE_DATA, real data."""

import dataclasses
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import IDX_NAMES, assert_loaded, synthetic, write_idx_folder, write_npz

from fastnaive.datasets import DatasetNotFoundError, fashion_mnist, mnist

DEBIAN = Path("/usr/share/datasets/fashion-mnist")
# Where each place keeps the dataset, relative to tmp_path, in search order. (The download
# after them is tested in test_datasets, from a local server.)
PLACES = {
    "path": "given",
    "data-npz": "data/fashion_mnist.npz",
    "data-subfolder": "data/fashion-mnist",
    "keras-cache": "home/.keras/datasets/fashion-mnist",
    "debian": "debian",
}


@pytest.fixture
def unreachable():
    """A URL where nothing listens: a bound TCP port that refuses every connection."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/"


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path, unreachable):
    """Hide the real FASTNAIVE_DATA, Keras cache, Debian folder, TensorFlow and the network
    from every test: downloads go to a port that refuses them."""
    monkeypatch.delenv("FASTNAIVE_DATA", raising=False)
    monkeypatch.delenv("KERAS_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(
        fashion_mnist, "_SPEC", dataclasses.replace(fashion_mnist._SPEC, base_url=unreachable)
    )
    look_for_debian_files_in(monkeypatch, tmp_path / "debian")
    monkeypatch.setitem(sys.modules, "tensorflow", None)


def look_for_debian_files_in(monkeypatch, folder):
    """Make the search look for Debian's Fashion-MNIST in `folder`."""
    system_folders = (("Debian package dataset-fashion-mnist", folder),)
    spec = dataclasses.replace(fashion_mnist._SPEC, system_folders=system_folders)
    monkeypatch.setattr(fashion_mnist, "_SPEC", spec)


def provide(tmp_path, monkeypatch, place, data):
    """Put `data` at `place`, laid out as that place keeps Fashion-MNIST."""
    where = PLACES[place]
    if where.endswith(".npz"):
        write_npz(tmp_path / where, data)
    else:
        write_idx_folder(tmp_path / where, data, gz=True)


@pytest.mark.parametrize("first", list(PLACES))
def test_first_place_holding_the_dataset_wins(tmp_path, monkeypatch, first):
    places = list(PLACES)[list(PLACES).index(first) :]
    for seed, place in enumerate(places):
        provide(tmp_path, monkeypatch, place, synthetic(seed))
    # MNIST's IDX files directly in FASTNAIVE_DATA are never taken for Fashion-MNIST.
    monkeypatch.setenv("FASTNAIVE_DATA", str(write_idx_folder(tmp_path / "data", synthetic(99))))
    path = tmp_path / PLACES["path"] if first == "path" else None
    assert_loaded(fashion_mnist.load_data(path), synthetic(0))


@pytest.mark.parametrize("fashion_place", ["data-npz", "data-subfolder"])
def test_mnist_and_fashion_mnist_share_fastnaive_data(tmp_path, monkeypatch, fashion_place):
    digits, clothes = synthetic(1), synthetic(2)
    monkeypatch.setenv("FASTNAIVE_DATA", str(write_idx_folder(tmp_path / "data", digits)))
    provide(tmp_path, monkeypatch, fashion_place, clothes)
    assert_loaded(mnist.load_data(), digits)
    assert_loaded(fashion_mnist.load_data(), clothes)


def test_keras_cache_follows_keras_home(tmp_path, monkeypatch):
    cache = synthetic(3)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    write_idx_folder(tmp_path / "keras" / "datasets" / "fashion-mnist", cache, gz=True)
    assert_loaded(fashion_mnist.load_data(), cache)


def test_incomplete_subfolder_raises_instead_of_falling_through(tmp_path, monkeypatch):
    subfolder = write_idx_folder(tmp_path / "data" / "fashion-mnist", synthetic(), gz=True)
    (subfolder / (IDX_NAMES["y_test"] + ".gz")).unlink()
    provide(tmp_path, monkeypatch, "debian", synthetic())
    monkeypatch.setenv("FASTNAIVE_DATA", str(tmp_path / "data"))
    with pytest.raises(ValueError, match="no file for t10k-labels-idx1-ubyte") as info:
        fashion_mnist.load_data()
    assert str(subfolder) in str(info.value)


def test_error_lists_every_place_when_all_fail(tmp_path, monkeypatch, unreachable):
    data = write_idx_folder(tmp_path / "data", synthetic())
    monkeypatch.setenv("FASTNAIVE_DATA", str(data))
    with pytest.raises(DatasetNotFoundError) as info:
        fashion_mnist.load_data()
    message = str(info.value)
    assert message.startswith("Fashion-MNIST not found.")
    assert f"FASTNAIVE_DATA={data} -> {data / 'fashion-mnist'}: no such file" in message
    assert f"Keras cache {tmp_path / 'home' / '.keras' / 'datasets' / 'fashion-mnist'}" in message
    assert f"Debian package dataset-fashion-mnist {tmp_path / 'debian'}: no such" in message
    assert f"download failed: {unreachable}train-labels-idx1-ubyte.gz: Connection" in message


def test_explicit_path_is_read_as_given(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither fashion_mnist.npz nor IDX files"):
        fashion_mnist.load_data(tmp_path)


def test_import_does_not_import_tensorflow():
    code = "import fastnaive.datasets.fashion_mnist, sys; assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_debian_fashion_mnist(monkeypatch):
    files = [DEBIAN / f"{name}.gz" for name in IDX_NAMES.values()]
    missing = [file.name for file in files if not file.is_file()]
    if missing:
        pytest.fail(
            f"Expected Debian's Fashion-MNIST in {DEBIAN}. "
            f"Received: no {', '.join(missing)}. "
            "Install it: apt-get install dataset-fashion-mnist",
            pytrace=False,
        )
    look_for_debian_files_in(monkeypatch, DEBIAN)
    (x_train, y_train), (x_test, y_test) = fashion_mnist.load_data()
    assert x_train.shape == (60000, 28, 28) and y_train.shape == (60000,)
    assert x_test.shape == (10000, 28, 28) and y_test.shape == (10000,)
    assert {a.dtype for a in (x_train, y_train, x_test, y_test)} == {np.dtype(np.uint8)}
    assert np.bincount(y_train, minlength=10).tolist() == [6000] * 10
    assert np.bincount(y_test, minlength=10).tolist() == [1000] * 10
    assert (x_train.min(), x_train.max(), x_test.min(), x_test.max()) == (0, 255, 0, 255)
    assert y_train[:5].tolist() == [9, 0, 0, 3, 0]
    assert y_test[:5].tolist() == [9, 2, 1, 1, 6]
