"""Garbage a stranger can hand `validate` (issue 15, break 3), and the other readers of an
output directory: every case is a violation line or one error line, never a traceback or a
hang. The families, each caught in emu_data/core/files.py: JSON nested deeper than Python's
stack or holding numbers Python refuses; a tree deeper than Path.rglob's recursion; a path
that is not a regular file (a FIFO blocks open() until a writer comes: forever).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from emu_data import cli
from emu_data.core import corpus, files, manifest
from emu_data.inspect import stats
from emu_data.core.shards import read_shard

from test_validate import _found, _rewrite, _shard_of, _violations

DEEP = 100_000


def one_line_of(capsys, stream: str = "err") -> str:
    text = getattr(capsys.readouterr(), stream)
    assert "Traceback" not in text
    return text


def test_a_manifest_nested_100000_deep_is_a_violation(corpus_copy, capsys):
    (corpus_copy / manifest.MANIFEST_NAME).write_text('{"schema": ' + "[" * DEEP + "]" * DEEP + "}")
    assert _found(_violations(corpus_copy), "manifest_unreadable")
    assert cli.main(["validate", str(corpus_copy)]) == 1
    assert "[manifest_unreadable]" in one_line_of(capsys, "out")
    assert cli.main(["stats", str(corpus_copy)]) == 2   # ManifestError: one line
    assert one_line_of(capsys).count("\n") == 1


def test_a_5000_digit_number_in_the_manifest_is_a_violation(corpus_copy, capsys):
    built = (corpus_copy / manifest.MANIFEST_NAME).read_text()
    (corpus_copy / manifest.MANIFEST_NAME).write_text(built.replace('"rows": ', '"rows": ' + "9" * 5000 + ", \"x\": ", 1))
    [found] = _found(_violations(corpus_copy), "manifest_unreadable")
    assert "not valid JSON" in found.message and len(found.message) < 400
    assert cli.main(["validate", str(corpus_copy)]) == 1
    assert "[manifest_unreadable]" in one_line_of(capsys, "out")


def test_a_row_whose_meta_is_nested_100000_deep_is_a_violation(corpus_copy, capsys):
    rel = _shard_of(corpus_copy, "laion")

    def edit(rows):
        rows[0]["meta"] = "[" * DEEP + "]" * DEEP
        return rows[0]["key"]

    key = _rewrite(corpus_copy, rel, edit)
    [found] = _found(_violations(corpus_copy), "meta_json", key)
    assert "nested deeper than" in found.message
    assert cli.main(["preview", str(corpus_copy), "--out", str(corpus_copy.parent / "p.html")]) == 0


def test_a_1500_level_directory_tree_is_walked_without_recursion(corpus_copy, tmp_path, capsys):
    deep = tmp_path / "tree"
    fd = os.open(tmp_path, os.O_RDONLY)   # one fd-relative mkdir at a time: the OS refuses the whole path
    try:
        os.mkdir("tree", dir_fd=fd)
        current = os.open("tree", os.O_RDONLY, dir_fd=fd)
        for _ in range(1500):
            os.mkdir("d", dir_fd=current)
            nxt = os.open("d", os.O_RDONLY, dir_fd=current)
            os.close(current)
            current = nxt
        os.close(current)
    finally:
        os.close(fd)
    os.rename(corpus_copy, deep / "corpus")
    try:
        assert cli.main(["validate", str(deep)]) == 0   # the corpus near the top is found and clean
        assert "1 director(ies)" in one_line_of(capsys, "out")
        levels = max(len(folder.relative_to(deep).parts) for folder, _, _ in files.walk(deep))
        assert levels == files.MAX_WALK_DEPTH   # bounded, not recursed into 1,500 levels
    finally:
        _remove_chain(deep)


def _remove_chain(top: Path) -> None:
    """pytest's own clean-up (shutil.rmtree) recurses: lift the chain one level at a time."""
    while (top / "d").exists():
        if (top / "d" / "d").exists():
            os.rename(top / "d" / "d", top / "lifted")
        os.rmdir(top / "d")
        if (top / "lifted").exists():
            os.rename(top / "lifted", top / "d")


