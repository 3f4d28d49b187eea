"""`emu-data sample`: a small corpus of every source kind, drawn from the generated world.

No network: each source's samples are built the way its real ingest stage builds them
(storyboard tiles aligned with subtitles, image/alt-text pairs, documents with images at
their matched sentence, uniformly sampled video frames with a caption), from scenes whose
text names what is drawn, so a small model trained on it has something to learn.
"""

from __future__ import annotations

import math
import random
import string
from dataclasses import asdict, dataclass, field
from typing import Callable

from emu_data.core import align, errors, records
from emu_data.synthetic import world
from emu_data.core.corpus import Unit, UnitWriter
from emu_data.core.options import option, positive_int, show_words, words

# Sample sources' URLs use the reserved .invalid domain: they name where a real item
# would live without ever resolving.
_URL = "https://sample.invalid"


@dataclass(frozen=True)
class SampleConfig:
    n: int = option(16, parse=positive_int, help="items per source (videos, pairs, documents)")
    seed: int = option(0, parse=int, help="world seed")
    # () : every record source the sample world can make (the registry's, in its order)
    sources: tuple[str, ...] = option((), parse=words, show=show_words, metavar="LIST",
                                      help="comma-separated subset of record sources (default: all)")
    per_unit: int = 8                 # items per unit of work
    image_size: int = 224             # LAION / MMC4 images, square
    tile_size: tuple[int, int] = (160, 90)   # storyboard tiles (YouTube's sb0 level)
    storyboard_interval: float = 5.0  # seconds between storyboard tiles
    frames_per_sample: int = option(16, parse=positive_int,
                                    help="storyboard frames per sample before a video is cut")
    webvid_frames: int = 8            # frames sampled per WebVid video (Emu uses 8)
    webvid_size: int = 128

    def __post_init__(self):
        known = sample_kinds()
        if not self.sources:
            object.__setattr__(self, "sources", tuple(known))
        unknown = set(self.sources) - set(known)
        if unknown:
            raise errors.UsageError(f"unknown sample source(s): {', '.join(sorted(unknown))}")
        if self.n < 1 or self.per_unit < 1:
            raise errors.UsageError("--n and per_unit must be at least 1")


def sample_kinds() -> dict:
    """The registered record sources the sample world can make, by name."""
    from emu_data import sources

    return {kind.name: kind.sample for kind in sources.kinds() if kind.sample is not None}


@dataclass(frozen=True)
class SampleUnit:
    source: str
    start: int
    count: int
    config: SampleConfig
    # the kind's generator, handed over whole: a worker need not know the registry
    build: Callable = field(default=None, repr=False, compare=False)


def units(config: SampleConfig) -> list[Unit]:
    """Deterministic units: each source's item indices in runs of `per_unit`."""
    builders = sample_kinds()
    return [
        Unit(f"{source}-{start // config.per_unit:05d}",
             SampleUnit(source, start, min(config.per_unit, config.n - start), config, builders[source]))
        for source in config.sources
        for start in range(0, config.n, config.per_unit)
    ]


def layout(config: SampleConfig) -> dict:
    return {"sample": asdict(config)}


def process(unit: SampleUnit, writer: UnitWriter) -> None:
    """Build one unit's items; an item that breaks an invariant becomes a status row."""
    build = unit.build
    for index in range(unit.start, unit.start + unit.count):
        rng = random.Random(f"{unit.config.seed}:{unit.source}:{index}")
        source_id = _source_id(build, index, rng)
        key = f"{unit.source}:{source_id}"
        try:
            samples = build(key, rng, unit.config)
        except records.RecordError as e:
            writer.add_status(records.status(key, unit.source, "invalid_record",
                                             input=source_id, error=str(e)))
            continue
        for row in samples:
            writer.add_sample(row)
        writer.add_status(records.status(key, unit.source, "ok", input=source_id,
                                         samples=len(samples)))


def _source_id(build, index: int, rng: random.Random) -> str:
    """The item's id as its real source spells it: the generator decides, not a source name."""
    if build is storyboard:   # YouTube ids: 11 characters of base64url
        return "".join(rng.choice(string.ascii_letters + string.digits + "-_") for _ in range(11))
    return f"{index:08d}"


