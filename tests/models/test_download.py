"""download_dataset against a real HTTP server on 127.0.0.1 serving tiny fake files."""

from __future__ import annotations

import functools
import hashlib
import http.server
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from models.data import data_root
from models.download import MD5, DownloadError, download_dataset, file_md5

T10K = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
ALL4 = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz") + T10K


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder and records every requested path."""

    def __init__(self, *args: Any, requests: list[str], **kwargs: Any) -> None:
        self._requests = requests
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:
        self._requests.append(self.path)
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:  # silence the request log
        pass


class Server:
    """A static file server on 127.0.0.1 in a background thread."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.requests: list[str] = []
        handler = functools.partial(_Handler, directory=str(folder), requests=self.requests)
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


MakeServer = Callable[[str, dict[str, bytes]], "Server"]


@pytest.fixture()
def make_server(tmp_path: Path) -> Iterator[MakeServer]:
    servers: list[Server] = []

    def make(name: str, files: dict[str, bytes]) -> Server:
        folder = tmp_path / f"srv-{name}"
        folder.mkdir()
        for fname, blob in files.items():
            (folder / fname).write_bytes(blob)
        servers.append(Server(folder))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def _fake(names: tuple[str, ...]) -> tuple[dict[str, bytes], dict[str, str]]:
    blobs = {n: f"fake contents of {n}\n".encode() * (3 + i) for i, n in enumerate(names)}
    return blobs, {n: hashlib.md5(b).hexdigest() for n, b in blobs.items()}


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_successful_download_with_md5(tmp_path: Path, make_server: MakeServer) -> None:
    blobs, sums = _fake(ALL4)
    srv = make_server("a", blobs)
    root = tmp_path / "root"
    paths = download_dataset("mnist", root=root, mirrors=[srv.url], progress=False, checksums=sums)
    assert paths == [root / "mnist" / n for n in ALL4]
    for p in paths:
        assert p.read_bytes() == blobs[p.name]
        assert file_md5(p) == sums[p.name]
    assert _leftovers(root / "mnist") == sorted(ALL4)  # no temporary files
    assert sorted(srv.requests) == sorted(f"/{n}" for n in ALL4)


def test_t10k_fetches_only_the_test_files(tmp_path: Path, make_server: MakeServer) -> None:
    blobs, sums = _fake(ALL4)
    srv = make_server("a", blobs)
    paths = download_dataset("mnist-t10k", root=tmp_path, mirrors=[srv.url + "/"], progress=True, checksums=sums)
    assert [p.name for p in paths] == list(T10K)
    assert sorted(srv.requests) == sorted(f"/{n}" for n in T10K)


def test_corrupted_file_leaves_nothing_behind(tmp_path: Path, make_server: MakeServer) -> None:
    blobs, sums = _fake(T10K)
    blobs[T10K[1]] = blobs[T10K[1]][:-3] + b"XYZ"  # same size, wrong content
    srv = make_server("bad", blobs)
    root = tmp_path / "root"
    expected = rf"could not download {T10K[1]} .*md5 [0-9a-f]{{32}} != expected {sums[T10K[1]]}"
    with pytest.raises(DownloadError, match=expected):
        download_dataset("mnist-t10k", root=root, mirrors=[srv.url], progress=False, checksums=sums)
    # The good file is kept, the corrupted one is absent, and no temporary file survives.
    assert _leftovers(root / "mnist") == [T10K[0]]


def test_bad_download_does_not_clobber_a_present_file(tmp_path: Path, make_server: MakeServer) -> None:
    blobs, sums = _fake(T10K)
    srv = make_server("bad", {n: b"garbage" for n in T10K})
    dest = tmp_path / "mnist"
    dest.mkdir()
    (dest / T10K[0]).write_bytes(b"old partial file")
    with pytest.raises(DownloadError):
        download_dataset("mnist-t10k", root=tmp_path, mirrors=[srv.url], progress=False, checksums=sums)
    assert (dest / T10K[0]).read_bytes() == b"old partial file"
    assert _leftovers(dest) == [T10K[0]]


