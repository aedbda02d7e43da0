import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest

import trainables.cache.keys as cache_mod
from trainables.cache import MANIFEST_NAME, StageCache, stage_key

WORKER = Path(__file__).with_name("_cache_worker.py")
STAGE = "finetune"
KEY = stage_key(STAGE, {"lr": 1e-4}, None, "digits-v1")


class Backend:
    """One storage flavour: where entries live and how a test reaches them behind the cache."""

    def __init__(self, kind: str, tmp: Path, s3=None):
        self.kind = kind
        self.tmp = tmp
        if kind == "local":
            self.fs, self.root = pafs.LocalFileSystem(), str(tmp / "store")
        elif kind == "s3":  # the S3 API server of tests/conftest.py; a prefix per test
            self.fs, self.root = pafs.FileSystem.from_uri(s3.uri(f"cache-tests/{tmp.name}"))
        elif kind == "subtree":
            self.fs, self.root = pafs.SubTreeFileSystem(str(tmp), pafs.LocalFileSystem()), "store"
        else:
            self.fs, self.root = pafs._MockFileSystem(), "store"

    def make(self, **kwargs) -> StageCache:
        kwargs = {"poll_s": 0.02, "lease_s": 2.0, **kwargs}
        if self.kind == "local":
            return StageCache(self.root, **kwargs)
        kwargs.setdefault("settle_s", 0.05)
        kwargs.setdefault("scratch_dir", self.tmp / f"scratch-{id(kwargs)}")
        return StageCache(self.root, filesystem=self.fs, **kwargs)

    def path(self, rel: str = "") -> str:
        return "/".join(p for p in (self.root, "cache", STAGE, KEY, rel) if p)

    def read(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.path(rel)) as f:
            return f.read()

    def write(self, rel: str, data: bytes) -> None:
        self.fs.create_dir(self.path(rel).rsplit("/", 1)[0], recursive=True)
        with self.fs.open_output_stream(self.path(rel)) as f:
            f.write(data)

    def exists(self, full_path: str) -> bool:
        return self.fs.get_file_info(full_path).type != pafs.FileType.NotFound


@pytest.fixture(params=["local", "s3", "subtree", "mock"])
def backend(request, tmp_path):
    s3 = request.getfixturevalue("s3_server") if request.param == "s3" else None
    return Backend(request.param, tmp_path, s3)


def counting_compute(calls: list, payload: bytes = b"weights" * 100, sleep_s: float = 0.0):
    def compute(tmp: Path) -> None:
        calls.append(tmp)
        time.sleep(sleep_s)
        (tmp / "weights.bin").write_bytes(payload)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "report.json").write_text(json.dumps({"auroc": 0.5}))

    return compute



def test_key_ignores_mapping_order():
    config_a = {"lr": 1e-4, "method": "lora", "opt": {"b1": 0.9, "b2": 0.99}}
    config_b = {"opt": {"b2": 0.99, "b1": 0.9}, "method": "lora", "lr": 1e-4}
    a = stage_key("finetune", config_a, "p", "d")
    b = stage_key("finetune", config_b, "p", "d")
    assert a == b


@pytest.mark.parametrize(
    "change",
    [
        {"config": {"lr": 2e-4, "method": "lora"}},
        {"config": {"lr": 1e-4, "method": "full"}},
        {"config": {"lr": 1e-4, "method": "lora", "rank": 8}},
        {"parent_key": "other"},
        {"parent_key": None},
        {"data_fingerprint": "pcam-v2"},
        {"stage": "prehab"},
    ],
)
def test_key_changes_with_any_input(change):
    base = {
        "stage": "finetune",
        "config": {"lr": 1e-4, "method": "lora"},
        "parent_key": "p",
        "data_fingerprint": "d",
    }
    assert stage_key(**base) != stage_key(**{**base, **change})


def test_key_changes_with_format_version(monkeypatch):
    before = stage_key("finetune", {"lr": 1e-4}, None, "d")
    monkeypatch.setattr(cache_mod, "FORMAT_VERSION", cache_mod.FORMAT_VERSION + 1)
    assert stage_key("finetune", {"lr": 1e-4}, None, "d") != before


def test_key_rejects_non_json_value_naming_the_key():
    with pytest.raises(TypeError, match=r"config\.model\.path"):
        stage_key("finetune", {"model": {"path": Path("/x")}}, None, "d")


