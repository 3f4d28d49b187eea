"""WebVid frame sampling throughput: decode + sample + encode in memory, and end to end.

    python benchmarks/webvid.py --videos 16 --stage-videos 96

Videos: generated WebVid-like clips at WebVid's preview size (596x336), 25 fps, 8-20 s,
H.264 (libx264 crf 23, medium, faststart), the world's moving shapes over a smooth random
texture plus grain (flat drawings alone decode unrealistically fast), one shot per clip as
in stock footage, each encoded twice: x264's default GOP (keyint 250: a keyframe at 0 s
and, in clips over 10 s, one at 10 s) and 1 s GOPs. Clips are cached in --workdir.

In memory (one thread, no HTTP): our sample_video (keyframe-aware seek, 8 frames, resized to
512 on the long side, JPEG q90) against two baselines that take the same frames and encode
them the same way: seek to every time (re-decoding from its keyframe each time) and decode
every frame in order. All three must pick frames with identical times. Best of 3 runs,
alternating; the ratios are what to compare across runs (machines here are noisy).

End to end: --stage-videos CSV rows (cycling over the default-GOP clips, each row its own
URL) on the local sample-site server, through make_webvid (net.Fetcher, Ray with --num-cpus,
shards, status, manifest); wall time of the run once Ray is up.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import shutil
import sys
import tempfile
from pathlib import Path

import av
import numpy as np
from PIL import Image

from emu_data import net
from emu_data.engine import runtime
from emu_data.synthetic import world
from emu_data.synthetic.site import serve
from emu_data.synthetic.site.webvid import iso_duration
from emu_data.sources import webvid
from emu_data.engine.stage import OutputOptions

from _timing import timed  # noqa: E402  (benchmarks/ is on sys.path as a script)

SIZE, FPS, GRAIN = (596, 336), 25, 4.0


def _frames(seed: int, duration: float):
    """The clip's frames over a smooth random texture, with grain from a bank of 8 fields
    (fresh noise per frame costs more than the encode)."""
    clip = world.random_clip(random.Random(seed), duration)
    rng = np.random.default_rng(seed)
    grain = [rng.normal(0, GRAIN, (SIZE[1], SIZE[0], 3)) for _ in range(8)]
    small = rng.integers(0, 256, (5, 8, 3), dtype=np.uint8)
    texture = np.asarray(Image.fromarray(small).resize(SIZE, Image.BICUBIC), dtype=np.int16)
    for k in range(round(duration * FPS)):
        pixels = np.asarray(world.render(clip.scene_at(k / FPS), *SIZE), dtype=np.int16)
        background = np.all(pixels == world.BACKGROUNDS[clip.background], axis=2)
        pixels[background] = texture[background]
        yield np.clip(pixels + grain[k % 8], 0, 255).astype(np.uint8)


def make_videos(workdir: Path, n: int) -> dict[str, list[Path]]:
    """n clips, each as a default-GOP and a 1 s-GOP mp4 (reused if already in workdir)."""
    out: dict[str, list[Path]] = {"gop250": [], "gop25": []}
    for seed in range(n):
        duration = random.Random(f"duration:{seed}").randint(8, 20)
        paths = {g: workdir / f"{g}_{seed:04d}_{duration}s.mp4" for g in out}
        if not all(p.exists() for p in paths.values()):
            _encode_pair(paths, seed, duration)
        for g, p in paths.items():
            out[g].append(p)
    return out


def _encode_pair(paths: dict[str, Path], seed: int, duration: float) -> None:
    containers = {g: av.open(str(p), mode="w", format="mp4", options={"movflags": "+faststart"})
                  for g, p in paths.items()}
    streams = {}
    for g, c in containers.items():
        s = c.add_stream("libx264", rate=FPS, options={"crf": "23", **({"g": "25"} if g == "gop25" else {})})
        s.width, s.height, s.pix_fmt = *SIZE, "yuv420p"
        streams[g] = s
    for k, pixels in enumerate(_frames(seed, duration)):
        for g, c in containers.items():
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = k
            c.mux(streams[g].encode(frame))
    for g, c in containers.items():
        c.mux(streams[g].encode())
        c.close()


# ---- in memory ------------------------------------------------------------------------------

def baseline(data: bytes, config: webvid.WebvidConfig, *, seek_each: bool) -> list[float]:
    """Same frames, same resize + JPEG; seek_each: seek to every time, else decode all."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        info = webvid._stream_info(container, stream)
        targets = [info.start + info.length * (2 * i + 1) / (2 * config.frames) for i in range(config.frames)]
        times, frames = [], container.decode(stream)
        for target in targets:
            if seek_each:
                container.seek(int(target), stream=stream, backward=True)
                frames = container.decode(stream)
            frame = next(f for f in frames if f.pts >= target)
            webvid._encode(frame, config)
            times.append(info.seconds(frame.pts))
    return times


