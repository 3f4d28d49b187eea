"""The line-file planning shared by MMC4 and WebVid: which files, distinct names, checked ranges."""

import hashlib

import pytest

from emu_data.sources import textfiles


def test_directories_expand_to_their_files_in_name_order(tmp_path):
    for name in ("b.jsonl", "a.jsonl", "c.csv"):
        (tmp_path / name).write_text("{}\n")
    assert [p.name for p in textfiles.input_files([tmp_path], ".jsonl")] == ["a.jsonl", "b.jsonl"]


def test_missing_and_compressed_inputs_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError):
        textfiles.input_files([tmp_path / "nope.csv"], ".csv")
    (tmp_path / "x.csv.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(ValueError, match="decompress"):
        textfiles.input_files([tmp_path / "x.csv.gz"], ".csv")


def test_two_files_with_one_stem_are_refused(tmp_path):
    files = [tmp_path / "a" / "docs.jsonl", tmp_path / "b" / "docs.jsonl"]
    with pytest.raises(ValueError, match="repeated: docs"):
        textfiles.distinct_stems(files, lambda p: p.stem)


def test_a_range_edited_after_planning_is_a_clear_error(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_bytes(b"line one\nline two\n")
    digest = hashlib.sha1(b"line two\n").hexdigest()
    assert textfiles.read_range(str(path), 9, 18, digest, "line 2") == b"line two\n"
    path.write_bytes(b"line one\nline 2!!\n")
    with pytest.raises(textfiles.InputChanged, match="line 2 changed since the run was planned"):
        textfiles.read_range(str(path), 9, 18, digest, "line 2")
