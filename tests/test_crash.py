"""Crash safety of an ingest run (`emu-data laion`, img2dataset inside Ray workers).

kill -9 of the driver at seeded points of its progress, kill -9 of a Ray worker in the
middle of a unit, an output path that cannot be written, a disk that fills mid-run and a
file-size limit: after each, the rerun's corpus equals an uninterrupted run's (same keys,
no duplicates, the same bytes, the same status table), its manifest is complete and
`emu-data validate` passes; a write error is one clear line and never leaves a corrupt or
misleading manifest. Only 127.0.0.1 is used; nothing waits on the clock in an assert.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from functools import partial
from pathlib import Path

import pytest

from emu_data import cli
from emu_data.core import corpus, manifest, records
from emu_data.synthetic.site.laion import SitePair, publish_laion
from emu_data.core.shards import TMP_PREFIX, ShardLimits, read_shard
from emu_data.engine.stage import UnitTask

pytestmark = pytest.mark.timeout(300)   # a run that hangs fails here, not at the suite's limit

ROWS, ROWS_PER_UNIT = 240, 8
UNITS = ROWS // ROWS_PER_UNIT
PAIRS = [SitePair(i, "404" if i % 10 == 7 else "truncated" if i % 40 == 13 else None, seed=8) for i in range(ROWS)]
SLOW = 0.03  # seconds per request while a run is to be interrupted: kill points land mid-run


class _SlowHandler(http.server.SimpleHTTPRequestHandler):
    delay = {"seconds": 0.0}

    def do_GET(self):
        time.sleep(self.delay["seconds"])
        super().do_GET()

    def log_message(self, *args):
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # a killed run hangs up mid-answer: say nothing
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash-site")
    handler = type("Handler", (_SlowHandler,), {"delay": {"seconds": 0.0}})
    server = _Server(("127.0.0.1", 0), partial(handler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        files = publish_laion(root, f"http://127.0.0.1:{server.server_address[1]}", PAIRS, row_group_size=50)
        yield {"input": files.laion, "delay": handler.delay}
    finally:
        server.shutdown()
        server.server_close()


def _args(site, out: Path) -> list[str]:
    return ["laion", "--input", str(site["input"]), "--out", str(out), "--allow-private-addresses",
            "--rows-per-unit", str(ROWS_PER_UNIT), "--shard-rows", "3", "--thread-count", "2",
            "--retries", "0", "--timeout", "10"]


def _run(site, out: Path, *, slow: bool = False) -> int:
    """One in-process run on the session's Ray (its workers are warm)."""
    site["delay"]["seconds"] = SLOW if slow else 0.0
    try:
        return cli.main(_args(site, out))
    finally:
        site["delay"]["seconds"] = 0.0


@pytest.fixture(scope="module")
def reference(site, tmp_path_factory, ray_session):
    out = tmp_path_factory.mktemp("crash-reference") / "corpus"
    assert _run(site, out) == 0
    return _snapshot(out)


def _snapshot(out: Path) -> dict:
    """What must equal between runs; also checks what must hold of any finished corpus."""
    built = manifest.read(out)   # a complete, schema-valid manifest
    samples = [r for p in corpus.shard_paths(out) for r in read_shard(p).to_pylist()]
    status = [r for p in corpus.shard_paths(out, corpus.STATUS_DIR) for r in read_shard(p).to_pylist()]
    keys = [r["key"] for r in samples]
    assert len(keys) == len(set(keys)), "duplicate sample keys"
    assert len(status) == len({r["key"] for r in status}) == ROWS, "status rows lost or doubled"
    on_disk = {p.relative_to(out).as_posix() for sub in (corpus.DATA_DIR, corpus.STATUS_DIR)
               for p in (out / sub).iterdir()}
    listed = {s["path"] for s in built["shards"] + built["status_shards"]}
    assert on_disk == listed, f"stray files: {sorted(on_disk ^ listed)}"
    assert sorted(p.stem for p in (out / corpus.PARTS_DIR).glob("*.json")) == sorted(
        {s["path"].split("/")[1].rsplit("-", 1)[0] for s in built["status_shards"]})
    return {
        "samples": {r["key"]: (hashlib.sha256(b"".join(i["bytes"] for i in r["images"] if i)).hexdigest(),
                               r["texts"]) for r in samples},
        "status": {r["key"]: r["status"] for r in status},
        "counts": (built["rows"], built["status_counts"], built["source_counts"]),
        "shards": [(s["path"], s["sha256"]) for s in built["shards"] + built["status_shards"]],  # byte for byte
    }


