"""The source registry: every source emu-data ingests, described once.

A source is one module that defines a module-level `Source` and one line in `BUILTIN`
below (or, for a plugin or a test, one `register(...)` call). Everything that lists sources
reads this registry: the CLI's commands and a recipe's stages, mix's presets, the trainer's
weights and source ids, eval's caption pairs, preview's colours, validation of a record's
`source`, the sample world and the sample site.

Two levels, because one command can write more than one kind of record source (`laion`
writes `laion` or `laion_coco` samples):
- `Kind`: what a sample's `source` column says, with its Emu weight and how the model and
  the tools read it;
- `Source`: the ingest command and stage: its options, units, process, layout.

The module stays light (no source is imported until the registry is first read), so
`import emu_data.sources.x` never pulls in the others.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

# The built-in sources, in the order their record kinds get their ids (the trainer's cached
# index stores them: append, never reorder).
BUILTIN = {
    "youtube": "emu_data.sources.youtube.stage",
    "laion": "emu_data.sources.laion",
    "mmc4": "emu_data.sources.mmc4",
    "webvid": "emu_data.sources.webvid",
    "clips": "emu_data.sources.youtube.clips",
}


@dataclass(frozen=True)
class Kind:
    """A record source: the value of a sample's `source` column."""

    name: str
    emu_weight: float          # relative per-step share in Emu's mixture (mix --preset emu, training)
    colour: str = "#718096"    # its badge in `emu-data preview`
    # One image and one text per sample: eval reads such kinds as caption/retrieval pairs,
    # the lowest rank first (None: not pair-like).
    pair_rank: int | None = None
    # Samples are chunks of one longer item (KIND:ID:N): held out from training together.
    chunked: bool = False
    # The sample world's generator: (key, rng, SampleConfig) -> rows (None: not in `sample`).
    sample: Callable | None = None


@dataclass(frozen=True)
class Site:
    """A source's part of the offline sample site."""

    inputs: Callable[[Any], dict]             # root -> {name a recipe reads as ${site.NAME}: path or [paths]}
    publish: Callable[[Any, str, Any], None]  # (root, base_url, SiteConfig): write it, URLs under base_url


@dataclass(frozen=True)
class Source:
    """An ingest command and stage: `emu-data NAME ...` and the recipe stage running it.

    The stage: `resolve(inputs, **extras)` turns the inputs options into the items (files,
    videos); `units(items, config, ray=..., **extras)` cuts them into units of work;
    `process(payload, writer)` makes one unit's samples and status rows; `layout(config)` is
    what of the config decides the data (a changed layout is a new corpus).
    """

    name: str                  # the command and stage name
    kinds: tuple[Kind, ...]
    help: str                  # one line in `emu-data --help`
    config: type               # its options: a dataclass whose fields are `options.option`s
    inputs: type               # a dataclass of the options naming its inputs
    resolve: Callable[..., list]
    units: Callable[..., list]
    process: Callable[[Any, Any], None]
    layout: Callable[[Any], dict]
    extras: tuple = ()         # options.Params of the other option dataclasses it takes (net, ytdl)
    retryable: frozenset = frozenset()   # status reasons --retry-failed runs again
    ray_options: tuple = ()    # RayOptions fields it shows beyond address and num_cpus
    description: str = ""
    epilog: str = ""
    # values -> values (the option objects by name: config, net, ...): what some options decide
    # of others (img2dataset's retries follow --retries); applied before the run, so the saved
    # config is what ran
    configure: Callable[[dict], dict] | None = None
    site: Site | None = None   # its part of the sample site (`emu-data run` recipes with `site:`)
    # Status reasons that are quality judgements, not failures (too_short, low_speech ...):
    # stats and the run summary count them, with the frames they took, per filter.
    filters: tuple[str, ...] = ()
    # What a run needs around its units, on the driver: session(items, config, ray=, **extras)
    # -> a context manager yielding an engine.stage.Session (the youtube identity pool).
    session: Callable[..., Any] | None = None


_registered: dict[str, Source] = {}
_loaded = False
_kinds: dict[str, tuple[int, Kind]] | None = None   # name -> (id, kind), rebuilt after a register


def register(source: Source) -> Source:
    """Add a source (a plugin's, a test's); returns it, so a module can keep it by name."""
    other = _registered.get(source.name)
    if other is not None and other is not source:
        raise ValueError(f"a source named {source.name!r} is registered already")
    taken = {k.name for s in _registered.values() if s.name != source.name for k in s.kinds}
    clash = taken & {k.name for k in source.kinds}
    if clash:
        raise ValueError(f"record source(s) {', '.join(sorted(clash))} belong to another source")
    _registered[source.name] = source
    global _kinds
    _kinds = None
    return source


def _load() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in BUILTIN.values():
            importlib.import_module(module)   # each registers its SOURCE


def all_sources() -> list[Source]:
    _load()
    builtin = list(BUILTIN)
    return sorted(_registered.values(),   # sorted is stable: others in the order registered
                  key=lambda s: builtin.index(s.name) if s.name in BUILTIN else len(builtin))


def source(name: str) -> Source:
    _load()
    try:
        return _registered[name]
    except KeyError:
        raise KeyError(f"no source named {name!r}; sources are {', '.join(_registered)}") from None


def _by_name() -> dict[str, tuple[int, Kind]]:
    global _kinds
    if _kinds is None:
        _kinds = {k.name: (i, k) for i, k in enumerate(k for s in all_sources() for k in s.kinds)}
    return _kinds


def kinds() -> list[Kind]:
    """Every record source, built-ins first in their fixed order."""
    return [kind for _, kind in _by_name().values()]


def kind_names() -> tuple[str, ...]:
    return tuple(_by_name())


def kind(name: str) -> Kind | None:
    found = _by_name().get(name)
    return found[1] if found else None


class UnknownKind(KeyError):
    def __str__(self) -> str:
        return self.args[0]


def kind_id(name: str) -> int:
    """A record source's stable small integer (the trainer's index stores it)."""
    found = _by_name().get(name)
    if found is None:
        raise UnknownKind(f"unknown record source {name!r}; known: {', '.join(_by_name())}")
    return found[0]


def registered_kind_names() -> tuple[str, ...]:
    """The record sources registered so far, without loading the built-ins (cheap: row checks
    call it; the built-ins are in schemas/ already)."""
    return tuple(k.name for s in _registered.values() for k in s.kinds)


def emu_weights() -> dict[str, float]:
    return {k.name: k.emu_weight for k in kinds()}


def filters() -> dict[str, tuple[str, ...]]:
    """Record source -> the status reasons its source's quality filters give."""
    return {k.name: s.filters for s in all_sources() for k in s.kinds}
