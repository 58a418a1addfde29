"""Tests for fastnaive.datasets: IDX reading, MNIST source search order and validation,
downloads (from a local HTTP server serving the real files), and telling MNIST from
Fashion-MNIST."""

import dataclasses
import gzip
import hashlib
import http.server
import importlib.util
import os
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    IDX_NAMES,
    assert_loaded,
    deflated,
    idx_bytes,
    npy_bytes,
    npy_header,
    synthetic,
    write_gzip,
    write_idx_folder,
    write_npz,
    write_zip,
)

import fastnaive.datasets
from fastnaive.datasets import DatasetIdentityError, DatasetNotFoundError, fashion_mnist, mnist
from fastnaive.datasets._idx import read_idx
from fastnaive.datasets._resolve import KERAS_URL

REAL_DATA = os.environ.get("FASTNAIVE_DATA")
DEBIAN = Path("/usr/share/datasets/fashion-mnist")


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
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    download_from(monkeypatch, unreachable)
    debian = (("Debian package dataset-fashion-mnist", tmp_path / "debian"),)
    spec = dataclasses.replace(fashion_mnist._SPEC, system_folders=debian)
    monkeypatch.setattr(fashion_mnist, "_SPEC", spec)


def download_from(monkeypatch, url, **changes):
    """Make both datasets download from `url`, their specs changed as `changes` say."""
    for module in (mnist, fashion_mnist):
        spec = dataclasses.replace(module._SPEC, base_url=url, **changes.get(module.__name__, {}))
        monkeypatch.setattr(module, "_SPEC", spec)


# IDX reader


@pytest.mark.parametrize("dtype", ["u1", "i1", ">i2", ">i4", ">f4", ">f8"])
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trips_every_type(tmp_path, dtype, gz):
    start = 0 if dtype == "u1" else -5
    array = np.arange(start, start + 24).reshape(2, 3, 4).astype(dtype)
    raw = idx_bytes(array)
    file = tmp_path / "data-idx"
    file.write_bytes(gzip.compress(raw) if gz else raw)
    result = read_idx(file)
    assert result.dtype == array.dtype.newbyteorder("=")
    assert result.dtype.isnative
    assert result.shape == array.shape
    np.testing.assert_array_equal(result, array)


def test_read_idx_detects_gzip_by_magic_not_suffix(tmp_path):
    array = np.arange(10, dtype=np.uint8)
    plain_named_gz = tmp_path / "labels.gz"
    plain_named_gz.write_bytes(idx_bytes(array))
    gzip_without_suffix = tmp_path / "labels"
    gzip_without_suffix.write_bytes(gzip.compress(idx_bytes(array)))
    np.testing.assert_array_equal(read_idx(plain_named_gz), array)
    np.testing.assert_array_equal(read_idx(gzip_without_suffix), array)


BAD_MAGICS = [b"", b"\0\0", b"\1\0\x08\1", b"\0\1\x08\1", b"\0\0\x07\1", b"\0\0\x08\0"]


@pytest.mark.parametrize("header", BAD_MAGICS)
def test_read_idx_rejects_bad_magic(tmp_path, header):
    file = tmp_path / "bad-idx1-ubyte"
    file.write_bytes(header + struct.pack(">I", 0))
    with pytest.raises(ValueError, match="magic number") as info:
        read_idx(file)
    assert str(file) in str(info.value)


@pytest.mark.parametrize("extra", [-1, 1])
def test_read_idx_rejects_wrong_data_length(tmp_path, extra):
    raw = idx_bytes(np.zeros((3, 4), np.uint8))
    file = tmp_path / "bad-idx2-ubyte"
    file.write_bytes(raw[:extra] if extra < 0 else raw + b"\x00")
    pattern = f"Expected 12 data bytes .*Received: {12 + extra} bytes"
    with pytest.raises(ValueError, match=pattern) as info:
        read_idx(file)
    assert str(file) in str(info.value)


