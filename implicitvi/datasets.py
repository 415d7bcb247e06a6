r"""Image data sets for the VAE/WAE examples and benchmarks: MNIST from a file the user names, and
scikit-learn's 8×8 digits as the offline default.

A data set is a :class:`Dataset` of three :class:`Split`\ s (``train``, ``valid``, ``test``), each
holding ``images``, float32 numpy arrays of shape ``(n, pixels)`` with values in ``[0, 1]``, and
``labels``, int32 of shape ``(n,)``. Both are ``NamedTuple``\ s, hence pytrees.

:func:`load_mnist` reads either of two MNIST formats:

* ``mnist.pkl.gz``: a gzip'd pickle of ``(train, valid, test)``, each an ``(images, labels)`` pair
  with images of shape ``(n, 784)`` (50,000 / 10,000 / 10,000 rows in the classic file, written by
  Python 2 and therefore read with the latin-1 encoding);
* the four IDX files of the original distribution, ``train-images-idx3-ubyte``,
  ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each
  optionally gzip'd (``.gz``). Each is a big-endian header — magic 2051 and ``n, 28, 28`` for
  images, magic 2049 and ``n`` for labels — followed by ``uint8`` values; pixels are scaled by
  ``1/255``. The last ``min(10000, n // 6)`` training images become the validation split (the usual
  50,000 / 10,000 split of the 60,000), the t10k files the test split.

Safety: unpickling can run arbitrary code, so the pickle is read by an unpickler that resolves only
the globals numpy arrays are made of (``ndarray``, ``dtype``, the array-rebuilding helpers of
``numpy.core``/``numpy._core``, and a latin-1-only ``_codecs.encode``, with which Python 3 writes
bytes at pickle protocol 2); any other global raises :class:`UnsafePickleError` before it is
called, and nothing is loaded.

:func:`binarize` draws a dynamically binarized copy of a batch; minibatches are drawn by
:func:`implicitvi.infer.run_minibatch`.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import struct
import zlib
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from implicitvi._checks import (
    as_float_array,
    check_finite,
    check_in_range,
    check_int_at_least,
    check_key,
    is_concrete,
)

try:  # numpy >= 2 moved numpy.core to numpy._core; pickles name either module
    from numpy._core.multiarray import _reconstruct
    from numpy._core.numeric import _frombuffer
except ImportError:
    from numpy.core.multiarray import _reconstruct
    from numpy.core.numeric import _frombuffer

__all__ = [
    "Dataset",
    "Split",
    "UnsafePickleError",
    "binarize",
    "load_digits",
    "load_mnist",
]

PICKLE_NAME = "mnist.pkl.gz"
IDX_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
SIDE = 28
MAX_VALID = 10_000
_CORRUPT = (EOFError, gzip.BadGzipFile, zlib.error)


class Split(NamedTuple):
    """One split: ``images`` float32 ``(n, pixels)`` in ``[0, 1]``, ``labels`` int32 ``(n,)``."""

    images: np.ndarray
    labels: np.ndarray


class Dataset(NamedTuple):
    """The ``train``, ``valid`` and ``test`` :class:`Split`\\ s of one data set."""

    train: Split
    valid: Split
    test: Split


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A pickle asked for a global other than the numpy array machinery; nothing was loaded."""


def _latin1_encode(text: str, encoding: str) -> bytes:
    # Python 3 writes bytes at pickle protocol 2 as _codecs.encode(text, "latin1"); admitting
    # _codecs.encode itself would let a file pick any codec.
    if encoding != "latin1":
        raise UnsafePickleError(f"refusing to decode array data with codec {encoding!r}")
    return text.encode("latin1")


