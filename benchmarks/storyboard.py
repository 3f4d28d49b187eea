"""Storyboard slicing + alignment throughput, and bytes per frame against H.264 video.

    python benchmarks/storyboard.py --videos 200 --video-sample 6 --video-25fps 3

Speed: 200 generated videos of 65 tiles (160x90, 5x5 mosaics, 5 s apart, last mosaic cropped
to its rows, as YouTube serves sb0 of a ~316 s video) go through our slice_mosaics + the
interleave/chunk alignment with their subtitles, against a bare Pillow loop over the same
mosaics (decode each mosaic, crop each tile, encode it at the same JPEG quality), the limit
for any slicer that re-encodes tiles. Both run three times, alternating, best run kept; the
ratio is what to compare across runs (machines here are noisy).

Storage: bytes per storyboard frame as our JPEG tiles, as the downloaded mosaics, and as the
same clean frames encoded with libx264 (PyAV) at one frame per interval, plus the same clips
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

from _timing import best_of_pair, timed  # noqa: E402  (benchmarks/ is on sys.path as a script)

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
    mosaics = []
    for start in range(0, count, COLUMNS * ROWS):
        used = frames[start:start + COLUMNS * ROWS]
        mosaic = Image.new("RGB", (TILE[0] * COLUMNS, TILE[1] * math.ceil(len(used) / COLUMNS)))
        for j, frame in enumerate(used):
            mosaic.paste(frame, (j % COLUMNS * TILE[0], j // COLUMNS * TILE[1]))
        mosaics.append(world.encode(mosaic, quality=mosaic_quality))
    level = Level("sb0", *TILE, count, COLUMNS, ROWS, INTERVAL, "spec",
                  tuple(f"https://i.ytimg.com/sb/v{seed}/storyboard3_L2/M{m}.jpg" for m in range(len(mosaics))))
    cues = [(c.start, c.text) for c in world.narrate(clip, every=rng.uniform(3, 8), rng=rng)]
    return {"clip": clip, "seed": seed, "content": content, "frames": frames, "mosaics": mosaics,
            "level": level, "cues": cues}






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
    tiles_b, mosaic_b, video_b, frames_n = 0, 0, 0, 0
    psnr_jpeg, psnr_video = [], []
    for v in videos:
        clean = [np.asarray(f) for f in v["frames"]]
        tiles = slice_mosaics(v["mosaics"], v["level"], quality=quality)
        tiles_b += sum(len(t.image) for t in tiles)
        mosaic_b += sum(map(len, v["mosaics"]))
        psnr_jpeg += [psnr(np.asarray(Image.open(io.BytesIO(t.image))), c) for t, c in zip(tiles, clean)]
        data, decoded = h264(v["frames"], Fraction(1, int(INTERVAL)), crf)
        video_b += len(data)
        psnr_video += [psnr(d, c) for d, c in zip(decoded, clean)]
        frames_n += len(tiles)
    report = {
        "videos": len(videos), "frames": frames_n,
        "our_jpeg_tiles": {"bytes_per_frame": round(tiles_b / frames_n), "quality": quality,
                           "psnr_db_median": float(np.median(psnr_jpeg))},
        "downloaded_mosaics": {"bytes_per_frame": round(mosaic_b / frames_n)},
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
    ap.add_argument("--quality", type=int, default=90, help="JPEG quality of the re-encoded tiles")
    ap.add_argument("--mosaic-quality", type=int, default=80, help="JPEG quality of the generated mosaics")
    ap.add_argument("--max-frames", type=int, default=16, help="frames per aligned sample")
    ap.add_argument("--video-sample", type=int, default=6, help="videos in the storage comparison")
    ap.add_argument("--video-25fps", type=int, default=3, help="of those, videos also encoded at 25 fps")
    ap.add_argument("--content", choices=("textured", "flat"), default="textured",
                    help="frames: world drawings over textured shots with grain, or the flat drawings")
    ap.add_argument("--crf", type=int, default=23, help="libx264 crf (23 is its default)")
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
        "storage": bench_storage(videos[:args.video_sample], args.quality, args.crf, args.video_25fps),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