def test_read_idx_rejects_truncated_header(tmp_path):
    file = tmp_path / "bad-idx3-ubyte"
    file.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">I", 2))
    with pytest.raises(ValueError, match="Expected 16 header bytes for 3 dimensions") as info:
        read_idx(file)
    assert str(file) in str(info.value)


def test_read_idx_rejects_corrupt_gzip(tmp_path):
    file = tmp_path / "bad-idx1-ubyte.gz"
    file.write_bytes(gzip.compress(idx_bytes(np.arange(100, dtype=np.uint8)))[:-10])
    with pytest.raises(ValueError, match="gzip") as info:
        read_idx(file)
    assert str(file) in str(info.value)


# Sources


def test_load_npz_file(tmp_path):
    data = synthetic()
    assert_loaded(mnist.load_data(write_npz(tmp_path / "any-name.npz", data)), data)


def test_load_folder_with_mnist_npz_given_as_str(tmp_path):
    data = synthetic()
    write_npz(tmp_path / "mnist.npz", data)
    assert_loaded(mnist.load_data(str(tmp_path)), data)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("sep", ["-", "."])
def test_load_folder_with_idx_files(tmp_path, gz, sep):
    data = synthetic()
    assert_loaded(mnist.load_data(write_idx_folder(tmp_path, data, gz=gz, sep=sep)), data)


def test_folder_prefers_mnist_npz_over_idx_files(tmp_path):
    npz_data, idx_data = synthetic(1), synthetic(2)
    write_npz(tmp_path / "mnist.npz", npz_data)
    write_idx_folder(tmp_path, idx_data)
    assert_loaded(mnist.load_data(tmp_path), npz_data)


def test_npz_integer_dtypes_that_fit_are_converted(tmp_path):
    data = synthetic()
    wide = {key: array.astype(np.int64) for key, array in data.items()}
    assert_loaded(mnist.load_data(write_npz(tmp_path / "wide.npz", wide)), data)


# Search order


def test_path_beats_fastnaive_data_and_keras_cache(tmp_path, monkeypatch):
    given, env, cache = synthetic(1), synthetic(2), synthetic(3)
    monkeypatch.setenv("FASTNAIVE_DATA", str(write_idx_folder(tmp_path / "env", env)))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    write_npz(tmp_path / "keras" / "datasets" / "mnist.npz", cache)
    assert_loaded(mnist.load_data(write_npz(tmp_path / "given.npz", given)), given)


def test_fastnaive_data_beats_keras_cache(tmp_path, monkeypatch):
    env, cache = synthetic(2), synthetic(3)
    monkeypatch.setenv("FASTNAIVE_DATA", str(write_npz(tmp_path / "env" / "mnist.npz", env).parent))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    write_npz(tmp_path / "keras" / "datasets" / "mnist.npz", cache)
    assert_loaded(mnist.load_data(), env)


def test_fastnaive_data_may_name_an_npz_file(tmp_path, monkeypatch):
    env = synthetic(2)
    monkeypatch.setenv("FASTNAIVE_DATA", str(write_npz(tmp_path / "data.npz", env)))
    assert_loaded(mnist.load_data(), env)


@pytest.mark.parametrize(
    "value, reason",
    [
        ("missing-folder", "no such file or directory"),
        ("empty-folder", "a folder holding no .npz or IDX file"),
        ("notes", "a folder holding no .npz or IDX file"),
    ],
)
def test_a_fastnaive_data_naming_nothing_usable_is_an_error_naming_it(
    tmp_path, monkeypatch, value, reason
):
    """Never a fall-through to the Keras cache or the network."""
    (tmp_path / "empty-folder").mkdir()
    (tmp_path / "notes" / "sub").mkdir(parents=True)
    (tmp_path / "notes" / "sub" / "readme.txt").write_text("not data")
    monkeypatch.setenv("FASTNAIVE_DATA", str(tmp_path / value))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    write_npz(tmp_path / "keras" / "datasets" / "mnist.npz", synthetic(3))
    for load_data in (mnist.load_data, fashion_mnist.load_data):
        with pytest.raises(DatasetNotFoundError) as info:
            load_data()
        assert f"Received: FASTNAIVE_DATA={str(tmp_path / value)!r} ({reason}" in str(info.value)