def _pair(key, rng, config, *, coco: bool) -> list[dict]:
    scene = world.random_scene(rng)
    image = world.encode(world.render(scene, config.image_size, config.image_size))
    text = world.caption(scene) if coco else world.alt_text(scene, rng)
    meta = {
        "url": f"{_URL}/{key.replace(':', '/')}.jpg",
        "similarity": round(rng.uniform(0.28, 0.42), 4),
        "punsafe": round(rng.uniform(0.0, 0.05), 4),
        "pwatermark": round(rng.uniform(0.0, 0.3), 4),
        "width": config.image_size, "height": config.image_size,
        "synthetic": True,
    }
    if coco:
        meta.update(top_caption=text, alt_text=world.alt_text(scene, rng))
    return [records.sample(key, key.split(":")[0], [image, text], meta=meta)]


def mmc4_document(key, rng, config) -> list[dict]:
    doc = world.random_document(rng, n_images=rng.randint(1, 3))
    before: dict[int, list[bytes]] = {}
    for scene, sentence in zip(doc.scenes, doc.matched):
        image = world.encode(world.render(scene, config.image_size, config.image_size))
        before.setdefault(sentence, []).append(image)
    items: list[str | bytes] = []
    for i, sentence in enumerate(doc.sentences):
        items += before.get(i, [])
        if items and isinstance(items[-1], str):  # consecutive sentences read as one paragraph
            items[-1] += " " + sentence
        else:
            items.append(sentence)
    meta = {"url": f"{_URL}/mmc4/{key.split(':')[1]}.html", "title": doc.title,
            "matched_text_index": list(doc.matched),
            "matched_sim": [round(row[m], 4) for row, m in zip(doc.similarity, doc.matched)],
            "synthetic": True}
    return [records.sample(key, "mmc4", items, meta=meta)]


def webvid_clip(key, rng, config) -> list[dict]:
    clip = world.random_clip(rng, duration=round(rng.uniform(8, 30), 1))
    n = config.webvid_frames
    times = [round((i + 0.5) * clip.duration / n, 3) for i in range(n)]  # centres of n equal spans
    frames = [world.encode(world.render(clip.scene_at(t), config.webvid_size, config.webvid_size))
              for t in times]
    text = world.clip_caption(clip)
    meta = {"url": f"{_URL}/webvid/{key.split(':')[1]}.mp4", "duration": clip.duration,
            "frames": n, "synthetic": True}
    return [records.sample(key, "webvid", frames + [text], times=times + [times[-1]], meta=meta)]


def storyboard(key, rng, config) -> list[dict]:
    clip = world.random_clip(rng, duration=round(rng.uniform(40, 160)))
    interval = config.storyboard_interval
    count = math.ceil(clip.duration / interval) + 1  # what YouTube's specs show
    width, height = config.tile_size
    frames = [(k * interval, world.encode(world.render(clip.scene_at(min(k * interval, clip.duration)),
                                                      width, height)))
              for k in range(count)]
    cues = [(c.start, c.text) for c in world.narrate(clip, every=rng.uniform(3, 8), rng=rng)]
    chunks = align.chunk(align.interleave(frames, cues), config.frames_per_sample)
    video_id = key.split(":")[1]
    return [
        records.sample(f"{key}:{i}", key.split(":")[0], [item for _, item in c],
                       times=[t for t, _ in c],
                       meta={"video_id": video_id, "chunk": i, "chunks": len(chunks),
                             "duration": clip.duration, "storyboard_level": "sb0",
                             "interval": interval, "tile": [width, height],
                             "subtitles": "en", "synthetic": True})
        for i, c in enumerate(chunks)
    ]


def laion_pair(key, rng, config) -> list[dict]:
    return _pair(key, rng, config, coco=False)


def coco_pair(key, rng, config) -> list[dict]:
    return _pair(key, rng, config, coco=True)


def make_sample(config: SampleConfig, output, ray=None):
    """Write the sample corpus to output.out through the usual stage machinery."""
    from emu_data.engine import runtime, stage

    ray = ray or runtime.RayOptions()
    resolved = {"sample": asdict(config), "output": {**asdict(output), "out": str(output.out)},
                "ray": asdict(ray)}
    return stage.run_stage("sample", units(config), process, output=output,
                           layout=layout(config), config=resolved, ray=ray)
