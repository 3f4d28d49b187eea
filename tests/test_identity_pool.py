"""The identity pool's rules (pool.py) on a fake clock, the identities file, and secrets.

No Ray and no sleeping here: the pool is plain Python with an injectable clock, so budgets,
cooldowns and retirement are checked over simulated hours. test_youtube_identities.py runs
the same pool as the shared Ray actor against a server that counts.
"""

import json
import random
import string

import pytest
from hypothesis import given, settings, strategies as st

from emu_data.core import errors, secrets
from emu_data.sources.youtube import identities, pool
from emu_data.sources.youtube.identities import Identity


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _pool(members, clock, **policy):
    return pool.IdentityPool(members, pool.PoolPolicy(**policy), clock=clock, seed=1)


def _simulate(p: pool.IdentityPool, clock: Clock, videos: int, duration: float, refuse=lambda name: None):
    """Workers taking videos one after another as the pool allows: [(start, end, identity)]."""
    done, running, queue = [], [], list(range(videos))
    for _ in range(200_000):
        if not queue and not running:
            return done
        for job in [r for r in running if r[1] <= clock.now]:
            running.remove(job)
            p.release(job[3], refuse(job[2]) or "ok")
            done.append(job[:3])
        while queue:
            answer = p.lease()
            if not isinstance(answer, pool.Lease):
                break
            queue.pop()
            running.append((clock.now, clock.now + duration, answer.identity.name, answer.token))
        clock.now += 0.5
    raise AssertionError("the simulation did not finish")


@pytest.mark.parametrize("budget, duration", [(5, 1.0), (12, 30.0), (3, 900.0)])
def test_no_window_ever_holds_more_than_the_budget(budget, duration):
    clock = Clock()
    members = [Identity(f"id{i}", videos_per_hour=budget, concurrent=3) for i in range(3)]
    p = _pool(members, clock)
    done = _simulate(p, clock, videos=60, duration=duration)
    assert len(done) == 60
    for member in members:
        starts = sorted(s for s, _, name in done if name == member.name)
        assert starts   # every identity served
        for i, t in enumerate(starts):   # any window of an hour from any video's start
            assert sum(1 for u in starts[i:] if u < t + 3600) <= budget


def test_videos_spread_over_identities_and_one_at_a_time_unless_allowed():
    clock = Clock()
    p = _pool([Identity("a", videos_per_hour=0), Identity("b", videos_per_hour=0)], clock)
    first, second = p.lease(), p.lease()
    assert {first.identity.name, second.identity.name} == {"a", "b"}
    assert isinstance(p.lease(), pool.Wait)   # both busy: a third worker waits
    p.release(first.token, "ok")
    assert p.lease().identity.name == first.identity.name


def test_the_sleep_between_videos_is_kept_per_identity_across_workers():
    clock = Clock()
    p = _pool([Identity("a", videos_per_hour=0, concurrent=8)], clock, sleep_interval=10.0, max_sleep_interval=20.0)
    p.lease()
    wait = p.lease()
    assert isinstance(wait, pool.Wait) and wait.seconds > 0
    clock.now += 20.0
    assert isinstance(p.lease(), pool.Lease)


def test_cooldown_doubles_and_is_capped():
    clock = Clock()
    p = _pool([Identity("a", videos_per_hour=0)], clock, cooldown=60.0, max_cooldown=200.0, retire_after=99)
    pauses = []
    for _ in range(4):
        while isinstance(answer := p.lease(), pool.Wait):
            clock.now += answer.seconds
        p.release(answer.token, "rate_limited")
        pauses.append(p._states["a"].cool_until - clock.now)
    assert pauses == [60.0, 120.0, 200.0, 200.0]
    while isinstance(answer := p.lease(), pool.Wait):
        clock.now += answer.seconds
    p.release(answer.token, "ok")   # a video served: the next refusal starts over
    answer = p.lease()
    p.release(answer.token, "bot_check")
    assert p._states["a"].cool_until - clock.now == 60.0


