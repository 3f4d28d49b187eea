"""How the package holds together: no import cycles, the pipeline never goes through the CLI,
and every option's default is stated once (in its field) and shown by --help."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from emu_data import cli, commands
from emu_data.core import options

PACKAGE = Path(__file__).resolve().parent.parent / "emu_data"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(path: Path, modules: set[str]) -> set[str]:
    """emu_data modules a module imports when it is imported (not inside functions)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        else:
            continue
        for name in names:
            while name and name not in modules:   # emu_data.x.y -> emu_data.x when y is no module
                name = name.rpartition(".")[0]
            if name.startswith("emu_data"):
                found.add(name)
                parent = name.rpartition(".")[0]   # importing a.b.c imports package a.b first
                while parent.startswith("emu_data"):
                    found.add(parent)
                    parent = parent.rpartition(".")[0]
    return found


def test_no_import_cycle_in_the_package():
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: _top_level_imports(path, set(paths)) - {name} for name, path in paths.items()}
    graph = {name: {d for d in deps if d != "emu_data"} for name, deps in graph.items()}
    state: dict[str, str] = {}

    def visit(name, trail):
        if state.get(name) == "done":
            return
        if state.get(name) == "open":
            cycle = trail[trail.index(name):] + [name]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        state[name] = "open"
        for dep in sorted(graph.get(name, ())):
            visit(dep, trail + [name])
        state[name] = "done"

    for name in sorted(graph):
        visit(name, [])


def test_the_pipeline_does_not_import_the_cli():
    code = ("import sys, emu_data.pipeline, emu_data.pipeline.runner, emu_data.pipeline.stages, "
            "emu_data.pipeline.summary; print('emu_data.cli' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def _every_option():
    for command in commands.all_commands().values():
        for params in command.params():
            for spec in options.specs(params):
                yield command, spec


def test_each_default_is_stated_once_and_help_shows_it(capsys):
    helps = {}
    for command, spec in _every_option():
        shown = options.shown_default(spec)
        if shown is None:   # None: what the help says happens (e.g. "default: all")
            continue
        # the field holds the default; a help text that restated it would drift from it
        assert f"default {shown}" not in spec.opt.help, (command.name, spec.flag, spec.opt.help)
        if command.name not in helps:
            with pytest.raises(SystemExit):
                cli.main([command.name, "--help"])
            helps[command.name] = " ".join(capsys.readouterr().out.split())
        assert f"(default {shown})" in helps[command.name] or f"default {shown}" in helps[command.name], \
            (command.name, spec.flag, shown)
    assert {"laion", "youtube", "mix", "train", "features"} <= set(helps)


def test_a_recipe_names_every_option_as_its_flag_without_dashes():
    for command, spec in _every_option():
        if not spec.opt.positional:
            assert spec.name == spec.flag[2:].replace("-", "_")
