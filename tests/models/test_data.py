"""IDX reader/writer, data root precedence, dataset protocols and their error messages."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from models import data
from models.data import (
    DATASETS, DatasetSpec, DataError, SplitSpec, data_root, load_dataset, read_idx, write_idx,
)

SHARED = data_root() / "mnist" / "t10k-images-idx3-ubyte.gz"
needs_shared = pytest.mark.skipif(
    not SHARED.is_file(),
    reason=f"real MNIST test set not found at {SHARED} (set ODE_ROBUSTNESS_DATA=/work/shared/data)",
)


def _idx_bytes(arr: np.ndarray, type_byte: int) -> bytes:
    """Hand-written IDX encoding, independent of write_idx."""
    header = bytes([0, 0, type_byte, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


# --------------------------------------------------------------------------- IDX round trips


@pytest.mark.parametrize("compress", [True, False])
def test_idx_round_trip_uint8_images_and_labels(tmp_path: Path, compress: bool) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=(7,), dtype=np.uint8)
    pi = write_idx(tmp_path / "img.idx", images, compress=compress)
    pl = write_idx(tmp_path / "lab.idx", labels, compress=compress)
    assert (pi.read_bytes()[:2] == b"\x1f\x8b") == compress
    # The standard MNIST magic numbers.
    raw = gzip.decompress(pi.read_bytes()) if compress else pi.read_bytes()
    assert raw[:4] == bytes.fromhex("00000803")
    assert raw[4:16] == (7).to_bytes(4, "big") + (28).to_bytes(4, "big") + (28).to_bytes(4, "big")
    raw_l = gzip.decompress(pl.read_bytes()) if compress else pl.read_bytes()
    assert raw_l[:8] == bytes.fromhex("00000801") + (7).to_bytes(4, "big")
    for path, arr in ((pi, images), (pl, labels)):
        back = read_idx(path)
        assert back.dtype == np.uint8 and back.shape == arr.shape
        np.testing.assert_array_equal(back, arr)


@pytest.mark.parametrize(
    "dtype,type_byte", [(np.int8, 0x09), (np.int16, 0x0B), (np.int32, 0x0C), (np.float32, 0x0D), (np.float64, 0x0E)]
)
def test_idx_other_dtypes_big_endian(tmp_path: Path, dtype: type, type_byte: int) -> None:
    rng = np.random.default_rng(1)
    arr = (rng.standard_normal((3, 4, 5)) * 100).astype(dtype)
    # Reader against an independent encoder (checks byte order and the type byte).
    (tmp_path / "hand.idx").write_bytes(_idx_bytes(arr, type_byte))
    back = read_idx(tmp_path / "hand.idx")
    assert back.dtype == np.dtype(dtype) and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)
    # Writer produces exactly the same bytes.
    write_idx(tmp_path / "w.idx", arr, compress=False)
    assert (tmp_path / "w.idx").read_bytes() == _idx_bytes(arr, type_byte)
    back.flat[0] = 0  # returned arrays are writable


def test_gzip_detected_by_magic_not_name(tmp_path: Path) -> None:
    arr = np.arange(10, dtype=np.uint8)
    write_idx(tmp_path / "no-suffix", arr, compress=True)
    write_idx(tmp_path / "fake.gz", arr, compress=False)
    np.testing.assert_array_equal(read_idx(tmp_path / "no-suffix"), arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "fake.gz"), arr)


def test_write_idx_rejects_unsupported_dtype(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot store dtype"):
        write_idx(tmp_path / "x", np.zeros(3, dtype=np.int64), compress=False)


# --------------------------------------------------------------------------- corrupt files


@pytest.fixture()
def good_idx() -> bytes:
    return _idx_bytes(np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28) % 251, 0x08)


@pytest.mark.parametrize("compress", [True, False])
def test_truncated_payload(tmp_path: Path, good_idx: bytes, compress: bool) -> None:
    blob = good_idx[:-5]
    p = tmp_path / "trunc.idx"
    p.write_bytes(gzip.compress(blob) if compress else blob)
    expected = r"trunc\.idx is truncated: shape \(2, 28, 28\) needs 1568 payload bytes, found 1563"
    with pytest.raises(DataError, match=expected):
        read_idx(p)


def test_truncated_header(tmp_path: Path, good_idx: bytes) -> None:
    p = tmp_path / "h.idx"
    p.write_bytes(good_idx[:9])
    with pytest.raises(DataError, match="truncated inside its header"):
        read_idx(p)
    p.write_bytes(good_idx[:2])
    with pytest.raises(DataError, match="truncated"):
        read_idx(p)


@pytest.mark.parametrize("magic", ["00000703", "01000803", "00000800", "00000a01", "ffffffff"])
def test_wrong_magic(tmp_path: Path, good_idx: bytes, magic: str) -> None:
    p = tmp_path / "magic.idx"
    p.write_bytes(bytes.fromhex(magic) + good_idx[4:])
    with pytest.raises(DataError, match=f"magic.idx has a bad magic number 0x{magic}"):
        read_idx(p)


@pytest.mark.parametrize("compress", [True, False])
def test_trailing_bytes(tmp_path: Path, good_idx: bytes, compress: bool) -> None:
    blob = good_idx + b"\x00\x01\x02"
    p = tmp_path / "trail.idx"
    p.write_bytes(gzip.compress(blob) if compress else blob)
    with pytest.raises(DataError, match="trail.idx has 3 trailing bytes"):
        read_idx(p)


@pytest.mark.parametrize("how", ["flip", "cut", "garbage-after"])
def test_corrupt_gzip(tmp_path: Path, good_idx: bytes, how: str) -> None:
    gz = bytearray(gzip.compress(good_idx))
    if how == "flip":
        gz[len(gz) // 2] ^= 0xFF
    elif how == "cut":
        gz = gz[: len(gz) // 2]
    else:
        gz += b"not a gzip member"
    p = tmp_path / "bad.gz"
    p.write_bytes(bytes(gz))
    with pytest.raises(DataError, match="corrupt gzip stream in IDX file .*bad.gz"):
        read_idx(p)


def test_missing_file_is_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read IDX file"):
        read_idx(tmp_path / "absent")


# --------------------------------------------------------------------------- data root


def test_data_root_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ODE_ROBUSTNESS_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_root(tmp_path / "arg") == tmp_path / "arg"
    assert data_root(str(tmp_path / "arg")) == tmp_path / "arg"
    assert data_root() == tmp_path / "env"
    monkeypatch.delenv("ODE_ROBUSTNESS_DATA")
    assert data_root() == tmp_path / "xdg" / "ode-robustness"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data_root() == tmp_path / "home" / ".cache" / "ode-robustness"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/not/allowed")
    assert data_root() == tmp_path / "home" / ".cache" / "ode-robustness"
    monkeypatch.setenv("ODE_ROBUSTNESS_DATA", "")
    assert data_root() == tmp_path / "home" / ".cache" / "ode-robustness"
    assert data_root("~/d") == tmp_path / "home" / "d"


# --------------------------------------------------------------------------- datasets on fake files


def _fake_t10k(folder: Path, n: int = 10000, n_labels: int | None = None, gz: bool = False) -> None:
    """Image i is constant (i mod 251); label i is i mod 10 (so every split has all classes)."""
    folder.mkdir(parents=True, exist_ok=True)
    idx = np.arange(n)
    images = np.broadcast_to((idx % 251).astype(np.uint8)[:, None, None], (n, 28, 28))
    labels = (np.arange(n if n_labels is None else n_labels) % 10).astype(np.uint8)
    suffix = ".gz" if gz else ""
    write_idx(folder / f"t10k-images-idx3-ubyte{suffix}", images, compress=gz)
    write_idx(folder / f"t10k-labels-idx1-ubyte{suffix}", labels, compress=gz)


def test_t10k_protocol_on_fake_files(tmp_path: Path) -> None:
    _fake_t10k(tmp_path / "mnist")  # un-gzipped names are accepted
    xtr, ytr = load_dataset("mnist-t10k", "train", data_dir=tmp_path)
    xte, yte = load_dataset("mnist-t10k", "test", data_dir=tmp_path)
    assert xtr.shape == (8000, 1, 28, 28) and xte.shape == (2000, 1, 28, 28)
    assert xte.dtype == torch.float32 and yte.dtype == torch.int64
    # Held-out example k is file row 8000 + k.
    rows = torch.arange(8000, 10000)
    torch.testing.assert_close(xte[:, 0, 0, 0], (rows % 251).float() / 255, rtol=0, atol=0)
    torch.testing.assert_close(yte, rows % 10, rtol=0, atol=0)
    torch.testing.assert_close(xtr[:, 0, 5, 7], (torch.arange(8000) % 251).float() / 255, rtol=0, atol=0)
    x5, y5 = load_dataset("mnist-t10k", "test", data_dir=tmp_path, n=5)
    assert torch.equal(x5, xte[:5]) and torch.equal(y5, yte[:5])


def test_cache_returns_fresh_tensors_and_sees_replaced_files(tmp_path: Path) -> None:
    _fake_t10k(tmp_path / "mnist", gz=True)
    x1, y1 = load_dataset("mnist-t10k", "test", data_dir=tmp_path)
    x1.zero_()
    y1.fill_(3)
    x2, y2 = load_dataset("mnist-t10k", "test", data_dir=tmp_path)
    assert x2[1].max() > 0 and y2[1] == 1  # mutating a result does not poison the cache
    # Replace the labels file: the cache key (mtime, size) changes, so the new file is read.
    lab = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    write_idx(lab, np.full(10000, 7, dtype=np.uint8), compress=True)
    st = lab.stat()
    os.utime(lab, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    _, y3 = load_dataset("mnist-t10k", "test", data_dir=tmp_path)
    assert bool((y3 == 7).all())


def test_label_image_count_mismatch(tmp_path: Path) -> None:
    _fake_t10k(tmp_path / "mnist", n_labels=9999)
    with pytest.raises(DataError, match="holds 10000 images but .*t10k-labels-idx1-ubyte holds 9999 labels"):
        load_dataset("mnist-t10k", "test", data_dir=tmp_path)


def test_wrong_file_size_for_protocol(tmp_path: Path) -> None:
    _fake_t10k(tmp_path / "mnist", n=9000)
    with pytest.raises(DataError, match="holds 9000 examples, dataset 'mnist-t10k' expects 10000"):
        load_dataset("mnist-t10k", "train", data_dir=tmp_path)


def test_labels_out_of_range_and_wrong_shape(tmp_path: Path) -> None:
    folder = tmp_path / "mnist"
    _fake_t10k(folder)
    write_idx(folder / "t10k-labels-idx1-ubyte", np.full(10000, 10, dtype=np.uint8), compress=False)
    with pytest.raises(DataError, match="holds label 10, expected 0..9"):
        load_dataset("mnist-t10k", data_dir=tmp_path)
    write_idx(folder / "t10k-images-idx3-ubyte", np.zeros((10000, 14, 14), dtype=np.uint8), compress=False)
    with pytest.raises(DataError, match=r"shape \(10000, 14, 14\), expected uint8 \(N, 28, 28\) images"):
        load_dataset("mnist-t10k", data_dir=tmp_path)


def test_missing_files_say_how_to_get_them(tmp_path: Path) -> None:
    expected = r"t10k-images-idx3-ubyte.gz not found .*python -m models download mnist-t10k.*ODE_ROBUSTNESS_DATA"
    with pytest.raises(DataError, match=expected):
        load_dataset("mnist-t10k", "test", data_dir=tmp_path)
    _fake_t10k(tmp_path / "mnist")  # test files alone do not make the 60k protocol
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz not found .*python -m models download mnist\b"):
        load_dataset("mnist", "train", data_dir=tmp_path)


def test_unknown_names_and_bad_n(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown dataset 'cifar'; choose one of mnist, mnist-t10k"):
        load_dataset("cifar", data_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown split 'val' of dataset 'mnist-t10k'; choose one of train, test"):
        load_dataset("mnist-t10k", "val", data_dir=tmp_path)
    for bad in (0, -1, 2001, 2.5, True):
        with pytest.raises(ValueError, match=r"n must be an integer in 1..2000"):
            load_dataset("mnist-t10k", "test", data_dir=tmp_path, n=bad)


def test_dataset_table() -> None:
    assert set(DATASETS) == {"mnist", "mnist-t10k"}
    assert DATASETS["mnist"].files == (
        "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
    )
    assert DATASETS["mnist-t10k"].files == ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
    t10k = DATASETS["mnist-t10k"]
    assert (t10k.split("train").start, t10k.split("train").stop) == (0, 8000)
    assert (t10k.split("test").start, t10k.split("test").stop) == (8000, 10000)
    assert len(DATASETS["mnist"].split("train")) == 60000 and len(DATASETS["mnist"].split("test")) == 10000


def test_custom_protocol_through_the_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loader follows the table (file names, sizes, slice), not hard-coded MNIST facts."""
    spec = DatasetSpec(
        name="tiny", description="test", subdir="tinyset",
        splits=(("test", SplitSpec("a-images.gz", "a-labels.gz", 10000, 9990, 10000)),),
    )
    monkeypatch.setitem(data.DATASETS, "tiny", spec)
    _fake_t10k(tmp_path / "tinyset", gz=True)
    (tmp_path / "tinyset" / "t10k-images-idx3-ubyte.gz").rename(tmp_path / "tinyset" / "a-images.gz")
    (tmp_path / "tinyset" / "t10k-labels-idx1-ubyte.gz").rename(tmp_path / "tinyset" / "a-labels.gz")
    x, y = load_dataset("tiny", "test", data_dir=tmp_path)
    assert y.tolist() == [r % 10 for r in range(9990, 10000)]
    assert x[:, 0, 3, 3].mul(255).round().long().tolist() == [r % 251 for r in range(9990, 10000)]


