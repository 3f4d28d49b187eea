"""Render interleaved corpus samples as one self-contained HTML page for a person to read.

The page must open anywhere (a laptop, a CI artifact, an air-gapped box), so everything is
inline: CSS in a <style> block, images as data: URIs, no scripts, no external URL. Every
string that comes from a record (key, source, texts, meta) is untrusted and html-escaped.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Iterable, Mapping

from emu_data.core import files

# An unknown source still renders, in grey, rather than failing the page.
_UNKNOWN_COLOUR = "#718096"


def source_colour(name: str) -> str:
    """The record source's badge colour (the registry's)."""
    from emu_data import sources

    kind = sources.kind(name)
    return kind.colour if kind is not None else _UNKNOWN_COLOUR

_CSS = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1100px;
       padding: 16px; background: #f4f5f7; color: #1a202c; }
h1 { font-size: 22px; margin: 4px 0 12px; }
table.summary { border-collapse: collapse; margin-bottom: 16px; background: #fff; }
table.summary td, table.summary th { border: 1px solid #cbd5e0; padding: 3px 10px;
       text-align: left; vertical-align: top; }
table.summary table td { border: none; padding: 0 8px 0 0; }
.card { background: #fff; border: 1px solid #d2d6dc; border-radius: 8px;
        margin: 0 0 16px; padding: 10px 14px; }
.head { display: flex; align-items: center; gap: 10px; margin-bottom: 8px; }
.key { font: 600 14px ui-monospace, monospace; overflow-wrap: anywhere; }
.badge { color: #fff; border-radius: 10px; padding: 1px 9px; font-size: 12px; }
.count { color: #718096; font-size: 12px; margin-left: auto; white-space: nowrap; }
.doc .pos { margin: 6px 0; }
.doc img { display: block; border: 1px solid #e2e8f0; max-width: 100%; max-height: 360px; }
/* Storyboard frames are 160x90 tiles: let them and their subtitles wrap like text. */
.flow { display: flex; flex-wrap: wrap; align-items: flex-start; gap: 6px; }
.flow .pos { max-width: 320px; }
.flow .text { background: #f7fafc; border-left: 3px solid #cbd5e0; padding: 2px 6px;
              font-size: 13px; max-width: 260px; }
.flow img { display: block; max-width: 320px; border: 1px solid #e2e8f0; }
p.text { margin: 0; white-space: pre-wrap; overflow-wrap: anywhere; }
.time { display: block; font: 11px ui-monospace, monospace; color: #4a5568; }
.bad { display: inline-block; border: 2px dashed #e53e3e; color: #c53030; padding: 8px;
       font-size: 12px; background: #fff5f5; }
.empty { color: #a0aec0; font-style: italic; font-size: 12px; }
/* What cleaning took out, in place: visible, but quieter than what was kept. */
.dropped { border: 1px dashed #a0aec0; color: #718096; background: #fafafa; padding: 4px 6px;
           font-size: 11px; }
.removed { color: #a0aec0; font-size: 11px; padding: 2px 0; overflow-wrap: anywhere; }
.removed s { color: #718096; }
p.judgement { margin: 4px 0 0; color: #4a5568; }
details { margin-top: 8px; font-size: 12px; }
summary { cursor: pointer; color: #4a5568; }
pre.meta { background: #f7fafc; padding: 6px; margin: 4px 0 0; white-space: pre-wrap;
           overflow-wrap: anywhere; }
"""

# Magic bytes -> MIME. Sniffed, not trusted from any field, so a mislabelled blob cannot
# become a broken <img>; anything unrecognised gets a visible placeholder instead.
_MAGIC = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


def sniff_mime(data: bytes) -> str | None:
    """The image MIME type from the leading bytes, or None when it is not a known image."""
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def format_time(seconds: float) -> str:
    """Seconds as m:ss.s; round first so 59.96 reads 1:00.0, never 0:60.0. A time that is
    no finite number (a broken record) reads as itself rather than failing the page."""
    if not math.isfinite(seconds):
        return str(seconds)
    tenths = round(float(seconds) * 10)
    minutes, rest = divmod(tenths, 600)
    return f"{minutes}:{rest // 10:02d}.{rest % 10}"


