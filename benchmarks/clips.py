"""Clips from storyboards (`emu-data clips`, issue 19) against decoding each clip's video.

    python benchmarks/clips.py --videos 30 --video-clips 24

Clips: a Panda-70M-like list. Panda's figures (70.7M clips of 3.8M videos, ~8.5 s a clip)
make 18.6 clips and ~158 s of clips a video: about 2.6 min, so the clips cover about the
whole video. Here video durations are lognormal with a mean of 156 s (clipped to 30-600 s,
whole seconds as YouTube reports them); clip lengths lognormal with a mean of 8.5 s (2-60 s),
placed in order without overlap until they fill 97% of the video (~17.7 a video, fewer in
short videos).

Footage: each video is the world's moving shapes (SiteVideo.clip()) over a smooth random
texture that changes at every clip boundary (a Panda clip is one shot) plus grain, at
WebVid's preview size (596x336); flat drawings alone compress and decode unrealistically
well (--content flat keeps them, and the sample site's own mosaics).

Storyboard path: the videos published on the sample site (SiteVideo, 160x90 tiles every
--interval seconds in 5x5 mosaics, q85; the textured mosaics are drawn from the same frames
the video path encodes, each shrunk to 160x90) and the list as a Panda-layout CSV, through
the real stage (`emu_data.cli.main(["clips", ...])`, Ray with --num-cpus started before
timing, info-json collected apart, no sleeps, no rate or hourly budget: this measures the
machine, not YouTube's pacing). Reported per clip: wall time, mosaic bytes fetched (from the
server's request log and the files' sizes), image bytes stored (the output shards). Stage
runs: as configured by default (units of --videos-per-unit's default, one identity serving
one video at a time), the same with every video in one unit, and with the identity serving
a video per CPU at once (--identities); a run of one video gives the run's fixed cost. Also
in one process without Ray (clips.process on each unit, the same yt-dlp path), and profiled.

Video path, on --video-clips of the same clips (every len/n-th by length: encoding them all
takes too long): each clip's span of the same footage as an H.264 mp4 (libx264 crf 23, 25 fps, x264's
default GOP, faststart; cached in --workdir; WebVid's preview size, far smaller than the HD
sources Panda cut), then emu-data's webvid sampler on it in one
process (`webvid.sample_video`: decode, 8 frames at the centres of equal spans, 512 px long
side, JPEG q90): what video2dataset/Panda's pipeline does per clip after downloading and
cutting the video, so a lower bound on its work (no download, no cut).

Each side runs --repeats times, alternating; best time kept, ranges reported. The last
output is a Markdown block for BENCHMARKS.md; the JSON report is printed before it.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import contextlib
import cProfile
import csv
import io
import json
import math
import os
import platform
import pstats
import random
import shutil
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageChops
from yt_dlp import version as yt_dlp_version

from emu_data import cli, net
from emu_data.core.corpus import shard_paths
from emu_data.core.shards import read_shard
from emu_data.engine import runtime
from emu_data.sources import webvid
from emu_data.sources.youtube import clips as stage
from emu_data.sources.youtube import cliplist, ytdl
from emu_data.synthetic import world
from emu_data.synthetic.site import serve
from emu_data.synthetic.site import clips as site_clips
from emu_data.synthetic.site.youtube import COLUMNS, ROWS, TILE_H, TILE_W, SiteVideo, publish_youtube

from _timing import timed  # noqa: E402  (benchmarks/ is on sys.path as a script)

SIZE, FPS, GRAIN = (596, 336), 25, 4.0
# Panda-70M (REFERENCE.md): 70.7M clips of 3.8M videos, ~36 TB as video, ~8.5 s a clip
PANDA_CLIPS, PANDA_VIDEOS, PANDA_BYTES, PANDA_CLIP_S = 70.7e6, 3.8e6, 36e12, 8.5
VIDEO_MEAN_S, VIDEO_RANGE, CLIP_RANGE, SIGMA = 156.0, (30, 600), (2.0, 60.0), 0.6
COVERAGE = 0.97   # Panda's figures: 18.6 clips x 8.5 s = 158 s of clips a video, about its whole length
QUIET = ["--sleep-requests", "0", "--sleep-interval", "0", "--max-sleep-interval", "0", "--rate-per-host", "0",
         "--videos-per-hour", "0", "--allow-private-addresses"]


# ---- the clips -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Listed:
    video: SiteVideo
    spans: tuple[tuple[float, float], ...]   # the video's clips, in order, no overlap


def lognormal(mean: float, low: float, high: float, quantile: float) -> float:
    """The lognormal of the given mean (sigma SIGMA) at a quantile, clipped to [low, high]."""
    mu = math.log(mean) - SIGMA ** 2 / 2
    return min(high, max(low, math.exp(mu + SIGMA * statistics.NormalDist().inv_cdf(quantile))))


def panda_like(n: int, interval: float, seed: int) -> list[Listed]:
    """n videos and their clips (see the module docstring). Durations at the n quantiles
    (i + 0.5) / n in a seeded order, so a small sample keeps the distribution's mean; clip
    lengths drawn at random until the next would overfill 97% of the video, the rest of the
    time spread as random gaps (every video gets at least one clip)."""
    rng = random.Random(f"clips-bench:{seed}")
    durations = [float(round(lognormal(VIDEO_MEAN_S, *VIDEO_RANGE, (i + 0.5) / n))) for i in range(n)]
    rng.shuffle(durations)
    found = []
    for i, duration in enumerate(durations):
        lengths = []
        while True:
            length = round(lognormal(PANDA_CLIP_S, *CLIP_RANGE, max(rng.random(), 1e-9)), 3)
            if sum(lengths) + length > COVERAGE * duration:
                if lengths:
                    break
                continue   # every video has a clip: draw its first again
            lengths.append(length)
        gaps = [rng.random() for _ in range(len(lengths) + 1)]
        scale = (duration - sum(lengths)) / sum(gaps)
        spans, t = [], 0.0
        for length, gap in zip(lengths, gaps):
            start = round(t + gap * scale, 3)
            spans.append((start, round(start + length, 3)))
            t = start + length
        video = SiteVideo(f"bench{i:06d}", duration=duration, interval=interval, subtitles="none", seed=seed)
        found.append(Listed(video, tuple(spans)))
    return found


class Footage:
    """One video's frames at SIZE: the clip's shapes over a texture per shot (a shot ends at
    every clip boundary) plus grain from a bank of 8 fields (fresh noise per frame costs more
    than the encode); content "flat": the drawing alone. Composed with Pillow's C loops
    (numpy's masked copies took 3x the encode)."""

    def __init__(self, listed: Listed, content: str):
        self.clip, self.content = listed.video.clip(), content
        self.cuts = sorted({t for span in listed.spans for t in span})
        self.seed = list(listed.video.video_id.encode())
        self.background = world.BACKGROUNDS[self.clip.background]
        self.grain = []   # (added, subtracted): the signed grain as two saturating uint8 steps
        if content == "textured":
            rng = np.random.default_rng(self.seed)
            for _ in range(8):
                noise = np.round(rng.normal(0, GRAIN, (SIZE[1], SIZE[0], 3)))
                self.grain.append(tuple(Image.fromarray(np.clip(sign * noise, 0, 255).astype(np.uint8))
                                        for sign in (1, -1)))
        self.textures: dict[int, Image.Image] = {}

    def _texture(self, shot: int) -> Image.Image:
        if shot not in self.textures:
            small = np.random.default_rng([*self.seed, shot]).integers(0, 256, (5, 8, 3), dtype=np.uint8)
            self.textures[shot] = Image.fromarray(small).resize(SIZE, Image.BICUBIC)
        return self.textures[shot]

    def frame(self, t: float) -> Image.Image:
        image = world.render(self.clip.scene_at(min(t, self.clip.duration)), *SIZE)
        if self.content == "flat":
            return image
        pixels = np.asarray(image)
        shapes = ((pixels[..., 0] != self.background[0]) | (pixels[..., 1] != self.background[1])
                  | (pixels[..., 2] != self.background[2]))
        image = Image.composite(image, self._texture(bisect.bisect_right(self.cuts, t)), Image.fromarray(shapes))
        added, subtracted = self.grain[round(t * FPS) % 8]
        return ImageChops.subtract(ImageChops.add(image, added), subtracted)


# ---- the storyboard path ---------------------------------------------------------------------

def publish(root: Path, base: str, listed: list[Listed], content: str) -> Path:
    """The videos on the sample site (textured: their mosaics redrawn from the footage) and
    the clip list as a Panda-layout CSV; returns the CSV. one_video.csv beside it holds the
    first video's row alone (a run's fixed cost)."""
    publish_youtube(root, base, [item.video for item in listed])
    if content == "textured":
        for item in listed:
            _write_mosaics(root / "yt" / item.video.video_id, item)
    rows = []
    for item in listed:
        clip = item.video.clip()
        rng = random.Random(item.video.video_id)
        rows.append(site_clips.panda_row(item.video.video_id, [
            site_clips.SiteClip(item.video.video_id, a, b, world.caption(clip.scene_at((a + b) / 2)),
                                round(rng.uniform(0.35, 0.6), 4)) for a, b in item.spans]))
    for name, written in (("clips.csv", rows), ("one_video.csv", rows[:1])):
        with open(root / name, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=site_clips.COLUMNS)
            writer.writeheader()
            writer.writerows(written)
    return root / "clips.csv"


def _write_mosaics(folder: Path, item: Listed) -> None:
    """As the site writes them (5x5, the last cropped to its rows, q85), from the footage."""
    footage, per = Footage(item, "textured"), COLUMNS * ROWS
    tiles = [footage.frame(t).resize((TILE_W, TILE_H), Image.BOX) for t in item.video.tile_times()]
    for j, start in enumerate(range(0, len(tiles), per)):
        group = tiles[start:start + per]
        mosaic = Image.new("RGB", (COLUMNS * TILE_W, math.ceil(len(group) / COLUMNS) * TILE_H))
        for i, tile in enumerate(group):
            mosaic.paste(tile, (i % COLUMNS * TILE_W, i // COLUMNS * TILE_H))
        (folder / f"M{j}.jpg").write_bytes(world.encode(mosaic, quality=85))


def run_stage(root: Path, listing: Path, out: Path, cpus: int, requests: list[str], extra=()) -> dict:
    """One `emu-data clips` run (Ray already up); its wall time and what it fetched and stored."""
    shutil.rmtree(out, ignore_errors=True)
    before = len(requests)
    argv = ["-q", "clips", "--input", str(listing), "--info-json", str(root / "info"), "--out", str(out),
            "--num-cpus", str(cpus), *QUIET, *extra]
    with contextlib.redirect_stdout(io.StringIO()):   # the run's own summary lines
        seconds, code = timed(lambda: cli.main(argv))
    assert code == 0, code
    fetched = [p for p in requests[before:] if "/M" in p and p.endswith(".jpg")]
    assert len(fetched) == len(set(fetched)), "a mosaic was fetched twice"
    status = collections.Counter(r["status"] for p in shard_paths(out, "status") for r in read_shard(p).to_pylist())
    rows = [r for p in shard_paths(out, "data") for r in read_shard(p).to_pylist()]
    return {"seconds": seconds, "status": dict(status), "mosaic_requests": len(fetched),
            "mosaic_bytes": sum((root / p.lstrip("/")).stat().st_size for p in fetched),
            "image_bytes": sum(len(i["bytes"]) for r in rows for i in r["images"] if i),
            "frames": collections.Counter(len(r["times"]) - 1 for r in rows),
            "corpus_bytes": sum(p.stat().st_size for kind in ("data", "status") for p in shard_paths(out, kind))}


class _Collector:
    """Stands in for the unit's shard writer: counts what the worker hands it."""

    def __init__(self):
        self.samples, self.status, self.image_bytes = 0, collections.Counter(), 0

    def add_sample(self, row: dict) -> None:
        self.samples += 1
        self.image_bytes += sum(len(i["bytes"]) for i in row["images"] if i)

    def add_status(self, row: dict) -> None:
        self.status[row["status"]] += 1


def in_process(root: Path, listing: Path) -> tuple[float, _Collector]:
    """Every unit's worker (clips.process: yt-dlp, one storyboard per video, slicing, the
    clips' samples) in this process, no Ray, no shards."""
    units = stage.units(stage.resolve(stage.ClipsInputs([listing], (root / "info",))), stage.ClipsConfig(),
                        ytdl.YtdlOptions(sleep_requests=0, sleep_interval=0, max_sleep_interval=0, retries=0),
                        net.NetPolicy(retries=0, per_host_rate=0, allow_private_addresses=True))
    collector = _Collector()
    seconds, _ = timed(lambda: [stage.process(u.payload, collector) for u in units])
    return seconds, collector


# What one video costs the worker, by step (cumulative seconds in cProfile; a name matches
# the function's qualified name in its module's file).
STEPS = {"metadata (yt-dlp info from info-json)": ("youtube/stage.py", "load_info"),
         "storyboard download (ytdl.download: yt-dlp's mhtml)": ("youtube/ytdl.py", "download"),
         "  of it, YoutubeDL() per video": ("yt_dlp/YoutubeDL.py", "__init__"),
         "  of it, a TLS context per video (CA certificates)": ("yt_dlp/networking/_helper.py", "make_ssl_context"),
         "read_mhtml": ("youtube/storyboard.py", "read_mhtml"),
         "slice_mosaics": ("youtube/storyboard.py", "slice_mosaics"),
         "per clip: tiles + sample row": ("youtube/clips.py", "_clip_sample")}


def profile(root: Path, listing: Path) -> dict:
    profiler = cProfile.Profile()
    profiler.enable()
    seconds, collector = in_process(root, listing)
    profiler.disable()
    stats = pstats.Stats(profiler).stats
    report = {}
    for step, (file, name) in STEPS.items():
        cumulative = sum(v[3] for (f, _, n), v in stats.items() if f.endswith(file) and n == name)
        report[step] = round(cumulative / seconds, 3)
    report["profiled_seconds"] = round(seconds, 2)
    return report


# ---- the video path --------------------------------------------------------------------------

def clip_videos(workdir: Path, listed: list[Listed], n: int, content: str, seed: int) -> list[tuple[Path, float]]:
    """n clips as mp4s of their span of the footage, cached: every len/n-th clip in order of
    length, so the sample's lengths (what decoding time follows) are spread as all clips' are."""
    every = sorted(((item, span) for item in listed for span in item.spans),
                   key=lambda pair: (pair[1][1] - pair[1][0], pair[0].video.video_id))
    picked = [every[int((i + 0.5) * len(every) / n)] for i in range(min(n, len(every)))]
    found, footage = [], {}
    for item, (start, end) in picked:
        path = workdir / f"{content}_{item.video.video_id}_{seed}_{round(start * 1000)}-{round(end * 1000)}.mp4"
        if not path.exists():
            if item.video.video_id not in footage:
                footage[item.video.video_id] = Footage(item, content)
            _encode(path, footage[item.video.video_id], start, end)
        found.append((path, end - start))
    return found


def _encode(path: Path, footage: Footage, start: float, end: float) -> None:
    partial = path.with_suffix(".part")
    with av.open(str(partial), mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=FPS, options={"crf": "23"})
        stream.width, stream.height, stream.pix_fmt = *SIZE, "yuv420p"
        for k in range(max(1, round((end - start) * FPS))):
            frame = av.VideoFrame.from_image(footage.frame(start + k / FPS))
            frame.pts = k
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    partial.rename(path)


def decode_clips(datas: list[bytes], config: webvid.WebvidConfig) -> tuple[float, list]:
    return timed(lambda: [webvid.sample_video(d, config) for d in datas])


# ---- frames per clip -------------------------------------------------------------------------

def frames_per_clip(listed: list[Listed], interval: float, frames: int = 8) -> collections.Counter:
    """How many tiles each clip gets at this spacing (the stage's own tiles_for)."""
    counts = collections.Counter()
    for item in listed:
        d = item.video.duration
        times = [min(k * interval, d) for k in range(math.ceil(d / interval) + 1)]
        for a, b in item.spans:
            counts[len(cliplist.tiles_for(times, cliplist.Clip(item.video.video_id, a, b, "x"), frames, 1, d))] += 1
    return counts


def outside_span(listed: list[Listed], interval: float) -> int:
    """Clips no tile falls inside of: tiles_for gives them the nearest tile outside their span
    (with Panda's clips, cut at shot boundaries, likely a neighbouring shot)."""
    return sum(not any(a <= min(k * interval, item.video.duration) <= b
                       for k in range(math.ceil(item.video.duration / interval) + 1))
               for item in listed for a, b in item.spans)


def share(counts: collections.Counter) -> str:
    total = sum(counts.values())
    return ", ".join(f"{k}: {counts[k] / total:.0%}" if counts[k] / total >= 0.005 else f"{k}: <1%"
                     for k in sorted(counts))


# ---- the run ---------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=30, help="videos in the clip list")
    ap.add_argument("--video-clips", type=int, default=24, help="clips also encoded and decoded as video")
    ap.add_argument("--interval", type=float, default=5.0, help="storyboard tile spacing of the site's videos")
    ap.add_argument("--content", choices=("textured", "flat"), default="textured")
    ap.add_argument("--num-cpus", type=int, default=os.cpu_count(), help="Ray CPUs for the stage")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "emu-clips-bench")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    listed = panda_like(args.videos, args.interval, args.seed)
    n_clips = sum(len(item.spans) for item in listed)
    t_videos, videos = timed(lambda: clip_videos(args.workdir, listed, args.video_clips, args.content, args.seed))
    config = webvid.WebvidConfig(frames=8)
    datas = [p.read_bytes() for p, _ in videos]

    root = args.workdir / "site"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    requests: list[str] = []
    identities = args.workdir / "identities.json"   # one identity, a video per CPU at once
    identities.write_text(json.dumps([{"name": "guest", "videos_per_hour": 0, "concurrent": args.num_cpus}]))
    with serve(root, requests=requests) as base:
        t_publish, listing = timed(lambda: publish(root, base, listed, args.content))
        runtime.ensure_ray(runtime.RayOptions(num_cpus=args.num_cpus))   # a real run pays it once
        runs = collections.defaultdict(list)
        for _ in range(args.repeats):
            runs["stage"].append(run_stage(root, listing, args.workdir / "out", args.num_cpus, requests))
            runs["stage_one_video"].append(run_stage(root, root / "one_video.csv", args.workdir / "out",
                                                     args.num_cpus, requests))
            runs["stage_one_unit"].append(run_stage(root, listing, args.workdir / "out", args.num_cpus, requests,
                                                    ["--videos-per-unit", str(len(listed))]))
            runs["stage_concurrent"].append(run_stage(root, listing, args.workdir / "out", args.num_cpus, requests,
                                                      ["--identities", str(identities)]))
            runs["in_process"].append(in_process(root, listing))
            runs["video"].append(decode_clips(datas, config))
        profiled = profile(root, listing)
    runtime.shutdown()
    report = summarise(args, listed, n_clips, videos, datas, runs, profiled, load_before)
    report["generated_s"] = {"video_clips": round(t_videos, 1), "site": round(t_publish, 1)}
    print(json.dumps(report, indent=2))
    print(markdown(report))


def _range(values, digits: int = 1) -> str:
    low, high = (f"{x:,.{digits}f}" for x in (min(values), max(values)))
    return low if low == high else f"{low}-{high}"


def _further(runs: list[dict], one_video: list[dict], videos: int) -> float | None:
    """What each video past the first adds to a run's time (best runs)."""
    if videos < 2:
        return None
    best = lambda rs: min(r["seconds"] for r in rs)   # noqa: E731
    return round((best(runs) - best(one_video)) / (videos - 1) * 1e3, 1)


def summarise(args, listed, n_clips, videos, datas, runs, profiled, load_before) -> dict:
    stage_runs = runs["stage"]
    first = stage_runs[0]
    assert all(r["status"] == {"ok": n_clips} for r in stage_runs + runs["stage_concurrent"] + runs["stage_one_unit"])
    assert all(c.samples == n_clips for _, c in runs["in_process"])
    frames_stage = first["frames"]
    assert frames_stage == frames_per_clip(listed, args.interval), "the stage's tiles differ from tiles_for's"
    video_frames = [s for _, sampled in runs["video"][:1] for s in sampled]
    durations = [item.video.duration for item in listed]
    lengths = [b - a for item in listed for a, b in item.spans]
    per_clip_ms = lambda seconds, n=n_clips: seconds / n * 1e3   # noqa: E731
    panda_video_bytes = PANDA_BYTES / PANDA_VIDEOS
    return {
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "machine": {"arch": platform.machine(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "av": av.__version__, "ffmpeg": ".".join(map(str, av.library_versions["libavcodec"])),
                    "yt_dlp": yt_dlp_version.__version__, "stage_cpus": args.num_cpus,
                    "videos_per_unit": stage.ClipsConfig().videos_per_unit,
                    "load_before": [round(x, 2) for x in load_before],
                    "load_after": [round(x, 2) for x in os.getloadavg()]},
        "clips": {"videos": len(listed), "clips": n_clips, "clips_per_video": round(n_clips / len(listed), 2),
                  "video_s_mean": round(float(np.mean(durations)), 1),
                  "video_s_median": float(np.median(durations)),
                  "clip_s_mean": round(float(np.mean(lengths)), 2),
                  "clip_s_median": round(float(np.median(lengths)), 2), "interval": args.interval,
                  "content": args.content},
        "storyboard": {
            "mosaic_requests": first["mosaic_requests"],
            "clips_per_video_download": round(n_clips / len(listed), 2),
            "clips_per_mosaic_request": round(n_clips / first["mosaic_requests"], 2),
            "downloaded_bytes_per_clip": round(first["mosaic_bytes"] / n_clips),
            "stored_image_bytes_per_clip": round(first["image_bytes"] / n_clips),
            "stored_bytes_per_frame": round(first["image_bytes"] / sum(k * v for k, v in frames_stage.items())),
            "stored_corpus_bytes_per_clip": round(first["corpus_bytes"] / n_clips),
            "frames_per_clip": {str(k): frames_stage[k] for k in sorted(frames_stage)},
            "frames_per_clip_mean": round(sum(k * v for k, v in frames_stage.items()) / n_clips, 2),
            "stage_ms_per_clip": [round(per_clip_ms(r["seconds"]), 2) for r in stage_runs],
            "stage_concurrent_ms_per_clip": [round(per_clip_ms(r["seconds"]), 2) for r in runs["stage_concurrent"]],
            "stage_one_unit_ms_per_clip": [round(per_clip_ms(r["seconds"]), 2) for r in runs["stage_one_unit"]],
            "stage_ms_per_video_best": round(min(r["seconds"] for r in stage_runs) / len(listed) * 1e3, 1),
            "stage_one_video_s": [round(r["seconds"], 2) for r in runs["stage_one_video"]],
            "stage_ms_per_further_video": _further(stage_runs, runs["stage_one_video"], len(listed)),
            "stage_one_unit_ms_per_further_video": _further(runs["stage_one_unit"], runs["stage_one_video"],
                                                            len(listed)),
            "in_process_ms_per_clip": [round(per_clip_ms(s), 2) for s, _ in runs["in_process"]],
            "in_process_ms_per_video_best": round(min(s for s, _ in runs["in_process"]) / len(listed) * 1e3, 1),
            "in_process_profile_shares": profiled,
        },
        "frames_per_clip_by_interval": {str(i): dict(sorted(frames_per_clip(listed, i).items()))
                                        for i in (2.0, 5.0, 10.0)},
        "no_tile_inside_span_by_interval": {str(i): outside_span(listed, i) for i in (2.0, 5.0, 10.0)},
        "video": {
            "clips": len(datas), "clip_s_mean": round(float(np.mean([s for _, s in videos])), 2),
            "ms_per_clip": [round(s / len(datas) * 1e3, 2) for s, _ in runs["video"]],
            "downloaded_bytes_per_clip": round(sum(map(len, datas)) / len(datas)),
            "downloaded_bytes_per_clip_second": round(sum(map(len, datas)) / sum(s for _, s in videos)),
            "stored_image_bytes_per_clip": round(sum(len(i) for v in video_frames for i in v.images) / len(datas)),
            "stored_bytes_per_frame": round(sum(len(i) for v in video_frames for i in v.images)
                                            / sum(len(v.images) for v in video_frames)),
            "frames_per_clip": len(video_frames[0].images), "frame_size": list(video_frames[0].frame_size),
        },
        "panda_reference": {"bytes_per_video": round(panda_video_bytes),
                            "bytes_per_clip": round(panda_video_bytes / (PANDA_CLIPS / PANDA_VIDEOS))},
    }


def markdown(r: dict) -> str:
    sb, v, c, m = r["storyboard"], r["video"], r["clips"], r["machine"]
    best = {k: min(sb[k]) for k in ("stage_ms_per_clip", "stage_concurrent_ms_per_clip", "stage_one_unit_ms_per_clip",
                                    "in_process_ms_per_clip")}
    video_ms = min(v["ms_per_clip"])
    ms = lambda key, values: f"{best[key] if key else min(values):.1f} ({_range(values)})"   # noqa: E731
    dl_sb, dl_v = sb["downloaded_bytes_per_clip"], v["downloaded_bytes_per_clip"]
    dl_p = r["panda_reference"]["bytes_per_clip"]
    st_sb, st_v = sb["stored_image_bytes_per_clip"], v["stored_image_bytes_per_clip"]
    cpus = m["stage_cpus"]
    lines = [
        f"Command: `{r['command']}`",
        f"Machine: {m['arch']}, {m['cores']} cores, Python {m['python']}, PyAV {m['av']} (libavcodec {m['ffmpeg']}), "
        f"yt-dlp {m['yt_dlp']}; load average {m['load_before'][0]:.1f} before, {m['load_after'][0]:.1f} after.",
        f"Clips: {c['clips']} of {c['videos']} videos ({c['clips_per_video']} a video); clips {c['clip_s_mean']} s "
        f"mean ({c['clip_s_median']} median); videos {c['video_s_mean']} s mean ({c['video_s_median']:.0f} median); "
        f"tiles every {c['interval']:g} s; {c['content']} footage. Video path: {v['clips']} of the clips "
        f"({v['clip_s_mean']} s mean). Times: best of {len(v['ms_per_clip'])}, range in brackets.",
        "",
        "| per clip | storyboards (`emu-data clips`) | video (decode the clip's mp4) | **storyboard / video** |",
        "|---|---|---|---|",
        f"| wall ms, one process each (`clips.process` on every unit, no Ray; `webvid.sample_video`) | "
        f"{ms('in_process_ms_per_clip', sb['in_process_ms_per_clip'])} | {ms(None, v['ms_per_clip'])} | "
        f"**{best['in_process_ms_per_clip'] / video_ms:.2f}** |",
        f"| wall ms, the stage end to end on {cpus} Ray CPUs, units of {m['videos_per_unit']} videos, one identity "
        f"(one video at a time: the default), against one process | "
        f"{ms('stage_ms_per_clip', sb['stage_ms_per_clip'])} | {video_ms:.1f} | "
        f"**{best['stage_ms_per_clip'] / video_ms:.2f}** |",
        f"| the same, all videos in one unit (one worker) | "
        f"{ms('stage_one_unit_ms_per_clip', sb['stage_one_unit_ms_per_clip'])} | {video_ms:.1f} | "
        f"**{best['stage_one_unit_ms_per_clip'] / video_ms:.2f}** |",
        f"| the same, units of {m['videos_per_unit']}, the identity {cpus} videos at once | "
        f"{ms('stage_concurrent_ms_per_clip', sb['stage_concurrent_ms_per_clip'])} | {video_ms:.1f} | "
        f"**{best['stage_concurrent_ms_per_clip'] / video_ms:.2f}** |",
        f"| bytes downloaded | {dl_sb:,} (its video's mosaics / its clips) | {dl_v:,} (the clip alone, 596x336 "
        f"crf 23) | **{dl_sb / dl_v:.3f}** |",
        f"| bytes downloaded, Panda-70M as video (36 TB / 3.8M videos / 18.6 clips a video) | {dl_sb:,} | "
        f"{dl_p:,} | **{dl_sb / dl_p:.4f}** |",
        f"| bytes stored (images) | {st_sb:,} ({sb['frames_per_clip_mean']} tiles of 160x90, "
        f"{sb['stored_bytes_per_frame']:,} B each) | {st_v:,} ({v['frames_per_clip']} frames of "
        f"{v['frame_size'][0]}x{v['frame_size'][1]}, q90, {v['stored_bytes_per_frame']:,} B each) | "
        f"**{st_sb / st_v:.3f}** |",
        "",
        "| storyboard downloads | figure |",
        "|---|---|",
        f"| clips per storyboard download (clips / videos) | {sb['clips_per_video_download']} |",
        f"| mosaic requests (server log; each mosaic once) | {sb['mosaic_requests']} "
        f"({sb['mosaic_requests'] / c['videos']:.2f} a video) |",
        f"| clips per mosaic request | {sb['clips_per_mosaic_request']} |",
        "",
        "| tile spacing | frames per clip: share of clips | mean | no tile inside the span (given the nearest) |",
        "|---|---|---|---|",
    ]
    for interval, counts in r["frames_per_clip_by_interval"].items():
        counts = collections.Counter({int(k): n for k, n in counts.items()})
        mean = sum(k * n for k, n in counts.items()) / sum(counts.values())
        said = "the site's, in the run" if float(interval) == c["interval"] else "tiles_for on the same clips"
        outside = r["no_tile_inside_span_by_interval"][interval]
        lines.append(f"| {float(interval):g} s ({said}) | {share(counts)} | {mean:.2f} | "
                     f"{outside / sum(counts.values()):.0%} |")
    shares = sb["in_process_profile_shares"]
    lines += ["", "One process's time (cProfile, cumulative share): " +
              "; ".join(f"{k.strip()} {v:.0%}" for k, v in shares.items() if k != "profiled_seconds") +
              f". Per video, unprofiled: {sb['in_process_ms_per_video_best']} ms in one process; in the stage "
              f"{sb['stage_ms_per_video_best']} ms on average, a run of one video taking "
              f"{_range(sb['stage_one_video_s'], 2)} s and each further video "
              f"{sb['stage_ms_per_further_video']} ms ({sb['stage_one_unit_ms_per_further_video']} ms in one unit)."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