def test_an_empty_fastnaive_data_is_unset(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTNAIVE_DATA", "")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    cache = synthetic(3)
    write_npz(tmp_path / "keras" / "datasets" / "mnist.npz", cache)
    assert_loaded(mnist.load_data(), cache)


def test_a_fastnaive_data_holding_only_the_other_dataset_is_searched_past(tmp_path, monkeypatch):
    """FASTNAIVE_DATA holds data (MNIST's), just not Fashion-MNIST: the search goes on."""
    monkeypatch.setenv(
        "FASTNAIVE_DATA", str(write_npz(tmp_path / "data" / "mnist.npz", synthetic()).parent)
    )
    clothes = synthetic(5)
    write_idx_folder(tmp_path / "home" / ".keras" / "datasets" / "fashion-mnist", clothes, gz=True)
    assert_loaded(fashion_mnist.load_data(), clothes)


def test_keras_cache_defaults_to_home(tmp_path):
    cache = synthetic(3)
    write_npz(tmp_path / "home" / ".keras" / "datasets" / "mnist.npz", cache)
    assert_loaded(mnist.load_data(), cache)


def test_corrupt_fastnaive_data_raises_instead_of_falling_through(tmp_path, monkeypatch):
    (tmp_path / "env").mkdir()
    (tmp_path / "env" / "mnist.npz").write_bytes(b"PK\x03\x04 not really a zip")
    monkeypatch.setenv("FASTNAIVE_DATA", str(tmp_path / "env"))
    write_npz(tmp_path / "home" / ".keras" / "datasets" / "mnist.npz", synthetic())
    with pytest.raises(ValueError, match="Expected an .npz archive") as info:
        mnist.load_data()
    assert str(tmp_path / "env" / "mnist.npz") in str(info.value)


def test_corrupt_keras_cache_raises_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    data = synthetic()
    data["y_test"] = data["y_test"][:3]
    cache = write_npz(tmp_path / "keras" / "datasets" / "mnist.npz", data)
    with pytest.raises(ValueError, match=r"Expected y_test of shape \(4,\)") as info:
        mnist.load_data()
    assert str(cache) in str(info.value)


def test_offline_the_error_lists_every_place_the_failed_url_and_where_to_put_the_file(
    tmp_path, monkeypatch, unreachable
):
    monkeypatch.setenv("FASTNAIVE_DATA", str(write_idx_folder(tmp_path / "data", synthetic())))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    with pytest.raises(DatasetNotFoundError) as info:
        fashion_mnist.load_data()
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert message.startswith("Fashion-MNIST not found. Looked in:\n  - path: not given\n")
    assert (
        f"FASTNAIVE_DATA={tmp_path / 'data'} -> {tmp_path / 'data' / 'fashion-mnist'}: no"
        in message
    )
    cache = tmp_path / "keras" / "datasets" / "fashion-mnist"
    assert f"Keras cache {cache}: no such file or directory" in message
    url = f"{unreachable}train-labels-idx1-ubyte.gz"
    assert f"download failed: {url}: ConnectionRefusedError" in message
    names = ", ".join(fashion_mnist.GZ_SHA256)
    assert f"or, offline, download {names} from {unreachable} elsewhere into {cache}/." in message
    assert not cache.exists() or not os.listdir(cache)  # nothing half-downloaded is left
    monkeypatch.delenv("FASTNAIVE_DATA")
    with pytest.raises(DatasetNotFoundError) as info:
        mnist.load_data()
    target = tmp_path / "keras" / "datasets" / "mnist.npz"
    assert f"download {unreachable}mnist.npz elsewhere and put it at {target}." in str(info.value)


# Explicit path errors


def test_missing_explicit_path_raises_naming_it(tmp_path):
    missing = tmp_path / "nope"
    write_npz(tmp_path / "home" / ".keras" / "datasets" / "mnist.npz", synthetic())
    with pytest.raises(FileNotFoundError, match="no such file or directory") as info:
        mnist.load_data(missing)
    assert f"path={str(missing)!r}" in str(info.value)


def test_explicit_folder_without_sources_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither mnist.npz nor IDX files") as info:
        mnist.load_data(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_explicit_path_of_wrong_type_raises():
    with pytest.raises(TypeError, match="Received: path=42"):
        mnist.load_data(42)


def test_incomplete_idx_folder_raises(tmp_path):
    write_idx_folder(tmp_path, synthetic())
    (tmp_path / IDX_NAMES["y_test"]).unlink()
    with pytest.raises(ValueError, match="no file for t10k-labels-idx1-ubyte") as info:
        mnist.load_data(tmp_path)
    assert str(tmp_path) in str(info.value)


# Corrupt IDX sources


def test_idx_folder_with_bad_magic_names_the_file(tmp_path):
    write_idx_folder(tmp_path, synthetic())
    bad = tmp_path / IDX_NAMES["x_train"]
    bad.write_bytes(b"\x08\x03" + bad.read_bytes()[2:])
    with pytest.raises(ValueError, match="magic number") as info:
        mnist.load_data(tmp_path)
    assert str(bad) in str(info.value)


def test_idx_folder_with_truncated_file_names_the_file(tmp_path):
    write_idx_folder(tmp_path, synthetic(), gz=True)
    bad = tmp_path / (IDX_NAMES["x_test"] + ".gz")
    bad.write_bytes(gzip.compress(gzip.decompress(bad.read_bytes())[:-5]))
    with pytest.raises(ValueError, match=f"Expected {4 * 28 * 28} data bytes") as info:
        mnist.load_data(tmp_path)
    assert str(bad) in str(info.value)


def test_idx_folder_with_wrong_image_dims_names_the_file(tmp_path):
    data = synthetic()
    write_idx_folder(tmp_path, data)
    bad = tmp_path / IDX_NAMES["x_train"]
    bad.write_bytes(idx_bytes(data["x_train"].reshape(6, 784)))
    pattern = r"Expected x_train of shape \(n, 28, 28\)\. Received: x_train.shape=\(6, 784\) in "
    with pytest.raises(ValueError, match=pattern) as info:
        mnist.load_data(tmp_path)
    assert str(bad) in str(info.value)


# Invalid npz sources


INVALID_NPZ = {
    "missing-key": ("y_test", None, "Expected keys x_train, y_train, x_test, y_test"),
    "float-images": ("x_train", lambda a: a.astype(np.float32), "Received: x_train.dtype=float32"),
    "negative-labels": (
        "y_train",
        lambda a: a.astype(np.int16) - 1,
        r"Received: y_train.dtype=int16 with values in \[-1,",
    ),
    "label-out-of-range": (
        "y_train",
        lambda a: a + 10,
        r"Expected y_train values in \[0, 10\)\. Received: max\(y_train\)=",
    ),
    "flat-images": ("x_test", lambda a: a.reshape(4, 784), r"Received: x_test.shape=\(4, 784\)"),
    "2d-labels": ("y_train", lambda a: a[:, None], r"Received: y_train.shape=\(6, 1\)"),
    "pickled": (
        "x_test",
        lambda a: np.array([1, "a"], dtype=object),
        "Expected x_test to be a plain numeric array",
    ),
}


@pytest.mark.parametrize("case", INVALID_NPZ)
def test_invalid_npz_raises_naming_file_and_key(tmp_path, case):
    key, change, pattern = INVALID_NPZ[case]
    data = synthetic()
    array = data.pop(key)
    if change is not None:
        data[key] = change(array)
    file = write_npz(tmp_path / "mnist.npz", data)
    with pytest.raises(ValueError, match=pattern) as info:
        mnist.load_data(file)
    assert str(file) in str(info.value)


@pytest.mark.parametrize("content", [b"", b"not an archive", b"PK\x03\x04 truncated"])
def test_unreadable_npz_raises_naming_it(tmp_path, content):
    file = tmp_path / "mnist.npz"
    file.write_bytes(content)
    with pytest.raises(ValueError, match="Expected an .npz archive") as info:
        mnist.load_data(file)
    assert str(file) in str(info.value)


def test_single_npy_array_is_rejected(tmp_path):
    file = tmp_path / "mnist.npy"
    np.save(file, np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(ValueError, match="single .npy array"):
        mnist.load_data(file)


# Import


def test_import_does_not_import_tensorflow():
    src = Path(fastnaive.datasets.__file__).resolve().parents[2]
    pythonpath = os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": pythonpath}
    code = "import fastnaive.datasets.mnist, sys; assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], env=env, check=True)


# Real data


@pytest.mark.mnist
def test_real_mnist(monkeypatch):
    if not REAL_DATA:
        pytest.fail(
            "Set FASTNAIVE_DATA to a folder holding the real mnist.npz "
            "(e.g. FASTNAIVE_DATA=/work/shared/data)."
        )
    monkeypatch.setenv("FASTNAIVE_DATA", REAL_DATA)
    try:
        (x_train, y_train), (x_test, y_test) = mnist.load_data()
    except DatasetNotFoundError as exc:
        pytest.fail(f"FASTNAIVE_DATA={REAL_DATA} must hold the real mnist.npz or IDX files.\n{exc}")
    assert x_train.shape == (60000, 28, 28) and y_train.shape == (60000,)
    assert x_test.shape == (10000, 28, 28) and y_test.shape == (10000,)
    assert {a.dtype for a in (x_train, y_train, x_test, y_test)} == {np.dtype(np.uint8)}
    counts = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(y_train, minlength=10).tolist() == counts
    assert y_train[:5].tolist() == [5, 0, 4, 1, 9]
    assert y_test[:5].tolist() == [7, 2, 1, 0, 4]
    assert x_train.mean() == pytest.approx(33.3184, abs=1e-4)


# Hostile files (docs/robustness.md, class 7): refused from their headers, unread


def test_read_idx_refuses_a_gzip_stream_longer_than_its_header(tmp_path):
    file = write_gzip(
        tmp_path / "bad-idx2-ubyte.gz", deflated(idx_bytes(np.zeros((3, 4), np.uint8)), 2**26)
    )
    with pytest.raises(
        ValueError, match="Expected 12 data bytes .*Received: more than 12 bytes"
    ) as info:
        read_idx(file)
    assert str(file) in str(info.value)


def test_read_idx_refuses_a_gzip_header_declaring_more_than_its_file_can_hold(tmp_path):
    header = b"\x00\x00\x08\x03" + struct.pack(">3I", 2**31, 28, 28)
    file = write_gzip(tmp_path / "bad-idx3-ubyte.gz", deflated(header, 1000))
    with pytest.raises(ValueError, match=r"at most 100 times its \d+ bytes") as info:
        read_idx(file)
    assert "1683627180032 data bytes" in str(info.value) and str(file) in str(info.value)


def test_read_idx_refuses_a_plain_file_shorter_than_its_header_without_reading_it(tmp_path):
    file = tmp_path / "bad-idx3-ubyte"
    file.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">3I", 2**31, 28, 28) + bytes(100))
    with pytest.raises(ValueError, match="Expected 1683627180032 data bytes .*Received: 100 bytes"):
        read_idx(file)


HOSTILE_NPZ = {
    "header-declaring-(2**40, 28, 28)": (
        {
            "x_train.npy": npy_header((2**40, 28, 28), "|u1"),
            "y_train.npy": npy_header((2**40,), "|u1"),
        },
        r"declare \d+ bytes, more than 100 times the file's size",
    ),
    "member-inflating-to-64-MiB": (
        {
            "x_train.npy": deflated(npy_header((85598, 28, 28), "|u1"), 2**26),
            "y_train.npy": deflated(npy_header((85598,), "|u1"), 85598),
        },
        r"declare \d+ bytes, more than 100 times the file's size",
    ),
    "member-inflating-past-its-header": (
        {"y_test.npy": deflated(npy_bytes(synthetic()["y_test"]), 2**26)},
        "holding more data than its shape",
    ),
    "member-not-npy": ({"readme.txt": b"hello"}, "a member 'readme.txt' that is not an .npy array"),
    "float-images-by-header": (
        {"x_test.npy": npy_header((4, 28, 28), "<f8")},
        r"Received: x_test.dtype=float64",
    ),
    "shapes-disagree-by-header": (
        {"y_test.npy": npy_header((2**40,), "|u1")},
        r"Expected y_test of shape \(4,\) to match x_test",
    ),
}


@pytest.mark.parametrize("members, pattern", HOSTILE_NPZ.values(), ids=HOSTILE_NPZ.keys())
def test_a_hostile_npz_is_refused_naming_it(tmp_path, members, pattern):
    good = {f"{key}.npy": npy_bytes(array) for key, array in synthetic().items()}
    file = write_zip(tmp_path / "mnist.npz", {**good, **members})
    with pytest.raises(ValueError, match=pattern) as info:
        mnist.load_data(file)
    assert str(file) in str(info.value)


def test_an_unreadable_fastnaive_data_is_an_error_and_locations_report_it(tmp_path, monkeypatch):
    unreadable = str(tmp_path / ("x" * 300))  # a name longer than any file system allows
    monkeypatch.setenv("FASTNAIVE_DATA", unreadable)
    write_npz(tmp_path / "home" / ".keras" / "datasets" / "mnist.npz", synthetic())
    with pytest.raises(DatasetNotFoundError, match=f"Received: FASTNAIVE_DATA={unreadable!r}"):
        mnist.load_data()
    places = dict(fastnaive.datasets.locations("mnist"))
    assert places[f"FASTNAIVE_DATA={unreadable}"].startswith("unusable, an error: ")
    assert places[f"FASTNAIVE_DATA={unreadable}"].endswith(
        ("(OSError: File name too long)", "no such file or directory")
    )


# Downloads, from a local HTTP server

# Debian's dataset-fashion-mnist holds the four files Fashion-MNIST publishes with their gzip
# header's file name and time stripped (strip-nondeterminism): putting them back gives the
# published bytes, whose MD5s are those Fashion-MNIST's README lists.
PUBLISHED_FASHION = {
    # name: (the header's time, the published MD5)
    "train-images-idx3-ubyte.gz": (1504176606, "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
    "train-labels-idx1-ubyte.gz": (1504176606, "25c81989df183df01b3e8a0aad5dffbe"),
    "t10k-images-idx3-ubyte.gz": (1504176627, "bef4ecab320f06d8554ea6380940ec79"),
    "t10k-labels-idx1-ubyte.gz": (1504176627, "bb300cfdad3c16e7a12a480ee83cd310"),
}


@pytest.fixture(scope="module")
def published_fashion():
    """{name: bytes} of the four published Fashion-MNIST files, rebuilt from Debian's."""
    files = {}
    for name, (mtime, _) in PUBLISHED_FASHION.items():
        debian = (DEBIAN / name).read_bytes()
        assert debian[:4] == b"\x1f\x8b\x08\x00", f"{DEBIAN / name}: not a plain gzip header"
        header = b"\x1f\x8b\x08\x08" + struct.pack("<I", mtime) + b"\x00\x03"
        files[name] = header + name.removesuffix(".gz").encode() + b"\0" + debian[10:]
    return files


class Server:
    """An HTTP server on loopback, in a thread, serving `files` {name: bytes}; `requests` lists
    the paths asked for. A name in `truncated` is served with its full Content-Length but only
    half its bytes."""

    def __init__(self):
        self.files, self.requests, self.truncated = {}, [], set()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.lstrip("/")
                server.requests.append(name)
                if name not in server.files:
                    self.send_error(404)
                    return
                body = server.files[name]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if name in server.truncated else body)

            def log_message(self, *args):
                pass

        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def server(monkeypatch):
    """A local server that both datasets download from."""
    serving = Server()
    download_from(monkeypatch, serving.url)
    yield serving
    serving.close()


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def test_fashion_mnist_hashes_are_those_of_the_published_files(published_fashion):
    for name, (_, md5) in PUBLISHED_FASHION.items():
        assert hashlib.md5(published_fashion[name]).hexdigest() == md5, name
        assert sha256(published_fashion[name]) == fashion_mnist.GZ_SHA256[name], name


def test_mnist_hash_is_the_one_keras_checks():
    """keras.datasets.mnist's own source, read without importing Keras."""
    keras = importlib.util.find_spec("keras")
    assert keras is not None, "Keras is part of the test extra (tensorflow-cpu)"
    source = Path(keras.submodule_search_locations[0], "src", "datasets", "mnist.py").read_text()
    assert f'"{mnist.NPZ_SHA256}"' in source
    assert f'"{KERAS_URL}"' in source  # where Keras downloads mnist.npz from, and fastnaive


def test_fashion_mnist_downloads_into_the_keras_cache_once(
    tmp_path, monkeypatch, server, published_fashion
):
    server.files.update(published_fashion)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    result = fashion_mnist.load_data()
    cache = tmp_path / "keras" / "datasets" / "fashion-mnist"
    assert sorted(os.listdir(cache)) == sorted(PUBLISHED_FASHION)  # nothing else: no partial file
    for name, data in published_fashion.items():
        assert (cache / name).read_bytes() == data
    expected = [read_idx(DEBIAN / f"{name}.gz") for name in IDX_NAMES.values()]
    assert_loaded(result, dict(zip(IDX_NAMES, expected)))
    requests = list(server.requests)
    assert sorted(requests) == sorted(PUBLISHED_FASHION)
    assert_loaded(fashion_mnist.load_data(), dict(zip(IDX_NAMES, expected)))
    assert server.requests == requests  # the second load read the cache


def test_an_incomplete_keras_cache_downloads_only_what_it_lacks(
    tmp_path, monkeypatch, server, published_fashion
):
    server.files.update(published_fashion)
    cache = tmp_path / "home" / ".keras" / "datasets" / "fashion-mnist"
    cache.mkdir(parents=True)
    kept = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    for name in kept:
        (cache / name).write_bytes(published_fashion[name])
    places = dict(fastnaive.datasets.locations("fashion_mnist"))
    assert places[f"Keras cache {cache}"].startswith("incomplete: no t10k-images-idx3-ubyte")
    (x_train, _), (x_test, _) = fashion_mnist.load_data()
    assert sorted(server.requests) == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)


