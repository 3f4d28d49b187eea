"""From recipe stages to `emu-data` command lines, checked against the commands themselves.

Each stage runs a real `emu-data` command, parsed by that command's own argparse parser, so
a recipe can say exactly what a command line can, checked the same way, and `--dry-run`
prints the commands a user could run by hand. The pipeline adds only where outputs go
(RUN_DIR/<stage>) and the `${...}` references between stages.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from emu_data.pipeline.recipe import Recipe, StageSpec

# How each command's output is placed: a directory (--out RUN_DIR/<stage>), an HTML file
# (--out RUN_DIR/<stage>.html), or nothing (it reads, reports, and writes beside its input).
DIRECTORY, FILE, NONE = "directory", "file", "none"
COMMANDS = {"sample": DIRECTORY, "youtube": DIRECTORY, "laion": DIRECTORY, "mmc4": DIRECTORY,
            "webvid": DIRECTORY, "mix": DIRECTORY, "features": DIRECTORY, "validate": NONE,
            "train": DIRECTORY, "eval": NONE, "stats": NONE, "preview": FILE}
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

    def command_line(self) -> str:
        return " ".join(["emu-data", self.command, *(_quote(a) for a in self.argv)])


# Options that change where and how fast a stage runs, never what it makes: a rerun on a
# cluster, or with other CPUs, still skips a stage finished without them.
PLACEMENT_OPTIONS = ("--ray-address", "--num-cpus")


def identity_argv(argv: list[str]) -> list[str]:
    """argv without the placement options and their values."""
    out, skip = [], False
    for word in argv:
        if skip:
            skip = False
        elif word in PLACEMENT_OPTIONS:
            skip = True
        else:
            out.append(word)
    return out


def parsers() -> dict[str, argparse.ArgumentParser]:
    from emu_data.cli import build_parser

    actions = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices)


def plan(recipe: Recipe, run_dir: Path, site: dict | None, overrides: dict | None = None) -> list[PlannedStage]:
    """Every stage as a checked command line. site: the site's inputs (name -> path or list)
    when the recipe has one; overrides: options forced on every stage that takes them."""
    commands = parsers()
    _check_defaults(recipe, commands)
    outputs: dict[str, Path | None] = {}
    planned = []
    for spec in recipe.stages:
        if spec.command not in COMMANDS:
            raise recipe.error(spec.where("command"), f"stage {spec.name!r}: unknown command {spec.command!r}; "
                               f"stages run one of: {', '.join(COMMANDS)}")
        stage = _plan_stage(recipe, spec, commands[spec.command], run_dir, site, outputs, overrides or {})
        outputs[spec.name] = stage.out
        planned.append(stage)
    return planned


def _check_defaults(recipe: Recipe, commands: dict) -> None:
    used = {spec.command for spec in recipe.stages if spec.command in commands}
    for name in recipe.defaults:
        if not any(_action(commands[c], name) for c in used):
            raise recipe.error(recipe.default_lines[name], f"defaults: no stage's command takes {name!r}")


def _plan_stage(recipe, spec: StageSpec, parser, run_dir, site, outputs, overrides) -> PlannedStage:
    if "out" in spec.params:
        raise recipe.error(spec.where("out"), f"stage {spec.name!r}: `out` is set by the pipeline "
                           f"(RUN_DIR/{spec.name}); name another stage's output as ${{{spec.name}}}")
    options = {k: v for k, v in recipe.defaults.items() if _action(parser, k)}
    options.update(spec.params)
    options.update({k: v for k, v in overrides.items() if v is not None and _action(parser, k)})
    stage = PlannedStage(spec.name, spec.command, [], None, [], spec.line, {})
    positional, flags = [], []
    for name, value in options.items():
        action = _action(parser, name)
        if action is None:
            raise recipe.error(spec.where(name), _unknown_option(spec, parser, name))
        value = _resolve(recipe, spec, name, value, site, outputs, stage)
        stage.params[name] = value
        words = _words(recipe, spec, name, value, action, run_dir, stage)
        (flags if action.option_strings else positional).extend(words)
    kind = COMMANDS[spec.command]
    if kind != NONE:
        stage.out = run_dir / (spec.name + (".html" if kind == FILE else ""))
        flags += ["--out", str(stage.out)]
    stage.argv = positional + flags
    _parse(recipe, spec, parser, stage.argv)
    return stage


def _action(parser: argparse.ArgumentParser, name: str):
    """The option `name` (a long option with _ for -) or positional of parser, or None."""
    flag = "--" + name.replace("_", "-")
    for action in parser._actions:
        if flag in action.option_strings or (not action.option_strings and action.dest == name):
            return None if action.dest in ("help", "out") else action
    return None


def _unknown_option(spec: StageSpec, parser, name: str) -> str:
    known = sorted(a.dest for a in parser._actions if a.dest not in ("help", "out"))
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


def _words(recipe, spec, name, value, action, run_dir: Path, stage: PlannedStage) -> list[str]:
    """One option as command-line words."""
    flag = action.option_strings[-1] if action.option_strings else None
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)):
        if not isinstance(value, bool):
            raise recipe.error(spec.where(name), f"stage {spec.name!r}: {name} is true or false, got {value!r}")
        if isinstance(action, argparse.BooleanOptionalAction):
            return [action.option_strings[0] if value else action.option_strings[1]]
        return [flag] if value != action.default else []
    if isinstance(value, dict):
        return [flag, _config_file(recipe, spec, name, value, action, run_dir, stage)]
    values = value if isinstance(value, list) else [value]
    one_each = isinstance(action, argparse._AppendAction)
    if value is None or (isinstance(value, list) and action.nargs in (None, "?") and not one_each):
        raise recipe.error(spec.where(name), f"stage {spec.name!r}: {name} takes one value, got {value!r}")
    words = [_word(v) for v in values]
    if action.type is Path:
        _note_missing(spec, name, words, run_dir, stage)
    if isinstance(action, argparse._AppendAction):  # repeatable (--allow-address): once per value
        return [w for word in words for w in (flag, word)]
    return ([flag] if flag else []) + words


def _config_file(recipe, spec, name, value: dict, action, run_dir: Path, stage: PlannedStage) -> str:
    """A mapping given for a file option (train's config): written as JSON beside the outputs."""
    if action.type is not Path:
        raise recipe.error(spec.where(name), f"stage {spec.name!r}: {name} is one value, not a mapping")
    if spec.command == "train" and name == "config":
        from emu_data.model.config import ConfigError, TrainConfig

        try:
            TrainConfig.from_dict(value)
        except (ConfigError, TypeError, ValueError) as e:
            raise recipe.error(spec.where(name), f"stage {spec.name!r}: config: {e}") from None
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


def _parse(recipe, spec: StageSpec, parser, argv: list[str]) -> None:
    """Let the command's own parser judge the values (types, choices, required options)."""
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            parser.parse_args(argv)
    except SystemExit:
        message = errors.getvalue().strip().splitlines()[-1] if errors.getvalue().strip() else "invalid options"
        message = message.split("error: ", 1)[-1]
        raise recipe.error(spec.line, f"stage {spec.name!r}: {message}") from None


def _quote(word: str) -> str:
    return word if re.fullmatch(r"[\w@%+=:,./-]+", word) else json.dumps(word)
