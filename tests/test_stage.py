"""Units commit on their own; a rerun redoes only what did not commit, and equals a clean run."""

import json
import pickle

import pytest

from emu_data.core import corpus, manifest
from emu_data.synthetic import sample
from emu_data.engine.stage import OutputOptions, StageIncomplete, UnitTask, run_stage

CONFIG = sample.SampleConfig(n=4, per_unit=2, sources=("laion", "webvid"))


def _run(out, ray, config=CONFIG, **output):
    return sample.make_sample(config, OutputOptions(out, **output), ray)


def _shards(m):
    return [(s["path"], s["sha256"]) for s in m["shards"] + m["status_shards"]]


def test_a_finished_run_is_skipped(tmp_path, ray_session):
    first = _run(tmp_path / "c", ray_session)
    again = _run(tmp_path / "c", ray_session)
    assert again.reused and again.ran_units == 0
    assert _shards(again.manifest) == _shards(first.manifest)


def test_rerun_after_a_crash_redoes_only_the_lost_unit(tmp_path, ray_session):
    out = tmp_path / "c"
    clean = _run(out, ray_session).manifest
    # simulate a crash inside unit webvid-00001: its marker never written, a shard half-written
    (out / corpus.PARTS_DIR / "webvid-00001.json").unlink()
    (out / manifest.MANIFEST_NAME).unlink()
    lost = out / "data" / "webvid-00001-00000.arrow"
    lost.rename(lost.with_name(".tmp-" + lost.name))
    resumed = _run(out, ray_session)
    assert resumed.ran_units == 1 and resumed.skipped_units == 3
    assert _shards(resumed.manifest) == _shards(clean)
    assert not list((out / "data").glob(".tmp-*"))


def test_a_rerun_with_another_layout_is_refused(tmp_path, ray_session):
    _run(tmp_path / "c", ray_session)
    with pytest.raises(corpus.LayoutChanged):
        _run(tmp_path / "c", ray_session, shard_rows=1)
    changed = _run(tmp_path / "c", ray_session, shard_rows=1, overwrite=True).manifest
    assert all(s["rows"] == 1 for s in changed["shards"])


def _statuses(payload, writer):
    for name in payload:
        writer.add_status({"key": f"laion:{name}", "source": "laion", "input": name,
                           "status": "ok" if not name.startswith("bad") else "http_503",
                           "error": None if not name.startswith("bad") else "try later",
                           "attempts": 1, "samples": 0})


def _generic(out, units, ray, redo=None):
    return run_stage("test", units, _statuses, output=OutputOptions(out), layout={}, config={},
                     ray=ray, redo=redo)


def test_changed_or_dropped_units_are_redone_and_leave_no_orphans(tmp_path, ray_session):
    from emu_data.inspect.validate import validate

    out = tmp_path / "c"
    _generic(out, [corpus.Unit("a", ("1",)), corpus.Unit("b", ("2",)), corpus.Unit("c", ("3",))], ray_session)
    again = _generic(out, [corpus.Unit("a", ("1",)), corpus.Unit("b", ("2", "4"))], ray_session)
    assert again.ran_units == 1 and again.skipped_units == 1  # b changed, a kept, c gone
    assert sorted(p.stem for p in (out / corpus.PARTS_DIR).glob("*.json")) == ["a", "b"]
    assert again.manifest["status_counts"] == {"ok": 3}
    assert validate([out]).ok


def test_redo_reruns_only_the_parts_it_picks(tmp_path, ray_session):
    out = tmp_path / "c"
    units = [corpus.Unit("a", ("1",)), corpus.Unit("b", ("bad-2",))]
    _generic(out, units, ray_session)
    retried = _generic(out, units, ray_session,
                       redo=lambda part: "http_503" in part["status_counts"])
    assert retried.ran_units == 1 and retried.skipped_units == 1


def test_resolved_config_is_saved_beside_the_output(tmp_path, ray_session):
    _run(tmp_path / "c", ray_session)
    saved = json.loads((tmp_path / "c" / corpus.CONFIG_NAME).read_text())
    assert saved["sample"]["n"] == 4 and saved["output"]["shard_rows"] == 10_000
    assert manifest.read(tmp_path / "c")["config"] == saved


def _explode(payload, writer):
    if payload == "bad":
        raise RuntimeError("this unit is broken")
    writer.add_status({"key": f"laion:{payload}", "source": "laion", "input": None, "status": "ok",
                       "error": None, "attempts": 1, "samples": 0})


def test_a_failing_unit_does_not_stop_the_others_and_no_manifest_is_written(tmp_path, ray_session):
    units = [corpus.Unit("u-a", "a"), corpus.Unit("u-bad", "bad"), corpus.Unit("u-c", "c")]
    with pytest.raises(StageIncomplete, match="u-bad.*this unit is broken"):
        run_stage("test", units, _explode, output=OutputOptions(tmp_path / "c"), layout={},
                  config={}, ray=ray_session)
    assert sorted(p.stem for p in (tmp_path / "c" / corpus.PARTS_DIR).glob("*.json")) == ["u-a", "u-c"]
    assert not (tmp_path / "c" / manifest.MANIFEST_NAME).exists()


def test_stage_tasks_pickle():
    task = UnitTask(tmp := __import__("pathlib").Path("/tmp/x"), OutputOptions(tmp).limits, "f", sample.process)
    assert pickle.loads(pickle.dumps(task)) == task
    for unit in sample.units(CONFIG):
        assert pickle.loads(pickle.dumps(unit)) == unit
