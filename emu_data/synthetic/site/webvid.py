"""WebVid, as the sample site publishes it: small H.264 mp4s of world.random_clip under
root/webvid/ and CSV files with WebVid-10M's columns (videoid, name, page_idx, page_dir,
duration as ISO-8601 like PT00H00M04S, contentUrl), with faults planted on request.

The mp4s are what the webvid stage really downloads and decodes: frame k of a clip is
world.render(clip.scene_at(k / fps)) at pts k / fps, so a test can check that a sampled
frame shows the scene of the time recorded for it.

WebVid's URLs were withdrawn in 2024, and research groups keep local copies: publish_local_copy
writes one of published clips (the mp4s, and each CSV again with contentUrl a path relative
to the copy's folder, the --media-root), so the local path runs on the same clips.
"""

from __future__ import annotations

import csv
import random
import re
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import av

from emu_data.synthetic import world

COLUMNS = ("videoid", "name", "page_idx", "page_dir", "duration", "contentUrl")

# What each fault plants, and what the webvid stage should make of it:
FAULTS = {
    None: "a clean clip",
    "missing": "the mp4 is never written: the server answers 404 (http_404)",
    "truncated": "the mp4 is cut in half; its index (moov, written last) is lost: decode_error",
    "truncated_tail": "a faststart mp4 (index first) cut to 60%: frames stop early: decode_error",
    "not_video": "an HTML page served as the .mp4: decode_error",
    "bad_duration": "the duration column reads '4 seconds': bad_duration",
    "no_url": "contentUrl is empty: missing_url",
    "bad_id": "videoid is '../<id>', a path: invalid_id (keyed by file and line)",
    "malformed": "the row lacks its last field: malformed_row (keyed by file and line)",
    "short": "the clip is 0.4 s but the CSV declares 5 s: too_short once decoded",
    "declared_short": "the CSV declares PT00H00M00S: too_short before any download",
    "few_frames": "3 s at 2 fps, 6 frames: too few for 8 distinct samples: too_short",
    "oversize": "a valid mp4 followed by a 2 MB 'free' box: too_large under a small max_bytes",
}


@dataclass(frozen=True)
class SiteClip:
    """One published clip; `videoid` is always a safe word id (a bad_id fault rewrites only
    the CSV field). quoted_caption: the caption carries commas, double quotes and a line
    break, which only a real CSV parser reads back whole (not a fault: the row comes out ok)."""

    videoid: str
    duration: float = 4.0
    fps: int = 10
    size: int = 128
    seed: int = 0
    fault: str | None = None
    quoted_caption: bool = False

    def __post_init__(self):
        if self.fault not in FAULTS:
            raise ValueError(f"unknown fault {self.fault!r}; one of {sorted(f for f in FAULTS if f)}")
        if not re.fullmatch(r"\w+", self.videoid, re.ASCII):
            raise ValueError(f"videoid {self.videoid!r} must be a word id")

    @property
    def real_duration(self) -> float:
        return {"short": 0.4, "few_frames": 3.0}.get(self.fault, self.duration)

    @property
    def real_fps(self) -> int:
        return 2 if self.fault == "few_frames" else self.fps

    def clip(self) -> world.Clip:
        return world.random_clip(random.Random(f"{self.seed}:{self.videoid}"), self.real_duration)

    def caption(self) -> str:
        text = world.clip_caption(self.clip())
        return f'Stock footage, "4K": {text},\nfilmed in one take' if self.quoted_caption else text


@dataclass(frozen=True)
class Published:
    """Where a clip's row landed: its CSV file, the row's 1-based line, and the row."""

    clip: SiteClip
    path: Path
    line: int
    record: dict


