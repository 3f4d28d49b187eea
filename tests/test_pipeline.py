"""`emu-data run`: recipes checked before anything runs, the smoke recipe end to end through the
real download paths, reruns that skip finished stages, and a run killed between stages."""

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from emu_data import cli
from emu_data.core import manifest
from emu_data.pipeline import runner
from emu_data.pipeline.recipe import RecipeError
from emu_data.inspect.validate import validate

PIPELINES = Path(__file__).resolve().parent.parent / "pipelines"
SOURCES = {"laion", "laion_coco", "mmc4", "webvid", "yt_storyboard", "yt_clips"}


def _recipe(tmp_path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def _plan(tmp_path, text: str, **options):
    return runner.prepare(_recipe(tmp_path, text), runner.RunOptions(tmp_path / "run", **options))


def test_the_pipelines_readme_describes_the_recipes_that_are_there():
    """pipelines/README.md names every recipe and file beside it and how to run one, and
    promises nothing as still to come (`emu-data run` exists)."""
    text = (PIPELINES / "README.md").read_text()
    assert "emu-data run" in text
    for stale in ("to come", "until then", "arrive with"):
        assert stale not in text.lower(), stale
    shipped = [p.relative_to(PIPELINES).as_posix() for p in PIPELINES.rglob("*") if p.is_file()]
    assert [p for p in shipped if p != "README.md" and p not in text] == []


# ---- checking a recipe ----------------------------------------------------------------------

def test_dry_run_of_the_full_scale_recipe_passes_and_names_what_is_not_there(tmp_path, capsys):
    out = tmp_path / "emu"
    assert cli.main(["run", str(PIPELINES / "emu_pretrain.yaml"), "--out", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    for command in ("laion", "mmc4", "webvid", "youtube", "mix", "features", "validate", "train", "eval"):
        assert f"emu-data {command} " in printed
    assert "--model EVA02-L-14" in printed and "--preset emu" in printed
    assert "--identities /data/inputs/youtube_identities.yaml" in printed   # who fetches from YouTube
    assert "does not exist" in printed and "dry run: the recipe is valid" in printed
    assert not out.exists()   # a dry run writes nothing


def test_dry_run_of_the_smoke_recipe_places_every_output_under_the_run(tmp_path, capsys):
    assert cli.main(["run", str(PIPELINES / "smoke.yaml"), "--out", str(tmp_path / "s"), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert f"--out {tmp_path / 's' / 'mix'}" in printed
    assert "inputs not there yet" not in printed   # the site's inputs are made by the run


GOOD_LAION = "  laion:\n    input: {parquet}\n"


@pytest.mark.parametrize("text, line, message", [
    ("stages:\n  lion:\n    input: x\n", 2, "unknown command 'lion'"),
    ("stages:\n  laion:\n    input: {parquet}\n    min_similarty: 0.3\n", 4, "did you mean 'min_similarity'"),
    ("stages:\n  mix:\n    inputs: ['${{laion}}']\n" + GOOD_LAION, 3, "runs later"),
    ("stages:\n" + GOOD_LAION + "  mix:\n    inputs: ['${{lion}}']\n", 5, "names no stage"),
    ("stages:\n" + GOOD_LAION + "    out: /tmp/elsewhere\n", 4, "`out` is set by the pipeline"),
    ("stages:\n  webvid:\n    input: {parquet}\n    frames: many\n", 2, "--frames"),
    ("stages:\n  webvid:\n    input: {parquet}\n    retry_failed: sometimes\n", 4, "true or false"),
    ("stage:\n" + GOOD_LAION, 1, "unknown section 'stage'"),
    ("stages:\n" + GOOD_LAION + GOOD_LAION, 4, "given twice"),
    ("stages:\n  laion:\n    input: ${{site.laion}}\n", 3, "needs a `site:` section"),
    ("defaults:\n  frame_size: 64\nstages:\n" + GOOD_LAION, 2, "no stage's command takes 'frame_size'"),
    ("site:\n  pears: 3\nstages:\n" + GOOD_LAION, 1, "unexpected keyword argument 'pears'"),
    ("stages:\n  train:\n    corpus: {parquet}\n    features: {parquet}\n    config:\n      model: {{widht: 8}}\n",
     5, "unknown"),
    ("stages:\n  laion:\n    source: laion\n", 2, "required: --input"),
])
def test_a_bad_recipe_is_refused_before_anything_runs_naming_its_line(tmp_path, text, line, message):
    parquet = tmp_path / "in.parquet"
    parquet.write_bytes(b"")
    with pytest.raises(RecipeError) as error:
        _plan(tmp_path, text.format(parquet=parquet))
    assert f"recipe.yaml:{line}:" in str(error.value) and message in str(error.value), str(error.value)
    assert not (tmp_path / "run").exists()


def test_a_missing_input_stops_a_real_run_naming_its_line(tmp_path, capsys):
    recipe = _recipe(tmp_path, "stages:\n  laion:\n    input: /nowhere/laion.parquet\n")
    assert cli.main(["run", str(recipe), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "line 3: stage 'laion': input: /nowhere/laion.parquet does not exist" in err
    assert not (tmp_path / "run").exists()


def test_set_overrides_an_option_and_from_must_name_a_stage(tmp_path):
    parquet = tmp_path / "in.parquet"
    parquet.write_bytes(b"")
    text = f"stages:\n  laion:\n    input: {parquet}\n    min_similarity: 0.3\n"
    plan = _plan(tmp_path, text, settings=("laion.min_similarity=0.25",))
    assert plan.stages[0].argv[plan.stages[0].argv.index("--min-similarity") + 1] == "0.25"
    with pytest.raises(RecipeError, match="no such stage"):
        _plan(tmp_path, text, from_stage="mix")
    with pytest.raises(RecipeError, match="no stage 'lion'"):
        _plan(tmp_path, text, settings=("lion.input=x",))


def test_a_repeatable_option_takes_a_list(tmp_path):
    parquet = tmp_path / "in.parquet"
    parquet.write_bytes(b"")
    plan = _plan(tmp_path, f"stages:\n  laion:\n    input: {parquet}\n"
                           "    allow_address: [10.1.2.0/24, 192.168.7.7]\n")
    argv = plan.stages[0].argv
    assert [argv[i + 1] for i, w in enumerate(argv) if w == "--allow-address"] == ["10.1.2.0/24", "192.168.7.7"]


# ---- running ----------------------------------------------------------------------------------

SMOKE_SMALL = ["--set", "site.pairs=40", "--set", "site.documents=16", "--set", "site.clips=6",
               "--set", "site.videos=3", "--set", "train.steps=30", "--set", "eval.max_pairs=8",
               "--set", "eval.shots=0,2", "--set", "preview.n=5"]


@pytest.mark.slow
def test_the_smoke_recipe_runs_the_whole_chain_and_a_rerun_skips_it(tmp_path, ray_session, capsys):
    out = tmp_path / "smoke"
    args = ["run", str(PIPELINES / "smoke.yaml"), "--out", str(out), *SMOKE_SMALL]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    mixed = manifest.read(out / "mix")
    assert set(mixed["source_counts"]) == SOURCES          # all six kinds, through the real downloads
    for stage in ("laion", "laion_coco", "mmc4", "webvid", "youtube", "clips"):
        assert manifest.read(out / stage)["status_counts"]["ok"] > 0
    assert validate([out / "mix", out / "features"], deep=True).ok
    report = json.loads((out / "train" / "eval" / "report.json").read_text())
    assert {"trained", "untrained"} <= set(report["models"]) and (out / "train" / "eval" / "report.md").exists()
    assert (out / "preview.html").stat().st_size > 0
    exported = manifest.read(out / "export")   # the recipe's last stage: the mix as WebDataset
    assert exported["rows"] == manifest.read(out / "mix")["rows"] and exported["shards"][0]["path"].endswith(".tar")
    with tarfile.open(out / "export" / exported["shards"][0]["path"]) as tar:   # with the features
        assert any(name.endswith(".npy") for name in tar.getnames())
    assert json.loads((out / "recipe.json").read_text())["site"]["pairs"] == 40   # the resolved recipe
    for heading in ("samples per source", "status of every input", "[37, 192] bfloat16", "validated",
                    "text CE", "CIDEr-D 0-shot", "text-to-image R@5", str(out / "preview.html"), "report.md",
                    "not written"):
        assert heading in printed, heading

    assert cli.main(args) == 0   # the second run: everything is done
    again = capsys.readouterr().out
    assert again.count("done earlier, skipped") == 13
    assert "samples per source" in again and "CIDEr-D 0-shot" in again


SMALL_SITE = """
site: {pairs: 12, documents: 4, clips: 3, videos: 2, fault_every: 0}
defaults: {allow_private_addresses: true, retries: 0, timeout: 5}
stages:
  laion:
    input: ${site.laion}
  mmc4:
    input: ${site.mmc4}
  mix:
    inputs: ["${laion}", "${mmc4}"]
    preset: equal
  validate:
    paths: ["${mix}"]
"""


@pytest.mark.slow
def test_a_run_killed_between_stages_resumes_where_it_stopped(tmp_path, ray_session, capsys):
    recipe, out = _recipe(tmp_path, SMALL_SITE), tmp_path / "run"
    command = [sys.executable, "-m", "emu_data.cli", "run", str(recipe), "--out", str(out), "--num-cpus", "1"]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_stage(out, "laion", process)
    finally:
        os.killpg(process.pid, signal.SIGKILL)   # kill -9: no cleanup, no last words
        process.wait()
    finished = set(json.loads((out / runner.LEDGER).read_text())["stages"])
    assert "laion" in finished and "validate" not in finished
    assert cli.main(["run", str(recipe), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "[1/4] laion: done earlier, skipped" in printed
    assert set(json.loads((out / runner.LEDGER).read_text())["stages"]) == {"laion", "mmc4", "mix", "validate"}
    assert validate([out / "mix"], deep=True).ok
    assert manifest.read(out / "mix")["source_counts"] == {"laion": 4, "mmc4": 4}

    assert cli.main(["run", str(recipe), "--out", str(out), "--from", "mix"]) == 0   # --from reruns mix on
    printed = capsys.readouterr().out
    assert "[2/4] mmc4: done earlier, skipped" in printed and "[3/4] mix: emu-data mix" in printed


def _wait_for_stage(out: Path, stage: str, process, limit: float = 300) -> None:
    ledger, deadline = out / runner.LEDGER, time.monotonic() + limit
    while time.monotonic() < deadline:
        if ledger.exists() and stage in json.loads(ledger.read_text() or "{}").get("stages", {}):
            return
        assert process.poll() is None, f"the run ended early (exit {process.returncode})"
        time.sleep(0.05)
    raise AssertionError(f"stage {stage} did not finish in {limit} s")