_SAFE_GLOBALS = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("_codecs", "encode"): _latin1_encode,
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals in ``_SAFE_GLOBALS``."""

    def __init__(self, file, path: Path):
        super().__init__(file, encoding="latin1")
        self._path = path

    def find_class(self, module: str, name: str):
        try:
            return _SAFE_GLOBALS[module, name]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load {module}.{name} from {self._path}: only numpy arrays, tuples "
                "and lists are allowed"
            ) from None


def load_mnist(path: str | os.PathLike) -> Dataset:
    """Load MNIST from an ``mnist.pkl.gz`` file, or a directory holding one or the IDX files.

    In a directory, ``mnist.pkl.gz`` is used if present; otherwise all four IDX files are needed
    (an uncompressed file is preferred over its ``.gz``). See the module docstring for the formats
    and the validation split of the IDX training set.

    Returns:
        a :class:`Dataset` with images of shape ``(n, 784)``, float32 in ``[0, 1]``, and labels of
        shape ``(n,)``, int32 in ``0..9``.

    Raises:
        TypeError: if ``path`` is not a ``str`` or ``os.PathLike``.
        FileNotFoundError: if ``path`` does not exist or a directory lacks the expected files.
        UnsafePickleError: (a ``ValueError``) if the pickle refers to anything but numpy arrays.
        ValueError: if a file is truncated or not in the expected layout, or holds pixels outside
            ``[0, 1]``, NaN, or labels outside ``0..9``.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path).expanduser()
    if path.is_dir():
        return _load_directory(path)
    if path.is_file():
        return _load_pickle(path)
    raise FileNotFoundError(
        f"no MNIST data at {path}: expected an {PICKLE_NAME} file, or a directory holding "
        f"{PICKLE_NAME} or the IDX files {', '.join(IDX_NAMES)} (each optionally .gz)"
    )


