"""Saving and loading models: round trips, rejected files, and atomic replacement.

A load copies the stored arrays into the new model's weights, so a round trip
must return every weight bit for bit, and then the same predictions.
"""

import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
from helpers import deflated, model_members, npy_bytes, npy_header, random_model, write_zip

import fastnaive
from fastnaive import load_model
from fastnaive.saving import read_metadata, save_model

# (layer sizes, last activation) of relu MLPs
ARCHITECTURES = {
    "784-16-10-softmax": ((784, 16, 10), "softmax"),
    "20-8-6-3-linear": ((20, 8, 6, 3), None),
    "5-4-3-linear": ((5, 4, 3), None),
}
TEMP_FILE = re.compile(r"\.fastnaive-.*\.npz\.tmp")


def model_of(architecture, dtype="float32", seed=0):
    return random_model(*ARCHITECTURES[architecture], dtype, seed)


def assert_same_model(loaded, model):
    """Same architecture and dtype, and bit-identical weights: loading copies them."""
    assert repr(loaded) == repr(model)
    for actual, expected in zip(loaded.weights, model.weights, strict=True):
        assert actual.dtype == expected.dtype
        np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_round_trip_keeps_weights_and_predictions(tmp_path, dtype, architecture):
    model = model_of(architecture, dtype)
    save_model(model, tmp_path / "model.npz")
    loaded = load_model(tmp_path / "model.npz")
    assert_same_model(loaded, model)
    x = np.random.default_rng(1).random((9, model.input_size)).astype(dtype)
    np.testing.assert_array_equal(loaded(x), model(x))  # exact: the same computation, same bits


def test_model_save_and_fastnaive_load_model_with_str_paths(tmp_path):
    model = model_of("784-16-10-softmax")
    model.save(str(tmp_path / "model.npz"))
    assert_same_model(fastnaive.load_model(str(tmp_path / "model.npz")), model)


def test_loaded_model_trains_without_touching_the_original(tmp_path):
    model = model_of("20-8-6-3-linear")
    model.save(tmp_path / "model.npz")
    loaded = load_model(tmp_path / "model.npz")
    before = model.get_weights()
    x = np.random.default_rng(2).random((12, 20))
    fastnaive.fit(loaded, x, np.arange(12) % 3, epochs=1, batch_size=4, verbose=0)
    assert not np.array_equal(loaded.weights[0], before[0])
    for weight, old in zip(model.weights, before):
        np.testing.assert_array_equal(weight, old)  # exact: untouched


def test_save_replaces_an_existing_file(tmp_path):
    path = tmp_path / "model.npz"
    model_of("784-16-10-softmax").save(path)
    second = model_of("5-4-3-linear", "float64", seed=3)
    second.save(path)
    assert_same_model(load_model(path), second)
    assert os.listdir(tmp_path) == ["model.npz"]


def test_saved_file_has_the_permissions_of_a_new_file(tmp_path):
    umask = os.umask(0o022)
    try:
        model_of("5-4-3-linear").save(tmp_path / "model.npz")
    finally:
        os.umask(umask)
    assert os.stat(tmp_path / "model.npz").st_mode & 0o777 == 0o644


def test_save_into_a_missing_folder_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        model_of("5-4-3-linear").save(tmp_path / "missing" / "model.npz")
    assert os.listdir(tmp_path) == []


def test_save_rejects_a_non_model(tmp_path):
    with pytest.raises(TypeError, match="Expected model to be a NaiveSequential. Received: list"):
        save_model([np.zeros(3)], tmp_path / "model.npz")


def test_loading_a_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_model(tmp_path / "missing.npz")


# Metadata: what the model was trained on

METADATA = {"dataset": "fashion_mnist", "input_scaling": "x / 255", "epochs": 3, "note": None}


