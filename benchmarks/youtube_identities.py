"""Does the youtube stage's throughput grow with its identities, within each one's budget?

    python benchmarks/youtube_identities.py [--identities 1,4,16] [--seconds 60] [--videos 2000]
                                            [--window 10] [--budget 3] [--workers 6]

The same --videos simulated videos (short: --duration s, one 5x5 mosaic, a manual English
track) are published once on the loopback stand-in of YouTube (synthetic/site), whose
limits.Limits plays YouTube's rationing: it knows each identity by its cookie, counts the
videos it fetches in a sliding --window, and answers 429 (then the bot check) past the
identity's --budget. The identity declares the same budget (videos_per_hour, read as
"videos per --window": IdentityOptions.window), and the pool spaces its video starts by
window/budget (sleep_interval = max_sleep_interval) so its rate is smooth, not a burst per
window.

For each identity count k, the real stage (make_youtube: embedded Ray with --workers task
slots, the pool as one shared actor, yt-dlp downloading each mosaic and track from the stand-in)
runs in a child process on all the videos, and is killed --seconds after the first video the
server counted: the configs do not finish the list, they run for the same time on it. Every
figure is the server's: it counted each video on its first request. Steady state: from
--settle seconds after the first counted video (Ray, the pool actor and the workers' imports
are up by then) to the kill; videos/s per identity = (n - 1) / (last - first) over the videos
each identity was served in it (the pool paces them: a count in the interval would be +-1 of a
few dozen), summed over the identities.

The CPU bound: the same stage with no budget (videos_per_hour 0, no sleep) on the largest k,
--unbounded-seconds long: the stage's top rate on this machine. Its per-video CPU cost:
the CPU time of the child's whole process tree (driver, raylet, GCS, workers, the pool
actor) over the steady state, / the videos served in it; the stand-in server's CPU (this
process) apart. --real-tiles N (0: skip) adds an unbounded run, --real-seconds long, on
--real-videos videos of N tiles (a ~10-minute video's sb0: 5x5 mosaics, a longer track) for
the per-video cost at a real video's size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")


# ---- the child: one run of the stage --------------------------------------------------------

def child(config_path: str) -> None:
    """make_youtube on the info files, as the config says; killed by the parent."""
    from emu_data import net
    from emu_data.engine.runtime import RayOptions
    from emu_data.engine.stage import OutputOptions
    from emu_data.sources.youtube import identities, inputs, ytdl
    from emu_data.sources.youtube.stage import YoutubeConfig, make_youtube

    c = json.loads(Path(config_path).read_text())
    videos = inputs.collect([], None, [Path(c["info"])], None)
    sleep = c["sleep"]
    make_youtube(
        videos, YoutubeConfig(videos_per_unit=c["videos_per_unit"]),
        ytdl.YtdlOptions(sleep_requests=0, sleep_interval=sleep, max_sleep_interval=sleep, sleep_subtitles=0,
                         retries=0),
        net.NetPolicy(allow_private_addresses=True, per_host_rate=0, retries=0),
        OutputOptions(Path(c["out"])),
        RayOptions(num_cpus=c["workers"], max_in_flight=c["workers"]),
        identity_pool=identities.IdentityOptions(identities=Path(c["identities"]), window=c["window"],
                                                 cooldown=c["window"]))


# ---- CPU time of a process tree --------------------------------------------------------------

def _stat(pid: str) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()   # after "pid (comm) ": state ppid pgrp session ...


def session_pids(sid: int) -> list[int]:
    """Every live process of the session the child leads (Ray's workers get process groups
    of their own, but stay in its session); zombies left out (the child is reaped by wait)."""
    pids = []
    for pid in os.listdir("/proc"):
        if pid.isdigit() and (fields := _stat(pid)) and int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(pid))
    return pids


def session_cpu(sid: int) -> float:
    """CPU seconds (user + system) of the session's live processes."""
    total = 0
    for pid in session_pids(sid):
        fields = _stat(str(pid))
        if fields:
            total += int(fields[11]) + int(fields[12])
    return total / TICK


