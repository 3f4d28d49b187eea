"""Hostile YAML (issue 15, break 9): recipes, `run --set` values and `train --config` files.

Every YAML construct that runs code, expands, nests past the stack or fails to construct is
refused by the one loader (emu_data/core/yamlsafe.py) before anything walks the tree: the CLI
exits 2 with one line naming the file and line, no traceback. "Fast" is asserted as work
done (the output is short), never wall-clock (before the fix the alias case ran 111 s and
2.1 GB; the suite's per-test timeout is the hang guard).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emu_data import cli
from emu_data.model import config as model_config
from emu_data.pipeline import recipe as recipes

PIPELINES = Path(__file__).parent.parent / "pipelines"


def _laughs(levels: int = 6, width: int = 9) -> str:
    """A flow list of `levels` anchored lists, each holding `width` aliases of the one
    before: width**levels leaves from a few hundred bytes ("billion laughs")."""
    lists = ["&l0 [" + ",".join(["x"] * width) + "]"]
    lists += [f"&l{i} [" + ",".join([f"*l{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "[" + ", ".join(lists) + "]"


# name -> (recipe text, the line the error must name)
HOSTILE = {
    "python_tag": ("stages:\n  laion:\n    input: !!python/object/apply:os.system ['touch PWNED']\n", 3),
    "python_name_tag": ("stages:\n  laion:\n    input: !!python/name:os.system\n", 3),
    "bad_binary": ("stages:\n  laion:\n    input: !!binary 'a'\n", 3),
    "deep_nesting": ("stages:\n  laion:\n    input: " + "[" * 20000 + "\n", 3),
    "alias_value": ("stages:\n  laion:\n    input: " + _laughs() + "\n", 3),
    "alias_key": ("stages:\n  ? " + _laughs() + "\n  : {}\n", 2),
    "alias_merge": ("defaults: &d {retries: 1}\nstages:\n  laion:\n    <<: *d\n", 1),
    "impossible_date": ("stages:\n  laion:\n    input: 2024-13-45\n", 3),
    "huge_int": ("stages:\n  laion:\n    thread_count: " + "9" * 5000 + "\n", 3),
    # argparse judges the value: the error names the stage's line
    "long_value": ("stages:\n  laion:\n    thread_count: " + "k" * 100_000 + "\n", 2),
    "long_key": ("stages:\n  ? [" + "k, " * 50_000 + "]\n  : {}\n", 2),
    "control_char": ("stages:\n  laion:\n    input: a\x00b\n", 3),
    "two_documents": ("stages: {laion: {}}\n---\nstages: {}\n", 2),
}


def emu_data(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The CLI's entry point in this process (a child per case cost ~2 s of imports each):
    its exit code and what it printed; an exception escaping it fails the test as it is."""
    out, err, before = io.StringIO(), io.StringIO(), os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(list(args))
    finally:
        os.chdir(before)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def assert_one_line_error(done: subprocess.CompletedProcess, path: Path, line: int) -> None:
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert len(done.stdout + done.stderr) < 1000, done.stderr[:2000]   # refused, not walked
    assert done.stderr.count("\n") == 1 and done.stderr.endswith("\n"), done.stderr
    where = re.search(rf"{re.escape(path.name)}:(\d+): ", done.stderr)
    assert where and int(where.group(1)) == line, done.stderr


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_recipe_is_one_line_error_naming_file_and_line(tmp_path, case):
    text, line = HOSTILE[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    done = emu_data("run", path.name, "--out", "out", "--dry-run", cwd=tmp_path)
    assert_one_line_error(done, path, line)
    assert not (tmp_path / "PWNED").exists()


def test_recipe_that_is_not_utf8_names_its_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"stages:\n  laion:\n    input: caf\xe9\n")
    assert_one_line_error(emu_data("run", path.name, "--out", "out", "--dry-run", cwd=tmp_path), path, 3)


@pytest.mark.parametrize("value", ["[&a 1, *a]", "!!python/object/apply:os.system ['touch PWNED']",
                                   "[" * 20000, "2024-13-45"])