def _same_as_reference(out: Path, reference: dict, capsys) -> None:
    got = _snapshot(out)
    assert got["status"] == reference["status"]
    assert got["samples"].keys() == reference["samples"].keys()
    assert got["samples"] == reference["samples"]
    assert got["counts"] == reference["counts"]
    assert got["shards"] == reference["shards"]
    capsys.readouterr()
    assert cli.main(["validate", "--deep", str(out)]) == 0, capsys.readouterr().out


def _committed(out: Path) -> int:
    return len([p for p in (out / corpus.PARTS_DIR).glob("*.json") if not p.name.startswith(".")])


# ---- processes -----------------------------------------------------------------------

def _proc_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, session id, command line) of every process (from /proc)."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):
            continue
        table[int(entry)] = (int(fields[1]), int(fields[3]), cmdline)
    return table


def _raylets(driver: int, table: dict) -> set[int]:
    return {pid for pid, (ppid, _, cmd) in table.items() if ppid == driver and "/raylet/raylet" in cmd}


def _busy_workers(driver: int) -> list[int]:
    """Ray workers of the cluster `driver` started that are running a unit right now."""
    table = _proc_table()
    raylets = _raylets(driver, table)
    return [pid for pid, (ppid, _, cmd) in table.items() if ppid in raylets and cmd.startswith("ray::_call")]


def _kill_session(sid: int) -> None:
    """End what a killed driver left behind (its session: Ray's agents outlive it)."""
    for pid, (_, session, _) in _proc_table().items():
        if session == sid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _wait_for_units(out: Path, n: int, process=None, limit: float = 300) -> None:
    deadline = time.monotonic() + limit
    while _committed(out) < n:
        if process is not None and process.poll() is not None:
            return  # it finished before the kill point: then the kill lands after the end
        if time.monotonic() > deadline:
            raise AssertionError(f"{n} units were not committed within {limit} s")
        time.sleep(0.005)


# ---- kill -9 ---------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_driver_killed_at_a_random_point_resumes_to_the_same_corpus(site, reference, tmp_path, seed, capsys):
    rng = random.Random(seed)
    kill_after, extra = rng.randint(1, UNITS), rng.uniform(0, 0.2)   # units committed, then a bit more
    out = tmp_path / "corpus"
    log = tmp_path / "driver.log"
    site["delay"]["seconds"] = SLOW
    with open(log, "w") as err:
        driver = subprocess.Popen([sys.executable, "-m", "emu_data.cli", *_args(site, out), "--num-cpus", "1"],
                                  start_new_session=True, stdout=subprocess.DEVNULL, stderr=err)
    try:
        _wait_for_units(out, kill_after, driver)
        time.sleep(extra)
        os.kill(driver.pid, signal.SIGKILL)   # the driver only: Ray's own processes are left to cope
        driver.wait()
        assert driver.returncode in (-signal.SIGKILL, 0), log.read_text()[-2000:]
        # the rerun starts at once, while the dead driver's workers still finish their units
        # (they outlive it by a second or so): both write the same units at the same time
        assert _run(site, out, slow=True) == 0
    finally:
        site["delay"]["seconds"] = 0.0
        _kill_session(driver.pid)
    _same_as_reference(out, reference, capsys)