def publish_webvid(root: Path, base_url: str, clips: list[SiteClip], *, shards: int = 1,
                   prefix: str = "results", columns: tuple[str, ...] = COLUMNS) -> list[Published]:
    """Write each clip's mp4 under root/webvid/ and the rows, in order, into `shards` CSV
    files root/webvid/{prefix}_N.csv of consecutive clips, with the given column order."""
    folder = Path(root) / "webvid"
    folder.mkdir(parents=True, exist_ok=True)
    per_shard = -(-len(clips) // max(1, shards))
    published = []
    for n, start in enumerate(range(0, len(clips), per_shard)):
        path = folder / f"{prefix}_{n}.csv"
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            line = 2
            for index, clip in enumerate(clips[start:start + per_shard], start):
                _write_video(folder / f"{clip.videoid}.mp4", clip)
                record = _record(clip, index, f"{base_url}/webvid/{clip.videoid}.mp4")
                values = [record[c] for c in columns]
                writer.writerow(values[:-1] if clip.fault == "malformed" else values)
                published.append(Published(clip, path, line, record))
                line += 1 + record["name"].count("\n")
    return published


def iso_duration(seconds: float) -> str:
    """WebVid's form: whole seconds, PT00H00M17S."""
    s = int(round(seconds))
    return f"PT{s // 3600:02d}H{s // 60 % 60:02d}M{s % 60:02d}S"


def _record(clip: SiteClip, index: int, url: str) -> dict:
    page = index // 50  # WebVid's crawl pages held 50 results each
    declared = {"bad_duration": "4 seconds", "declared_short": "PT00H00M00S",
                "short": "PT00H00M05S"}.get(clip.fault, iso_duration(clip.real_duration))
    return {"videoid": f"../{clip.videoid}" if clip.fault == "bad_id" else clip.videoid,
            "name": clip.caption(), "page_idx": str(page + 1),
            "page_dir": f"{page * 50 + 1:06d}_{page * 50 + 50:06d}", "duration": declared,
            "contentUrl": "" if clip.fault == "no_url" else url}


def _write_video(path: Path, clip: SiteClip) -> None:
    if clip.fault == "missing":
        return  # never written: the server answers 404
    if clip.fault == "not_video":
        path.write_bytes(b"<!DOCTYPE html><html><body>Video not found</body></html>\n" * 20)
        return
    encode_clip(path, clip.clip(), clip.real_fps, clip.size, faststart=clip.fault == "truncated_tail")
    data = path.read_bytes()
    if clip.fault == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif clip.fault == "truncated_tail":
        path.write_bytes(data[: len(data) * 6 // 10])
    elif clip.fault == "oversize":
        # A top-level 'free' box is legal mp4 padding: players skip it, the file still decodes.
        pad = 2 * 2**20
        path.write_bytes(data + struct.pack(">I4s", pad, b"free") + bytes(pad - 8))


def encode_clip(path: Path, clip: world.Clip, fps: int, size: int, *, faststart: bool = False,
                crf: int = 23) -> None:
    """H.264 (libx264, yuv420p) mp4 of the clip: frame k is the scene at k / fps, pts k.
    faststart puts the index (moov) first, as streaming sites serve their videos; FFmpeg
    moves it on close by rewriting the file, so this writes to a path, not a buffer."""
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), mode="w", format="mp4", options=options) as container:
        stream = container.add_stream("libx264", rate=fps, options={"crf": str(crf)})
        stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
        for k in range(max(1, round(clip.duration * fps))):
            frame = av.VideoFrame.from_image(world.render(clip.scene_at(k / fps), size, size))
            frame.pts = k
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


LOCAL_FOLDER = "webvid_local"


def publish_local_copy(root: Path, published: list[Published], *, file_urls: bool = False) -> list[Published]:
    """A local-files copy of published clips: each mp4 copied under root/webvid_local/videos/
    and each of their CSVs written again under root/webvid_local/ with the same rows, line for
    line, but contentUrl a path relative to root/webvid_local (the --media-root to give), or
    with file_urls a file:// URL. A clip the server lacks (fault missing) is missing here too."""
    folder = Path(root) / LOCAL_FOLDER
    (folder / "videos").mkdir(parents=True, exist_ok=True)
    copies: list[Published] = []
    for path in dict.fromkeys(p.path for p in published):
        copies += _local_csv(folder, path, [p for p in published if p.path == path], file_urls)
    return copies


def _local_csv(folder: Path, source: Path, rows: list[Published], file_urls: bool) -> list[Published]:
    """source rewritten into folder: the same records, each row's contentUrl made local."""
    with open(source, newline="", encoding="utf-8") as f:
        header, *records = list(csv.reader(f))
    column = header.index("contentUrl")
    copies = []
    for record, row in zip(records, rows, strict=True):
        local = _local_video(folder, source.parent, row, file_urls)
        if column < len(record):   # a malformed row may lack it
            record[column] = local
        copies.append(Published(row.clip, folder / source.name, row.line, {**row.record, "contentUrl": local}))
    with open(folder / source.name, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *records])
    return copies


def _local_video(folder: Path, published: Path, row: Published, file_urls: bool) -> str:
    """The clip's mp4 copied (if the site has one) and the contentUrl that names the copy."""
    if not row.record["contentUrl"]:   # the no_url fault stays empty
        return ""
    name = f"{row.clip.videoid}.mp4"
    if (published / name).exists():
        shutil.copyfile(published / name, folder / "videos" / name)
    return (folder / "videos" / name).resolve().as_uri() if file_urls else f"videos/{name}"


# ---- in the whole sample site (bundle.py) ---------------------------------------------------------

FAULTS_PLANTED = ("missing", "truncated")
SITE_PREFIX = "results_2M_train"   # WebVid's own CSV name


def site_inputs(root: Path) -> dict[str, list[Path] | Path]:
    """webvid: the CSV whose URLs the site serves; webvid_local: the same rows naming local
    copies, read with --media-root ${site.webvid_media}."""
    return {"webvid": [root / "webvid" / f"{SITE_PREFIX}_0.csv"],
            "webvid_local": [root / LOCAL_FOLDER / f"{SITE_PREFIX}_0.csv"],
            "webvid_media": root / LOCAL_FOLDER}


def publish_site(root: Path, base_url: str, config) -> None:
    from emu_data.synthetic.site.bundle import fault

    published = publish_webvid(root, base_url, [SiteClip(f"{i}", seed=config.seed,
                                                         fault=fault(i, config, FAULTS_PLANTED))
                                                for i in range(config.clips)], prefix=SITE_PREFIX)
    publish_local_copy(root, published)
