"""What `emu-data youtube` is asked to do: video ids, URLs, playlists, info-json files.

The driver only does cheap work here (parse ids, expand playlists with yt-dlp's flat
extraction, list files); reading an info dict is a worker's job, so a directory of
millions of `yt-dlp -J` files is never loaded in one process.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlparse

VIDEO_ID = re.compile(r"^[A-Za-z0-9_-]{11}$")
# yt-dlp's default file names end in "[ID].info.json"; `-o "%(id)s"` gives "ID.info.json"
_ID_IN_NAME = re.compile(r"(?:\[|^)([A-Za-z0-9_-]{11})\]?(?:\.info)?\.json$")
_VIDEO_PATHS = re.compile(r"^/(?:shorts|embed|live|v)/([A-Za-z0-9_-]{11})")


@dataclass(frozen=True)
class VideoInput:
    """One video to process. kind: id | url | file | failed (a list that could not be expanded:
    `problem` is the reason). video_id is None until a worker reads a file whose name lacks it."""

    kind: str
    ref: str
    video_id: str | None = None
    problem: str | None = None

    @property
    def key(self) -> str:
        """The status key: by video id when known, else by the file or URL (still stable)."""
        if self.video_id:
            return f"yt_storyboard:{self.video_id}"
        name = Path(self.ref).name if self.kind == "file" else self.ref
        return f"yt_storyboard:{self.kind}:" + re.sub(r"[^A-Za-z0-9_.-]", "_", name)[-120:]

    @property
    def sort_key(self) -> tuple[str, str]:
        return (self.video_id or "", self.ref)


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
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def info_json_files(directory: Path) -> list[Path]:
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"--info-json {directory}: not a directory")
    return sorted(p for p in directory.rglob("*.json") if p.is_file())


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
        inputs.append(VideoInput("file", str(path), match.group(1) if match else None))
    return inputs


def dedupe(inputs: list[VideoInput]) -> list[VideoInput]:
    """One input per video (an info file beats a bare id: it saves a metadata request),
    in a stable order, so units are the same on every run."""
    by_key: dict[str, VideoInput] = {}
    for item in inputs:
        kept = by_key.get(item.key)
        if kept is None or (item.kind == "file" and kept.kind != "file"):
            by_key[item.key] = item
    return sorted(by_key.values(), key=lambda i: i.sort_key)


def collect(refs: list[str], ids_file: Path | None, info_dirs: list[Path], expand) -> list[VideoInput]:
    """Every input the command line names, deduplicated, in a stable order."""
    refs = list(refs) + (read_ids_file(ids_file) if ids_file else [])
    files = [f for d in info_dirs for f in info_json_files(d)]
    found = dedupe(from_refs(refs, expand) + from_info_files(files))
    if not found:
        raise ValueError("no videos given: pass ids or URLs, --ids FILE or --info-json DIR")
    return found
