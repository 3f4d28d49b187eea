"""Emu's YT-Storyboard interleave rule: frames and subtitle text merged by time.

Frames sit at their times, cues at their start, stable-sorted by time with the frame first
on ties; the text since the previous frame goes before each frame and trailing text last.
Every position keeps its time, so the sequence can be cut into samples of at most N frames.
"""

from __future__ import annotations

from typing import Sequence

Position = tuple[float, "str | bytes"]  # (seconds, text or encoded image)


def interleave(frames: Sequence[tuple[float, bytes]], cues: Sequence[tuple[float, str]]) -> list[Position]:
    """Merge frames and cues into (time, item) positions by Emu's rule."""
    events = sorted(
        [(t, 0, i, image) for i, (t, image) in enumerate(frames)]
        + [(t, 1, i, text) for i, (t, text) in enumerate(cues) if text.strip()],
        key=lambda e: e[:3],  # time, then frame (0) before text (1), then input order
    )
    positions: list[Position] = []
    pending: list[tuple[float, str]] = []
    for t, kind, _, item in events:
        if kind == 1:
            pending.append((t, item.strip()))
            continue
        if pending:
            positions.append(_joined(pending))
            pending = []
        positions.append((t, item))
    if pending:
        positions.append(_joined(pending))
    return positions


def _joined(texts: list[tuple[float, str]]) -> Position:
    """Cues between two frames become one text position, timed at the first cue."""
    return texts[0][0], " ".join(text for _, text in texts)


def chunk(positions: Sequence[Position], max_frames: int) -> list[list[Position]]:
    """Cut positions into samples of at most `max_frames` images each.

    Text travels with the frame it precedes; text after the final frame joins the last chunk.
    """
    if max_frames < 1:
        raise ValueError("max_frames must be at least 1")
    chunks: list[list[Position]] = [[]]
    frames = 0
    for position in positions:
        if frames == max_frames:  # full: whatever comes next opens the next chunk
            chunks.append([])
            frames = 0
        chunks[-1].append(position)
        frames += isinstance(position[1], bytes)
    if len(chunks) > 1 and frames == 0:  # only trailing text left: it belongs to the last frames
        chunks[-2].extend(chunks.pop())
    return [c for c in chunks if c]