@pytest.mark.slow
def test_sigterm_stops_a_run_like_ctrl_c_one_line_exit_143_and_it_resumes(site, reference, tmp_path, capsys):
    """What `timeout`, Slurm and Kubernetes send. Before: Ray's driver handler sys.exit'ed from
    wherever it landed and its core worker aborted: a native stack dump and exit 134."""
    out = tmp_path / "corpus"
    log = tmp_path / "driver.log"
    site["delay"]["seconds"] = SLOW
    with open(log, "w") as err:
        driver = subprocess.Popen([sys.executable, "-m", "emu_data.cli", *_args(site, out), "--num-cpus", "1"],
                                  start_new_session=True, stdout=subprocess.DEVNULL, stderr=err)
    try:
        _wait_for_units(out, 2, driver)
        driver.send_signal(signal.SIGTERM)
        driver.wait(timeout=120)
        printed = log.read_text()
        assert driver.returncode == 143, printed[-3000:]
        assert "terminated: committed work is kept; rerun the same command to resume" in printed
        assert "Traceback" not in printed and "*** SIG" not in printed and "Aborted" not in printed
        assert "Token authentication" not in printed   # Ray's default auth said, not warned of
        assert _run(site, out, slow=True) == 0
    finally:
        site["delay"]["seconds"] = 0.0
        _kill_session(driver.pid)
    _same_as_reference(out, reference, capsys)


