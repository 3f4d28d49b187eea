"""What `emu-data youtube` is asked to do: video ids, URLs, playlists, info-json files.

The driver only does cheap work here (parse ids, expand playlists with yt-dlp's flat
extraction, list files); reading an info dict is a worker's job, so a directory of
millions of `yt-dlp -J` files is never loaded in one process. The one exception: a file
whose name lacks the video id (yt-dlp's default names carry it) is read here for its id,
because repeats are found here.

A video named twice (an id and its info file, the same id in --ids twice, two files of one
video) is processed once: the first info file, else the first mention; every other
mention is kept as a repeat, which the stage writes as a duplicate_key status row
(sources/keys.py), so every input still ends in the status table.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from emu_data.core import errors, files

VIDEO_ID = re.compile(r"^[A-Za-z0-9_-]{11}$")
# Info dicts and player responses nest a few dozen levels; deeper is not one (and every walk
# of it, yt-dlp's sanitize_info too, recurses per level).
INFO_DEPTH = 256
# yt-dlp's default file names end in "[ID].info.json"; `-o "%(id)s"` gives "ID.info.json"
_ID_IN_NAME = re.compile(r"(?:\[|^)([A-Za-z0-9_-]{11})\]?(?:\.info)?\.json$")
_VIDEO_PATHS = re.compile(r"^/(?:shorts|embed|live|v)/([A-Za-z0-9_-]{11})")


@dataclass(frozen=True)
class VideoInput:
    """One video to process. kind: id | url | file | failed (a list that could not be expanded:
    `problem` is the reason). video_id is None where no id could be read from the input.
    repeat: (N, the ref of the input processed instead) for a video already named."""

    kind: str
    ref: str
    video_id: str | None = None
    problem: str | None = None
    repeat: tuple[int, str] | None = None

    @property
    def key(self) -> str:
        """The status key: by video id when known, else by the file or URL (readable, and
        a digest of the whole ref keeps two refs that read alike apart)."""
        if self.video_id:
            return f"yt_storyboard:{self.video_id}"
        name = Path(self.ref).name if self.kind == "file" else self.ref
        digest = hashlib.sha1(self.ref.encode("utf-8", "surrogatepass")).hexdigest()[:10]
        return f"yt_storyboard:{self.kind}:" + re.sub(r"[^A-Za-z0-9_.-]", "_", name)[-100:] + f"-{digest}"

    @property
    def identity(self) -> tuple[str, str]:
        """Two inputs with one identity are one video."""
        return ("video", self.video_id) if self.video_id else (self.kind, self.ref)

    @property
    def sort_key(self) -> tuple[str, str, int]:
        return (self.video_id or "", self.ref, self.repeat[0] if self.repeat else 0)


def video_id_of(text: str) -> str | None:
    """The 11-character id in a bare id or any of YouTube's video URL forms, else None."""
    text = text.strip()
    # fullmatch: VIDEO_ID's $ also matches before a final newline (v=...%0A)
    if VIDEO_ID.fullmatch(text):
        return text
    url = _parsed(text if "://" in text else f"https://{text}")
    host = (url.hostname or "").lower() if url else ""
    if host.endswith("youtu.be"):
        candidate = url.path.lstrip("/").split("/")[0]
        return candidate if VIDEO_ID.fullmatch(candidate) else None
    if host.endswith("youtube.com") or host.endswith("youtube-nocookie.com"):
        match = _VIDEO_PATHS.match(url.path)
        if match:
            return match.group(1)
        ids = parse_qs(url.query).get("v", [])
        return ids[0] if ids and VIDEO_ID.fullmatch(ids[0]) else None
    return None


def _parsed(text: str):
    """urlparse's result, or None for text it refuses ("http://[::1", an unclosed IPv6 host):
    such a ref stays a plain URL input, and yt-dlp's refusal becomes its status row."""
    try:
        return urlparse(text)
    except ValueError:
        return None


def is_list_url(text: str) -> bool:
    """A URL to expand into videos: a playlist or channel, or any other page or feed that
    is not itself a YouTube video (yt-dlp's flat extraction decides what it holds)."""
    if video_id_of(text):
        return False
    url = _parsed(text.strip())
    return url is not None and url.scheme in ("http", "https")


def read_ids_file(path: Path) -> list[str]:
    """One id or URL per line; blank lines and # comments ignored."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:  # a ValueError, but one that does not name the file
        raise errors.UsageError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def info_json_files(directory: Path) -> list[Path]:
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"--info-json {directory}: not a directory")
    # an explicit-stack walk: Path.rglob recurses, and a hostile tree is deeper than the stack
    return sorted(folder / name for folder, _, names in files.walk(directory) for name in names
                  if name.endswith(".json") and files.is_regular(folder / name))


def from_refs(refs: list[str], expand=None) -> list[VideoInput]:
    """Inputs from ids/URLs; list URLs go through `expand(url) -> [video urls]`.

    A list that cannot be expanded (bot check, 404...) becomes one failed input, so it shows
    in the status table instead of stopping the run.
    """
    found: list[VideoInput] = []
    for ref in refs:
        if not (is_list_url(ref) and expand is not None):
            found.append(_one(ref))
            continue
        try:
            found += [_one(r) for r in expand(ref)]
        except RuntimeError as e:  # YtdlError: yt-dlp's failure, with its reason
            found.append(VideoInput("failed", ref.strip(), problem=getattr(e, "reason", "download_error")))
    return found


def _one(ref: str) -> VideoInput:
    vid = video_id_of(ref)
    return VideoInput("id" if vid == ref.strip() else "url", ref.strip(), vid)


def from_info_files(paths: list[Path]) -> list[VideoInput]:
    inputs = []
    for path in paths:
        match = _ID_IN_NAME.search(path.name)
        inputs.append(VideoInput("file", str(path), match.group(1) if match else id_inside(path)))
    return inputs


def id_inside(path: Path) -> str | None:
    """The video id an info file holds, or None (unreadable, not an info dict, no valid id:
    the worker reads it again and says why)."""
    try:
        data = files.read_json(path, max_depth=INFO_DEPTH)
    except files.UnreadableFile:
        return None
    video_id = data.get("id") if isinstance(data, dict) else None
    return video_id if isinstance(video_id, str) and VIDEO_ID.fullmatch(video_id) else None


def dedupe(inputs: list[VideoInput]) -> list[VideoInput]:
    """Every input, in a stable order (units are the same on every run); of the inputs naming
    one video, one is processed (the first info file, which saves a metadata request, else
    the first) and each other is marked a repeat of it."""
    groups: dict[tuple[str, str], list[VideoInput]] = {}
    for item in inputs:
        groups.setdefault(item.identity, []).append(item)
    found = []
    for items in groups.values():
        kept = next((i for i in items if i.kind == "file"), items[0])
        others = [i for i in items if i is not kept]
        found += [kept] + [replace(i, repeat=(n, kept.ref)) for n, i in enumerate(others, 1)]
    return sorted(found, key=lambda i: i.sort_key)


def collect(refs: list[str], ids_file: Path | None, info_dirs: list[Path], expand) -> list[VideoInput]:
    """Every input the command line names, deduplicated, in a stable order."""
    refs = list(refs) + (read_ids_file(ids_file) if ids_file else [])
    info_files = [f for d in info_dirs for f in info_json_files(d)]
    found = dedupe(from_refs(refs, expand) + from_info_files(info_files))
    if not found:
        raise errors.UsageError("no videos given: pass ids or URLs, --ids FILE or --info-json DIR")
    return found
