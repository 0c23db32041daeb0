"""MNIST data: an IDX-format reader/writer, the data root, and the two dataset protocols.

Files live in ``<root>/mnist/`` under their canonical names (``t10k-images-idx3-ubyte.gz``
...; the un-gzipped name is accepted too). The root is the ``data_dir`` argument, else the
``ODE_ROBUSTNESS_DATA`` environment variable, else a per-user cache directory.

Two protocols (:data:`DATASETS`):

* ``mnist`` — the standard 60k training / 10k test split (needs the training files);
* ``mnist-t10k`` — the official 10k test set only, split deterministically into images
  0–7999 ("train") and 8000–9999 ("test", held out).

References:
    LeCun et al., "Gradient-based learning applied to document recognition", 1998
    (the MNIST database and its IDX file format).
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import math
import numbers
import os
import zlib
from pathlib import Path

import numpy as np
import torch

#: Environment variable naming the data root.
DATA_ENV = "ODE_ROBUSTNESS_DATA"

#: IDX type byte -> big-endian numpy dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"
_IMAGE_SIZE = 28
_NUM_CLASSES = 10


class DataError(ValueError):
    """A data file that is missing, truncated, corrupt or inconsistent."""


# --------------------------------------------------------------------------- IDX format


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (gzipped or raw; gzip is detected by its magic bytes).

    The header is two zero bytes, a type byte (see :data:`IDX_DTYPES`), the number of
    dimensions d, then d big-endian uint32 sizes; the payload must hold exactly
    prod(sizes) items.

    Args:
        path: the file.

    Returns:
        a writable array in native byte order with the stored shape and dtype.

    Raises:
        DataError: unreadable file, corrupt gzip stream, bad magic number, unknown type
            byte, or a payload shorter or longer than the header announces.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read IDX file {path}: {err.strerror or err}") from err
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise DataError(f"corrupt gzip stream in IDX file {path}: {err}") from err
    if len(raw) < 4:
        raise DataError(f"IDX file {path} is truncated: {len(raw)} bytes, shorter than the 4-byte magic number")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES or raw[3] == 0:
        raise DataError(
            f"IDX file {path} has a bad magic number 0x{raw[:4].hex()} "
            "(expected 0x0000TTDD: type byte TT in 08,09,0b,0c,0d,0e and DD >= 1 dimensions)"
        )
    dtype, ndim = IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"IDX file {path} is truncated inside its header ({len(raw)} < {header} bytes)")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = math.prod(shape) * dtype.itemsize
    payload = len(raw) - header
    if payload < expected:
        raise DataError(
            f"IDX file {path} is truncated: shape {shape} needs {expected} payload bytes, found {payload}"
        )
    if payload > expected:
        raise DataError(
            f"IDX file {path} has {payload - expected} trailing bytes after the {expected}-byte "
            f"payload of shape {shape}"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike[str], array: np.ndarray, compress: bool) -> Path:
    """Write ``array`` as an IDX file.

    Args:
        path: destination (written as given; the name does not decide compression).
        array: 1 to 255 dimensions, dtype one of uint8, int8, int16, int32, float32, float64.
        compress: gzip the file.

    Returns:
        the path written.

    Raises:
        DataError: unsupported dtype or number of dimensions.
    """
    array = np.asarray(array)
    codes = {dt.newbyteorder("="): code for code, dt in IDX_DTYPES.items()}
    native = array.dtype.newbyteorder("=")
    if native not in codes:
        raise DataError(f"IDX cannot store dtype {array.dtype}; use one of {sorted(str(d) for d in codes)}")
    if not 1 <= array.ndim <= 255:
        raise DataError(f"IDX stores 1 to 255 dimensions, got {array.ndim}")
    code = codes[native]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    blob = header + np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()
    if compress:
        blob = gzip.compress(blob, compresslevel=6)
    path = Path(path)
    path.write_bytes(blob)
    return path


# --------------------------------------------------------------------------- data root


def data_root(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The data root: ``data_dir``, else ``$ODE_ROBUSTNESS_DATA``, else a per-user cache.

    The cache is ``$XDG_CACHE_HOME/ode-robustness`` (when that variable is an absolute
    path) or ``~/.cache/ode-robustness``. Nothing is created.

    Args:
        data_dir: explicit root (e.g. the CLI's ``--data-dir``).

    Returns:
        the root directory; MNIST files are expected in ``<root>/mnist/``.
    """
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_ENV, "")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    cache = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return cache / "ode-robustness"


# --------------------------------------------------------------------------- datasets


@dataclasses.dataclass(frozen=True)
class SplitSpec:
    """One split: a slice [start, stop) of an images/labels file pair.

    Args:
        images: canonical (gzipped) file name of the images.
        labels: canonical (gzipped) file name of the labels.
        file_size: number of examples the files must hold.
        start: first example of the split.
        stop: one past the last example.
    """

    images: str
    labels: str
    file_size: int
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """A data protocol: which files, and which rows form each split.

    Args:
        name: key in :data:`DATASETS`.
        description: one line for humans.
        splits: (split name, :class:`SplitSpec`) pairs.
        subdir: folder of the files under the data root.
    """

    name: str
    description: str
    splits: tuple[tuple[str, SplitSpec], ...]
    subdir: str = "mnist"

    @property
    def split_names(self) -> tuple[str, ...]:
        """Names of the splits, e.g. ("train", "test")."""
        return tuple(s for s, _ in self.splits)

    @property
    def files(self) -> tuple[str, ...]:
        """Canonical names of every file the protocol needs, without repeats."""
        names: list[str] = []
        for _, sp in self.splits:
            names += [n for n in (sp.images, sp.labels) if n not in names]
        return tuple(names)

    def split(self, name: str) -> SplitSpec:
        """The split called ``name``.

        Raises:
            ValueError: unknown split.
        """
        for s, sp in self.splits:
            if s == name:
                return sp
        raise ValueError(
            f"unknown split {name!r} of dataset {self.name!r}; choose one of {', '.join(self.split_names)}"
        )


TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"

#: Dataset name -> protocol.
DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        description="standard MNIST: 60k training images, the official 10k test images",
        splits=(
            ("train", SplitSpec(TRAIN_IMAGES, TRAIN_LABELS, 60000, 0, 60000)),
            ("test", SplitSpec(TEST_IMAGES, TEST_LABELS, 10000, 0, 10000)),
        ),
    ),
    "mnist-t10k": DatasetSpec(
        name="mnist-t10k",
        description="official MNIST test set only: images 0-7999 train, 8000-9999 held out",
        splits=(
            ("train", SplitSpec(TEST_IMAGES, TEST_LABELS, 10000, 0, 8000)),
            ("test", SplitSpec(TEST_IMAGES, TEST_LABELS, 10000, 8000, 10000)),
        ),
    ),
}


def get_dataset(name: str) -> DatasetSpec:
    """The protocol called ``name``.

    Raises:
        ValueError: unknown dataset.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def _locate(folder: Path, name: str, dataset: str) -> Path:
    """The gzipped file, else its un-gzipped twin; a helpful DataError if neither exists."""
    for candidate in (folder / name, folder / name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"MNIST file {name} not found in {folder} (needed by dataset {dataset!r}); "
        f"run `python -m models download {dataset}` or point {DATA_ENV} / --data-dir "
        f"at a folder whose {folder.name}/ holds it"
    )


@functools.lru_cache(maxsize=8)
def _read_cached(path: str, mtime_ns: int, size: int) -> np.ndarray:
    """Decoded file contents, shared between callers (read-only); keyed on mtime and size
    so a replaced file is read again."""
    arr = read_idx(path)
    arr.setflags(write=False)
    return arr


def _read(path: Path) -> np.ndarray:
    resolved = path.resolve()
    st = resolved.stat()
    return _read_cached(str(resolved), st.st_mtime_ns, st.st_size)


def load_dataset(
    name: str = "mnist-t10k",
    split: str = "test",
    data_dir: str | os.PathLike[str] | None = None,
    n: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of one split.

    Decoded files are cached in-process, so repeated calls cost only the conversion.

    Args:
        name: key of :data:`DATASETS` (``"mnist-t10k"`` or ``"mnist"``).
        split: ``"train"`` or ``"test"`` (for ``mnist-t10k``, "test" = images 8000–9999).
        data_dir: data root (default: see :func:`data_root`).
        n: keep only the first ``n`` examples of the split.

    Returns:
        ``(x, y)``: x float32 of shape (N, 1, 28, 28) with values in [0, 1]
        (pixel / 255), y int64 of shape (N,) with values 0..9.

    Raises:
        ValueError: unknown dataset or split, or ``n`` outside 1..len(split).
        DataError: missing, corrupt or inconsistent files (with what to do about it).
    """
    spec = get_dataset(name)
    sp = spec.split(split)
    if n is not None and (isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 1 <= n <= len(sp)):
        raise ValueError(f"n must be an integer in 1..{len(sp)} for split {split!r} of {name!r}, got {n!r}")
    folder = data_root(data_dir) / spec.subdir
    img_path = _locate(folder, sp.images, name)
    lab_path = _locate(folder, sp.labels, name)
    images, labels = _read(img_path), _read(lab_path)
    if images.dtype != np.uint8 or images.shape[1:] != (_IMAGE_SIZE, _IMAGE_SIZE) or images.ndim != 3:
        raise DataError(
            f"{img_path} holds {images.dtype} data of shape {images.shape}, expected uint8 (N, 28, 28) images"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DataError(f"{lab_path} holds {labels.dtype} data of shape {labels.shape}, expected uint8 (N,) labels")
    if len(images) != len(labels):
        raise DataError(f"{img_path} holds {len(images)} images but {lab_path} holds {len(labels)} labels")
    if len(images) != sp.file_size:
        raise DataError(
            f"{img_path} holds {len(images)} examples, dataset {name!r} expects {sp.file_size}; "
            f"re-download with `python -m models download {name}`"
        )
    if labels.size and int(labels.max()) >= _NUM_CLASSES:
        raise DataError(f"{lab_path} holds label {int(labels.max())}, expected 0..{_NUM_CLASSES - 1}")
    stop = sp.stop if n is None else sp.start + int(n)
    y_np = labels[sp.start:stop]
    x = torch.from_numpy(images[sp.start:stop].astype(np.float32)).div_(255.0).unsqueeze(1)
    y = torch.from_numpy(y_np.astype(np.int64))
    return x, y


__all__ = [
    "DATASETS", "DATA_ENV", "DataError", "DatasetSpec", "IDX_DTYPES", "SplitSpec", "data_root",
    "get_dataset", "load_dataset", "read_idx", "write_idx",
]