@pytest.mark.slow
def test_a_ray_worker_killed_mid_unit_is_retried_and_the_corpus_is_whole(site, reference, tmp_path, capsys):
    if not _raylets(os.getpid(), _proc_table()):
        pytest.skip("the session's Ray is not embedded in this process (RAY_ADDRESS?): its workers are not ours")
    out, killed = tmp_path / "corpus", []

    def kill_a_worker():
        _wait_for_units(out, random.Random(4).randint(2, UNITS // 2))
        deadline = time.monotonic() + 60
        while not killed and time.monotonic() < deadline:
            for pid in _busy_workers(os.getpid()):
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    break
                except ProcessLookupError:
                    continue
            time.sleep(0.005)

    killer = threading.Thread(target=kill_a_worker, daemon=True)
    killer.start()
    code = _run(site, out, slow=True)
    killer.join()
    printed = capsys.readouterr().err
    assert killed, "no busy Ray worker was found to kill"
    # Ray retries the unit on another worker; were it out of retries the run would say so
    assert code == 0 or (code == 1 and "rerun" in printed), printed
    assert _run(site, out) == 0
    _same_as_reference(out, reference, capsys)


# ---- two live runs on one --out (issue 15, break 4) ----------------------------------------

def test_a_second_run_on_the_same_out_stops_at_once_naming_the_first(site, reference, tmp_path, capsys):
    """Before: both runs exited 0 and 24 shards no longer matched their sha256. Now the second
    exits 2 at once naming the first; the first, killed with -9, still resumes."""
    out = tmp_path / "corpus"
    site["delay"]["seconds"] = SLOW
    driver = subprocess.Popen([sys.executable, "-m", "emu_data.cli", *_args(site, out), "--num-cpus", "1"],
                              start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_units(out, 1, driver)
        assert driver.poll() is None, "the first run ended before the second started"
        capsys.readouterr()
        assert cli.main(_args(site, out)) == 2
        said = capsys.readouterr().err
        assert said.count("\n") == 1 and "being written by another run" in said and f"pid {driver.pid} " in said
        assert "emu-data laion --input" in said
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        assert _run(site, out, slow=True) == 0   # the kernel dropped the dead run's lock
    finally:
        site["delay"]["seconds"] = 0.0
        _kill_session(driver.pid)
    _same_as_reference(out, reference, capsys)


def test_a_committed_shard_whose_bytes_changed_is_redone_not_called_complete(site, reference, tmp_path, capsys):
    """The completeness check hashes: a shard changed in place (same size, as a second writer
    leaves it) is not 'complete'; its unit is run again and the corpus is whole."""
    out = tmp_path / "corpus"
    assert _run(site, out) == 0
    built = manifest.read(out)
    shard = out / next(s["path"] for s in built["shards"] if s["rows"])
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    capsys.readouterr()
    assert _run(site, out) == 0
    _same_as_reference(out, reference, capsys)


def _two_samples(payload, writer):
    for key in payload:
        writer.add_sample(records.sample(key, "laion", [bytes([len(key)]) * 64, f"caption {key}"]))
        writer.add_status(records.status(key, "laion", "ok", input=key, samples=1))


def test_what_a_kill_leaves_at_each_step_of_a_commit_is_redone_never_kept(tmp_path):
    """Every point of the commit protocol a kill -9 can stop at, planted on disk: only the
    unit whose marker was renamed into place counts; everything else is cleared."""
    out, fingerprint = tmp_path / "corpus", "f" * 64
    units = [corpus.Unit(f"u-{i:05d}", [f"laion:{i}a", f"laion:{i}b"]) for i in range(4)]
    task = UnitTask(out, ShardLimits(max_rows=1), fingerprint, _two_samples)
    out.mkdir()
    done = [task(u) for u in units]
    parts = out / corpus.PARTS_DIR
    (parts / "u-00001.json").unlink()                                    # shards closed, no marker
    os.replace(parts / "u-00002.json", parts / f"{TMP_PREFIX}u-00002.json")   # marker not renamed yet
    (parts / "u-00003.json").unlink()                                    # killed inside a shard
    last = out / done[3]["shards"][-1]["path"]
    os.replace(last, last.with_name(TMP_PREFIX + last.name))
    (out / f"{TMP_PREFIX}{manifest.MANIFEST_NAME}").write_text('{"half": ')   # killed writing the manifest

    kept = corpus.prepare(out, {}, fingerprint, units)
    assert list(kept) == ["u-00000"]
    left = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert left == {s["path"] for s in done[0]["shards"] + done[0]["status_shards"]} | {
        "_parts/u-00000.json", corpus.CONFIG_NAME, corpus.LOCK_NAME}


_ORPHAN_SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from emu_data.core import records
    from emu_data.core.corpus import Unit
    from emu_data.core.shards import ShardLimits
    from emu_data.engine.stage import UnitTask

    out, holding = Path(sys.argv[1]), Path(sys.argv[2])

    def process(payload, writer):   # a worker of a killed driver, still busy with its unit
        for key in payload:
            writer.add_status(records.status(key, "laion", "http_404", input=key, error="gone"))
        holding.write_text("mid-unit")
        time.sleep(1.5)

    UnitTask(out, ShardLimits(), "f" * 64, process)(Unit("u-00000", ["laion:1", "laion:2"]))
""")


def test_a_rerun_waits_for_a_dead_drivers_worker_that_still_writes_a_unit(tmp_path):
    """The race behind the driver-kill test, made certain: the rerun's prepare must neither
    delete files the old worker is writing nor miss the unit it commits."""
    out, holding = tmp_path / "corpus", tmp_path / "holding"
    out.mkdir()
    orphan = subprocess.Popen([sys.executable, "-c", _ORPHAN_SCRIPT, str(out), str(holding)])
    try:
        while not holding.exists():
            assert orphan.poll() is None, "the writer ended before it held its unit"
            time.sleep(0.01)
        unit = corpus.Unit("u-00000", ["laion:1", "laion:2"])
        parts = corpus.prepare(out, {}, "f" * 64, [unit])
        assert orphan.wait(timeout=60) == 0
    finally:
        orphan.kill()
    assert list(parts) == ["u-00000"] and parts["u-00000"]["status_counts"] == {"http_404": 2}
    assert all((out / s["path"]).is_file() for s in parts["u-00000"]["status_shards"])
    assert not list(out.rglob(f"{TMP_PREFIX}*"))


def test_a_task_the_killed_run_had_queued_writes_nothing_once_a_rerun_has_prepared(tmp_path):
    """The CI failure behind the driver-kill test: a unit task of the killed run started after
    the rerun had prepared (and committed the same unit) and replaced its shard. A writer of any
    run but the one that prepared the directory last is refused before it writes a byte."""
    out, fingerprint = tmp_path / "corpus", "f" * 64
    unit = corpus.Unit("u-00000", ["laion:1", "laion:2"])
    out.mkdir()
    corpus.prepare(out, {}, fingerprint, [unit], run_id="killed")
    corpus.prepare(out, {}, fingerprint, [unit], run_id="rerun")
    part = UnitTask(out, ShardLimits(max_rows=1), fingerprint, _two_samples, "rerun")(unit)
    before = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    stale = UnitTask(out, ShardLimits(max_rows=1000), fingerprint, _two_samples, "killed")
    with pytest.raises(corpus.StaleRun, match="another run"):
        stale(unit)
    after = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert corpus.committed_parts(out) == {"u-00000": part}


# ---- write errors ---------------------------------------------------------------------

def _one_line_error(text: str, *fragments: str) -> None:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in text, text
    assert all(f in lines[0] for f in fragments), lines[0]


def test_an_output_under_a_regular_file_is_a_clear_error(site, tmp_path, capsys, ray_session):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code = _run(site, blocker / "corpus")
    assert code != 0
    _one_line_error(capsys.readouterr().err, "cannot write", str(blocker), "Not a directory")
    assert blocker.read_text() == "not a directory"
    if os.geteuid() != 0:   # root writes through any permission bits; the tmpfs test covers it (ro)
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert _run(site, locked / "corpus") != 0
        _one_line_error(capsys.readouterr().err, "cannot write", str(locked), "Permission denied")


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of 256 KiB (root only, where mounting is allowed); yields a resize function."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root and a mount-capable container")

    def remount(options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(disk)], check=True, capture_output=True)

    try:
        yield disk, remount
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_a_disk_that_fills_mid_run_is_a_clear_error_and_a_rerun_with_room_completes(
        site, reference, small_disk, capsys):
    disk, remount = small_disk
    out = disk / "corpus"

    remount("ro")   # root ignores permissions; a read-only filesystem stops root too
    assert _run(site, out) != 0
    _one_line_error(capsys.readouterr().err, "cannot write", str(out), "Read-only file system")

    remount("rw")
    assert _run(site, out) == 1
    _one_line_error(capsys.readouterr().err, "cannot write", str(out), "No space left on device")
    assert not (out / manifest.MANIFEST_NAME).exists()
    assert 0 < _committed(out) < UNITS   # what fitted stays committed
    for part in corpus.committed_parts(out).values():   # every marker names whole shards
        assert all((out / s["path"]).stat().st_size == s["bytes"] for s in part["shards"] + part["status_shards"])

    remount("size=64m")
    assert _run(site, out) == 0
    _same_as_reference(out, reference, capsys)

    remount("ro")   # a finished corpus on read-only storage: still complete, no lock needed
    assert _run(site, out) == 0


_FSIZE_SCRIPT = textwrap.dedent("""
    import resource, signal, sys
    from pathlib import Path
    from emu_data.core import manifest, records
    from emu_data.core.corpus import Unit
    from emu_data.core.shards import OutputError, ShardLimits
    from emu_data.engine.stage import UnitTask

    out, limit = Path(sys.argv[1]), int(sys.argv[2])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # writes past the limit fail with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    def process(payload, writer):   # two samples of 256 KiB: their shard passes the limit
        for key in payload:
            writer.add_sample(records.sample(key, "laion", [bytes(range(256)) * 1024, "a caption"]))

    try:
        UnitTask(out, ShardLimits(max_rows=1000), "f" * 64, process)(Unit("unit-00000", ["laion:1", "laion:2"]))
    except OutputError as e:
        print("unit:", e)
    try:
        manifest.write_json_atomic(out / manifest.MANIFEST_NAME, {"big": "x" * 2 * limit})
    except OutputError as e:
        print("manifest:", e)
""")


def test_a_file_size_limit_mid_write_is_a_clear_error_without_a_half_shard_or_manifest(tmp_path):
    """No root needed: RLIMIT_FSIZE makes writes past the limit fail (EFBIG) in a plain process."""
    out = tmp_path / "corpus"
    out.mkdir()
    (out / manifest.MANIFEST_NAME).write_text('{"previous": "complete"}\n')
    done = subprocess.run([sys.executable, "-c", _FSIZE_SCRIPT, str(out), str(300 * 1024)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    unit, man = done.stdout.splitlines()
    assert unit.startswith("unit: cannot write ") and str(out / corpus.DATA_DIR) in unit and "File too large" in unit
    assert man.startswith("manifest: cannot write ") and "File too large" in man
    assert (out / manifest.MANIFEST_NAME).read_text() == '{"previous": "complete"}\n'   # the old one stays
    assert not list(out.rglob(f"{TMP_PREFIX}*"))          # no temporary file left behind
    assert not list((out / corpus.DATA_DIR).glob("*"))   # no half shard under a final name
    assert not (out / corpus.PARTS_DIR / "unit-00000.json").exists()
