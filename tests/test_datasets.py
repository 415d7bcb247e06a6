import builtins
import codecs
import gzip
import os
import pickle
import shlex
import struct
import sys

import jax
import numpy as np
import pytest

from implicitvi import datasets
from implicitvi.datasets import Dataset, Split

IDX_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def fake_splits(seed=0, rows=(30, 10, 10)):
    rng = np.random.default_rng(seed)
    return tuple(
        (rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n, dtype=np.int64))
        for n in rows
    )


def write_pickle(path, content, protocol=2):
    with gzip.open(path, "wb") as file:
        pickle.dump(content, file, protocol=protocol)
    return path


def py2_pickle(splits) -> bytes:
    """The opcodes Python 2 wrote for mnist.pkl.gz: numpy.core globals, arrays as byte strings."""

    def array(a):
        shape = b"".join(b"J" + struct.pack("<i", size) for size in a.shape)
        return (
            b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R"
            b"(K\x01(" + shape + b"tcnumpy\ndtype\nU\x02" + a.dtype.str[1:].encode()
            + b"K\x00K\x01\x87R(K\x03U\x01<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
            b"\x89T" + struct.pack("<i", a.nbytes) + a.tobytes() + b"tb"
        )

    body = b"".join(array(images) + array(labels) + b"\x86" for images, labels in splits)
    return b"\x80\x02" + body + b"\x87."


def write_idx(path, array, magic):
    data = struct.pack(f">i{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()
    with (gzip.open if path.suffix == ".gz" else open)(path, "wb") as file:
        file.write(data)


def fake_idx(directory, n_train=24, n_test=7, gzipped=(True, False, False, True), seed=0):
    """Write the four IDX files (images magic 2051, labels 2049); return the raw arrays."""
    rng = np.random.default_rng(seed)
    arrays = (
        rng.integers(0, 256, (n_train, 28, 28)),
        rng.integers(0, 10, n_train),
        rng.integers(0, 256, (n_test, 28, 28)),
        rng.integers(0, 10, n_test),
    )
    for name, array, magic, gz in zip(IDX_NAMES, arrays, (2051, 2049) * 2, gzipped):
        write_idx(directory / (name + ".gz" * gz), array, magic)
    return arrays


def assert_same(split, images, labels):
    assert split.images.dtype == np.float32 and split.labels.dtype == np.int32
    np.testing.assert_array_equal(split.images, images)
    np.testing.assert_array_equal(split.labels, labels)


# --- mnist.pkl.gz ------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("container", [tuple, list])
def test_pickle_round_trip(tmp_path, protocol, container):
    splits = fake_splits()
    path = write_pickle(tmp_path / "data.pkl.gz", container(splits), protocol)
    data = datasets.load_mnist(path)
    assert isinstance(data, Dataset) and isinstance(data.train, Split)
    for split, (images, labels) in zip(data, splits):
        assert_same(split, images, labels)


def test_python2_pickle_layout_loads(tmp_path):
    splits = fake_splits(seed=1, rows=(6, 3, 2))
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(py2_pickle(splits)))
    for split, (images, labels) in zip(datasets.load_mnist(str(path)), splits):
        assert_same(split, images, labels)


def test_cache_directory_with_pickle(tmp_path):
    splits = fake_splits()
    write_pickle(tmp_path / "mnist.pkl.gz", splits)
    fake_idx(tmp_path, seed=3)  # the pickle takes precedence over IDX files beside it
    for split, (images, labels) in zip(datasets.load_mnist(tmp_path), splits):
        assert_same(split, images, labels)


