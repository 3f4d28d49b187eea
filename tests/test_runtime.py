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