def test_key_rejects_nan_naming_the_key():
    with pytest.raises(ValueError, match=r"config\.lr"):
        stage_key("finetune", {"lr": float("nan")}, None, "d")


def test_invalid_stage_and_key_are_rejected(tmp_path):
    cache = StageCache(tmp_path)
    with pytest.raises(ValueError, match="stage"):
        cache.get("../evil", KEY)
    with pytest.raises(ValueError, match="key"):
        cache.get(STAGE, "not-hex")



def test_hit_after_miss_computes_once(backend):
    cache, calls = backend.make(), []
    first = cache.get_or_compute(STAGE, KEY, counting_compute(calls))
    second = backend.make().get_or_compute(STAGE, KEY, counting_compute(calls))
    assert (len(calls), first.hit, second.hit) == (1, False, True)


def test_entry_round_trips_its_files(backend):
    payload = os.urandom(5000)
    cache = backend.make()
    cache.get_or_compute(STAGE, KEY, counting_compute([], payload))
    loaded = backend.make().get(STAGE, KEY)
    assert (loaded / "weights.bin").read_bytes() == payload
    assert json.loads((loaded / "sub" / "report.json").read_text()) == {"auroc": 0.5}


def test_manifest_is_published_on_the_store(backend):
    backend.make().get_or_compute(STAGE, KEY, counting_compute([]))
    files = json.loads(backend.read(MANIFEST_NAME))["files"]
    assert sorted(files) == ["sub/report.json", "weights.bin"]


@pytest.mark.parametrize("kind", ["subtree", "mock"])
def test_remote_entry_is_returned_from_local_scratch(kind, tmp_path):
    backend = Backend(kind, tmp_path)
    backend.make().get_or_compute(STAGE, KEY, counting_compute([]))
    scratch = tmp_path / "reader-scratch"
    loaded = backend.make(scratch_dir=scratch).get(STAGE, KEY)
    assert loaded.is_relative_to(scratch) and (loaded / "weights.bin").is_file()


@pytest.mark.parametrize("kind", ["s3", "subtree"])
@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_damaged_scratch_copy_is_replaced_by_a_verified_download(kind, damage, tmp_path, request):
    s3 = request.getfixturevalue("s3_server") if kind == "s3" else None
    backend = Backend(kind, tmp_path, s3)
    payload = os.urandom(5000)
    backend.make().get_or_compute(STAGE, KEY, counting_compute([], payload))
    scratch = tmp_path / "reader-scratch"
    copy = backend.make(scratch_dir=scratch).get(STAGE, KEY) / "weights.bin"
    if damage == "flip":
        copy.write_bytes(bytes([copy.read_bytes()[0] ^ 0xFF]) + copy.read_bytes()[1:])
    elif damage == "truncate":
        copy.write_bytes(copy.read_bytes()[:-1])
    else:
        copy.unlink()
    loaded = backend.make(scratch_dir=scratch).get(STAGE, KEY)
    assert (loaded / "weights.bin").read_bytes() == payload


def test_file_uri_root_is_used_in_place(tmp_path):
    result = StageCache(f"file://{tmp_path}").get_or_compute(STAGE, KEY, counting_compute([]))
    assert result.path == tmp_path / "cache" / STAGE / KEY


def test_compute_writing_nothing_is_an_error(backend):
    with pytest.raises(RuntimeError, match="wrote no files"):
        backend.make().get_or_compute(STAGE, KEY, lambda tmp: None)



def flip_byte(backend):
    data = bytearray(backend.read("weights.bin"))
    data[10] ^= 0xFF
    backend.write("weights.bin", bytes(data))


def truncate(backend):
    backend.write("weights.bin", backend.read("weights.bin")[:-1])


def delete_file(backend):
    backend.fs.delete_file(backend.path("sub/report.json"))


def garble_manifest(backend):
    backend.write(MANIFEST_NAME, b'{"files": ')


DAMAGE = [flip_byte, truncate, delete_file, garble_manifest]


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__)
def test_damaged_entry_is_not_loaded(backend, damage, caplog):
    backend.make().get_or_compute(STAGE, KEY, counting_compute([]))
    damage(backend)
    with caplog.at_level(logging.WARNING, logger="trainables.cache"):
        assert backend.make().get(STAGE, KEY) is None
    assert f"cache/{STAGE}/{KEY}" in caplog.text


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__)
def test_damaged_entry_is_recomputed(backend, damage):
    calls = []
    backend.make().get_or_compute(STAGE, KEY, counting_compute(calls))
    damage(backend)
    result = backend.make().get_or_compute(STAGE, KEY, counting_compute(calls, b"fresh"))
    content = (result.path / "weights.bin").read_bytes()
    assert (len(calls), result.hit, content) == (2, False, b"fresh")


