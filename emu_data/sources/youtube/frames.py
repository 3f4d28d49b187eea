"""Frame-level honesty: storyboard tiles that show nothing new are not stored as new frames.

A static stretch (a slide, a paused screen, a still album cover) gives tile after tile of
the same picture; a fade gives black or white tiles. Each near-identical run collapses to
its first tile, which keeps its own time, and blank tiles go; the times of what went are
returned so the sample's meta can say so (and `times` stays true for what stays).

Near-identical is judged by a pixel difference: the tile is averaged over a 16x9 grid of
cells (10x10 pixels of a 160x90 tile) per colour channel, and two tiles are the same frame
when no cell's mean differs by more than `difference` (0-255). JPEG noise moves a cell's
mean by a few levels; anything that moves or appears moves some cell by more. A perceptual
hash (imagehash's pHash) was measured first and refused: on flat tiles, the same picture
re-encoded drifted up to 22 of 64 bits, while >10% of tiles whose object had moved hashed
identically (BENCHMARKS.md, "Storyboard frame judgements"). Each tile is compared with the
last frame kept, so a slow pan still keeps a frame whenever it has drifted far enough.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from emu_data.core import images
from emu_data.sources.youtube.storyboard import Level, StoryboardError, Tile


# The grid a tile is averaged over: 10x10-pixel cells of YouTube's 160x90 tiles.
GRID = (16, 9)


@dataclass(frozen=True)
class Look:
    """What the judgement needs of one tile, read from the source mosaic's pixels."""

    spread: float        # the largest colour channel's standard deviation (0-255)
    cells: np.ndarray    # GRID cell means per channel


@dataclass(frozen=True)
class Judged:
    kept: list[Tile]
    static: list[float]   # times of tiles dropped as near-duplicates of the frame kept before
    blank: list[float]    # times of blank tiles dropped
    distinct: int         # frames that are neither blank nor a near-duplicate


def judge(tiles: Sequence[Tile], looks: Sequence[Look], *, difference: float, blank_std: float,
          keep: bool = False) -> Judged:
    """Which tiles stay: blank tiles (every colour channel's standard deviation below
    `blank_std`) and near-duplicates (no cell more than `difference` from the last kept
    frame's; a negative difference keeps them all) go, unless `keep`, which keeps every
    tile but still counts the distinct ones."""
    kept: list[Tile] = []
    static: list[float] = []
    blank: list[float] = []
    last = None
    for tile, look in zip(tiles, looks, strict=True):
        if look.spread < blank_std:
            blank.append(tile.time)
        elif last is not None and float(np.abs(look.cells - last).max()) <= difference:
            static.append(tile.time)
        else:
            last = look.cells
            kept.append(tile)
            continue
        if keep:
            kept.append(tile)
    distinct = len(tiles) - len(static) - len(blank)
    return Judged(kept, [], [], distinct) if keep else Judged(kept, static, blank, distinct)


def looks(mosaics: Sequence[bytes], level: Level) -> list[Look]:
    """The Look of each of the level's tiles, row-major, from mosaics that slice_mosaics has
    already accepted (so their geometry holds). Each mosaic decodes once more here: judging
    the source's pixels, not our re-encoded tiles, and at half size, which is enough."""
    found: list[Look] = []
    for m in range(level.mosaics):
        want = min(level.tiles_per_mosaic, level.count - len(found))
        try:
            found += _mosaic_looks(mosaics[m], level, want)
        except images.ImageRejected as error:   # whatever the decoder raises: this video's
            raise StoryboardError(error.reason, f"mosaic {m}: {error}") from None
    return found


def _mosaic_looks(data: bytes, level: Level, want: int) -> list[Look]:
    """One resize of the mosaic's tile grid to 32x18 pixels a tile, then numpy per tile: the
    tile edges fall on whole output pixels, so each tile's pixels are its own."""
    rows, columns = math.ceil(want / level.columns), min(want, level.columns)
    with images.opened(data, load=False) as image:
        width, height = image.size
        # JPEG decodes at half the size through its DCT, in about half the time. Not a
        # quarter: the same picture at another place in the mosaic (90-pixel rows do not
        # fall on 8-pixel blocks) then differed by up to 21 levels at sharp edges; at half, 6
        image.draft("RGB", (width // 2, height // 2))
        images.load_checked(image)
        rgb = image.convert("RGB")
    sx, sy = rgb.width / width, rgb.height / height
    box = (0, 0, columns * level.tile_width * sx, rows * level.tile_height * sy)
    grid = rgb.resize((columns * GRID[0], rows * GRID[1]), Image.Resampling.BOX, box=box)
    # (tile, cell row, cell column, channel); a fine texture with even cell means (snow,
    # grain) reads as blank, which is what it carries
    cells = (np.asarray(grid, dtype=np.float32).reshape(rows, GRID[1], columns, GRID[0], 3)
             .transpose(0, 2, 1, 3, 4).reshape(rows * columns, GRID[1], GRID[0], 3)[:want])
    spreads = cells.reshape(want, -1, 3).std(axis=1).max(axis=1)
    return [Look(float(spread), cell) for spread, cell in zip(spreads, cells)]