@pytest.mark.mnist
def test_mnist_downloads_checked_by_its_hash(tmp_path, monkeypatch, server):
    """The real mnist.npz of FASTNAIVE_DATA, served: its bytes are not those of Keras' file
    (the same arrays, compressed anew), so under Keras' hash it is refused and nothing is
    kept; under its own hash it is the cache's mnist.npz."""
    real = Path(REAL_DATA, "mnist.npz").read_bytes()
    server.files["mnist.npz"] = real
    keras_cache = tmp_path / "home" / ".keras" / "datasets"
    with pytest.raises(ValueError, match=f"Expected SHA-256 {mnist.NPZ_SHA256} for {server.url}"):
        mnist.load_data()
    assert os.listdir(keras_cache) == []
    own = {"fastnaive.datasets.mnist": {"downloads": (("mnist.npz", sha256(real)),)}}
    download_from(monkeypatch, server.url, **own)
    result = mnist.load_data()
    assert (keras_cache / "mnist.npz").read_bytes() == real and os.listdir(keras_cache) == [
        "mnist.npz"
    ]
    assert_loaded(result, dict(zip(IDX_NAMES, [a for split in result for a in split])))
    assert fastnaive.datasets.identify(result[0][1], result[1][1]) == "mnist"


CORRUPT = {
    "one-byte-changed": (lambda data: data[:100] + bytes([data[100] ^ 1]) + data[101:], None),
    "cut-short": (lambda data: data, "truncated"),
    "missing": (None, None),
}