class Gadget:
    """Unpickling calls ``function(*args)``: what a tampered data file would do."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


@pytest.mark.parametrize("attack", ["os.system", "builtins.exec", "numpy.save"])
def test_code_executing_pickle_is_refused(tmp_path, attack):
    marker = tmp_path / "marker.npy"
    gadget = {
        "os.system": Gadget(os.system, f"touch {shlex.quote(str(marker))}"),
        "builtins.exec": Gadget(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
        "numpy.save": Gadget(np.save, str(marker), np.zeros(1)),
    }[attack]
    (train, valid, (test_images, _)) = fake_splits()
    path = write_pickle(tmp_path / "mnist.pkl.gz", (train, valid, (test_images, gadget)))
    with pytest.raises(datasets.UnsafePickleError, match="refusing to load .* only numpy arrays"):
        datasets.load_mnist(path)
    assert not marker.exists()
    with pytest.raises(ValueError):  # UnsafePickleError is a ValueError too
        datasets.load_mnist(path)


def test_pickle_may_not_choose_a_codec(tmp_path):
    path = write_pickle(tmp_path / "mnist.pkl.gz", Gadget(codecs.encode, "abc", "rot13"))
    with pytest.raises(datasets.UnsafePickleError, match="codec 'rot13'"):
        datasets.load_mnist(path)


def test_truncated_pickle(tmp_path):
    path = write_pickle(tmp_path / "mnist.pkl.gz", fake_splits())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated"):
        datasets.load_mnist(path)


@pytest.mark.parametrize(
    "payload",
    [pickle.dumps(fake_splits()), gzip.compress(b"not a pickle at all")],
    ids=["no-gzip", "no-pickle"],
)
def test_file_that_is_not_a_gzipped_pickle(tmp_path, payload):
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(payload)
    with pytest.raises(ValueError, match="not a gzip'd pickle"):
        datasets.load_mnist(path)


def _with(index, images=None, labels=None):
    """Fake splits whose split ``index`` has its images or labels passed through a function."""
    splits = list(fake_splits())
    old_images, old_labels = splits[index]
    splits[index] = (
        images(old_images) if images else old_images,
        labels(old_labels) if labels else old_labels,
    )
    return tuple(splits)


def _set(value):
    def change(images):
        images = images.copy()
        images[3, 5] = value
        return images

    return change


BAD_LAYOUTS = {
    "two-splits": (fake_splits()[:2], "expected a tuple \\(train, valid, test\\)"),
    "triple-split": (tuple(s + (s[1],) for s in fake_splits()), "of \\(images, labels\\) pairs"),
    "dict": ({"train": fake_splits()[0]}, "got a dict"),
    "783-columns": (_with(1, images=lambda x: x[:, :783]), "valid split.*shape \\(n, 784\\)"),
    "1-d-images": (_with(0, images=lambda x: x.ravel()), "shape \\(n, 784\\)"),
    "uint8-images": (_with(0, images=lambda x: (x * 255).astype(np.uint8)), "float array"),
    "float-labels": (_with(2, labels=lambda y: y.astype(float)), "test split.*integer array"),
    "row-mismatch": (_with(0, labels=lambda y: y[:-1]), "shape \\(30,\\) to match"),
    "label-10": (_with(0, labels=lambda y: y + 1), "digits 0..9"),
    "empty": (_with(2, images=lambda x: x[:0], labels=lambda y: y[:0]), "empty"),
    "above-1": (_with(0, images=_set(1.5)), "\\[0, 1\\]"),
    "below-0": (_with(1, images=_set(-0.25)), "\\[0, 1\\]"),
    "nan": (_with(0, images=_set(np.nan)), "NaN"),
}


@pytest.mark.parametrize("case", BAD_LAYOUTS)
def test_wrong_pickle_layout(tmp_path, case):
    content, message = BAD_LAYOUTS[case]
    path = write_pickle(tmp_path / "mnist.pkl.gz", content)
    with pytest.raises(ValueError, match=message) as error:
        datasets.load_mnist(path)
    assert str(path) in str(error.value)


# --- IDX files ---------------------------------------------------------------------------------


def test_idx_round_trip_and_split_rule(tmp_path):
    train_images, train_labels, test_images, test_labels = fake_idx(tmp_path)
    train_images[0, 0, :3] = (255, 0, 51)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", train_images, 2051)
    data = datasets.load_mnist(tmp_path)
    np.testing.assert_array_equal(data.train.images[0, :3], np.float32([1.0, 0.0, 0.2]))
    flat = train_images.reshape(24, 784) / 255.0
    # 24 training images: the last 24 // 6 = 4 are the validation split.
    assert data.train.images.shape == (20, 784) and data.valid.images.shape == (4, 784)
    np.testing.assert_allclose(data.train.images, flat[:20], rtol=1e-7)
    np.testing.assert_allclose(data.valid.images, flat[20:], rtol=1e-7)
    np.testing.assert_allclose(data.test.images, test_images.reshape(7, 784) / 255.0, rtol=1e-7)
    assert_same(data.train, data.train.images, train_labels[:20])
    assert_same(data.valid, data.valid.images, train_labels[20:])
    assert_same(data.test, data.test.images, test_labels)


def test_idx_validation_split_is_capped(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "MAX_VALID", 3)
    fake_idx(tmp_path)
    data = datasets.load_mnist(tmp_path)
    assert len(data.train.labels) == 21 and len(data.valid.labels) == 3


def test_uncompressed_idx_file_is_preferred(tmp_path):
    labels = fake_idx(tmp_path, gzipped=(False,) * 4)[3]
    fake_idx(tmp_path, gzipped=(True,) * 4, seed=9)
    np.testing.assert_array_equal(datasets.load_mnist(tmp_path).test.labels, labels)


def test_too_few_idx_training_images(tmp_path):
    fake_idx(tmp_path, n_train=5)
    with pytest.raises(ValueError, match="5 images; at least 6"):
        datasets.load_mnist(tmp_path)


def _rewrite(directory, name, change):
    path = directory / name
    path.write_bytes(change(path.read_bytes()))


BAD_IDX = {
    "truncated-gzip": ("train-images-idx3-ubyte.gz", lambda b: b[: len(b) // 2], "truncated"),
    "short-payload": ("t10k-images-idx3-ubyte", lambda b: b[:-1], "\\(5488 bytes\\) but 5487"),
    "long-payload": ("t10k-images-idx3-ubyte", lambda b: b + b"\0", "5489 bytes follow"),
    "short-header": ("train-labels-idx1-ubyte", lambda b: b[:6], "shorter than an IDX header"),
    "bad-magic": (
        "train-labels-idx1-ubyte",
        lambda b: struct.pack(">i", 2051) + b[4:],
        "magic number 2051, expected 2049",
    ),
}


@pytest.mark.parametrize("case", BAD_IDX)
def test_bad_idx_files(tmp_path, case):
    fake_idx(tmp_path)
    name, change, message = BAD_IDX[case]
    _rewrite(tmp_path, name, change)
    with pytest.raises(ValueError, match=message):
        datasets.load_mnist(tmp_path)


def test_idx_images_must_be_28_by_28(tmp_path):
    fake_idx(tmp_path)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((7, 28, 27)), 2051)
    with pytest.raises(ValueError, match="shape \\(28, 27\\), expected \\(28, 28\\)"):
        datasets.load_mnist(tmp_path)


def test_idx_label_count_must_match(tmp_path):
    fake_idx(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(6), 2049)
    with pytest.raises(ValueError, match="shape \\(7,\\) to match the images"):
        datasets.load_mnist(tmp_path)


# --- paths -------------------------------------------------------------------------------------


def test_missing_path(tmp_path):
    path = tmp_path / "nowhere" / "mnist.pkl.gz"
    with pytest.raises(FileNotFoundError, match="mnist.pkl.gz.*train-images-idx3-ubyte") as error:
        datasets.load_mnist(path)
    assert str(path) in str(error.value)


def test_directory_without_data(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing " + ", ".join(IDX_NAMES)):
        datasets.load_mnist(tmp_path)


def test_directory_with_some_idx_files(tmp_path):
    fake_idx(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="missing t10k-labels-idx1-ubyte \\(each"):
        datasets.load_mnist(tmp_path)


def test_path_type():
    with pytest.raises(TypeError, match="path must be a str or os.PathLike, got int"):
        datasets.load_mnist(123)


# --- scikit-learn digits -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def sklearn_digits():
    return pytest.importorskip("sklearn.datasets").load_digits()


def _sorted_rows(images, labels):
    rows = np.column_stack([images, labels])
    return rows[np.lexsort(rows.T[::-1])]


def test_digits_match_scikit_learn(sklearn_digits):
    data = datasets.load_digits()
    # 1797 images: floor(0.1 * 1797) = 179 valid, floor(0.2 * 1797) = 359 test.
    assert [len(s.labels) for s in data] == [1259, 179, 359]
    for split in data:
        assert split.images.dtype == np.float32 and split.labels.dtype == np.int32
        assert split.images.shape[1] == 64
        assert 0 <= split.images.min() and split.images.max() <= 1
    images = np.concatenate([s.images for s in data]) * 16
    labels = np.concatenate([s.labels for s in data])
    np.testing.assert_array_equal(
        _sorted_rows(images, labels), _sorted_rows(sklearn_digits.data, sklearn_digits.target)
    )
    assert images.max() == 16


def test_digits_split_is_deterministic(sklearn_digits):
    first, again = datasets.load_digits(), datasets.load_digits()
    other = datasets.load_digits(seed=1)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(first.test.labels, other.test.labels)


def test_digits_without_validation(sklearn_digits):
    data = datasets.load_digits(valid_fraction=0.0, test_fraction=0.5)
    assert data.valid.images.shape == (0, 64)
    assert [len(s.labels) for s in data] == [899, 0, 898]


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"valid_fraction": -0.1}, ValueError, r"valid_fraction must be in \[0, 1\)"),
        ({"test_fraction": 1.0}, ValueError, r"test_fraction must be in \[0, 1\)"),
        ({"valid_fraction": "0.1"}, TypeError, "valid_fraction must be a number"),
        ({"valid_fraction": 0.6, "test_fraction": 0.4}, ValueError, "must be < 1 to leave"),
        ({"seed": 1.5}, TypeError, "seed must be an int"),
        ({"seed": -1}, ValueError, "seed must be >= 0"),
    ],
)
def test_digits_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        datasets.load_digits(**kwargs)


def test_digits_without_scikit_learn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        datasets.load_digits()


# --- binarize ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_binarize_values_shape_and_dtype(dtype):
    images = np.random.default_rng(0).random((3, 4, 5)).astype(dtype)
    draw = datasets.binarize(jax.random.PRNGKey(0), images)
    assert draw.shape == images.shape and draw.dtype == dtype
    assert set(np.unique(np.asarray(draw))) <= {0.0, 1.0}


def test_binarize_is_bernoulli_of_the_pixels():
    images = np.concatenate([[0.0, 1.0], np.random.default_rng(1).random(64)]).astype(np.float32)
    draws = 4000
    keys = jax.random.split(jax.random.PRNGKey(2), draws)
    means = np.asarray(jax.vmap(datasets.binarize, in_axes=(0, None))(keys, images)).mean(0)
    # Each pixel's mean has sd sqrt(p(1-p)/draws) <= 0.5/sqrt(4000) = 0.0079; at 5 sd the chance
    # that any of the 66 pixels fails is below 66 * 6e-7.
    assert np.max(np.abs(means - images)) < 5 * 0.5 / np.sqrt(draws)
    assert means[0] == 0.0 and means[1] == 1.0


def test_binarize_jits():
    images = np.random.default_rng(3).random((5, 64)).astype(np.float32)
    key = jax.random.PRNGKey(4)
    np.testing.assert_array_equal(
        jax.jit(datasets.binarize)(key, images), datasets.binarize(key, images)
    )


@pytest.mark.parametrize(
    "images, error, message",
    [
        (np.ones((2, 3), np.int32), TypeError, "images must be an array of floats"),
        (np.full((2, 3), 1.5), ValueError, "images must lie in \\[0, 1\\]"),
        (np.full((2, 3), -0.5), ValueError, "images must lie in \\[0, 1\\]"),
        (np.full((2, 3), np.nan), ValueError, "images contains NaN"),
    ],
)
def test_binarize_rejects_bad_images(images, error, message):
    with pytest.raises(error, match=message):
        datasets.binarize(jax.random.PRNGKey(0), images)
