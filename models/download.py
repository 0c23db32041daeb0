"""Fetch the MNIST files from public mirrors with md5 verification and atomic writes.

Each file is streamed into a temporary file in the destination folder, its md5 checked,
and only then renamed into place with :func:`os.replace`; a failed, interrupted or
corrupted download leaves nothing behind. Mirrors are tried in order.

References:
    LeCun et al., "Gradient-based learning applied to document recognition", 1998
    (the MNIST database).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from tqdm import tqdm

from .data import TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS, data_root, get_dataset

#: Public mirrors of the original MNIST files, tried in order.
MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

#: md5 of each canonical (gzipped) MNIST file.
MD5: dict[str, str] = {
    TRAIN_IMAGES: "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    TRAIN_LABELS: "d53e105ee54ea40749a09fcbcd1e9432",
    TEST_IMAGES: "9fb629c4189551a2d022fa330f9573f3",
    TEST_LABELS: "ec29112dd5afa0611ce80d1b7f02629c",
}

_CHUNK = 1 << 16


class DownloadError(RuntimeError):
    """No mirror delivered a file with the expected md5 (network error, 404, corruption)."""


def file_md5(path: str | os.PathLike[str]) -> str:
    """Hex md5 digest of a file."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_dataset(
    name: str = "mnist",
    root: str | os.PathLike[str] | None = None,
    mirrors: Sequence[str] | None = None,
    timeout: float = 30.0,
    progress: bool = True,
    checksums: Mapping[str, str] | None = None,
) -> list[Path]:
    """Download the files of a dataset into ``<root>/mnist/``.

    Files already present with the right md5 are not fetched again; a present file with
    a wrong md5 is replaced.

    Args:
        name: ``"mnist"`` (four files) or ``"mnist-t10k"`` (the two test-set files).
        root: data root (default: :func:`models.data.data_root`).
        mirrors: base URLs tried in order (default :data:`MIRRORS`).
        timeout: seconds per connection attempt / read.
        progress: show a tqdm progress bar per file.
        checksums: file name -> md5 (default :data:`MD5`); tests serve small fake files.

    Returns:
        paths of the dataset's files, in the order of ``DatasetSpec.files``.

    Raises:
        ValueError: unknown dataset, or no mirrors.
        DownloadError: a file could not be fetched with the expected md5 from any mirror.
    """
    spec = get_dataset(name)
    mirrors = tuple(MIRRORS if mirrors is None else mirrors)
    if not mirrors:
        raise ValueError("download_dataset needs at least one mirror URL")
    checksums = MD5 if checksums is None else checksums
    missing = [f for f in spec.files if f not in checksums]
    if missing:
        raise ValueError(f"no md5 checksum given for {', '.join(missing)}")
    folder = data_root(root) / spec.subdir
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DownloadError(f"cannot create data folder {folder}: {err.strerror or err}") from err
    paths = []
    for fname in spec.files:
        dest = folder / fname
        md5 = checksums[fname].lower()
        if not (dest.is_file() and file_md5(dest) == md5):
            _fetch(fname, dest, md5, mirrors, timeout, progress)
        paths.append(dest)
    return paths


def _fetch(fname: str, dest: Path, md5: str, mirrors: Sequence[str], timeout: float, progress: bool) -> None:
    """Try each mirror until one delivers ``fname`` with the right md5."""
    failures = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + fname
        try:
            got = _download_verified(url, dest, md5, timeout, progress)
        except (urllib.error.URLError, OSError, ValueError) as err:
            failures.append(f"{url}: {_describe(err)}")
            continue
        if got == md5:
            return
        failures.append(f"{url}: md5 {got} != expected {md5}")
    raise DownloadError(f"could not download {fname} to {dest.parent}: " + "; ".join(failures))


def _download_verified(url: str, dest: Path, md5: str, timeout: float, progress: bool) -> str:
    """Stream ``url`` to a temporary file next to ``dest``; rename it onto ``dest`` only if
    its md5 matches. Returns the md5 received. The temporary file never survives."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            total = resp.headers.get("Content-Length")
            size = int(total) if total and total.isdigit() else None
            with tqdm(total=size, desc=dest.name, unit="B", unit_scale=True, unit_divisor=1024,
                      leave=False, disable=not progress) as bar:
                for chunk in iter(lambda: resp.read(_CHUNK), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        got = digest.hexdigest()
        if got == md5:
            os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; data files are shared
            os.replace(tmp, dest)
        return got
    finally:
        tmp.unlink(missing_ok=True)


def _describe(err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        return f"{err.reason}"
    return str(err) or type(err).__name__


__all__ = ["MD5", "MIRRORS", "DownloadError", "download_dataset", "file_md5"]
