"""Running a stage: units of work through Ray, each committed on its own, manifest last.

A source module supplies the units and one function `process(payload, writer)` that turns
a unit's payload into samples and status rows; this module does the rest the same way for
every source: resume, parallelism, progress, the commit.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from emu_data.core import corpus, errors, manifest, secrets
from emu_data.engine import runlock, runtime
from emu_data.core.corpus import Unit, UnitWriter
from emu_data.core.options import option, positive_int, show_size, size
from emu_data.core.shards import OutputError, ShardLimits

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutputOptions:
    """Where and how a stage writes."""

    out: Path = option(parse=Path, required=True, help="output directory (created; an existing one resumes)")
    shard_rows: int = option(10_000, parse=positive_int, metavar="N", help="at most N samples per shard")
    shard_bytes: int = option(256_000_000, parse=size, show=show_size, metavar="SIZE",
                              help="at most about SIZE per shard, e.g. 64MB, 1GB")
    overwrite: bool = option(False, help="replace what an earlier run with another configuration wrote in --out")

    @property
    def limits(self) -> ShardLimits:
        return ShardLimits(self.shard_rows, self.shard_bytes)


class StageIncomplete(errors.DataFault):
    """Some units failed; what committed stays, and a rerun redoes only the rest."""

    def __init__(self, out: Path, failures: list[runtime.TaskFailure]):
        self.failures = failures
        lines = "\n".join(f"  unit {f.item.id}: {f.error}" for f in failures[:20])
        super().__init__(f"{len(failures)} unit(s) of {out} failed (rerun to retry them):\n{lines}")


@dataclass(frozen=True)
class UnitTask:
    """The picklable function a Ray worker runs for one unit."""

    out: Path
    limits: ShardLimits
    fingerprint: str
    process: Callable[[object, UnitWriter], None]
    run_id: str | None = None
    writer: Callable | None = None   # the shards' writer (UnitWriter's default: Arrow)

    def __call__(self, unit: Unit) -> dict:
        # a rerun that starts while this worker still writes (its driver was killed) waits for
        # it before it looks at what is committed; one that has started refuses this worker
        with corpus.unit_writing(self.out, self.run_id):
            writer = UnitWriter(self.out, unit.id, self.limits, self.writer)
            try:
                self.process(unit.payload, writer)
                return writer.commit(self.fingerprint, unit.digest)
            except BaseException:
                writer.samples.abort()
                writer.status_rows.abort()
                raise


@dataclass
class StageResult:
    manifest: dict
    skipped_units: int = 0
    ran_units: int = 0
    reused: bool = False


def run_stage(stage: str, units: list[Unit], process: Callable[[object, UnitWriter], None], *,
              output: OutputOptions, layout: dict, config: dict,
              ray: runtime.RayOptions = runtime.RayOptions(), redo=None,
              progress: Callable[[], str] | None = None, writer: Callable | None = None,
              card: Callable[[dict], str] | None = None) -> StageResult:
    """Run every unit not yet committed in output.out, then write the manifest.

    redo(part) -> bool picks committed units to run again (e.g. --retry-failed). The whole
    run holds OUT's run lock: a second live run on the same OUT stops at once (RunInProgress).
    progress() -> a few words for the progress bar (the youtube identities' rates).
    writer: the shards' writer (UnitWriter); card: the dataset card (corpus.finalize).
    """
    with runlock.held(Path(output.out)):
        return run_held(stage, units, process, output=output, layout=layout, config=config, ray=ray, redo=redo,
                        progress=progress, writer=writer, card=card)


def finished(stage: str, output: OutputOptions, layout: dict) -> StageResult | None:
    """The result of a finished run with this layout in output.out, if there is one: for a
    stage whose planning is itself work (mix) and that can tell before it plans."""
    out = Path(output.out)
    if output.overwrite or not out.exists() or not corpus.is_complete(out, _fingerprint(stage, output, layout)):
        return None
    return StageResult(manifest.read(out), reused=True)


def _fingerprint(stage: str, output: OutputOptions, layout: dict) -> str:
    return manifest.fingerprint({"stage": stage, "shard_limits": asdict(output.limits), **layout})


def run_held(stage: str, units: list[Unit], process: Callable[[object, UnitWriter], None], *,
             output: OutputOptions, layout: dict, config: dict, ray: runtime.RayOptions = runtime.RayOptions(),
             redo=None, progress=None, writer=None, card=None) -> StageResult:
    """run_stage for a caller that already holds OUT's run lock (it wrote under OUT first)."""
    out = Path(output.out)
    fingerprint = _fingerprint(stage, output, layout)
    if (not output.overwrite and redo is None and out.exists()
            and corpus.is_complete(out, fingerprint) and _same_units(out, units)):
        log.info("%s is complete (manifest present): nothing to do", out)
        return StageResult(manifest.read(out), skipped_units=len(units), reused=True)
    run_id = uuid.uuid4().hex
    kept = corpus.prepare(out, config, fingerprint, units, overwrite=output.overwrite, redo=redo, run_id=run_id)
    todo = [u for u in units if u.id not in kept]
    if kept:
        log.info("resuming %s: %d unit(s) already committed, %d to run", out, len(kept), len(todo))
    task = UnitTask(out, output.limits, fingerprint, process, run_id, writer)
    failures = []
    results = runtime.map_tasks(task, todo, options=ray, desc=stage, total=len(todo), postfix=progress)
    try:
        for unit, result in results:
            if isinstance(result, runtime.TaskFailure):
                if isinstance(result.cause, OutputError):   # a full disk fails every unit alike:
                    raise result.cause                      # stop, say it once (committed units stay)
                log.warning("unit %s failed: %s", unit.id, result.error)
                failures.append(result)
            else:
                kept[unit.id] = result
    finally:
        results.close()   # units still running are cancelled
    if failures:
        raise StageIncomplete(out, failures)
    built = corpus.finalize(out, stage=stage, config=config, fingerprint=fingerprint,
                            parts=list(kept.values()), card=card)
    return StageResult(built, skipped_units=len(units) - len(todo), ran_units=len(todo))


def _same_units(out: Path, units: list[Unit]) -> bool:
    """The committed parts are exactly these units with these inputs."""
    parts = corpus.committed_parts(out)
    return {uid: p.get("digest") for uid, p in parts.items()} == {u.id: u.digest for u in units}


def run_source(source, config, items: list, output: OutputOptions, ray: runtime.RayOptions | None = None,
               retry_failed: bool = False, **extras) -> StageResult:
    """Run a registered source's stage over its resolved input items (files, videos).

    extras: the other option objects the source takes (net=NetPolicy, ytdl=YtdlOptions),
    handed to its units and saved, with everything else, as the resolved config (its URL
    passwords masked: a proxy's is a secret). A source with a `session` runs inside it.
    """
    ray = ray or runtime.RayOptions()
    resolved = {source.name: asdict(config), **{name: asdict(value) for name, value in extras.items()},
                "output": {**asdict(output), "out": str(output.out)}, "ray": asdict(ray),
                "inputs": [str(item) for item in items] if all(isinstance(i, Path) for i in items) else len(items)}
    redo = None
    if retry_failed:
        redo = lambda part: any(reason in source.retryable for reason in part["status_counts"])  # noqa: E731
    session = source.session(items, config, ray=ray, **extras) if source.session else contextlib.nullcontext(Session())
    with session as services:
        units = source.units(items, config, ray=ray, **extras, **services.units)
        return run_stage(source.name, units, source.process, output=output, layout=source.layout(config),
                         config=secrets.redacted(resolved), ray=ray, redo=redo, progress=services.progress)


@dataclass(frozen=True)
class Session:
    """What a source's `session` sets up around its run (the youtube identity pool, as one
    shared actor): keyword arguments for its `units`, and the progress bar's extra words."""

    units: dict = field(default_factory=dict)
    progress: Callable[[], str] | None = None
