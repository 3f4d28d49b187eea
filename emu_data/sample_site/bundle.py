"""The whole sample site at once: every source published under one root, for `emu-data run`.

The smoke recipe asks for a site of a given size; this module publishes LAION and LAION-COCO
parquets, MMC4 jsonl, WebVid CSVs and YouTube info dicts (with their images, mp4s, mosaics
and subtitles) and says where each input landed. A few of each source's faults are planted
(one item in `fault_every`), so the status table of a smoke run shows real reasons.

The files embed the server's base URL, so the port is part of what was published:
`site.json` records it, and a rerun serves the same files on the same port when it can.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from emu_data.errors import UsageError
from emu_data.sample_site.laion import SitePair, publish_laion
from emu_data.sample_site.mmc4 import SiteDocument, publish_mmc4
from emu_data.sample_site.webvid import SiteClip, publish_webvid
from emu_data.sample_site.youtube import SiteVideo, publish_youtube

# The faults a smoke site plants, in turn, one per `fault_every` items of each source:
# each one ends in the status table with its reason.
LAION_FAULTS = ("404", "html", "truncated", "low_similarity", "null_caption")
MMC4_FAULTS = ("missing_image", "malformed_json", "corrupt_image")
WEBVID_FAULTS = ("missing", "truncated")
YOUTUBE_SUBTITLES = ("none",)   # a video without subtitles: no_subtitles
WEBVID_PREFIX = "results_2M_train"   # WebVid's own CSV name
COCO_OFFSET = 1_000_000


@dataclass(frozen=True)
class SiteConfig:
    pairs: int = 200        # LAION pairs, and as many LAION-COCO pairs
    documents: int = 60     # MMC4 documents
    clips: int = 24         # WebVid videos
    videos: int = 6         # YouTube videos
    seed: int = 0
    fault_every: int = 10   # one item in this many carries a fault; 0: none

    def __post_init__(self):
        for name in ("pairs", "documents", "clips", "videos"):
            if getattr(self, name) < 1:
                raise UsageError(f"site {name} must be at least 1")
        if self.fault_every < 0:
            raise UsageError("site fault_every must be 0 (no faults) or more")


@dataclass(frozen=True)
class SiteInputs:
    """Where each source's input files are, as its ingest command takes them."""

    laion: Path
    laion_coco: Path
    mmc4: Path
    webvid: list[Path]
    youtube: Path

    def as_dict(self) -> dict[str, str | list[str]]:
        return {k: [str(p) for p in v] if isinstance(v, list) else str(v) for k, v in asdict(self).items()}


def inputs(root: Path) -> SiteInputs:
    """Where `publish` puts each input (known before it runs, so a recipe can be planned)."""
    root = Path(root)
    return SiteInputs(root / "laion2b" / "laion" / "laion.parquet", root / "coco" / "laion" / "laion_coco.parquet",
                      root / "mmc4",
                      [root / "webvid" / f"{WEBVID_PREFIX}_0.csv"], root / "info")


def _fault(i: int, config: SiteConfig, faults: tuple):
    """The fault of item i: every fault_every-th item, cycling through the faults."""
    if not config.fault_every or i % config.fault_every != config.fault_every - 1:
        return None
    return faults[(i // config.fault_every) % len(faults)]


def publish(root: Path, base_url: str, config: SiteConfig) -> SiteInputs:
    """Write every source under root (files that embed base_url) and record what was published."""
    root = Path(root)
    s = config.seed
    # LAION-2B and LAION-COCO get different images (COCO_OFFSET apart), as the real ones mostly do:
    # the same image in both would be one sample after mix's dedup.
    for folder, offset in (("laion2b", 0), ("coco", COCO_OFFSET)):
        publish_laion(root / folder, f"{base_url}/{folder}", [SitePair(offset + i, _fault(i, config, LAION_FAULTS), s)
                                                               for i in range(config.pairs)])
    publish_mmc4(root, base_url, [SiteDocument(f"doc{i:05d}", seed=s, fault=_fault(i, config, MMC4_FAULTS))
                                  for i in range(config.documents)])
    publish_webvid(root, base_url, [SiteClip(f"{i}", seed=s, fault=_fault(i, config, WEBVID_FAULTS))
                                    for i in range(config.clips)], prefix=WEBVID_PREFIX)
    publish_youtube(root, base_url, [SiteVideo(f"video{i:06d}", seed=s,
                                               subtitles=_fault(i, config, YOUTUBE_SUBTITLES) or "manual")
                                     for i in range(config.videos)])
    (root / "site.json").write_text(json.dumps({"config": asdict(config), "base_url": base_url}, indent=1))
    return inputs(root)


def published_base(root: Path, config: SiteConfig) -> str | None:
    """The base URL root's files were published with, if they were published with this config."""
    try:
        record = json.loads((Path(root) / "site.json").read_text())
    except FileNotFoundError:
        return None
    return record["base_url"] if record.get("config") == asdict(config) else None
