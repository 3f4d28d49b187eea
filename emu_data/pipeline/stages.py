"""From recipe stages to `emu-data` commands, checked against the commands' own options.

Each stage runs an `emu-data` command (emu_data.commands), its options checked and parsed
by that command's own parser, generated from the same option fields the CLI uses, so a
recipe can say exactly what a command line can, checked the same way, and `--dry-run`
prints the commands a user could run by hand. The pipeline adds only where outputs go
(RUN_DIR/<stage>) and the `${...}` references between stages.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from emu_data import commands as command_table
from emu_data.core import options as opts, secrets
from emu_data.pipeline.recipe import Recipe, StageSpec

_REFERENCE = re.compile(r"\$\{([A-Za-z0-9_.-]+)\}")


@dataclass
class PlannedStage:
    name: str
    command: str
    argv: list[str]                   # the command's arguments, as `emu-data COMMAND ARGV`
    out: Path | None                  # what it writes, when it writes under RUN_DIR
    needs: list[str]                  # earlier stages whose outputs it reads
    line: int
    params: dict                      # the resolved options (for the saved recipe)
    files: dict[str, dict] = field(default_factory=dict)   # path -> JSON to write before it runs
    missing: list[str] = field(default_factory=list)       # inputs not there (yet): "line N: path"
    run: Callable[[], int] | None = field(default=None, repr=False, compare=False)   # the command, parsed

    def command_line(self) -> str:
        """The command as a user could type it, to show and to save: URL passwords masked."""
        return secrets.redact(" ".join(["emu-data", self.command, *(_quote(a) for a in self.argv)]))


def _placement_flags() -> tuple[str, ...]:
    """Options that change where and how fast a stage runs, never what it makes: a rerun on a
    cluster, or with other CPUs, still skips a stage finished without them."""
    from emu_data.engine.runtime import RayOptions

    return tuple(spec.flag for spec in opts.specs(opts.Params("ray", RayOptions)))


def identity_argv(argv: list[str]) -> list[str]:
    """argv without the placement options and their values."""
    placement = _placement_flags()
    out, skip = [], False
    for word in argv:
        if skip:
            skip = False
        elif word in placement:
            skip = True
        else:
            out.append(word)
    return out


@dataclass
class _Command:
    """A command as a recipe sees it: its options, and a parser to judge the values."""

    command: command_table.Command
    params: tuple

    def option(self, name: str) -> opts.Spec | None:
        """The option a recipe calls `name`; `out` belongs to the pipeline."""
        spec = opts.find(self.params, name)
        return None if spec is None or spec.name == "out" else spec

    def names(self) -> list[str]:
        return sorted(n for n in opts.names(self.params) if n != "out")


def plan(recipe: Recipe, run_dir: Path, site: dict | None, overrides: dict | None = None) -> list[PlannedStage]:
    """Every stage as a checked command line. site: the site's inputs (name -> path or list)
    when the recipe has one; overrides: options forced on every stage that takes them."""
    table = command_table.all_commands()
    loaded: dict[str, _Command] = {}

    def command(name: str) -> _Command:
        if name not in loaded:
            loaded[name] = _Command(table[name], table[name].params())
        return loaded[name]

    for spec in recipe.stages:
        if spec.command not in table:
            raise recipe.error(spec.where("command"), f"stage {spec.name!r}: unknown command {spec.command!r}; "
                               f"stages run one of: {', '.join(table)}")
    _check_defaults(recipe, [command(c) for c in dict.fromkeys(s.command for s in recipe.stages)])
    outputs: dict[str, Path | None] = {}
    planned = []
    for spec in recipe.stages:
        stage = _plan_stage(recipe, spec, command(spec.command), run_dir, site, outputs, overrides or {})
        outputs[spec.name] = stage.out
        planned.append(stage)
    return planned


def _check_defaults(recipe: Recipe, used: list[_Command]) -> None:
    for name in recipe.defaults:
        if not any(c.option(name) for c in used):
            raise recipe.error(recipe.default_lines[name], f"defaults: no stage's command takes {name!r}")


def _plan_stage(recipe, spec: StageSpec, command: _Command, run_dir, site, outputs, overrides) -> PlannedStage:
    if "out" in spec.params:
        raise recipe.error(spec.where("out"), f"stage {spec.name!r}: `out` is set by the pipeline "
                           f"(RUN_DIR/{spec.name}); name another stage's output as ${{{spec.name}}}")
    options = {k: v for k, v in recipe.defaults.items() if command.option(k)}
    options.update(spec.params)
    options.update({k: v for k, v in overrides.items() if v is not None and command.option(k)})
    stage = PlannedStage(spec.name, spec.command, [], None, [], spec.line, {})
    positional, flags = [], []
    for name, value in options.items():
        option = command.option(name)
        if option is None:
            raise recipe.error(spec.where(name), _unknown_option(spec, command, name))
        value = _resolve(recipe, spec, name, value, site, outputs, stage)
        stage.params[name] = value
        words = _words(recipe, spec, name, value, option, run_dir, stage)
        (positional if option.opt.positional else flags).extend(words)
    if command.command.writes != command_table.NONE:
        stage.out = run_dir / (spec.name + (".html" if command.command.writes == command_table.FILE else ""))
        flags += ["--out", str(stage.out)]
    stage.argv = positional + flags
    namespace = _parse(recipe, spec, command, stage.argv)
    stage.run = lambda: command.command.execute(command_table.build_values(command.command, namespace))
    return stage


def _unknown_option(spec: StageSpec, command: _Command, name: str) -> str:
    known = command.names()
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return (f"stage {spec.name!r}: `emu-data {spec.command}` has no option {name!r}{hint}; "
            f"it takes: {', '.join(known)}")


def _resolve(recipe, spec, name, value, site, outputs, stage):
    """${stage} / ${site.x} references in strings (and lists of strings) replaced by paths."""
    if isinstance(value, list):
        resolved = [_resolve(recipe, spec, name, v, site, outputs, stage) for v in value]
        return [x for v in resolved for x in (v if isinstance(v, list) else [v])]
    if not isinstance(value, str) or "${" not in value:
        return value
    whole = _REFERENCE.fullmatch(value)
    if whole:
        return _target(recipe, spec, name, whole.group(1), site, outputs, stage)
    return _REFERENCE.sub(lambda m: str(_target(recipe, spec, name, m.group(1), site, outputs, stage)), value)


def _target(recipe, spec, name, ref: str, site, outputs, stage):
    line = spec.where(name)
    if ref == "recipe_dir":
        return str(recipe.path.resolve().parent)
    if ref.startswith("site."):
        if site is None:
            raise recipe.error(line, f"stage {spec.name!r}: ${{{ref}}} needs a `site:` section")
        key = ref[len("site."):]
        if key not in site:
            raise recipe.error(line, f"stage {spec.name!r}: the site has no {key!r}; it has {', '.join(site)}")
        return site[key]
    if ref not in outputs:
        later = any(s.name == ref for s in recipe.stages)
        raise recipe.error(line, f"stage {spec.name!r}: ${{{ref}}} " + (
            "names a stage that runs later: stages run in the order written" if later else
            f"names no stage; earlier stages are: {', '.join(outputs) or 'none'}"))
    if outputs[ref] is None:
        raise recipe.error(line, f"stage {spec.name!r}: stage {ref!r} writes no output to read")
    if ref not in stage.needs:
        stage.needs.append(ref)
    return str(outputs[ref])


def _words(recipe, spec, name, value, option: opts.Spec, run_dir: Path, stage: PlannedStage) -> list[str]:
    """One option as command-line words."""
    if option.is_flag:
        if not isinstance(value, bool):
            raise recipe.error(spec.where(name), f"stage {spec.name!r}: {name} is true or false, got {value!r}")
        if option.default is True:   # --x / --no-x
            return [option.flag if value else "--no-" + option.flag[2:]]
        return [option.flag] if value else []
    if isinstance(value, dict):
        return [option.flag, _config_file(recipe, spec, name, value, option, run_dir, stage)]
    several = option.opt.many or option.opt.repeat
    if value is None or (isinstance(value, list) and not several):
        raise recipe.error(spec.where(name), f"stage {spec.name!r}: {name} takes one value, got {value!r}")
    words = [_word(v) for v in (value if isinstance(value, list) else [value])]
    if option.is_path:
        _note_missing(spec, name, words, run_dir, stage)
    if option.opt.positional:
        return words
    if option.opt.repeat:  # repeatable (--allow-address): once per value
        return [w for word in words for w in (option.flag, word)]
    return [option.flag, *words]


def _config_file(recipe, spec, name, value: dict, option: opts.Spec, run_dir: Path, stage: PlannedStage) -> str:
    """A mapping given for a file option (train's config): checked, written as JSON beside the outputs."""
    if option.opt.mapping is None:
        raise recipe.error(spec.where(name), f"stage {spec.name!r}: {name} is one value, not a mapping")
    try:
        option.opt.mapping(value)
    except (TypeError, ValueError) as e:
        raise recipe.error(spec.where(name), f"stage {spec.name!r}: {name}: {e}") from None
    path = run_dir / "recipe" / f"{spec.name}.{name}.json"
    stage.files[str(path)] = value
    return str(path)


def _note_missing(spec: StageSpec, name: str, words: list[str], run_dir: Path, stage: PlannedStage) -> None:
    """Inputs given as paths that are not there. What lives under RUN_DIR (earlier stages'
    outputs, the published site) is made by the run itself: references are checked by order."""
    for word in words:
        if not Path(word).is_relative_to(run_dir) and not Path(word).exists():
            stage.missing.append(f"line {spec.where(name)}: stage {spec.name!r}: {name}: {word} does not exist")


def _word(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _parse(recipe, spec: StageSpec, command: _Command, argv: list[str]):
    """Let the command's own parser judge the values (types, choices, required options)."""
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            return command_table.parser(command.command).parse_args(argv)
    except SystemExit:
        message = errors.getvalue().strip().splitlines()[-1] if errors.getvalue().strip() else "invalid options"
        message = message.split("error: ", 1)[-1]
        raise recipe.error(spec.line, f"stage {spec.name!r}: {message}") from None


def _quote(word: str) -> str:
    return word if re.fullmatch(r"[\w@%+=:,./-]+", word) else json.dumps(word)