def test_metadata_round_trips_beside_an_unchanged_model(tmp_path):
    model = model_of("784-16-10-softmax")
    save_model(model, tmp_path / "with.npz", metadata=METADATA)
    model.save(tmp_path / "without.npz")
    assert read_metadata(tmp_path / "with.npz") == METADATA
    assert read_metadata(tmp_path / "without.npz") == {}
    assert_same_model(load_model(tmp_path / "with.npz"), model)
    with np.load(tmp_path / "with.npz") as with_, np.load(tmp_path / "without.npz") as without:
        # The same arrays under the same format version: only the architecture's JSON gains
        # "metadata", which a reader of version 2 that does not know it leaves alone.
        assert with_.files == without.files and int(with_["fastnaive_format"]) == 2
        for key in without.files:
            if key != "architecture":
                np.testing.assert_array_equal(with_[key], without[key])
        architecture = json.loads(str(with_["architecture"]))
        assert architecture == {**json.loads(str(without["architecture"])), "metadata": METADATA}


def test_a_version_1_file_has_no_metadata(tmp_path):
    model = model_of("5-4-3-linear")
    arrays = {"fastnaive_format": np.array(1)}
    layers = [
        {"input_size": layer.input_size, "output_size": layer.output_size, "activation": None}
        for layer in model.dense_layers
    ]
    layers[0]["activation"] = "relu"
    arrays["architecture"] = np.array(json.dumps({"dtype": "float32", "layers": layers}))
    for i, layer in enumerate(model.dense_layers):
        arrays[f"W{i}"], arrays[f"b{i}"] = layer.W, layer.b
    np.savez(tmp_path / "v1.npz", **arrays)
    assert read_metadata(tmp_path / "v1.npz") == {}
    assert_same_model(load_model(tmp_path / "v1.npz"), model)


@pytest.mark.parametrize(
    "metadata, error",
    [
        ({"accuracy": float("nan")}, ValueError),
        ({"dataset": ["mnist"]}, ValueError),
        ({1: "mnist"}, ValueError),
        ([("dataset", "mnist")], TypeError),
    ],
    ids=["nan", "list-value", "int-key", "not-a-dict"],
)
def test_metadata_that_is_not_plain_json_scalars_is_refused(tmp_path, metadata, error):
    with pytest.raises(error, match=r"^Expected metadata"):
        save_model(model_of("5-4-3-linear"), tmp_path / "m.npz", metadata=metadata)
    assert os.listdir(tmp_path) == []


# Files that are not fastnaive models


def stored_arrays(tmp_path):
    """The arrays of a saved 5-4-3 model, as a dict to alter and write back."""
    model_of("5-4-3-linear").save(tmp_path / "good.npz")
    with np.load(tmp_path / "good.npz") as data:
        return dict(data)


def with_changes(**changes):
    """A writer of the good arrays with `changes` (None deletes a key) saved by np.savez."""

    def write(tmp_path, path):
        arrays = {**stored_arrays(tmp_path), **changes}
        np.savez(path, **{key: value for key, value in arrays.items() if value is not None})

    return write


def with_architecture(edit):
    """A writer of the good arrays whose architecture JSON is edit(architecture dict)."""

    def write(tmp_path, path):
        arrays = stored_arrays(tmp_path)
        architecture = edit(json.loads(str(arrays["architecture"])))
        arrays["architecture"] = np.array(json.dumps(architecture))
        np.savez(path, **arrays)

    return write


def with_bytes(edit):
    """A writer of edit(the good file's bytes)."""

    def write(tmp_path, path):
        stored_arrays(tmp_path)
        path.write_bytes(edit((tmp_path / "good.npz").read_bytes()))

    return write


def flip_byte_of_W0(data):
    """Flip one byte inside the stored W0's values, which zip's CRC-32 protects."""
    start = data.index(b"W0.npy") + 6 + 128  # past the member's name and .npy header
    return data[: start + 40] + bytes([data[start + 40] ^ 0xFF]) + data[start + 41 :]


def replace_layer(index, **fields):
    def edit(architecture):
        architecture["layers"][index].update(fields)
        return architecture

    return edit


def write_npy(tmp_path, path):
    with open(path, "wb") as f:
        np.save(f, np.zeros(3))


