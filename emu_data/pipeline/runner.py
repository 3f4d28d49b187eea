"""`emu-data run`: a recipe's stages in order, each once, resumable between and within stages.

Before anything runs the whole recipe is planned and checked (stages.plan). Then each stage
is skipped when the ledger (RUN_DIR/pipeline.json) says it finished with the same command
line and the same upstream results; otherwise its command runs, and since every command
resumes its own committed work, a run killed inside a stage picks up inside it. The ledger
entry is written (atomically) only after a stage succeeds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from emu_data import __version__
from emu_data.engine import runlock
from emu_data.core import secrets
from emu_data.core.options import option
from emu_data.engine.runtime import RayOptions
from emu_data.core.manifest import write_json_atomic
from emu_data.pipeline import recipe as recipes
from emu_data.pipeline import stages as stage_plan
from emu_data.pipeline.recipe import RecipeError
from emu_data.synthetic.site import bundle

log = logging.getLogger(__name__)
LEDGER = "pipeline.json"
RESOLVED = "recipe.json"


@dataclass(frozen=True)
class RecipeFile:
    recipe: Path = option(positional=True, parse=Path, metavar="RECIPE", help="a recipe file (YAML)")


@dataclass(frozen=True)
class RunOptions:
    out: Path = option(parse=Path, required=True, help="run directory: every stage writes under it")
    dry_run: bool = option(False, help="check the recipe and print each stage's command line; run nothing")
    from_stage: str | None = option(None, flag="--from", metavar="STAGE",
                                    help="run STAGE and every later stage again, from empty outputs")
    settings: tuple[str, ...] = option((), flag="--set", repeat=True, metavar="STAGE.OPTION=VALUE",
                                       help="override one option of the recipe (also site.KEY=VALUE, "
                                            "defaults.OPTION=VALUE); repeatable, e.g. --set train.steps=50")
    # where stages run (forced on every stage that takes it); never part of what a stage makes
    ray: RayOptions = RayOptions()


class StageFailed(RuntimeError):
    def __init__(self, name: str, code: int):
        self.code = code
        super().__init__(f"stage {name!r} failed (exit code {code}); what it committed is kept: "
                         f"rerun the same command to resume (finished stages are skipped)")


@dataclass
class Plan:
    recipe: recipes.Recipe
    site: bundle.SiteConfig | None
    stages: list[stage_plan.PlannedStage]
    out: Path

    @property
    def site_dir(self) -> Path:
        return self.out / "site"


def prepare(recipe_path: Path, options: RunOptions) -> Plan:
    """Load, check and plan the recipe; nothing is written."""
    recipe = recipes.load(recipe_path)
    recipes.apply_settings(recipe, list(options.settings))
    out = Path(options.out).resolve()
    site = _site_config(recipe)
    site_inputs = bundle.inputs(out / "site") if site else None
    overrides = {"ray_address": options.ray.address, "num_cpus": options.ray.num_cpus}
    planned = stage_plan.plan(recipe, out, site_inputs, overrides)
    if options.from_stage is not None and options.from_stage not in {s.name for s in planned}:
        raise RecipeError(f"--from {options.from_stage}: no such stage; stages are "
                          f"{', '.join(s.name for s in planned)}")
    return Plan(recipe, site, planned, out)


def _site_config(recipe: recipes.Recipe) -> bundle.SiteConfig | None:
    if recipe.site is None:
        return None
    try:
        return bundle.SiteConfig(**recipe.site)
    except TypeError as e:
        raise recipe.error(recipe.site_line, f"site: {e}; it takes: "
                           f"{', '.join(bundle.SiteConfig.__dataclass_fields__)}") from None
    except ValueError as e:
        raise recipe.error(recipe.site_line, str(e)) from None


def run(recipe_path: Path, options: RunOptions) -> Plan:
    """Plan, then (unless dry_run) run every stage that is not done."""
    plan = prepare(recipe_path, options)
    if options.dry_run:
        print(describe(plan))
        return plan
    missing = [m for s in plan.stages for m in s.missing]
    if missing:
        raise RecipeError(f"{plan.recipe.path}: missing input(s):\n  " + "\n  ".join(missing))
    with runlock.held(plan.out):   # one live run of a recipe per OUT; each stage locks its own
        _run_planned(plan, options)
    return plan


def _run_planned(plan: Plan, options: RunOptions) -> None:
    write_json_atomic(plan.out / RESOLVED, resolved(plan))
    ledger = _read_ledger(plan.out)
    if options.from_stage is not None:
        _forget_from(plan, ledger, options.from_stage)
    digests = _digests(plan)
    todo = [s for s in plan.stages if not _done(s, ledger, digests)]
    with _site_served(plan, todo):
        for number, stage in enumerate(plan.stages, 1):
            header = f"[{number}/{len(plan.stages)}] {stage.name}"
            if stage not in todo:
                print(f"{header}: done earlier, skipped", flush=True)
                continue
            print(f"{header}: {stage.command_line()}", flush=True)
            started = time.monotonic()
            _run_stage(stage)
            ledger["stages"][stage.name] = {"digest": digests[stage.name], "command": stage.command_line(),
                                            "seconds": round(time.monotonic() - started, 1)}
            write_json_atomic(plan.out / LEDGER, ledger)


def _run_stage(stage: stage_plan.PlannedStage) -> None:
    """The stage's command, called as a function with the options its plan parsed; what it
    raises is reported as `emu-data COMMAND` would report it."""
    import sys

    from emu_data.core import errors

    for path, content in stage.files.items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(path), content)
    try:
        code = stage.run()
    except Exception as e:
        code = errors.exit_status(e)
        if code is None:
            raise
        print(errors.message(e, stage.command), file=sys.stderr)
    if code != 0:
        raise StageFailed(stage.name, code)


# ---- what is done --------------------------------------------------------------------------

def _digests(plan: Plan) -> dict[str, str]:
    """A stage's identity: its command line, files, and the identities of what it reads."""
    site = json.dumps(asdict(plan.site), sort_keys=True) if plan.site else ""
    out: dict[str, str] = {}
    for s in plan.stages:
        reads_site = plan.site is not None and _reads_site(plan, s)
        payload = {"argv": stage_plan.identity_argv(s.argv), "files": s.files, "needs": [out[n] for n in s.needs],
                   "site": site if reads_site else ""}
        out[s.name] = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    return out