def test_bot_checks_in_a_row_retire_an_identity_and_the_video_goes_to_another():
    clock = Clock()
    p = _pool([Identity("a", videos_per_hour=0), Identity("b", videos_per_hour=0)], clock,
              cooldown=1.0, retire_after=2)
    lease = p.lease()
    refuser = lease.identity.name
    p.release(lease.token, "bot_check")
    other = p.lease(refused_by=(refuser,))
    assert isinstance(other, pool.Lease) and other.identity.name != refuser
    p.release(other.token, "ok")
    clock.now += 10
    while True:   # the refuser again, refused again: retired
        lease = p.lease(refused_by=(other.identity.name,))
        if isinstance(lease, pool.Lease):
            break
        clock.now += lease.seconds
    p.release(lease.token, "bot_check")
    assert p.snapshot()["identities"][refuser]["state"] == "retired"
    gone = p.lease(refused_by=(other.identity.name,))
    assert isinstance(gone, pool.Exhausted) and gone.reason == "bot_check"
    assert f"retired: {refuser}" in gone.message and f"refused by {other.identity.name}" in gone.message


def test_a_video_refused_by_every_identity_is_exhausted_and_other_failures_do_not_cool():
    clock = Clock()
    p = _pool([Identity("a", videos_per_hour=0)], clock, cooldown=50.0)
    lease = p.lease()
    p.release(lease.token, "no_subtitles")   # the video's own fault: the identity worked
    assert isinstance(p.lease(), pool.Lease)
    assert isinstance(p.lease(refused_by=("a",)), pool.Exhausted)


def test_a_lease_of_a_dead_worker_is_freed_and_a_double_release_is_harmless():
    clock = Clock()
    p = _pool([Identity("a", videos_per_hour=0)], clock)
    lease = p.lease()
    clock.now += pool.STALE_LEASE + 1
    assert isinstance(p.lease(), pool.Lease)
    p.release(lease.token, "ok")
    p.release(lease.token, "ok")


def test_requests_are_spaced_per_identity_and_host():
    clock = Clock()
    p = _pool([Identity("a"), Identity("b")], clock, request_rate=2.0)
    assert [p.request("a", "i.ytimg.com") for _ in range(3)] == [0.0, 0.5, 1.0]
    assert p.request("b", "i.ytimg.com") == 0.0 and p.request("a", "WWW.youtube.com") == 0.0
    clock.now += 5
    assert p.request("a", "i.ytimg.com") == 0.0


def test_the_progress_line_names_rates_cooling_and_retired():
    clock = Clock()
    p = _pool([Identity(f"n{i}", videos_per_hour=0) for i in range(6)], clock, cooldown=100.0, retire_after=1)
    leases = [p.lease() for _ in range(6)]
    clock.now += 360
    for i, lease in enumerate(leases):
        p.release(lease.token, "bot_check" if i == 0 else "rate_limited" if i == 1 else "ok")
    line = pool.progress_line(p.snapshot())
    assert line.startswith("40 videos/h [") and "+2]" in line and "1 cooling" in line and "1 retired" in line


# ---- the identities file ---------------------------------------------------------------------

def test_an_identities_file_in_yaml_or_json(tmp_path):
    (tmp_path / "a.txt").write_text("# Netscape HTTP Cookie File\n")
    (tmp_path / "ids.yaml").write_text("- name: home-1\n  cookies: a.txt\n  videos_per_hour: 900\n"
                                       "- name: dc.2\n  proxy: socks5h://u:pw@10.0.0.2:1080\n  concurrent: 2\n")
    found = identities.load(tmp_path / "ids.yaml")
    assert [(i.name, i.cookies, i.videos_per_hour, i.concurrent) for i in found] == [
        ("home-1", str(tmp_path / "a.txt"), 900, 1), ("dc.2", None, identities.GUEST_VIDEOS_PER_HOUR, 2)]
    assert "pw" not in repr(found) and "pw" not in found[1].describe()
    (tmp_path / "ids.json").write_text(json.dumps([{"name": "x"}]))
    assert identities.load(tmp_path / "ids.json", default_budget=50)[0].videos_per_hour == 50