# --------------------------------------------------------------------------- the real files


@needs_shared
def test_real_t10k_splits_match_raw_file() -> None:
    raw_images = read_idx(SHARED)
    raw_labels = read_idx(SHARED.with_name("t10k-labels-idx1-ubyte.gz"))
    assert raw_images.shape == (10000, 28, 28) and raw_labels.shape == (10000,)
    xtr, ytr = load_dataset("mnist-t10k", "train")
    xte, yte = load_dataset("mnist-t10k", "test")
    assert len(xtr) == len(ytr) == 8000 and len(xte) == len(yte) == 2000
    assert torch.equal(xte, torch.from_numpy(raw_images[8000:].astype(np.float32) / 255).unsqueeze(1))
    assert torch.equal(yte, torch.from_numpy(raw_labels[8000:].astype(np.int64)))
    assert torch.equal(xtr, torch.from_numpy(raw_images[:8000].astype(np.float32) / 255).unsqueeze(1))
    for x, y in ((xtr, ytr), (xte, yte)):
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert float(x.min()) == 0.0 and float(x.max()) == 1.0
        assert sorted(set(y.tolist())) == list(range(10))
    # The first held-out labels of the official test set (a fixed fact of MNIST).
    assert yte[:10].tolist() == [4, 9, 9, 7, 1, 1, 9, 0, 7, 8]