def _done(stage: stage_plan.PlannedStage, ledger: dict, digests: dict) -> bool:
    entry = ledger["stages"].get(stage.name)
    return bool(entry) and entry["digest"] == digests[stage.name] and (stage.out is None or stage.out.exists())


def _read_ledger(out: Path) -> dict:
    try:
        ledger = json.loads((out / LEDGER).read_text())
    except FileNotFoundError:
        return {"tool": {"name": "emu-data", "version": __version__}, "stages": {}}
    except json.JSONDecodeError as e:
        raise RecipeError(f"{out / LEDGER} is not valid JSON ({e}); remove it to rerun every stage") from None
    ledger.setdefault("stages", {})
    return ledger


def _forget_from(plan: Plan, ledger: dict, first: str) -> None:
    """--from: that stage and every later one run again, from an empty output."""
    names = [s.name for s in plan.stages]
    for stage in plan.stages[names.index(first):]:
        ledger["stages"].pop(stage.name, None)
        if stage.out is not None and stage.out.is_dir():
            log.warning("--from %s: removing %s", first, stage.out)
            shutil.rmtree(stage.out)
        elif stage.out is not None and stage.out.exists():
            stage.out.unlink()
    write_json_atomic(plan.out / LEDGER, ledger)


# ---- the sample site -------------------------------------------------------------------------

def _reads_site(plan: Plan, stage: stage_plan.PlannedStage) -> bool:
    return any(Path(word).is_relative_to(plan.site_dir) for word in stage.argv if word.startswith("/"))


@contextlib.contextmanager
def _site_served(plan: Plan, todo: list):
    """Serve the sample site while stages that read it run: the files embed its URL, so the
    site is served on the port it was published with, or published again on a new one."""
    from emu_data.synthetic import site as sample_site

    needs_site = plan.site is not None and any(_reads_site(plan, s) for s in todo)
    if not needs_site:
        yield None
        return
    base = bundle.published_base(plan.site_dir, plan.site)
    port = int(base.rsplit(":", 1)[1]) if base else 0
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(sample_site.serve(plan.site_dir, port=port))
        except OSError:
            log.warning("port %d of the published site is taken: publishing the site again on another", port)
            base, url = None, stack.enter_context(sample_site.serve(plan.site_dir))
        if base is None:
            plan.site_dir.mkdir(parents=True, exist_ok=True)
            print(f"publishing the sample site under {plan.site_dir}, served at {url}", flush=True)
            bundle.publish(plan.site_dir, url, plan.site)
        yield url


# ---- describing the plan ----------------------------------------------------------------------

def resolved(plan: Plan) -> dict:
    """The plan as saved beside the run (URL passwords masked: a recipe may name a proxy's)."""
    return secrets.redacted({"tool": {"name": "emu-data", "version": __version__}, "recipe": str(plan.recipe.path.resolve()),
            "out": str(plan.out), "site": asdict(plan.site) if plan.site else None,
            "stages": [{"name": s.name, "command": s.command, "options": s.params, "needs": s.needs,
                        "command_line": s.command_line()} for s in plan.stages]})


def describe(plan: Plan) -> str:
    lines = [f"recipe {plan.recipe.path}: {len(plan.stages)} stage(s), outputs under {plan.out}"]
    if plan.site:
        lines.append(f"  site: the sample world ({', '.join(f'{k} {v}' for k, v in asdict(plan.site).items())}), "
                     f"published under {plan.site_dir} and served on 127.0.0.1")
    for number, s in enumerate(plan.stages, 1):
        lines.append(f"  [{number}] {s.name}: {s.command_line()}")
    missing = [m for s in plan.stages for m in s.missing]
    if missing:
        lines.append("inputs not there yet (a real run stops on these before it starts):")
        lines += [f"  {m}" for m in missing]
    lines.append("dry run: the recipe is valid; nothing was run")
    return "\n".join(lines)