def with_members(n_in, n_out, **members):
    """A writer of a one-layer model file n_in -> n_out whose members are replaced by
    `members` {name: bytes, or (deflate, crc, size)} (written by helpers.write_zip)."""

    def write(tmp_path, path):
        write_zip(path, model_members(n_in, n_out, **members))

    return write


def bz2_member(tmp_path, path):
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_BZIP2) as archive:
        for name, data in model_members(
            5, 4, **{"W0.npy": npy_bytes(np.zeros((5, 4), "f4"))}
        ).items():
            archive.writestr(name, data)


BAD_FILES = {
    "truncated-to-half": with_bytes(lambda data: data[: len(data) // 2]),
    "truncated-by-one-byte": with_bytes(lambda data: data[:-1]),
    "empty": with_bytes(lambda data: b""),
    "flipped-byte-in-W0": with_bytes(flip_byte_of_W0),
    "object-array": with_changes(W0=np.array([{"W": 1}], dtype=object)),
    "npz-without-the-keys": with_changes(fastnaive_format=None, architecture=None),
    "text-file": with_bytes(lambda data: b"W0,b0\n1,2\n"),
    "npy-file": write_npy,
    "format-version-3": with_changes(fastnaive_format=np.array(3)),
    "format-version-0": with_changes(fastnaive_format=np.array(0)),
    "format-version-float": with_changes(fastnaive_format=np.array(1.0)),
    "format-version-str": with_changes(fastnaive_format=np.array("1")),
    "format-version-vector": with_changes(fastnaive_format=np.array([1])),
    "architecture-not-json": with_changes(architecture=np.array("layers: 5-4-3")),
    "architecture-without-layers": with_architecture(lambda a: {"dtype": a["dtype"]}),
    "no-layers": with_architecture(lambda a: {**a, "layers": []}),
    "dtype-float16": with_architecture(lambda a: {**a, "dtype": "float16"}),
    "activation-unknown": with_architecture(replace_layer(0, activation="swish_typo")),
    "sizes-disagree-with-W0": with_architecture(replace_layer(0, output_size=5)),
    "layers-do-not-chain": with_architecture(replace_layer(1, input_size=5)),
    "negative-size": with_architecture(replace_layer(0, input_size=-5)),
    "huge-sizes-disagree-with-W0": with_architecture(
        replace_layer(0, input_size=10**6, output_size=10**6)
    ),
    "W0-transposed": with_changes(W0=np.zeros((4, 5), np.float32)),
    "W0-integer": with_changes(W0=np.zeros((5, 4), np.int32)),
    "b1-missing": with_changes(b1=None),
    "extra-key": with_changes(W2=np.zeros((3, 3), np.float32)),
    "metadata-a-list": with_architecture(lambda a: {**a, "metadata": ["mnist"]}),
    "metadata-nested": with_architecture(lambda a: {**a, "metadata": {"dataset": {"a": 1}}}),
    # Hostile files: refused from their names and headers, before their data is read.
    "W0-header-declaring-2**42-bytes": with_members(
        2**20, 2**20, **{"W0.npy": npy_header((2**20, 2**20), "<f4")}
    ),
    "W0-inflating-to-64-MiB": with_members(
        2**22, 4, **{"W0.npy": deflated(npy_header((2**22, 4), "<f4"), 2**26)}
    ),
    "W0-inflating-past-its-header": with_members(
        5, 4, **{"W0.npy": deflated(npy_bytes(np.zeros((5, 4), "f4")), 2**26)}
    ),
    "W0-shorter-than-its-header": with_members(5, 4, **{"W0.npy": npy_header((5, 4), "<f4")}),
    "W0-negative-shape": with_members(
        5, 4, **{"W0.npy": npy_header((5, 4), "<f4").replace(b"(5, 4)", b"(-5, 4)")}
    ),
    "architecture-nested-100000-deep": with_members(
        5, 4, **{"architecture.npy": npy_bytes(np.array("[" * 100_000 + "]" * 100_000))}
    ),
    "architecture-an-array": with_members(5, 4, **{"architecture.npy": npy_bytes(np.zeros(3))}),
    "member-not-npy": with_members(
        5, 4, **{"W0.npy": npy_bytes(np.zeros((5, 4), "f4")), "notes.txt": b"hi"}
    ),
    "member-bzip2-compressed": bz2_member,
}


@pytest.mark.parametrize("write", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_bad_file_raises_value_error_naming_it(tmp_path, write):
    path = tmp_path / "bad.npz"
    write(tmp_path, path)
    with pytest.raises(
        ValueError,
        match=r"^Expected a fastnaive model file\. Received: " + re.escape(repr(str(path))),
    ):
        load_model(path)


class MakesFolderWhenUnpickled:
    def __init__(self, folder):
        self.folder = folder

    def __reduce__(self):
        return os.mkdir, (self.folder,)


def test_pickled_object_is_never_unpickled(tmp_path):
    marker = str(tmp_path / "unpickled")
    payload = np.empty(1, dtype=object)
    payload[0] = MakesFolderWhenUnpickled(marker)
    with_changes(architecture=payload)(tmp_path, tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="bad.npz"):
        load_model(tmp_path / "bad.npz")
    assert not os.path.exists(marker)


def test_every_flipped_byte_raises_or_loads_the_same_model(tmp_path):
    """A flip either is caught (ValueError naming the file) or hit bytes no reader uses."""
    model = model_of("5-4-3-linear")
    path = tmp_path / "model.npz"
    model.save(path)
    data = path.read_bytes()
    escaped = []
    with open(path, "r+b") as f:
        for position, byte in enumerate(data):
            os.pwrite(f.fileno(), bytes([byte ^ 0xFF]), position)
            try:
                assert_same_model(load_model(path), model)
            except ValueError as error:
                assert str(path) in str(error)
            except Exception as error:  # noqa: BLE001 - collected and reported below
                escaped.append((position, type(error).__name__))
            os.pwrite(f.fileno(), bytes([byte]), position)
    assert escaped == []


# A process killed while saving

# Loads the model at argv[1], then saves it onto argv[2] again and again.
SAVE_FOREVER = """
import sys
import fastnaive
model = fastnaive.load_model(sys.argv[1])
print("saving", flush=True)
while True:
    model.save(sys.argv[2])
"""
# Seconds from the writer's first save to each kill: the first lands in that save, the
# others at random points of the saves, which take about 0.1 s each.
KILL_DELAYS = [0.0, *np.random.default_rng(0).uniform(0.0, 0.3, 4)]


def kill_while_saving(source, path, seconds):
    writer = subprocess.Popen(
        [sys.executable, "-c", SAVE_FOREVER, str(source), str(path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout.readline() == "saving\n"
    try:
        writer.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.kill(writer.pid, signal.SIGKILL)
    assert writer.wait() == -signal.SIGKILL


def test_killed_save_leaves_a_loadable_file(tmp_path):
    """After each SIGKILL the path holds the previous model or a whole new one.

    A writer saves a 784-2048-2048-10 float64 model (46 MB) in a loop onto a
    path that holds a small model again before each kill. The only other files
    in the folder are the killed writers' temporary files, at most one per
    kill, named .fastnaive-*.npz.tmp; saving is nearly all the writer does, so
    at least one kill lands mid-write and leaves one.
    """
    (tmp_path / "big").mkdir()
    old = model_of("5-4-3-linear")
    new = random_model((784, 2048, 2048, 10), "softmax", "float64", seed=1)
    new.save(tmp_path / "big" / "model.npz")
    path = tmp_path / "model.npz"
    leftovers = set()
    for seconds in KILL_DELAYS:
        old.save(path)
        kill_while_saving(tmp_path / "big" / "model.npz", path, seconds)
        loaded = load_model(path)
        assert_same_model(loaded, old if loaded.input_size == old.input_size else new)
        others = set(os.listdir(tmp_path)) - {"model.npz", "big"}
        assert all(TEMP_FILE.fullmatch(name) for name in others), others
        assert len(others - leftovers) <= 1
        leftovers = others
    assert leftovers