def test_a_fifo_named_like_a_shard_is_never_opened(tmp_path):
    """A folder without a manifest whose data/x.arrow is a FIFO: validate used to block in
    open() for ever. A child process with a timeout, so a regression fails instead of hanging."""
    (tmp_path / "dir" / "data").mkdir(parents=True)
    os.mkfifo(tmp_path / "dir" / "data" / "x.arrow")
    done = subprocess.run([str(Path(sys.executable).with_name("emu-data")), "validate", str(tmp_path / "dir")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "[not_a_file]" in done.stdout and "Traceback" not in done.stderr
    with pytest.raises(files.UnreadableFile, match="not a regular file \\(a FIFO\\)"):
        files.read_bytes(tmp_path / "dir" / "data" / "x.arrow")


def test_a_fifo_as_a_listed_shard_or_manifest_is_refused_not_waited_for(corpus_copy):
    rel = _shard_of(corpus_copy, "laion")
    (corpus_copy / rel).unlink()
    os.mkfifo(corpus_copy / rel)
    assert _found(_violations(corpus_copy), "not_a_file")
    with pytest.raises(ValueError, match="not a regular file"):
        stats.compute(corpus_copy)
    with pytest.raises(ValueError, match="not a regular file"):
        read_shard(corpus_copy / rel)
    (corpus_copy / manifest.MANIFEST_NAME).unlink()
    os.mkfifo(corpus_copy / manifest.MANIFEST_NAME)
    with pytest.raises(manifest.ManifestError, match="not a regular file"):
        manifest.read(corpus_copy)
    assert corpus.committed_parts(corpus_copy) is not None


@pytest.mark.parametrize("text", ["[" * DEEP, "1" * 5000, '{"a": ' * 70 + "1" + "}" * 70, b"\xff\xfe", "{,}"])
def test_json_from_strangers_is_one_error(text):
    with pytest.raises(files.JsonError) as caught:
        files.loads_json(text, "x.json")
    assert str(caught.value).startswith("x.json: ") and len(str(caught.value)) < 400
    json.dumps(files.loads_json('{"a": ' * 60 + "1" + "}" * 60))   # deep, but within the bound


# ---- input folders: the same families where ingest reads a stranger's files ----------------

def test_a_fifo_among_input_files_is_refused_by_name_before_anything_runs(tmp_path, capsys):
    """MMC4 and WebVid read their files at planning: a FIFO would block that read for ever."""
    for command, suffix in (("mmc4", ".jsonl"), ("webvid", ".csv")):
        folder = tmp_path / command
        folder.mkdir()
        os.mkfifo(folder / f"a{suffix}")
        for given in (folder, folder / f"a{suffix}"):
            capsys.readouterr()
            assert cli.main([command, "--input", str(given), "--out", str(tmp_path / "out")]) == 2
            err = one_line_of(capsys)
            assert f"a{suffix}: not a regular file" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_youtube_info_json_dirs_are_walked_without_recursion_and_fifos_skipped(tmp_path, caplog):
    from emu_data.sources.youtube import inputs

    (tmp_path / "info").mkdir()
    (tmp_path / "info" / "abcdefghijk.info.json").write_text('{"id": "abcdefghijk"}')
    os.mkfifo(tmp_path / "info" / "fifo.info.json")
    deep = tmp_path / "info"
    for _ in range(files.MAX_WALK_DEPTH + 5):
        deep = deep / "d"
    deep.mkdir(parents=True)
    (deep / "zzzzzzzzzzz.info.json").write_text('{"id": "zzzzzzzzzzz"}')
    assert inputs.info_json_files(tmp_path / "info") == [tmp_path / "info" / "abcdefghijk.info.json"]
    assert "1 folder(s) not searched (deeper than 32 levels" in caplog.text   # said, not dropped silently
    (tmp_path / "info" / "nested.json").write_text("[" * DEEP)
    assert inputs.id_inside(tmp_path / "info" / "nested.json") is None