def test_files_without_manifest_are_never_loaded(backend):
    backend.write("weights.bin", b"half-published")
    assert backend.make().get(STAGE, KEY) is None


def test_files_without_manifest_are_replaced_on_compute(backend):
    backend.write("weights.bin", b"half-published")
    backend.write("stray.bin", b"left over")
    result = backend.make().get_or_compute(STAGE, KEY, counting_compute([], b"fresh"))
    assert (result.path / "weights.bin").read_bytes() == b"fresh"
    assert not backend.exists(backend.path("stray.bin"))



def test_compute_error_publishes_nothing_and_releases_lease(backend):
    cache = backend.make()

    def broken(tmp: Path) -> None:
        (tmp / "weights.bin").write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        cache.get_or_compute(STAGE, KEY, broken)
    assert not backend.exists(backend.path())
    assert not backend.exists(backend.path() + ".lease")


def test_second_call_computes_after_compute_error(backend):
    cache, calls = backend.make(), []
    with pytest.raises(ZeroDivisionError):
        cache.get_or_compute(STAGE, KEY, lambda tmp: 1 / 0)
    result = cache.get_or_compute(STAGE, KEY, counting_compute(calls))
    assert result.hit is False and len(calls) == 1


def forge_lease(backend, host: str, pid: int) -> None:
    lease = {"token": "t", "host": host, "pid": pid, "heartbeat_unix": time.time(), "beat": 0}
    backend.fs.create_dir(backend.path().rsplit("/", 1)[0], recursive=True)
    with backend.fs.open_output_stream(backend.path() + ".lease") as f:
        f.write(json.dumps(lease).encode())


def test_lease_without_heartbeat_is_broken_after_lease_s(backend):
    forge_lease(backend, "another-node", 4242)
    lease_s = 0.3
    result = backend.make(lease_s=lease_s).get_or_compute(STAGE, KEY, counting_compute([]))
    assert result.hit is False and result.waited_s >= lease_s


def test_lease_of_dead_local_process_is_broken_at_once(backend):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    forge_lease(backend, socket.gethostname(), dead.pid)
    result = backend.make(lease_s=30.0).get_or_compute(STAGE, KEY, counting_compute([]))
    assert result.hit is False and result.waited_s < 5.0


def test_wait_timeout_names_key_and_owner(backend):
    forge_lease(backend, "another-node", 4242)
    cache = backend.make(lease_s=30.0, wait_timeout_s=0.2)
    with pytest.raises(TimeoutError, match=rf"{STAGE}/{KEY}.*another-node:4242"):
        cache.get_or_compute(STAGE, KEY, counting_compute([]))


def lease_beat(backend) -> int:
    """Return the heartbeat count in the key's lease file (-1 when there is none)."""
    try:
        with backend.fs.open_input_stream(backend.path() + ".lease") as f:
            return json.loads(f.read())["beat"]
    except (FileNotFoundError, OSError, ValueError, KeyError):
        return -1


def test_heartbeat_keeps_a_slow_owner_alive(backend):
    # The owner beats every 50 ms (owner lease_s / 4); the waiter breaks a lease only after
    # 1 s without a beat, so a heartbeat thread stalled 20 beats by a loaded machine still
    # passes, while an owner that does not beat at all loses its lease after 1 s.
    owner_lease_s, waiter_lease_s = 0.2, 1.0
    calls, results, waiting_since = [], [], []

    def slow(tmp):
        calls.append(tmp)
        deadline = time.monotonic() + 30
        # Compute for longer than the waiter's lease_s, counted from the moment it waits.
        while not (waiting_since and time.monotonic() - waiting_since[0] > 1.5 * waiter_lease_s):
            assert time.monotonic() < deadline, "the waiter never started"
            time.sleep(0.02)
        results.append(("beats", lease_beat(backend)))
        counting_compute([])(tmp)

    def own():
        results.append(backend.make(lease_s=owner_lease_s).get_or_compute(STAGE, KEY, slow))

    owner = threading.Thread(target=own)
    owner.start()
    while not calls:
        time.sleep(0.01)
    waiter = backend.make(lease_s=waiter_lease_s)
    waiting_since.append(time.monotonic())
    results.append(waiter.get_or_compute(STAGE, KEY, counting_compute(calls)))
    owner.join()
    beats = [r[1] for r in results if isinstance(r, tuple)]
    cache_results = [r for r in results if not isinstance(r, tuple)]
    assert len(calls) == 1, "the waiter broke a lease whose owner kept beating"
    assert sorted(r.hit for r in cache_results) == [False, True]
    assert beats and beats[0] >= 3  # the owner's heartbeat really ran during the compute
    waited = next(r for r in cache_results if r.hit)
    assert waited.waited_s > waiter_lease_s