def test_404_mirror_falls_back_to_the_next(tmp_path: Path, make_server: MakeServer) -> None:
    blobs, sums = _fake(T10K)
    empty = make_server("empty", {})
    good = make_server("good", blobs)
    paths = download_dataset("mnist-t10k", root=tmp_path, mirrors=[empty.url, good.url], progress=False, checksums=sums)
    assert [p.read_bytes() for p in paths] == [blobs[n] for n in T10K]
    assert sorted(empty.requests) == sorted(f"/{n}" for n in T10K)  # first mirror was tried
    assert sorted(good.requests) == sorted(f"/{n}" for n in T10K)


def test_corrupt_mirror_falls_back_to_the_next(tmp_path: Path, make_server: MakeServer) -> None:
    blobs, sums = _fake(T10K)
    bad = make_server("bad", {n: b"corrupt" for n in T10K})
    good = make_server("good", blobs)
    paths = download_dataset("mnist-t10k", root=tmp_path, mirrors=[bad.url, good.url], progress=False, checksums=sums)
    assert [file_md5(p) for p in paths] == [sums[n] for n in T10K]
    assert len(bad.requests) == 2


def test_all_mirrors_fail_names_each(tmp_path: Path, make_server: MakeServer) -> None:
    _, sums = _fake(T10K)
    a, b = make_server("a", {}), make_server("b", {})
    with pytest.raises(DownloadError) as info:
        download_dataset("mnist-t10k", root=tmp_path, mirrors=[a.url, b.url], progress=False, checksums=sums)
    msg = str(info.value)
    assert f"{a.url}{T10K[0]}: HTTP 404" in msg and f"{b.url}{T10K[0]}: HTTP 404" in msg
    assert _leftovers(tmp_path / "mnist") == []


def test_unreachable_mirror(tmp_path: Path) -> None:
    _, sums = _fake(T10K)
    with socket.socket() as sock:  # a port that nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
    with pytest.raises(DownloadError, match="could not download"):
        download_dataset("mnist-t10k", root=tmp_path, mirrors=[url], timeout=5, progress=False, checksums=sums)
    assert _leftovers(tmp_path / "mnist") == []


def test_present_correct_file_is_not_downloaded_again(tmp_path: Path, make_server: MakeServer) -> None:
    blobs, sums = _fake(T10K)
    srv = make_server("a", blobs)
    dest = tmp_path / "mnist"
    dest.mkdir()
    (dest / T10K[0]).write_bytes(blobs[T10K[0]])
    (dest / T10K[1]).write_bytes(b"stale")  # wrong md5: must be replaced
    download_dataset("mnist-t10k", root=tmp_path, mirrors=[srv.url], progress=False, checksums=sums)
    assert srv.requests == [f"/{T10K[1]}"]
    assert (dest / T10K[1]).read_bytes() == blobs[T10K[1]]
    srv.requests.clear()
    download_dataset("mnist-t10k", root=tmp_path, mirrors=[srv.url], progress=False, checksums=sums)
    assert srv.requests == []


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        download_dataset("cifar", root=tmp_path, progress=False)
    with pytest.raises(ValueError, match="at least one mirror"):
        download_dataset("mnist", root=tmp_path, mirrors=[], progress=False)
    with pytest.raises(ValueError, match="no md5 checksum given for t10k-labels-idx1-ubyte.gz"):
        download_dataset("mnist-t10k", root=tmp_path, progress=False, checksums={T10K[0]: "0" * 32})
    assert not (tmp_path / "mnist").exists()


def test_official_checksums_match_the_shared_files() -> None:
    assert set(MD5) == set(ALL4)
    shared = data_root() / "mnist"
    present = [n for n in T10K if (shared / n).is_file()]
    if not present:
        pytest.skip(f"no real MNIST files in {shared}")
    for n in present:
        assert file_md5(shared / n) == MD5[n]