def format_clock(seconds: float) -> str:
    """Seconds as m:ss, as a video player shows them (whole seconds, rounded down)."""
    if not math.isfinite(seconds):
        return str(seconds)
    minutes, rest = divmod(math.floor(seconds), 60)
    return f"{minutes}:{rest:02d}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def _image_html(data) -> str:
    # Accept the datasets Image struct too ({"bytes": ..., "path": ...}), as read from a shard.
    if isinstance(data, Mapping):
        data = data.get("bytes") or b""
    data = bytes(data)
    mime = sniff_mime(data)
    if mime is None:
        return f'<span class="bad">undecodable image ({len(data)} bytes)</span>'
    uri = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    return f'<img src="{uri}" alt="image, {len(data)} bytes" loading="lazy">'


def _position_html(text, image, time) -> str:
    parts = []
    if time is not None:
        parts.append(f'<span class="time">{format_time(time)}</span>')
    if image is not None:
        parts.append(_image_html(image))
    if text is not None:
        parts.append(f'<p class="text">{_esc(text)}</p>')
    if image is None and text is None:  # breaks the one-non-null rule: show it, do not hide it
        parts.append('<span class="empty">empty position</span>')
    return f'<div class="pos">{"".join(parts)}</div>'


def _timed(time: float | None) -> str:
    return "" if time is None else f" · {format_clock(time)}"


def _cleaning_markers(cleaning) -> list[tuple[float | None, str]]:
    """(time, html) of a marker per frame and text the cleaning took, so a reader can judge
    each in its place; a removed text without a usable time has None (it goes last)."""
    markers = [(t, f'<div class="pos dropped">{kind} frame dropped{_timed(t)}</div>')
               for kind, times in (("static", cleaning.static_frames), ("blank", cleaning.blank_frames))
               for t in times]
    markers += [(t, f'<div class="pos removed">removed: <s>{_esc(text)}</s>{_timed(t)}</div>')
                for t, text in cleaning.removed]
    return sorted(markers, key=lambda m: (m[0] is None, m[0] or 0.0))   # stable: frames before texts


def _with_markers(positions: list[tuple[float | None, str]], markers: list[tuple[float | None, str]]) -> str:
    """The positions' html with each marker (sorted by time) before the first kept position
    later than it: a dropped frame shows between the kept positions around it."""
    out, pending = [], list(markers)
    for time, html_ in positions:
        while pending and pending[0][0] is not None and _finite(time) and pending[0][0] < time:
            out.append(pending.pop(0)[1])
        out.append(html_)
    return "".join(out + [html_ for _, html_ in pending])


def _finite(value) -> bool:
    """A number to show or compare: no bool, NaN or infinity, nor an integer past float (JSON
    can hold all of them)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _cleaning_line(cleaning) -> str:
    frames = len(cleaning.static_frames) + len(cleaning.blank_frames)
    return (f"cleaning: {len(cleaning.static_frames)} static, {len(cleaning.blank_frames)} blank "
            f"{'frame' if frames == 1 else 'frames'} dropped; {_plural(len(cleaning.removed), 'annotation')} "
            f"removed ({_plural(cleaning.words_removed, 'word')})")


def _speech_line(speech) -> str:
    """The per-video speech measures of a sample's meta, those of the right type ("" if none)."""
    if not isinstance(speech, Mapping):
        return ""
    parts = []
    if _finite(speech.get("words")):
        parts.append(_plural(int(speech["words"]), "word"))
    if _finite(speech.get("words_per_minute")):
        parts.append(f"{speech['words_per_minute']:.0f} words/min")
    if _finite(speech.get("asr_confidence")):
        parts.append(f"ASR confidence {speech['asr_confidence']:.2f}")
    if isinstance(speech.get("language"), str):
        probability = speech.get("language_probability")
        parts.append(f"language {speech['language']}"
                     + (f" (p {probability:.2f})" if _finite(probability) else ""))
    return "speech: " + ", ".join(parts) if parts else ""


def _meta_html(meta, notes: Iterable[str] = ()) -> str:
    """Meta as collapsed pretty JSON, after its notes (one line each: what cleaning took, the
    speech measures); invalid JSON is shown raw so nothing is lost."""
    if meta is None or meta == "":
        return ""
    try:
        body = json.dumps(files.loads_json(meta), indent=2, ensure_ascii=False, sort_keys=True)
        label = "meta"
    except (TypeError, files.JsonError):
        body, label = str(meta), "meta (not valid JSON)"
    lines = "".join(f'<p class="judgement">{_esc(note)}</p>' for note in notes if note)
    return f'<details><summary>{label}</summary>{lines}<pre class="meta">{_esc(body)}</pre></details>'


