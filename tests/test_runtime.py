"""runtime.py: embedded Ray by default; a cluster joined by address gives the same output."""

import pytest
from ray.cluster_utils import Cluster

from emu_data.engine import runtime
from emu_data.synthetic import sample
from emu_data.engine.stage import OutputOptions

CONFIG = sample.SampleConfig(n=4, per_unit=1, sources=("laion", "mmc4", "yt_storyboard"))


def _digest(result):
    m = result.manifest
    return [(s["path"], s["rows"], s["sha256"]) for s in m["shards"] + m["status_shards"]]


def _square(x):
    if x == 3:
        raise ValueError("three is unlucky")
    return x * x


def test_map_tasks_yields_every_item_and_reports_failures(ray_session):
    got = dict(runtime.map_tasks(_square, range(6), options=runtime.RayOptions(max_in_flight=2)))
    assert {k: v for k, v in got.items() if k != 3} == {0: 0, 1: 1, 2: 4, 4: 16, 5: 25}
    assert isinstance(got[3], runtime.TaskFailure) and "three is unlucky" in got[3].error


class _Counter:
    def __init__(self, start):
        self.total = start

    def add(self, n):
        self.total += n
        return self.total


def _gone(ray, handle, seconds=20.0) -> bool:
    """ray.kill is asynchronous: the name goes once the actor is dead."""
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            ray.get_actor(handle.name, namespace=handle.namespace)
        except ValueError:
            return True
        time.sleep(0.1)
    return False


def _add_through(task):
    handle, n = task
    return handle.call("add", n)


def test_one_shared_object_serves_every_task_and_is_gone_after(ray_session, monkeypatch):
    monkeypatch.setattr(runtime, "_POSTFIX_S", 0.01)
    shown = []
    with runtime.shared(_Counter, 100, options=ray_session) as handle:
        tasks = [(handle, n) for n in range(1, 9)]
        results = dict(runtime.map_tasks(_add_through, tasks, options=runtime.RayOptions(max_in_flight=4),
                                         postfix=lambda: shown.append(handle.call("add", 0)) or "x"))
        assert handle.call("add", 0) == 100 + sum(range(1, 9))   # every task added to the same one
        assert sorted(results.values())[-1] == 136 and shown   # the bar asked for its words
    ray = runtime.ensure_ray(ray_session)
    assert _gone(ray, handle)   # killed with the block: no actor outlives its run
    local = runtime.LocalHandle(_Counter(1))
    assert local.call("add", 2) == 3


@pytest.mark.slow
def test_two_node_cluster_gives_the_same_output_as_one_node(tmp_path, ray_session):
    one_node = sample.make_sample(CONFIG, OutputOptions(tmp_path / "one"), ray_session)
    runtime.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        options = runtime.RayOptions(address=cluster.address)
        two_nodes = sample.make_sample(CONFIG, OutputOptions(tmp_path / "two"), options)
        ray = runtime.ensure_ray(options)
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    finally:
        runtime.shutdown()
        cluster.shutdown()
        runtime.ensure_ray(ray_session)  # give the rest of the session its local Ray back
    assert _digest(two_nodes) == _digest(one_node)