def decode_only(data: bytes, config: webvid.WebvidConfig) -> list[float]:
    """Our frame choice without the resize + JPEG: what the encode costs is the rest."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        info = webvid._stream_info(container, stream)
        return [info.seconds(f.pts) for f in webvid.sample_frames(container, stream, info, config.frames)]


def bench_memory(paths: list[Path], config: webvid.WebvidConfig, repeats: int = 3) -> dict:
    datas = [p.read_bytes() for p in paths]
    ways = {
        "ours": lambda d: webvid.sample_video(d, config).times,
        "ours_decode_only": lambda d: decode_only(d, config),
        "baseline_seek_every_time": lambda d: baseline(d, config, seek_each=True),
        "baseline_decode_all": lambda d: baseline(d, config, seek_each=False),
    }
    best, picked = {}, {}
    for _ in range(repeats):
        for name, way in ways.items():
            seconds, picked[name] = timed(lambda: [way(d) for d in datas])
            best[name] = min(best.get(name, seconds), seconds)
    assert all(p == picked["ours"] for p in picked.values()), "the ways picked different frames"
    frames = sum(map(len, picked["ours"]))
    report = {name: {"videos_per_s": round(len(datas) / t, 1), "frames_per_s": round(frames / t)}
              for name, t in best.items()}
    for name in ("baseline_seek_every_time", "baseline_decode_all"):
        report[f"ours_time_over_{name.removeprefix('baseline_')}"] = round(best["ours"] / best[name], 3)
    report["mb"] = round(sum(map(len, datas)) / 1e6, 1)
    return report


# ---- end to end -----------------------------------------------------------------------------

def bench_stage(clips: list[Path], rows: int, config: webvid.WebvidConfig, cpus: int) -> dict:
    root = Path(tempfile.mkdtemp(prefix="emu-webvid-site-"))
    paths = [clips[i % len(clips)] for i in range(rows)]
    try:
        (root / "webvid").mkdir()
        for i, p in enumerate(paths):
            os.link(p, root / "webvid" / f"{i}.mp4")
        with serve(root) as base:
            csv_path = _write_csv(root, paths, base)
            ray = runtime.RayOptions(num_cpus=cpus)
            runtime.ensure_ray(ray)  # started before timing: a real run pays it once
            policy = net.NetPolicy(retries=0, per_host_rate=0, allow_private_addresses=True)
            output = OutputOptions(root / "out")
            seconds, result = timed(lambda: webvid.make_webvid([csv_path], config, policy, output, ray))
        counts = result.manifest["status_counts"]
        assert counts == {"ok": len(paths)}, counts
        frames = len(paths) * config.frames
        return {"videos": len(paths), "cpus": cpus, "rows_per_unit": config.rows_per_unit,
                "fetch_workers": config.fetch_workers, "seconds": round(seconds, 2),
                "videos_per_s": round(len(paths) / seconds, 1), "frames_per_s": round(frames / seconds),
                "corpus_mb": round(sum(s["bytes"] for s in result.manifest["shards"]) / 1e6, 1)}
    finally:
        runtime.shutdown()
        shutil.rmtree(root, ignore_errors=True)


def _write_csv(root: Path, paths: list[Path], base: str) -> Path:
    import csv

    path = root / "webvid" / "results_bench.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["videoid", "name", "page_idx", "page_dir", "duration", "contentUrl"])
        for i, p in enumerate(paths):
            seconds = int(p.stem.rsplit("_", 1)[1].removesuffix("s"))
            writer.writerow([str(10**9 + i), f"clip {i}, with a comma", "1", "000001_000050",
                             iso_duration(seconds), f"{base}/webvid/{i}.mp4"])
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=16, help="clips generated, per GOP setting")
    ap.add_argument("--stage-videos", type=int, default=96, help="CSV rows through the stage (cycling the clips)")
    ap.add_argument("--num-cpus", type=int, default=os.cpu_count(), help="Ray CPUs for the stage run")
    ap.add_argument("--rows-per-unit", type=int, default=8)
    ap.add_argument("--fetch-workers", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "emu-webvid-bench")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    t_make, videos = timed(lambda: make_videos(args.workdir, args.videos))
    config = webvid.WebvidConfig(rows_per_unit=args.rows_per_unit, fetch_workers=args.fetch_workers)
    report = {
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "machine": {"arch": platform.machine(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "av": av.__version__, "ffmpeg": ".".join(map(str, av.library_versions["libavcodec"]))},
        "videos": {"size": list(SIZE), "fps": FPS, "generated_or_reused_s": round(t_make, 1),
                   "config": {"frames": config.frames, "frame_size": config.frame_size,
                              "jpeg_quality": config.jpeg_quality}},
        "in_memory_gop250": bench_memory(videos["gop250"], config),
        "in_memory_gop25": bench_memory(videos["gop25"], config),
        "stage_end_to_end": bench_stage(videos["gop250"], args.stage_videos, config, args.num_cpus),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
