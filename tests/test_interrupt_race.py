"""map_tasks never cancels the tasks a stopped caller leaves behind.

Ray aborts the driver ("Check failed: it != submissible_tasks_.end() Tried to complete task
that was not pending") when ray.cancel meets a task whose reply is being handled; a SIGTERM
landing in map_tasks's ray.wait did that to about one run in ten (exit 1, not 143). The race
itself is too rare to test; what is tested is that the path to it is gone: no ray.cancel,
tasks of a plain early close waited for, tasks of an interrupted one left at once to finish.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import pytest

from emu_data.cli import Terminated
from emu_data.engine import runtime

pytestmark = pytest.mark.timeout(300)

IN_FLIGHT = runtime.RayOptions(max_in_flight=3)


def _task(item: int, where: str) -> int:
    """Item 0 ends at once; the others once `go` exists (a minute at most: nothing hangs)."""
    where = Path(where)
    (where / f"start-{item}").touch()
    deadline = time.monotonic() + 60
    while item and not (where / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    (where / f"end-{item}").touch()
    return item


def _ended(where: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in where.glob("end-*"))


@pytest.fixture
def ray_calls(ray_session, monkeypatch):
    """ray.cancel and ray.wait as map_tasks calls them: cancel fails the test; wait is
    recorded (and can be made to raise, as a signal landing in it does)."""
    ray = runtime.ensure_ray(ray_session)
    calls = {"wait": [], "cancel": [], "raise_in_wait": None}
    real_wait = ray.wait

    def wait(refs, *args, **kwargs):
        calls["wait"].append(len(refs))
        if calls["raise_in_wait"] is not None:
            raise calls["raise_in_wait"]
        return real_wait(refs, *args, **kwargs)

    monkeypatch.setattr(ray, "wait", wait)
    monkeypatch.setattr(ray, "cancel", lambda *a, **k: calls["cancel"].append(a))
    return calls


def _wait_for_ends(where: Path, items: list[int]) -> list[int]:
    deadline = time.monotonic() + 60
    while _ended(where) != items and time.monotonic() < deadline:
        time.sleep(0.05)
    return _ended(where)


def test_a_caller_that_stops_early_has_the_pending_tasks_finish_not_cancelled(tmp_path, ray_calls):
    results = runtime.map_tasks(partial(_task, where=str(tmp_path)), range(3), options=IN_FLIGHT)
    for item, result in results:
        assert (item, result) == (0, 0)
        break
    (tmp_path / "go").touch()
    results.close()
    assert ray_calls["cancel"] == []
    assert _ended(tmp_path) == [0, 1, 2]   # waited for: none goes on writing behind its back


def test_an_interrupt_in_the_callers_loop_leaves_the_pending_tasks_at_once(tmp_path, ray_calls):
    results = runtime.map_tasks(partial(_task, where=str(tmp_path)), range(3), options=IN_FLIGHT)
    with pytest.raises(Terminated):
        try:
            for item, _ in results:
                assert item == 0
                ray_calls["wait"].clear()
                raise Terminated()   # SIGTERM as the CLI delivers it, between two results
        finally:
            results.close()
    assert ray_calls["cancel"] == [] and ray_calls["wait"] == []   # neither cancelled nor waited for
    assert _ended(tmp_path) == [0]
    (tmp_path / "go").touch()
    assert _wait_for_ends(tmp_path, [0, 1, 2]) == [0, 1, 2]   # left running, not killed


def test_an_interrupt_inside_ray_wait_leaves_the_pending_tasks_at_once(tmp_path, ray_calls):
    results = runtime.map_tasks(partial(_task, where=str(tmp_path)), range(3), options=IN_FLIGHT)
    with pytest.raises(Terminated):
        for item, _ in results:
            assert item == 0
            ray_calls["wait"].clear()
            ray_calls["raise_in_wait"] = Terminated()   # where the CI failure's SIGTERM landed
    assert ray_calls["cancel"] == [] and ray_calls["wait"] == [2]   # the interrupted wait only
    ray_calls["raise_in_wait"] = None
    (tmp_path / "go").touch()
    assert _wait_for_ends(tmp_path, [0, 1, 2]) == [0, 1, 2]