def system_busy() -> float:
    """CPU seconds the whole machine spent busy since boot (all cores)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / TICK


def own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def kill_session(sid: int) -> None:
    """SIGKILL every process of the child's session (only what this harness started)."""
    for _ in range(50):
        pids = session_pids(sid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    raise RuntimeError(f"processes of session {sid} survive SIGKILL: {session_pids(sid)}")


# ---- one configuration -----------------------------------------------------------------------

def run(name: str, limits, site_limits, cookies: list[tuple[str, str]], k: int, budget: int, args,
        info: Path, work: Path, seconds: float, sleep: float) -> dict:
    """Run the stage with k identities of `budget` videos per window for `seconds` after the
    first counted video; the server's figures."""
    limits.window = args.window
    limits.clients = {secret: site_limits.Client(f"id{i:02d}", budget=budget) for i, (_, secret) in
                      enumerate(cookies[:k])}
    entries = [{"name": f"id{i:02d}", "cookies": path, "videos_per_hour": budget}
               for i, (path, _) in enumerate(cookies[:k])]
    folder = work / name
    folder.mkdir()
    (folder / "identities.json").write_text(json.dumps(entries))
    config = {"info": str(info), "out": str(folder / "out"), "identities": str(folder / "identities.json"),
              "window": args.window, "sleep": sleep, "workers": args.workers,
              "videos_per_unit": args.videos_per_unit}
    (folder / "config.json").write_text(json.dumps(config))
    log = open(folder / "child.log", "wb")
    launched = time.monotonic()
    proc = subprocess.Popen([sys.executable, __file__, "--child", str(folder / "config.json")],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
    samples = []   # (time, child tree CPU, server CPU, machine busy)
    first = stop = None
    try:
        while True:
            if proc.poll() is not None:   # it finished the list (or failed): measured up to the last sample
                stop = samples[-1][0] if samples else time.monotonic()
                break
            now = time.monotonic()
            samples.append((now, session_cpu(proc.pid), own_cpu(), system_busy()))
            if first is None:
                times = [t for c in limits.clients.values() for t, _ in c.history]
                first = min(times) if times else None
            if first is not None and now >= first + seconds:
                stop = now
                break
            if now - launched > seconds + args.startup_limit:
                raise RuntimeError(f"{name}: no video served {args.startup_limit:.0f} s after the start; "
                                   f"see {folder / 'child.log'}")
            time.sleep(0.5)
    finally:
        kill_session(proc.pid)
        proc.wait()
        log.close()
    if first is None or proc.returncode not in (0, -signal.SIGKILL):
        tail = (folder / "child.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{name}: the stage ended with {proc.returncode}:\n{tail}")
    finished = proc.returncode == 0
    start = first + args.settle
    clients = list(limits.clients.values())
    history = {c.name: sorted(t for t, _ in c.history) for c in clients}
    rates = {}
    for client_name, times in history.items():
        steady = [t for t in times if start <= t <= stop]
        rates[client_name] = (len(steady) - 1) / (steady[-1] - steady[0]) if len(steady) >= 2 else 0.0
    in_steady = sum(1 for times in history.values() for t in times if start <= t <= stop)
    cpu = _between(samples, start, stop)
    span = stop - start
    return {
        "name": name, "k": k, "budget": budget, "finished": finished,
        "warmup": first - launched, "served": sum(len(t) for t in history.values()), "steady_videos": in_steady,
        "steady_s": span, "rate": sum(rates.values()), "count_rate": in_steady / span,
        "per_identity": sorted(rates.values()),
        "most": max(limits.most_in_a_window(c.name) for c in clients),
        "refusals": sum(len(c.refusals) for c in clients),
        "stage_cores": cpu[0] / span, "server_cores": cpu[1] / span, "machine_cores": cpu[2] / span,
        "stage_cpu_per_video": cpu[0] / max(in_steady, 1), "server_cpu_per_video": cpu[1] / max(in_steady, 1),
        "statuses": _statuses(folder / "out"),
    }


def _between(samples, start: float, stop: float) -> tuple[float, float, float]:
    """CPU seconds (stage tree, server, machine) between two times, from the nearest samples."""
    def at(t):
        return min(samples, key=lambda s: abs(s[0] - t))
    a, b = at(start), at(stop)
    return b[1] - a[1], b[2] - a[2], b[3] - a[3]


def _statuses(out: Path) -> dict:
    """The status counts of the units the killed run had committed (each unit's part file;
    the run wrote no manifest): status -> videos."""
    counts: dict[str, int] = {}
    for path in sorted((out / "_parts").glob("*.json")):
        try:
            unit = json.loads(path.read_text())
        except (OSError, ValueError):
            continue   # one the kill cut short
        for status, n in unit.get("status_counts", {}).items():
            counts[status] = counts.get(status, 0) + n
    return counts


# ---- the whole benchmark ---------------------------------------------------------------------

def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    memory = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    import ray
    import yt_dlp.version
    return (f"{platform.machine()}, nproc {os.cpu_count()}, {model}, {memory / 2**20:.0f} GiB, "
            f"Python {sys.version.split()[0]}, Ray {ray.__version__}, yt-dlp {yt_dlp.version.__version__}, "
            f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def publish(root: Path, base: str, videos: list, folder: str) -> tuple[Path, float]:
    """Publish videos; their info files in root/<folder>: (that folder, seconds)."""
    from emu_data.synthetic.site import publish_youtube

    started = time.perf_counter()
    publish_youtube(root, base, videos)
    info = root / folder
    info.mkdir()
    for video in videos:
        name = f"{video.video_id}.info.json"
        os.replace(root / "info" / name, info / name)
    return info, time.perf_counter() - started


def lease_cost(sizes=(100, 2000, 10000), calls: int = 50_000) -> list[tuple[int, float]]:
    """The pool's own cost per call (lease or release) on a fake clock, at pool sizes far past
    what a 2-core run can serve: microseconds each, whatever the size (a queue by ready time)."""
    from emu_data.sources.youtube import pool
    from emu_data.sources.youtube.identities import Identity

    found = []
    for n in sizes:
        now = [0.0]
        p = pool.IdentityPool([Identity(f"i{k}", videos_per_hour=1000) for k in range(n)],
                              pool.PoolPolicy(sleep_interval=10.0, max_sleep_interval=20.0),
                              clock=lambda: now[0], seed=1)
        held, made, start = [], 0, time.perf_counter()
        while made < calls:
            now[0] += 0.001
            answer = p.lease()
            made += 1
            if isinstance(answer, pool.Lease):
                held.append(answer.token)
            if len(held) > n // 2:
                p.release(held.pop(0), "ok")
                made += 1
        found.append((n, (time.perf_counter() - start) / made * 1e6))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--lease-cost-only", action="store_true",
                        help="only the pool's own cost per call at 100 / 2,000 / 10,000 identities (fake clock)")
    parser.add_argument("--identities", default="1,4,16", help="identity counts to run, comma-separated")
    parser.add_argument("--seconds", type=float, default=60.0, help="run time after the first video served")
    parser.add_argument("--videos", type=int, default=2000)
    parser.add_argument("--window", type=float, default=10.0, help="the budget's window, seconds (for an hour)")
    parser.add_argument("--budget", type=int, default=3, help="videos per identity per window")
    parser.add_argument("--workers", type=int, default=6, help="Ray task slots (embedded Ray's num_cpus)")
    parser.add_argument("--videos-per-unit", type=int, default=8)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of each simulated video (5 s a tile)")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds after the first video left out")
    parser.add_argument("--unbounded-seconds", type=float, default=40.0, help="the no-budget run (0: skip)")
    parser.add_argument("--real-tiles", type=int, default=125, help="tiles of the real-size run (0: skip)")
    parser.add_argument("--real-videos", type=int, default=300)
    parser.add_argument("--real-seconds", type=float, default=35.0, help="the real-size run")
    parser.add_argument("--startup-limit", type=float, default=120.0)
    parser.add_argument("--workdir", type=Path, help="kept after the run (default: a temporary folder, removed)")
    args = parser.parse_args()
    if args.child:
        return child(args.child)
    if args.lease_cost_only:
        for n, micro in lease_cost():
            print(f"| {n:,} identities | {micro:.1f} µs a pool call |")
        return

    from emu_data.synthetic import site as sample_site
    from emu_data.synthetic.site import limits as site_limits

    counts = sorted({int(k) for k in args.identities.split(",")})
    work = Path(tempfile.mkdtemp(prefix="yt-identities-", dir=args.workdir))
    print(f"# machine: {machine()}")
    print(f"# {args.videos} videos of {args.duration:g} s; window {args.window:g} s, budget {args.budget} "
          f"videos per identity per window ({args.budget / args.window:.3g} videos/s); {args.workers} Ray "
          f"task slots; {args.seconds:g} s runs, the first {args.settle:g} s left out")
    limits = site_limits.Limits({}, window=args.window)
    results = []
    try:
        root = work / "site"
        root.mkdir()
        with sample_site.serve(root, limits=limits) as base:
            videos = [sample_site.SiteVideo(f"bench{n:06d}", duration=args.duration) for n in range(args.videos)]
            info, published = publish(root, base, videos, "videos")
            tiles = videos[0].tile_count
            print(f"# published {args.videos} videos ({tiles} tiles, one mosaic each) in {published:.1f} s "
                  f"({published / args.videos * 1000:.1f} ms a video)")
            cookies = []
            for i in range(max(counts)):
                secret = f"bench-identity-{i:02d}-secret"
                cookies.append((str(site_limits.write_cookies(work / f"id{i:02d}.cookies.txt", secret)), secret))
            if args.unbounded_seconds:
                r = run("unbounded", limits, site_limits, cookies, max(counts), 0, args, info, work,
                        args.unbounded_seconds, 0.0)
                results.append(r)
                _progress(r)
            if args.real_tiles:
                duration = (args.real_tiles - 1) * 5.0
                real = [sample_site.SiteVideo(f"large{n:06d}", duration=duration) for n in range(args.real_videos)]
                real_info, seconds = publish(root, base, real, "real")
                print(f"# published {args.real_videos} videos of {real[0].tile_count} tiles "
                      f"({duration:g} s) in {seconds:.1f} s")
                r = run("unbounded-real", limits, site_limits, cookies, max(counts), 0, args, real_info, work,
                        args.real_seconds, 0.0)
                r["tiles"] = real[0].tile_count
                results.append(r)
                _progress(r)
            for k in counts:
                r = run(f"k{k}", limits, site_limits, cookies, k, args.budget, args, info, work, args.seconds,
                        args.window / args.budget)
                results.append(r)
                _progress(r)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    report(results, args, tiles)


def _progress(r: dict) -> None:
    print(f"# {r['name']}: warm-up {r['warmup']:.1f} s, {r['served']} served, {r['rate']:.2f} videos/s steady "
          f"(count {r['count_rate']:.2f}); stage {r['stage_cores']:.2f} cores, server {r['server_cores']:.2f}, "
          f"machine {r['machine_cores']:.2f}; statuses {r['statuses']}"
          + ("; it finished every video before the time was up" if r["finished"] else ""), flush=True)


def report(results: list[dict], args, tiles: int) -> None:
    unbounded = next((r for r in results if r["name"] == "unbounded"), None)
    real = next((r for r in results if r["name"] == "unbounded-real"), None)
    paced = [r for r in results if r["name"].startswith("k")]
    base = next((r for r in paced if r["k"] == 1), paced[0] if paced else None)
    print()
    print("| identities | videos served (steady) | videos/s | videos per window (a simulated hour) per identity "
          "(budget) | ratio vs 1 identity | ratio / identity ratio | most in a window (budget) | refusals | "
          "stage cores busy |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in paced:
        ratio = r["rate"] / base["rate"] if base and base["rate"] else float("nan")
        identity_ratio = r["k"] / base["k"]
        print(f"| {r['k']} | {r['served']} ({r['steady_videos']} in {r['steady_s']:.0f} s) | {r['rate']:.2f} | "
              f"{r['rate'] / r['k'] * args.window:.2f} ({args.budget}) | {ratio:.2f} | {ratio / identity_ratio:.2f} | "
              f"{r['most']} ({args.budget}) | {r['refusals']} | {r['stage_cores']:.2f} |")
    for r in (unbounded, real):
        if r is None:
            continue
        what = (f"no budget, {r['k']} identities, {args.workers} task slots"
                + (f", videos of {r['tiles']} tiles" if r is real else f", videos of {tiles} tiles"))
        print(f"\nCPU bound ({what}): {r['rate']:.2f} videos/s steady ({r['count_rate']:.2f} by count), "
              f"{r['served']} served; stage tree {r['stage_cores']:.2f} cores busy, stand-in server "
              f"{r['server_cores']:.2f}, whole machine {r['machine_cores']:.2f} (of {os.cpu_count()}); "
              f"per video: stage {r['stage_cpu_per_video'] * 1000:.0f} ms CPU, server "
              f"{r['server_cpu_per_video'] * 1000:.0f} ms; refusals {r['refusals']}")
    if unbounded and paced:
        top = max(paced, key=lambda r: r["k"])
        print(f"\n{top['k']} identities use {top['rate'] / unbounded['rate']:.0%} of the CPU bound.")


if __name__ == "__main__":
    main()
