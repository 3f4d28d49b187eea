"""The whole sample site at once: every source published under one root, for `emu-data run`.

The smoke recipe asks for a site of a given size; this module has every registered source
that has a site part (`Source.site`: LAION and LAION-COCO parquets, MMC4 jsonl, WebVid CSVs,
YouTube info dicts, with their images, mp4s, mosaics and subtitles) publish it, and says
where each input landed. A few of each source's faults are planted (one item in
`fault_every`), so the status table of a smoke run shows real reasons.

The files embed the server's base URL, so the port is part of what was published:
`site.json` records it, and a rerun serves the same files on the same port when it can.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from emu_data.core.errors import UsageError

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


def _sites() -> list:
    from emu_data import sources

    return [s.site for s in sources.all_sources() if s.site is not None]


def inputs(root: Path) -> dict[str, str | list[str]]:
    """Where `publish` puts each source's input (known before it runs, so a recipe can be
    planned): the names a recipe reads as ${site.NAME}."""
    found = {}
    for site in _sites():
        for name, where in site.inputs(Path(root)).items():
            found[name] = [str(p) for p in where] if isinstance(where, list) else str(where)
    return found


def fault(i: int, config: SiteConfig, faults: tuple):
    """The fault of item i: every fault_every-th item, cycling through the faults."""
    if not config.fault_every or i % config.fault_every != config.fault_every - 1:
        return None
    return faults[(i // config.fault_every) % len(faults)]


def publish(root: Path, base_url: str, config: SiteConfig) -> dict[str, str | list[str]]:
    """Write every source's part of the site under root (files that embed base_url) and record
    what was published."""
    root = Path(root)
    for site in _sites():
        site.publish(root, base_url, config)
    (root / "site.json").write_text(json.dumps({"config": asdict(config), "base_url": base_url}, indent=1))
    return inputs(root)


def published_base(root: Path, config: SiteConfig) -> str | None:
    """The base URL root's files were published with, if they were published with this config."""
    try:
        record = json.loads((Path(root) / "site.json").read_text())
    except FileNotFoundError:
        return None
    return record["base_url"] if record.get("config") == asdict(config) else None