def test_hostile_set_value_is_one_line_error(tmp_path, value):
    done = emu_data("run", str(PIPELINES / "smoke.yaml"), "--out", "out", "--dry-run",
                    "--set", f"train.steps={value}", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and len(done.stderr) < 1000, done.stderr[:2000]
    assert "--set train.steps=" in done.stderr and not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("case", ["python_tag", "alias_value", "deep_nesting"])
def test_hostile_train_config_is_one_line_error(tmp_path, case):
    text, line = HOSTILE[case]
    path = tmp_path / "config.yaml"
    path.write_text(text.replace("stages:", "model:").replace("laion:", "width:"))
    done = emu_data("train", "--corpus", "corpus", "--features", "features", "--out", "run",
                    "--config", path.name, cwd=tmp_path)
    assert_one_line_error(done, path, line)
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "run").exists()


def test_deep_json_train_config_is_a_config_error(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("[" * 20000)
    with pytest.raises(model_config.ConfigError, match="config.json: not valid JSON"):
        model_config.load(path)


# ---- fuzz: mutated recipes into recipe.load and model_config.load -------------------------

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SEEDS = [(PIPELINES / "smoke.yaml").read_text()[-1200:], "stages:\n  laion:\n    input: x\n"]
SEEDS += [text[:400] for text, _ in HOSTILE.values()]
TOKENS = ["&a ", "*a", "&b [*a, *a]", "<<: ", "!!binary ", "!!python/object:os.system ", "!!set ",
          "!!omap ", "!!timestamp ", "!foo ", "%YAML 1.1\n", "%TAG ! tag:x,2000:\n", "---\n", "...\n",
          "[", "]", "{", "}", "? ", ": ", "- ", ",", "\t", "\x00", "\ufeff", "'", '"', "\\x", "|\n", ">-\n",
          "2024-13-45", "0x", "0o9", "1e9999", "9" * 40, "${", "${site.", "\n  ", "\n      ", "#", "~"]


@st.composite
def mutated(draw) -> bytes:
    text = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(text)))
        edit = draw(st.sampled_from(["insert", "delete", "text"]))
        if edit == "insert":
            text = text[:at] + draw(st.sampled_from(TOKENS)) + text[at:]
        elif edit == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 20)):]
        else:
            text = text[:at] + draw(st.text(max_size=8)) + text[at:]
    data = text.encode("utf-8", "surrogatepass")
    return data + draw(st.binary(max_size=4))   # a few raw bytes: often not UTF-8


def _outcome(call, error: type[Exception]):
    """The call's result, or its error if exactly `error` with a one-line message; anything
    else (KeyError, RecursionError, yaml's own errors, ...) fails the test."""
    try:
        return call()
    except Exception as e:
        if type(e) is not error:
            raise
        assert str(e).strip() and "\n" not in str(e), str(e)
        return e


@FUZZ
@given(mutated())
def test_fuzzed_recipe_loads_or_raises_recipe_error(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "recipe.yaml"
        path.write_bytes(data)
        result = _outcome(lambda: recipes.load(path), recipes.RecipeError)
        assert isinstance(result, (recipes.Recipe, recipes.RecipeError))
        if isinstance(result, recipes.RecipeError):
            assert str(result).startswith(f"{path}:")


@FUZZ
@given(mutated())
def test_fuzzed_train_config_loads_or_raises_config_error(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_bytes(data.replace(b"stages:", b"model:"))
        result = _outcome(lambda: model_config.load(path), model_config.ConfigError)
        assert isinstance(result, (model_config.TrainConfig, model_config.ConfigError))


@FUZZ
@given(st.sampled_from(TOKENS + ["1", "[1, 2]", "{a: 1}"]), st.text(max_size=12))
def test_fuzzed_set_value_applies_or_raises_recipe_error(token, text):
    recipe = recipes.load(PIPELINES / "smoke.yaml")
    _outcome(lambda: recipes.apply_settings(recipe, [f"train.steps={token}{text}"]), recipes.RecipeError)