def test_two_threads_compute_once(backend):
    calls, results = [], []
    go = threading.Barrier(2)

    def ask():
        go.wait()
        compute = counting_compute(calls, sleep_s=0.3)
        results.append(backend.make().get_or_compute(STAGE, KEY, compute))

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    contents = {(r.path / "weights.bin").read_bytes() for r in results}
    assert len(calls) == 1 and len(contents) == 1
    assert sorted(r.hit for r in results) == [False, True]


def spawn_worker(tmp_path: Path, kind: str, count_file: Path, compute_s: float, s3=None):
    base = s3.uri(f"cache-tests/{tmp_path.name}") if kind == "s3" else str(tmp_path)
    args = [sys.executable, str(WORKER), base, kind, STAGE, KEY]
    args += [str(count_file), str(compute_s)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("kind", ["local", "s3"])
@pytest.mark.slow
def test_two_processes_compute_once(kind, tmp_path, request):
    s3 = request.getfixturevalue("s3_server") if kind == "s3" else None
    count_file = tmp_path / "computes.txt"
    procs = [spawn_worker(tmp_path, kind, count_file, compute_s=1.5, s3=s3) for _ in range(2)]
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=30)
        assert p.returncode == 0, stderr
        outs.append(json.loads(stdout))
    assert len(count_file.read_text().split()) == 1
    assert sorted(o["hit"] for o in outs) == [False, True] and {o["size"] for o in outs} == {1000}


@pytest.mark.parametrize("kind", ["local", "s3"])
@pytest.mark.slow
def test_writer_killed_mid_compute_is_recomputed(kind, tmp_path, request):
    s3 = request.getfixturevalue("s3_server") if kind == "s3" else None
    count_file = tmp_path / "computes.txt"
    writer = spawn_worker(tmp_path, kind, count_file, compute_s=60, s3=s3)
    deadline = time.monotonic() + 20
    while not (count_file.exists() and count_file.read_text()):
        assert time.monotonic() < deadline and writer.poll() is None, "writer never computed"
        time.sleep(0.02)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    backend = Backend(kind, tmp_path, s3)
    assert backend.make().get(STAGE, KEY) is None
    calls = []
    result = backend.make(lease_s=0.5).get_or_compute(STAGE, KEY, counting_compute(calls))
    assert result.hit is False and len(calls) == 1
    assert not list((tmp_path / "store" / "cache" / STAGE).glob("*.staging-*"))
    assert backend.read("weights.bin") == b"weights" * 100  # the new entry, on the store


def test_owner_dying_after_it_was_seen_alive_is_noticed_at_once(tmp_path):
    import subprocess
    import sys

    from trainables.cache.leases import StaleWatch as _StaleWatch

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    raw = json.dumps({"host": socket.gethostname(), "pid": child.pid, "token": "t"}).encode()
    watch = _StaleWatch(lease_s=3600)
    assert watch.is_stale(raw) is False
    child.kill()
    child.wait()
    assert watch.is_stale(raw) is True


def test_zombie_owner_counts_as_dead():
    import os
    import subprocess
    import sys

    from trainables.cache.leases import pid_is_dead as _pid_is_dead

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    while True:  # let it exit without reaping it: a zombie until wait()
        try:
            if open(f"/proc/{child.pid}/stat").read().rsplit(")", 1)[-1].split()[0] == "Z":
                break
        except OSError:
            break
    assert _pid_is_dead(child.pid) is True
    child.wait()
    assert not os.path.exists(f"/proc/{child.pid}") or _pid_is_dead(child.pid)
