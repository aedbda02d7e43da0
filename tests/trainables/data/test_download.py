"""Tests for trainables.data.pcam_download against a local HTTP server (no internet)."""

import gzip
import hashlib
import http.server
import io
import json
import threading

import h5py
import numpy as np
import pytest

from trainables.data import pcam_download as dl
from trainables.data.datasets import HDF5ImageDataset


class FileServer:
    """Serves {url path: bytes} on 127.0.0.1 with HTTP Range support; records each request."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.honour_range = True
        self.cut_after_bytes: int | None = None  # hang up mid-body once, then serve normally
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                path = self.path.split("?")[0]
                server.requests.append((path, self.headers.get("Range")))
                if path not in server.files:
                    self.send_error(404)
                    return
                body, status = server.files[path], 200
                start = 0
                if self.headers.get("Range") and server.honour_range:
                    start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
                    if start >= len(body):
                        self.send_error(416)
                        return
                    status = 206
                payload = body[start:]
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if server.cut_after_bytes is not None:
                    payload, server.cut_after_bytes = payload[: server.cut_after_bytes], None
                    self.close_connection = True
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()


@pytest.fixture
def server():
    serving = FileServer()
    yield serving
    serving.httpd.shutdown()
    serving.httpd.server_close()


def md5(content: bytes) -> str:
    return hashlib.md5(content).hexdigest()


PAYLOAD = bytes(range(256)) * 40  # 10 KiB


def test_download_writes_the_file_and_leaves_no_part(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    dest = dl.download_file(f"{server.url}/f.bin", tmp_path / "f.bin", md5(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "f.bin.part").exists()


def test_download_resumes_a_partial_file_with_a_range_request(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD[:3000])
    dl.download_file(f"{server.url}/f.bin", tmp_path / "f.bin", md5(PAYLOAD), progress=False)
    assert server.requests == [("/f.bin", "bytes=3000-")]
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD


def test_download_restarts_when_the_server_ignores_range(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    server.honour_range = False
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD[:3000])
    dl.download_file(f"{server.url}/f.bin", tmp_path / "f.bin", md5(PAYLOAD), progress=False)
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD


def test_download_accepts_a_part_that_is_already_complete(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD)  # the server answers 416 to the range request
    dl.download_file(f"{server.url}/f.bin", tmp_path / "f.bin", md5(PAYLOAD), progress=False)
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD


def test_download_resumes_after_the_connection_drops(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    server.cut_after_bytes = 4096
    dl.download_file(f"{server.url}/f.bin", tmp_path / "f.bin", md5(PAYLOAD), retry_wait_s=0, progress=False)
    assert server.requests == [("/f.bin", None), ("/f.bin", "bytes=4096-")]
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD


def test_download_with_wrong_md5_raises_and_keeps_nothing(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    with pytest.raises(dl.ChecksumError, match="md5 does not match"):
        dl.download_file(f"{server.url}/f.bin", tmp_path / "f.bin", "0" * 32, retries=2, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_gunzip_atomic_unpacks_and_leaves_no_tmp(tmp_path):
    archive = tmp_path / "a.h5.gz"
    archive.write_bytes(gzip.compress(PAYLOAD))
    dl.gunzip_atomic(archive, tmp_path / "a.h5")
    assert (tmp_path / "a.h5").read_bytes() == PAYLOAD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h5", "a.h5.gz"]


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_gunzip_of_a_damaged_archive_names_it_and_leaves_nothing(tmp_path, damage):
    archive = tmp_path / "a.h5.gz"
    compressed = gzip.compress(PAYLOAD)
    archive.write_bytes(compressed[: len(compressed) // 2] if damage == "truncate" else b"not gzip at all")
    with pytest.raises(ValueError, match="cannot decompress .*a.h5.gz"):
        dl.gunzip_atomic(archive, tmp_path / "a.h5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h5.gz"]


def test_read_checksum_file_parses_md5sum_format(tmp_path):
    listing = tmp_path / "MD5SUMS"
    listing.write_text(f"# comment\n{'A' * 32}  dir/x.h5.gz\n{'b' * 32} *y.h5.gz\n")
    assert dl.read_checksum_file(listing) == {"x.h5.gz": "a" * 32, "y.h5.gz": "b" * 32}


def test_read_checksum_file_rejects_a_malformed_line(tmp_path):
    listing = tmp_path / "MD5SUMS"
    listing.write_text("abc x.h5.gz\n")
    with pytest.raises(ValueError, match="MD5SUMS:1"):
        dl.read_checksum_file(listing)


def test_parse_record_md5_reads_zenodo_file_entries():
    record = {"files": [{"key": "a.h5.gz", "checksum": "md5:ABC"}, {"key": "b.csv", "checksum": "sha256:00"}]}
    assert dl.parse_record_md5(record) == {"a.h5.gz": "abc"}
    assert dl.parse_record_md5({"files": {"entries": record["files"]}}) == {"a.h5.gz": "abc"}


TRAIN_X, VALID_X = dl.archive_names(["train"])[0], dl.archive_names(["valid"])[0]


def test_expected_checksums_use_pinned_train_values():
    assert dl.expected_checksums([TRAIN_X], {}, None) == {TRAIN_X: dl.PINNED_MD5[TRAIN_X]}


def test_expected_checksums_reject_zenodo_disagreeing_with_a_pinned_value():
    with pytest.raises(dl.ChecksumError, match="published value"):
        dl.expected_checksums([TRAIN_X], {}, {TRAIN_X: "f" * 32})


def test_expected_checksums_accept_a_published_heldout_value_from_zenodo():
    value = sorted(dl.PUBLISHED_HELDOUT_MD5["x"])[0]
    assert dl.expected_checksums([VALID_X], {}, {VALID_X: value}) == {VALID_X: value}


def test_expected_checksums_reject_an_unpublished_heldout_value():
    with pytest.raises(dl.ChecksumError, match="matches none of the published"):
        dl.expected_checksums([VALID_X], {}, {VALID_X: "e" * 32})


def test_expected_checksums_without_any_source_fail_and_suggest_a_file():
    with pytest.raises(dl.ChecksumError, match="--checksums"):
        dl.expected_checksums([VALID_X], {}, None)


def test_user_checksums_take_precedence():
    assert dl.expected_checksums([TRAIN_X], {TRAIN_X: "c" * 32}, None) == {TRAIN_X: "c" * 32}


def serve_synthetic_pcam(server, n=6):
    """Publish gzipped tiny PCam-layout files for all splits; return {archive name: md5}."""
    checksums = {}
    rng = np.random.default_rng(0)
    for name in dl.archive_names():
        kind = name.removesuffix(".h5.gz")[-1]
        array = (rng.integers(0, 256, (n, 8, 8, 3)) if kind == "x" else rng.integers(0, 2, (n, 1, 1, 1))).astype(np.uint8)
        buffer = io.BytesIO()
        with h5py.File(buffer, "w") as handle:
            handle.create_dataset(kind, data=array)
        content = gzip.compress(buffer.getvalue())
        server.files[f"/files/{name}"] = content
        checksums[name] = md5(content)
    return checksums


def run_download(server, root, **kwargs):
    return dl.download_pcam(
        root, file_url=server.url + "/files/{name}", record_api_url=server.url + "/api/record",
        progress=False, split_sizes={"train": 6, "valid": 6, "test": 6}, **kwargs,
    )


def test_download_pcam_with_a_checksum_file_gives_a_readable_dataset(server, tmp_path):
    checksums = serve_synthetic_pcam(server)
    listing = tmp_path / "MD5SUMS"
    listing.write_text("".join(f"{v}  {k}\n" for k, v in checksums.items()))
    root = run_download(server, tmp_path / "pcam", checksum_file=listing)
    assert sorted(p.name for p in root.iterdir()) == sorted(n.removesuffix(".gz") for n in checksums)
    assert len(HDF5ImageDataset(root, "valid")) == 6


def test_download_pcam_uses_zenodo_record_checksums(server, tmp_path, monkeypatch):
    checksums = serve_synthetic_pcam(server)
    monkeypatch.setattr(dl, "PINNED_MD5", {})
    monkeypatch.setattr(dl, "PUBLISHED_HELDOUT_MD5", {})
    server.files["/api/record"] = json.dumps(
        {"files": [{"key": k, "checksum": f"md5:{v}"} for k, v in checksums.items()]}
    ).encode()
    root = run_download(server, tmp_path / "pcam", splits=["test"], keep_archives=True)
    assert len(HDF5ImageDataset(root, "test")) == 6
    assert (root / dl.archive_names(["test"])[0]).is_file()


def test_download_pcam_skips_files_already_present(server, tmp_path):
    checksums = serve_synthetic_pcam(server)
    listing = tmp_path / "MD5SUMS"
    listing.write_text("".join(f"{v}  {k}\n" for k, v in checksums.items()))
    run_download(server, tmp_path / "pcam", checksum_file=listing)
    served = len(server.requests)
    run_download(server, tmp_path / "pcam", checksum_file=listing)
    assert len(server.requests) == served


def test_download_pcam_refuses_to_fetch_unverifiable_files(server, tmp_path, monkeypatch):
    serve_synthetic_pcam(server)
    monkeypatch.setattr(dl, "PINNED_MD5", {})  # and /api/record answers 404
    with pytest.raises(dl.ChecksumError, match="no checksum known"):
        run_download(server, tmp_path / "pcam", splits=["valid"])
    assert not any(path.startswith("/files/") for path, _ in server.requests)


def test_download_pcam_rejects_a_corrupted_download(server, tmp_path):
    checksums = serve_synthetic_pcam(server)
    name = dl.archive_names(["valid"])[1]
    server.files[f"/files/{name}"] = b"tampered"
    listing = tmp_path / "MD5SUMS"
    listing.write_text("".join(f"{v}  {k}\n" for k, v in checksums.items()))
    with pytest.raises(dl.ChecksumError, match=name):
        run_download(server, tmp_path / "pcam", splits=["valid"], checksum_file=listing)
    assert not (tmp_path / "pcam" / name.removesuffix(".gz")).exists()