def _card_html(record: Mapping) -> str:
    texts = list(record.get("texts") or [])
    images = list(record.get("images") or [])
    times = record.get("times")
    n = max(len(texts), len(images))
    texts += [None] * (n - len(texts))  # ragged lists are a data bug; still show what is there
    images += [None] * (n - len(images))
    times = list(times) + [None] * (n - len(times)) if times is not None else [None] * n
    source = str(record.get("source", ""))
    colour = source_colour(source)
    n_images = sum(img is not None for img in images)
    # Timed samples are video frames with subtitles between: flow them as a wrapping row.
    layout = "flow" if record.get("times") is not None else "doc"
    # stats says what a meta's cleaning holds; imported here, as the registry is above, so that
    # importing this module stays light
    from emu_data.inspect import stats

    meta = stats.meta_object(record.get("meta")) or {}
    cleaning = stats.cleaning_of(meta)
    positions = [(time, _position_html(text, image, time)) for text, image, time in zip(texts, images, times)]
    markers = _cleaning_markers(cleaning) if cleaning is not None else []
    notes = [_cleaning_line(cleaning) if cleaning is not None else "", _speech_line(meta.get("speech"))]
    return (
        '<section class="card"><div class="head">'
        f'<span class="key">{_esc(record.get("key", ""))}</span>'
        f'<span class="badge" style="background:{colour}">{_esc(source)}</span>'
        f'<span class="count">{_plural(n, "position")}, {_plural(n_images, "image")}</span></div>'
        f'<div class="{layout}">{_with_markers(positions, markers)}</div>{_meta_html(record.get("meta"), notes)}'
        '</section>'
    )


def _summary_value(value) -> str:
    if isinstance(value, Mapping):
        rows = "".join(f"<tr><td>{_esc(k)}</td><td>{_esc(v)}</td></tr>" for k, v in value.items())
        return f"<table>{rows}</table>"
    return _esc(value)


def _summary_html(summary: Mapping | None) -> str:
    if not summary:
        return ""
    rows = "".join(
        f"<tr><th>{_esc(k)}</th><td>{_summary_value(v)}</td></tr>" for k, v in summary.items()
    )
    return f'<table class="summary">{rows}</table>'


def render_html(records: Iterable[dict], title: str, *, summary: dict | None = None) -> str:
    """One HTML page: optional summary table, then a card per record in the given order."""
    cards = "\n".join(_card_html(r) for r in records)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head>\n<body>"
        f"<h1>{_esc(title)}</h1>{_summary_html(summary)}\n{cards}\n</body></html>\n"
    )


def pick_records(directory, n: int) -> list[dict]:
    """Up to n samples of a corpus, taken round-robin across sources so each kind shows."""
    from emu_data.core import corpus
    from emu_data.core.shards import read_shard

    by_source: dict[str, list[dict]] = {}
    for path in corpus.shard_paths(directory):
        for row in read_shard(path, "interleaved").slice(0, n).to_pylist():
            by_source.setdefault(row["source"], []).append(row)
    picked: list[dict] = []
    queues = [rows for _, rows in sorted(by_source.items())]
    while len(picked) < n and any(queues):
        for rows in queues:
            if rows and len(picked) < n:
                picked.append(rows.pop(0))
    return picked


def write_preview(directory, out, n: int = 20) -> int:
    """Write the preview page of a corpus directory to `out`; returns how many samples it shows."""
    from pathlib import Path

    from emu_data.inspect import stats

    records = pick_records(directory, n)
    computed = stats.compute(directory)
    summary = computed.to_dict()
    table = {"directory": str(directory), "shown": len(records),
             "samples by source": {s: v["samples"] for s, v in summary["sources"].items()},
             "status": {s: ", ".join(f"{reason} {n}" for reason, n in c.items())
                        for s, c in summary["status"].items()}}
    filtered = {s: stats.describe_filters(f) for s, f in sorted(computed.filters.items())}
    if any(filtered.values()):
        table["filters"] = {s: text for s, text in filtered.items() if text}
    page = render_html(records, f"emu-data preview: {Path(directory).name}", summary=table)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(page, encoding="utf-8")
    return len(records)