@pytest.mark.parametrize("text, says", [
    ("{}", "non-empty list"), ("[]", "non-empty list"), ("- 3", "expected a mapping"),
    ("- {name: a, cookie: x}", "unknown key(s) 'cookie'"), ("- {name: '../x'}", "must be 1-64"),
    ("- {name: a}\n- {name: a}", "used twice"), ("- {name: a, cookies: nothere.txt}", "is not there"),
    ("- {name: a, proxy: 'ftp://h:1'}", "scheme must be"), ("- {name: a, proxy: 'http://u:SECRETPW@'}", "no host"),
    ("- {name: a, videos_per_hour: 0.5}", "at least one"), ("- {name: a, videos_per_hour: -1}", ">= 0"),
    ("- {name: a, videos_per_hour: .inf}", "finite"), ("- {name: a, concurrent: 0}", "1 to 1024"),
    ("- {name: a, videos_per_hour: yes}", "must be a number"), ("- &x {name: a}", "anchors"),
    ("- {name: a, proxy: 'http://h:99999'}", "out of range"),
])
def test_a_wrong_identities_file_is_a_usage_error_naming_the_entry(tmp_path, text, says):
    (tmp_path / "ids.yaml").write_text(text)
    with pytest.raises(errors.UsageError) as caught:
        identities.load(tmp_path / "ids.yaml")
    assert says in str(caught.value) and "SECRETPW" not in str(caught.value)


def test_cookies_and_proxy_alone_are_the_pool_of_one_and_do_not_mix_with_a_file(tmp_path):
    options = identities.IdentityOptions(videos_per_hour=120)
    (only,) = identities.pool_of(options, "c.txt", "http://u:p@h:1")
    assert (only.name, only.cookies, only.proxy, only.videos_per_hour) == ("default", "c.txt", "http://u:p@h:1", 120)
    (tmp_path / "ids.json").write_text('[{"name": "a"}]')
    with pytest.raises(errors.UsageError, match="drop --cookies/--proxy"):
        identities.pool_of(identities.IdentityOptions(identities=tmp_path / "ids.json"), "c.txt", None)
    with pytest.raises(errors.UsageError, match="--proxy"):
        identities.pool_of(options, None, "gopher://h")


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300))
def test_any_identities_file_loads_or_is_a_usage_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "ids.yaml"
    path.write_bytes(data)
    try:
        found = identities.load(path)
    except errors.UsageError:
        return
    assert found and all(identities.NAME.fullmatch(i.name) for i in found)


# ---- secrets -----------------------------------------------------------------------------------

_PASSWORD = st.text(alphabet=string.ascii_letters + string.digits + "-._~!$&'()*+,;=%@:", min_size=6, max_size=30)


@settings(max_examples=300, deadline=None)
@given(scheme=st.sampled_from(["http", "https", "socks5h", "socks4a"]), user=st.text(string.ascii_letters, max_size=8),
       password=_PASSWORD.filter(lambda p: p.strip("@:") and "'" not in p),
       before=st.sampled_from(["", "proxy ", "ERROR: Unable to connect to proxy ", "'", '"', "<", "(", "url="]),
       after=st.sampled_from(["", "/", "/path?q=1", " failed", "'", '"', ">", ")", ": refused"]))
def test_no_url_password_survives_redaction(scheme, user, password, before, after):
    text = f"{before}{scheme}://{user}:{password}@proxy.example:3128{after}"
    assert secrets.redact(text) == f"{before}{scheme}://{user}:***@proxy.example:3128{after}"


def test_redacted_configs_and_text_without_passwords_stay_as_they_are():
    config = {"ytdl": {"proxy": "http://u:hunter22@h:1", "cookies": "c.txt"}, "ids": ["socks5://a:b@c"], "n": 3}
    assert secrets.redacted(config) == {"ytdl": {"proxy": "http://u:***@h:1", "cookies": "c.txt"},
                                        "ids": ["socks5://a:***@c"], "n": 3}
    for text in ("https://www.youtube.com/watch?v=x", "mail me@example.com", "http://user@host/x:y@z", "a:b@c"):
        assert secrets.redact(text) == text
    rng = random.Random(0)
    for _ in range(200):   # arbitrary text never raises
        secrets.redact("".join(rng.choice(string.printable) for _ in range(rng.randrange(80))))


def test_the_shipped_example_identities_file_loads(tmp_path):
    from pathlib import Path

    example = Path(__file__).parents[1] / "pipelines" / "identities.example.yaml"
    (tmp_path / "ids.yaml").write_bytes(example.read_bytes())
    (tmp_path / "cookies").mkdir()
    (tmp_path / "cookies" / "account-1.txt").write_text("# Netscape HTTP Cookie File\n")
    found = identities.load(tmp_path / "ids.yaml")
    assert [i.name for i in found] == ["account-1", "dc-eu-1", "dc-eu-2"]
    assert all(identities.proxy_problem(i.proxy) is None for i in found if i.proxy)
