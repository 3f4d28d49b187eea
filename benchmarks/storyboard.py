"""Storyboard slicing + alignment throughput, tiles at the source's quality, and bytes per
frame against H.264 video.

    python benchmarks/storyboard.py --videos 200 --video-sample 6 --video-25fps 3

Speed: 200 generated videos of 65 tiles (160x90, 5x5 mosaics, 5 s apart, last mosaic cropped
to its rows, as YouTube serves sb0 of a ~316 s video) go through our slice_mosaics + the
interleave/chunk alignment with their subtitles, against a bare Pillow loop over the same
mosaics (decode each mosaic, crop each tile, encode it at the same JPEG quality), the limit
for any slicer that re-encodes tiles, both at --quality (90). Both run three times,
alternating, best run kept; the ratio is what to compare across runs (machines here are noisy).

Source quality: the old default (every tile re-encoded at q90) against the new one
(slice_mosaics' quality=None: the mosaic's own quantisation tables and subsampling, optimised
Huffman tables) on the same mosaics, generated at each --source-qualities (YouTube's own
storyboards are roughly q75-85, 4:2:0) as Pillow writes them (libjpeg's standard Huffman
tables) and with optimised Huffman tables, for each --source-contents. Per setting: bytes per
tile against the mosaic's share (mosaic bytes / tiles cut from it), PSNR of each stored tile
against the same crop of the decoded mosaic, and slicing time per mosaic, old and new run
--source-repeats times alternating: the ratio new/old of the best runs, and the median of
each new run's time over the old run's just before it (drift on a shared machine cancels).

Storage: bytes per storyboard frame as our JPEG tiles (at --quality, and by default at the
mosaic's own tables), as the downloaded mosaics, and as the same clean frames encoded with libx264 (PyAV) at one frame per interval, plus the same clips
at 25 fps (what storing the video itself at tile size would cost); PSNR against the clean
renders says what quality each size buys. The frames are the generated world's flat drawn
scenes, which compress far better than real video: read the ratios, not the absolute bytes.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import random
import sys
from fractions import Fraction

import numpy as np
import PIL
from PIL import Image

from emu_data.synthetic import world
from emu_data.core.align import chunk, interleave
from emu_data.sources.youtube.storyboard import Level, read_mhtml, slice_mosaics

from _timing import alternate, best_of_pair, timed  # noqa: E402  (benchmarks/ is on sys.path as a script)

TILE = (160, 90)
COLUMNS = ROWS = 5
INTERVAL = 5.0
SHOT = 10.0  # seconds per shot in "textured" content: a cut every other tile
GRAIN = 4.0  # standard deviation of the per-frame grain in "textured" content


def frame_at(clip: world.Clip, t: float, seed: int, content: str) -> Image.Image:
    """The clip's frame at t. "flat": the world's drawing as is. "textured": its background
    replaced by a smooth random texture that changes every SHOT seconds (a cut) plus fresh
    sensor grain in every frame, closer to what real video costs an encoder."""
    image = world.render(clip.scene_at(min(t, clip.duration)), *TILE)
    if content == "flat":
        return image
    pixels = np.asarray(image).astype(np.int16)
    background = np.all(pixels == world.BACKGROUNDS[clip.background], axis=2)
    shot = np.random.default_rng((seed, int(t // SHOT)))
    texture = Image.fromarray(shot.integers(0, 256, (5, 8, 3), dtype=np.uint8)).resize(TILE, Image.BICUBIC)
    pixels[background] = np.asarray(texture)[background]
    grain = np.random.default_rng((seed, round(t * 25), 1)).normal(0, GRAIN, pixels.shape)
    return Image.fromarray(np.clip(pixels + grain, 0, 255).astype(np.uint8))


def make_video(seed: int, mosaic_quality: int, content: str) -> dict:
    """One ~316 s clip: its clean tile renders, the mosaics YouTube would serve, the cues."""
    rng = random.Random(seed)
    clip = world.random_clip(rng, duration=rng.uniform(315.5, 320.0))  # 65 tiles at 5 s
    count = math.ceil(clip.duration / INTERVAL) + 1
    frames = [frame_at(clip, k * INTERVAL, seed, content) for k in range(count)]
    mosaics = encode_mosaics(frames, quality=mosaic_quality)
    level = Level("sb0", *TILE, count, COLUMNS, ROWS, INTERVAL, "spec",
                  tuple(f"https://i.ytimg.com/sb/v{seed}/storyboard3_L2/M{m}.jpg" for m in range(len(mosaics))))
    cues = [(c.start, c.text) for c in world.narrate(clip, every=rng.uniform(3, 8), rng=rng)]
    return {"clip": clip, "seed": seed, "content": content, "frames": frames, "mosaics": mosaics,
            "level": level, "cues": cues}


def encode_mosaics(frames: list[Image.Image], **options) -> list[bytes]:
    """The frames as YouTube serves them: 5x5 mosaics, the last cropped to the rows it uses,
    JPEG with Pillow's defaults (4:2:0) and `options` (quality=..., optimize=True)."""
    mosaics = []
    for start in range(0, len(frames), COLUMNS * ROWS):
        used = frames[start:start + COLUMNS * ROWS]
        mosaic = Image.new("RGB", (TILE[0] * COLUMNS, TILE[1] * math.ceil(len(used) / COLUMNS)))
        for j, frame in enumerate(used):
            mosaic.paste(frame, (j % COLUMNS * TILE[0], j // COLUMNS * TILE[1]))
        buffer = io.BytesIO()
        mosaic.save(buffer, "JPEG", **options)
        mosaics.append(buffer.getvalue())
    return mosaics


def bare_slice(mosaics: list[bytes], count: int, quality: int) -> int:
    """The limit: decode, crop, encode; no checks, no timing, no alignment."""
    done = 0
    for data in mosaics:
        image = Image.open(io.BytesIO(data))
        image.load()
        for j in range(min(COLUMNS * ROWS, count - done)):
            x, y = j % COLUMNS * TILE[0], j // COLUMNS * TILE[1]
            image.crop((x, y, x + TILE[0], y + TILE[1])).save(io.BytesIO(), "JPEG", quality=quality)
        done = min(count, done + COLUMNS * ROWS)
    return done


def ours(video: dict, quality: int, max_frames: int) -> int:
    tiles = slice_mosaics(video["mosaics"], video["level"], quality=quality)
    samples = chunk(interleave([(t.time, t.image) for t in tiles], video["cues"]), max_frames)
    return sum(isinstance(item, bytes) for sample in samples for _, item in sample)


def bench_speed(videos: list[dict], quality: int, max_frames: int) -> dict:
    (t_bare, n_bare), (t_ours, n_ours) = best_of_pair(
        lambda: sum(bare_slice(v["mosaics"], v["level"].count, quality) for v in videos),
        lambda: sum(ours(v, quality, max_frames) for v in videos))
    assert n_bare == n_ours, (n_bare, n_ours)
    return {"tiles": n_ours, "bare_tiles_per_s": round(n_bare / t_bare), "ours_tiles_per_s": round(n_ours / t_ours),
            "ours_time_over_bare": round(t_ours / t_bare, 3), "goal": "ours_time_over_bare <= 1.25"}


def mosaic_crops(video: dict) -> list[np.ndarray]:
    """Every tile's pixels as the decoded mosaic holds them, row-major."""
    crops = []
    for data in video["mosaics"]:
        mosaic = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        for j in range(min(COLUMNS * ROWS, video["level"].count - len(crops))):
            y, x = divmod(j, COLUMNS)
            crops.append(mosaic[y * TILE[1]:(y + 1) * TILE[1], x * TILE[0]:(x + 1) * TILE[0]])
    return crops


def tile_psnrs(video: dict, tiles) -> list[float]:
    """PSNR of each stored tile against the same crop of its decoded mosaic."""
    return [psnr(np.asarray(Image.open(io.BytesIO(t.image)).convert("RGB")), crop)
            for t, crop in zip(tiles, mosaic_crops(video), strict=True)]


def bench_source_quality(videos: list[dict], qualities: list[int], repeats: int) -> list[dict]:
    """Old default (q90) against new (quality=None) on the videos' frames as mosaics at each
    source quality, standard and optimised Huffman tables; see the module docstring."""
    rows = []
    for quality in qualities:
        for optimize in (False, True):
            encoded = [{**v, "mosaics": encode_mosaics(v["frames"], quality=quality, optimize=optimize)}
                       for v in videos]
            n_mosaics = sum(len(v["mosaics"]) for v in encoded)
            tiles = sum(v["level"].count for v in encoded)
            share = sum(len(m) for v in encoded for m in v["mosaics"]) / tiles
            runs_old, runs_new = alternate(
                lambda: [slice_mosaics(v["mosaics"], v["level"], quality=90) for v in encoded],
                lambda: [slice_mosaics(v["mosaics"], v["level"]) for v in encoded], repeats)
            row = {"content": videos[0]["content"], "source_quality": quality,
                   "source_huffman": "optimised" if optimize else "standard",
                   "tiles": tiles, "mosaic_bytes_per_tile": round(share)}
            for name, runs in (("old_q90", runs_old), ("new_default", runs_new)):
                sliced = runs[0][1]
                stored = sum(len(t.image) for video_tiles in sliced for t in video_tiles)
                scores = [p for v, video_tiles in zip(encoded, sliced) for p in tile_psnrs(v, video_tiles)]
                row[name] = {"bytes_per_tile": round(stored / tiles), "over_mosaic_share": round(stored / tiles / share, 3),
                             "psnr_db_median": round(float(np.median(scores)), 1),
                             "psnr_db_p5": round(float(np.percentile(scores, 5)), 1),
                             "ms_per_mosaic_best": round(min(t for t, _ in runs) / n_mosaics * 1e3, 2)}
            times_old, times_new = [t for t, _ in runs_old], [t for t, _ in runs_new]
            row["new_time_over_old_best"] = round(min(times_new) / min(times_old), 3)
            # each new run against the old run just before it: the machine's drift cancels
            row["new_time_over_old_pairs_median"] = round(float(np.median(np.divide(times_new, times_old))), 3)
            rows.append(row)
    return rows


def mhtml_bytes(mosaics: list[bytes]) -> bytes:
    """A file shaped like yt-dlp's MhtmlFD output (stub + one part per mosaic)."""
    boundary = "0123456789abcdef0123456789abcdef"
    cids = [f"{i}.{boundary}@yt-dlp.github.io.invalid" for i in range(len(mosaics))]
    stub = "".join(f'<figure><img src="cid:{c}"></figure>' for c in cids).encode()
    head = (f'MIME-Version: 1.0\r\nContent-type: multipart/related; boundary="{boundary}"; type="text/html"\r\n\r\n'
            f"--{boundary}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {len(stub)}\r\n\r\n")
    parts = [f"--{boundary}\r\nContent-ID: <{c}>\r\nContent-type: image/jpeg\r\nContent-length: {len(m)}\r\n"
             f"Content-location: https://i.ytimg.com/M{i}.jpg\r\n\r\n".encode() + m + b"\r\n"
             for i, (c, m) in enumerate(zip(cids, mosaics))]
    return head.encode() + stub + b"\r\n" + b"".join(parts) + f"--{boundary}--\r\n\r\n".encode()


def bench_mhtml(videos: list[dict]) -> dict:
    files = [mhtml_bytes(v["mosaics"]) for v in videos]
    t, images = timed(lambda: [read_mhtml(f) for f in files])
    assert [i for f in images for i in f] == [m for v in videos for m in v["mosaics"]]
    size = sum(map(len, files))
    return {"files": len(files), "mb": round(size / 1e6, 1), "mb_per_s": round(size / 1e6 / t, 1),
            "videos_per_s": round(len(files) / t)}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return round(float(10 * np.log10(255 ** 2 / mse)), 1) if mse else math.inf


def h264(frames, rate: Fraction, crf: int) -> tuple[bytes, list[np.ndarray]]:
    """An mp4 of the frames (libx264, yuv420p, given crf), and its frames decoded back."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=rate, options={"crf": str(crf)})
        stream.width, stream.height, stream.pix_fmt = *TILE, "yuv420p"
        for k, image in enumerate(frames):
            frame = av.VideoFrame.from_image(image)
            frame.pts = k
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    data = buffer.getvalue()
    with av.open(io.BytesIO(data)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return data, decoded


def bench_storage(videos: list[dict], quality: int, crf: int, n_25fps: int) -> dict:
    tiles_b, default_b, mosaic_b, video_b, frames_n = 0, 0, 0, 0, 0
    psnr_jpeg, psnr_default, psnr_mosaic, psnr_video = [], [], [], []
    for v in videos:
        clean = [np.asarray(f) for f in v["frames"]]
        tiles = slice_mosaics(v["mosaics"], v["level"], quality=quality)
        tiles_b += sum(len(t.image) for t in tiles)
        psnr_jpeg += [psnr(np.asarray(Image.open(io.BytesIO(t.image))), c) for t, c in zip(tiles, clean)]
        default = slice_mosaics(v["mosaics"], v["level"])
        default_b += sum(len(t.image) for t in default)
        psnr_default += [psnr(np.asarray(Image.open(io.BytesIO(t.image))), c) for t, c in zip(default, clean)]
        psnr_mosaic += [psnr(crop, c) for crop, c in zip(mosaic_crops(v), clean)]
        mosaic_b += sum(map(len, v["mosaics"]))
        data, decoded = h264(v["frames"], Fraction(1, int(INTERVAL)), crf)
        video_b += len(data)
        psnr_video += [psnr(d, c) for d, c in zip(decoded, clean)]
        frames_n += len(tiles)
    report = {
        "videos": len(videos), "frames": frames_n,
        "our_jpeg_tiles": {"bytes_per_frame": round(tiles_b / frames_n), "quality": quality,
                           "psnr_db_median": float(np.median(psnr_jpeg))},
        "our_jpeg_tiles_default": {"bytes_per_frame": round(default_b / frames_n), "quality": "source tables",
                                   "psnr_db_median": float(np.median(psnr_default))},
        "downloaded_mosaics": {"bytes_per_frame": round(mosaic_b / frames_n),
                               "psnr_db_median": float(np.median(psnr_mosaic))},
        "h264_one_frame_per_interval": {"bytes_per_frame": round(video_b / frames_n), "crf": crf,
                                        "psnr_db_median": float(np.median(psnr_video))},
    }
    report["h264_25fps_same_duration"] = bench_25fps(videos[:n_25fps], crf)
    return report


def bench_25fps(videos: list[dict], crf: int) -> dict:
    """The clips themselves at 25 fps and tile size; bytes per storyboard frame it replaces."""
    total, storyboard_frames, seconds, scores = 0, 0, 0.0, []
    for v in videos:
        clip = v["clip"]
        n = int(clip.duration * 25)
        frames = (frame_at(clip, k / 25, v["seed"], v["content"]) for k in range(n))
        data, decoded = h264(frames, Fraction(25), crf)
        total += len(data)
        seconds += clip.duration
        storyboard_frames += v["level"].count
        step = int(INTERVAL * 25)  # the video frame at each tile's time
        scores += [psnr(decoded[k * step], np.asarray(f)) for k, f in enumerate(v["frames"]) if k * step < n]
    if not videos:
        return {"skipped": "--video-25fps 0"}
    return {"videos": len(videos), "bytes_per_storyboard_frame": round(total / storyboard_frames),
            "bytes_per_second": round(total / seconds), "crf": crf,
            "psnr_db_median_at_tile_times": float(np.median(scores))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=200)
    ap.add_argument("--quality", type=int, default=90,
                    help="JPEG quality of the re-encoded tiles in the speed and storage sections (the old default)")
    ap.add_argument("--mosaic-quality", type=int, default=80, help="JPEG quality of the generated mosaics")
    ap.add_argument("--max-frames", type=int, default=16, help="frames per aligned sample")
    ap.add_argument("--video-sample", type=int, default=6, help="videos in the storage comparison")
    ap.add_argument("--video-25fps", type=int, default=3, help="of those, videos also encoded at 25 fps")
    ap.add_argument("--content", choices=("textured", "flat"), default="textured",
                    help="frames: world drawings over textured shots with grain, or the flat drawings")
    ap.add_argument("--crf", type=int, default=23, help="libx264 crf (23 is its default)")
    ap.add_argument("--source-videos", type=int, default=40, help="videos per content in the source-quality section")
    ap.add_argument("--source-qualities", default="75,85", help="JPEG qualities of the mosaics in that section")
    ap.add_argument("--source-contents", default="textured,flat", help="contents in that section")
    ap.add_argument("--source-repeats", type=int, default=9, help="alternating old/new slicing runs per setting")
    args = ap.parse_args()
    t_make, videos = timed(lambda: [make_video(seed, args.mosaic_quality, args.content) for seed in range(args.videos)])
    import av

    report = {
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "machine": {"arch": platform.machine(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "pillow": PIL.__version__, "numpy": np.__version__, "av": av.__version__},
        "generated": {"content": args.content, "videos": len(videos), "tiles": sum(v["level"].count for v in videos),
                      "mosaics": sum(len(v["mosaics"]) for v in videos), "seconds": round(t_make, 1)},
        "speed": bench_speed(videos, args.quality, args.max_frames),
        "read_mhtml": bench_mhtml(videos),
        "source_quality": [row for content in args.source_contents.split(",")
                           for row in bench_source_quality(
                               videos[:args.source_videos] if content == args.content else
                               [make_video(seed, args.mosaic_quality, content) for seed in range(args.source_videos)],
                               [int(q) for q in args.source_qualities.split(",")], args.source_repeats)],
        "storage": bench_storage(videos[:args.video_sample], args.quality, args.crf, args.video_25fps),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
