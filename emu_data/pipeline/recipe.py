"""Reading a recipe: YAML with the line of every key kept, so each error can name its line.

A recipe is a mapping with three sections:

    site:      (optional) publish the bundled sample world and serve it on 127.0.0.1
    defaults:  (optional) options given to every stage whose command takes them
    stages:    an ordered mapping, stage name -> its command's options

A stage runs the `emu-data` command of its name, or the one its `command:` names (two LAION
stages, say). Its options are that command's long options with underscores
(`min_similarity: 0.2` is `--min-similarity 0.2`); its output directory is RUN_DIR/<name>.
`${name}` in a value is that earlier stage's output, `${site.laion}` a published site input,
`${recipe_dir}` the folder the recipe is in (for files shipped beside it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from emu_data.core import errors, yamlsafe

SECTIONS = ("site", "defaults", "stages")


class RecipeError(errors.UsageError):
    """A recipe that cannot run; the message names the file and line.

    Every line of the message is clipped: messages built from the recipe (stages.py, the
    commands' own parsers) quote its values, and a value can be as long as the file."""

    def __init__(self, message: str):
        lines = message.split("\n")
        super().__init__("\n".join(yamlsafe.clip(line, 4 * yamlsafe.QUOTE_LIMIT) for line in lines))


@dataclass
class StageSpec:
    name: str
    command: str
    params: dict
    line: int                                        # where the stage is named
    lines: dict[str, int] = field(default_factory=dict)   # param -> its line

    def where(self, param: str | None = None) -> int:
        return self.lines.get(param, self.line) if param else self.line


@dataclass
class Recipe:
    path: Path
    site: dict | None
    site_line: int
    defaults: dict
    default_lines: dict[str, int]
    stages: list[StageSpec]

    def error(self, line: int, message: str) -> RecipeError:
        return RecipeError(f"{self.path}:{line}: {message}")

    def stage(self, name: str) -> StageSpec:
        return next(s for s in self.stages if s.name == name)


def load(path: Path) -> Recipe:
    """Parse and check the recipe's shape (sections, mappings, names); options are checked
    against their commands by `stages.plan`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise RecipeError(f"{path}: cannot read the recipe: {e.strerror or e}") from None
    try:
        return _recipe(path, yamlsafe.compose(yamlsafe.decode(data, str(path)), str(path)))
    except yamlsafe.InputError as e:   # any YAML we do not take, from compose or from _value
        raise RecipeError(str(e)) from None


def _recipe(path: Path, root) -> Recipe:
    if not isinstance(root, yaml.MappingNode):
        raise RecipeError(f"{path}:1: a recipe is a mapping with sections {', '.join(SECTIONS)}")
    sections = _entries(path, root)
    for name, (key, _) in sections.items():
        if name not in SECTIONS:
            raise RecipeError(f"{path}:{_line(key)}: unknown section {_q(name)}; sections are {', '.join(SECTIONS)}")
    if "stages" not in sections:
        raise RecipeError(f"{path}:1: the recipe has no `stages:` section")
    site_key, site_node = sections.get("site", (None, None))
    defaults, default_lines = _options(path, sections.get("defaults", (None, None))[1], "defaults")
    return Recipe(path, _site(path, site_node), _line(site_key) if site_key else 0,
                  defaults, default_lines, _stages(path, sections["stages"][1]))


def _site(path: Path, node) -> dict | None:
    if node is None:
        return None
    if isinstance(node, yaml.ScalarNode) and _value(path, node) in (None, "sample"):
        return {}   # `site: sample` or an empty `site:`: the default sample site
    return _options(path, node, "site")[0]


def _stages(path: Path, node) -> list[StageSpec]:
    if not isinstance(node, yaml.MappingNode) or not node.value:
        raise RecipeError(f"{path}:{_line(node)}: `stages:` is a mapping of stage name -> options")
    stages = []
    for name, (key, value) in _entries(path, node).items():
        if not name.replace("_", "").replace("-", "").isalnum():
            raise RecipeError(f"{path}:{_line(key)}: stage name {_q(name)}: use letters, digits, - and _")
        params, lines = _options(path, value, f"stage {name!r}") if value is not None else ({}, {})
        command = params.pop("command", name)
        if not isinstance(command, str):
            raise RecipeError(f"{path}:{lines.get('command', _line(key))}: stage {name!r}: command is a name")
        stages.append(StageSpec(name, command, params, _line(key), lines))
    return stages


def _options(path: Path, node, what: str) -> tuple[dict, dict[str, int]]:
    if node is None:
        return {}, {}
    if not isinstance(node, yaml.MappingNode):
        raise RecipeError(f"{path}:{_line(node)}: {what} is a mapping of option: value")
    entries = _entries(path, node)
    return ({name: _value(path, v) for name, (_, v) in entries.items()},
            {name: _line(k) for name, (k, _) in entries.items()})


def _entries(path: Path, node: yaml.MappingNode) -> dict[str, tuple]:
    """key text -> (key node, value node), refusing duplicate and non-string keys (YAML's
    loader would keep the last duplicate silently)."""
    out = {}
    for key, value in node.value:
        name = _value(path, key)
        if not isinstance(name, str):
            raise RecipeError(f"{path}:{_line(key)}: keys are names, got {_q(name)}")
        if name in out:
            raise RecipeError(f"{path}:{_line(key)}: {_q(name)} is given twice (first on line {_line(out[name][0])})")
        out[name] = (key, value)
    return out


def _value(path: Path, node):
    """A node's plain Python value (YAML's own typing of scalars)."""
    return yamlsafe.construct(node, str(path))


def _q(value) -> str:
    """A recipe's value quoted in a message, clipped: a key can be as long as the file."""
    return yamlsafe.clip(repr(value))


def _line(node) -> int:
    return node.start_mark.line + 1


def apply_settings(recipe: Recipe, settings: list[str]) -> None:
    """`--set stage.option=value` (also site.key, defaults.option): the value is read as YAML,
    so numbers, booleans and lists keep their types."""
    for setting in settings:
        target, sep, text = setting.partition("=")
        section, dot, key = target.partition(".")
        if not sep or not dot or not key:
            raise RecipeError(f"--set {setting}: write STAGE.OPTION=VALUE (or site.KEY=VALUE, defaults.OPTION=VALUE)")
        try:
            value = yamlsafe.load(text, "--set")
        except yamlsafe.InputError as e:
            raise RecipeError(yamlsafe.one_line(f"--set {setting}: the value is not usable {e.reason}")) from None
        if section == "site":
            if recipe.site is None:
                raise RecipeError(f"--set {setting}: the recipe has no `site:` section")
            recipe.site[key] = value
        elif section == "defaults":
            recipe.defaults[key] = value
            recipe.default_lines.setdefault(key, 0)
        elif any(s.name == section for s in recipe.stages):
            recipe.stage(section).params[key] = value
        else:
            raise RecipeError(f"--set {setting}: no stage {section!r}; stages are "
                              f"{', '.join(s.name for s in recipe.stages)}")