def _load_directory(directory: Path) -> Dataset:
    if (directory / PICKLE_NAME).is_file():
        return _load_pickle(directory / PICKLE_NAME)
    found = {name: _find_idx(directory, name) for name in IDX_NAMES}
    missing = [name for name, file in found.items() if file is None]
    if missing:
        raise FileNotFoundError(
            f"directory {directory} holds neither {PICKLE_NAME} nor all four IDX files; missing "
            f"{', '.join(missing)} (each optionally .gz)"
        )
    train_images, train_labels, test_images, test_labels = found.values()
    train = _idx_split(train_images, train_labels)
    n_valid = min(MAX_VALID, len(train.labels) // 6)
    if n_valid == 0:
        raise ValueError(
            f"{train_images} holds {len(train.labels)} images; at least 6 are needed to split off "
            "a validation set"
        )
    n_train = len(train.labels) - n_valid
    return Dataset(
        Split(train.images[:n_train], train.labels[:n_train]),
        Split(train.images[n_train:], train.labels[n_train:]),
        _idx_split(test_images, test_labels),
    )


def _find_idx(directory: Path, name: str) -> Path | None:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _idx_split(images_path: Path, labels_path: Path) -> Split:
    images = _read_idx(images_path, IMAGES_MAGIC, "images")
    labels = _read_idx(labels_path, LABELS_MAGIC, "labels")
    if images.shape[1:] != (SIDE, SIDE):
        raise ValueError(
            f"{images_path} holds images of shape {images.shape[1:]}, expected ({SIDE}, {SIDE})"
        )
    return _checked_split(
        images.reshape(len(images), SIDE * SIDE).astype(np.float32) / 255,
        labels,
        f"{images_path} and {labels_path}",
    )


def _read_idx(path: Path, magic: int, kind: str) -> np.ndarray:
    """Parse an unsigned-byte IDX file; ``magic`` encodes the element type (0x08) and ``ndim``."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as file:
            data = file.read()
    except _CORRUPT as err:
        raise ValueError(f"{path} is truncated or not a valid gzip file ({err})") from err
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path} is truncated: {len(data)} bytes, shorter than an IDX header")
    (found,) = struct.unpack(">i", data[:4])
    if found != magic:
        raise ValueError(
            f"{path} is not an IDX {kind} file: magic number {found}, expected {magic}"
        )
    shape = struct.unpack(f">{ndim}I", data[4:header])
    if len(data) - header != math.prod(shape):
        raise ValueError(
            f"{path}: the header gives shape {shape} ({math.prod(shape)} bytes) but "
            f"{len(data) - header} bytes follow it; the file is truncated or not in the IDX layout"
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def _load_pickle(path: Path) -> Dataset:
    try:
        with gzip.open(path, "rb") as file:
            content = _ArrayUnpickler(file, path).load()
    except UnsafePickleError:
        raise
    except (*_CORRUPT, pickle.UnpicklingError, ValueError, TypeError) as err:
        raise ValueError(
            f"{path} is truncated or not a gzip'd pickle in the {PICKLE_NAME} layout ({err}); "
            "for IDX files, pass the directory that holds them"
        ) from err
    if not (
        isinstance(content, (tuple, list))
        and len(content) == 3
        and all(isinstance(split, (tuple, list)) and len(split) == 2 for split in content)
    ):
        raise ValueError(
            f"{path} is not in the {PICKLE_NAME} layout: expected a tuple (train, valid, test) of "
            f"(images, labels) pairs, got {_describe(content)}"
        )
    return Dataset(
        *(
            _checked_split(images, labels, f"{path} ({name} split)")
            for name, (images, labels) in zip(Dataset._fields, content)
        )
    )


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"a {value.dtype} array of shape {value.shape}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} items"
    return f"a {type(value).__name__}"


def _checked_split(images: Any, labels: Any, where: str) -> Split:
    """Validate one MNIST split read from ``where``; return float32 images and int32 labels."""
    pixels = SIDE * SIDE
    if not (
        isinstance(images, np.ndarray)
        and images.ndim == 2
        and images.shape[1] == pixels
        and np.issubdtype(images.dtype, np.floating)
    ):
        raise ValueError(
            f"{where}: images must be a float array of shape (n, {pixels}), got {_describe(images)}"
        )
    n = images.shape[0]
    if not (
        isinstance(labels, np.ndarray)
        and labels.shape == (n,)
        and np.issubdtype(labels.dtype, np.integer)
    ):
        raise ValueError(
            f"{where}: labels must be an integer array of shape ({n},) to match the images, got "
            f"{_describe(labels)}"
        )
    if n == 0:
        raise ValueError(f"{where}: the split is empty")
    if not np.all(np.isfinite(images)):
        raise ValueError(f"{where}: images contain NaN or inf values")
    low, high = images.min(), images.max()
    if low < 0 or high > 1:
        raise ValueError(f"{where}: pixel values must lie in [0, 1], found [{low}, {high}]")
    if labels.min() < 0 or labels.max() > 9:
        raise ValueError(
            f"{where}: labels must be digits 0..9, found [{labels.min()}, {labels.max()}]"
        )
    return Split(images.astype(np.float32, copy=False), labels.astype(np.int32))


def load_digits(
    valid_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0
) -> Dataset:
    """scikit-learn's 8×8 handwritten digits (1,797 images), split at random into a Dataset.

    Pixel counts ``0..16`` are divided by 16, so images are float32 of shape ``(n, 64)`` in
    ``[0, 1]``; labels are int32 in ``0..9``. The rows are permuted by
    ``np.random.default_rng(seed)``; the last ``floor(test_fraction * 1797)`` go to ``test``, the
    ``floor(valid_fraction * 1797)`` before them to ``valid``, and the rest to ``train``. The data
    ship with scikit-learn, so nothing is downloaded.

    Raises:
        ImportError: if scikit-learn (an optional dependency) is not installed.
        TypeError: if a fraction is not a number or ``seed`` is not an int.
        ValueError: if a fraction is outside ``[0, 1)``, they sum to 1 or more, or ``seed < 0``.
    """
    for value, name in ((valid_fraction, "valid_fraction"), (test_fraction, "test_fraction")):
        check_in_range(value, name, 0.0, 1.0, high_open=True)
    if valid_fraction + test_fraction >= 1:
        raise ValueError(
            f"valid_fraction + test_fraction must be < 1 to leave training data, got "
            f"{valid_fraction} + {test_fraction}"
        )
    check_int_at_least(seed, "seed", 0)
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as err:
        raise ImportError(
            "load_digits needs scikit-learn, an optional dependency: pip install scikit-learn"
        ) from err
    digits = sklearn_digits()
    images = (digits.data / 16).astype(np.float32)
    labels = digits.target.astype(np.int32)
    n = len(labels)
    n_valid, n_test = int(valid_fraction * n), int(test_fraction * n)
    order = np.random.default_rng(seed).permutation(n)
    parts = np.split(order, [n - n_valid - n_test, n - n_test])
    return Dataset(*(Split(images[index], labels[index]) for index in parts))


def binarize(key: jax.Array, images: jax.Array) -> jax.Array:
    """Dynamic binarization: an independent ``Bernoulli(images)`` draw for every pixel.

    Args:
        key: a PRNG key.
        images: pixel intensities in ``[0, 1]``, any shape, floating dtype.

    Returns:
        an array of ``images``' shape and dtype with values in ``{0, 1}``.

    Raises:
        TypeError: if ``images`` is not a floating array or ``key`` is not a PRNG key.
        ValueError: if concrete ``images`` hold NaN, inf or values outside ``[0, 1]`` (the checks
            are skipped under ``jit``, where values are not known).
    """
    check_key(key)
    images = as_float_array(images, "images")
    if is_concrete(images):
        check_finite(images, "images")
        host = np.asarray(images)
        if host.size and (host.min() < 0 or host.max() > 1):
            raise ValueError(
                f"images must lie in [0, 1] to be Bernoulli probabilities, found "
                f"[{host.min()}, {host.max()}]"
            )
    return jax.random.bernoulli(key, images).astype(images.dtype)