@pytest.mark.parametrize("change, serving", CORRUPT.values(), ids=CORRUPT.keys())
def test_a_bad_download_is_refused_and_leaves_nothing(
    tmp_path, server, published_fashion, change, serving
):
    name = "t10k-labels-idx1-ubyte.gz"
    server.files.update(published_fashion)
    if change is None:
        del server.files[name]
    else:
        server.files[name] = change(published_fashion[name])
    if serving == "truncated":
        server.truncated.add(name)
    error = ValueError if serving is None and change is not None else DatasetNotFoundError
    with pytest.raises(error) as info:
        fashion_mnist.load_data()
    assert f"{server.url}{name}" in str(info.value)
    if change is None:
        assert "HTTP 404" in str(info.value)
    cache = tmp_path / "home" / ".keras" / "datasets" / "fashion-mnist"
    assert name not in os.listdir(cache) and not [n for n in os.listdir(cache) if n.startswith(".")]


# Telling MNIST from Fashion-MNIST


@pytest.fixture(scope="module")
def debian_fashion():
    return fashion_mnist.load_data(DEBIAN)


def test_identify_knows_the_published_labels(debian_fashion):
    (_, y_train), (_, y_test) = debian_fashion
    assert fastnaive.datasets.identify(y_train, y_test) == "fashion_mnist"
    assert fastnaive.datasets.identify(y_train[:-1], y_test) is None  # a subset
    assert fastnaive.datasets.identify(y_test, y_train) is None
    data = synthetic()
    assert fastnaive.datasets.identify(data["y_train"], data["y_test"]) is None


@pytest.mark.mnist
def test_identify_knows_the_real_mnist():
    (_, y_train), (_, y_test) = mnist.load_data(REAL_DATA)
    assert fastnaive.datasets.identify(y_train, y_test) == "mnist"


def test_load_tells_the_dataset_a_path_holds(tmp_path):
    clothes = fastnaive.datasets.load(path=DEBIAN)
    assert (clothes.name, clothes.title, clothes.place) == (
        "fashion_mnist",
        "Fashion-MNIST",
        "path",
    )
    assert clothes.location == str(DEBIAN) and clothes.published
    assert clothes.train[0].shape == (60000, 28, 28)
    by_name = fastnaive.datasets.load(
        path=write_npz(tmp_path / "a" / "fashion_mnist.npz", synthetic())
    )
    assert (by_name.name, by_name.published) == ("fashion_mnist", False)
    folder = write_npz(tmp_path / "b" / "mnist.npz", synthetic()).parent
    assert fastnaive.datasets.load(path=folder).location == str(folder / "mnist.npz")
    with pytest.raises(DatasetIdentityError, match="labels are neither's") as info:
        fastnaive.datasets.load(path=write_idx_folder(tmp_path / "c", synthetic()))
    assert info.value.choices == ("mnist", "fashion_mnist")
    write_npz(tmp_path / "b" / "fashion_mnist.npz", synthetic())
    with pytest.raises(DatasetIdentityError, match="to hold one dataset"):
        fastnaive.datasets.load(path=folder)


def test_load_refuses_the_other_published_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTNAIVE_DATA", str(DEBIAN))  # IDX files: MNIST's place in it
    with pytest.raises(DatasetIdentityError, match="Expected MNIST from FASTNAIVE_DATA=") as info:
        fastnaive.datasets.load("mnist")
    assert "the published Fashion-MNIST, by its labels" in str(info.value)
    assert info.value.choices == ("fashion_mnist",)
