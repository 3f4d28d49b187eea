"""`emu-data validate`: clean on what `sample` writes; each planted fault reported by key."""

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from emu_data import cli
from emu_data.core import manifest, schema
from emu_data.core.shards import read_shard, write_table
from emu_data.inspect.validate import validate


def _violations(path, deep=False):
    return validate([path], deep=deep).violations


def _shard_of(corpus: Path, source: str) -> str:
    return sorted(p.relative_to(corpus).as_posix() for p in (corpus / "data").glob(f"{source}-*.arrow"))[0]


def _rewrite(corpus: Path, rel: str, edit, arrow_schema=None) -> dict:
    """Change one row of a shard and keep the manifest in step, so only the planted fault shows."""
    rows = read_shard(corpus / rel).to_pylist()
    planted = edit(rows)
    table = pa.Table.from_pylist(rows, schema=arrow_schema or schema.arrow_schema("interleaved"))
    info = write_table(corpus / rel, table, corpus)
    built = json.loads((corpus / manifest.MANIFEST_NAME).read_text())
    for entry in built["shards"]:
        if entry["path"] == rel:
            entry.update(info.to_dict())
    manifest.write_json_atomic(corpus / manifest.MANIFEST_NAME, built)
    return planted


def _found(violations, rule, key=None, path_end=None):
    return [v for v in violations if v.rule == rule and (key is None or v.key == key)
            and (path_end is None or v.path.endswith(path_end))]


def test_sample_output_is_clean_even_deep(sample_dir):
    report = validate([sample_dir], deep=True)
    assert report.ok, [str(v) for v in report.violations]
    assert report.rows > 0 and report.images == report.decoded > 0
    assert cli.main(["validate", str(sample_dir)]) == 0


def test_position_with_both_text_and_image(corpus_copy):
    rel = _shard_of(corpus_copy, "laion")

    def edit(rows):
        rows[1]["texts"][0] = "a caption where the image is"
        return rows[1]["key"]

    key = _rewrite(corpus_copy, rel, edit)
    assert _found(_violations(corpus_copy), "one_per_position", key)


def test_undecodable_image_bytes(corpus_copy):
    rel = _shard_of(corpus_copy, "mmc4")

    def edit(rows):
        row = rows[-1]
        i = next(i for i, cell in enumerate(row["images"]) if cell)
        row["images"][i]["bytes"] = b"this is not an image at all"
        return row["key"]

    key = _rewrite(corpus_copy, rel, edit)
    assert _found(_violations(corpus_copy), "image_decode", key)


def test_truncated_jpeg_is_caught_when_decoded(corpus_copy):
    rel = _shard_of(corpus_copy, "laion_coco")

    def edit(rows):
        rows[0]["images"][0]["bytes"] = rows[0]["images"][0]["bytes"][:300]
        return rows[0]["key"]

    key = _rewrite(corpus_copy, rel, edit)
    assert _found(_violations(corpus_copy, deep=True), "image_decode", key)


def test_key_duplicated_in_another_shard(corpus_copy):
    taken = read_shard(corpus_copy / _shard_of(corpus_copy, "webvid")).column("key")[0].as_py()

    def edit(rows):
        rows[0]["key"] = taken
        return taken

    _rewrite(corpus_copy, _shard_of(corpus_copy, "laion"), edit)
    hits = _found(_violations(corpus_copy), "duplicate_key", taken)
    assert hits and "webvid" in hits[0].message + hits[0].path


def test_times_going_backwards(corpus_copy):
    rel = _shard_of(corpus_copy, "yt_storyboard")

    def edit(rows):
        rows[0]["times"][3] = rows[0]["times"][2] - 1.0
        return rows[0]["key"]

    key = _rewrite(corpus_copy, rel, edit)
    assert _found(_violations(corpus_copy), "times_non_decreasing", key)


def test_column_of_the_wrong_type(corpus_copy):
    rel = _shard_of(corpus_copy, "laion")
    wrong = schema.arrow_schema("interleaved")
    wrong = wrong.set(wrong.get_field_index("meta"), pa.field("meta", pa.binary()))

    def edit(rows):
        for row in rows:
            row["meta"] = row["meta"].encode()
        return None

    _rewrite(corpus_copy, rel, edit, arrow_schema=wrong)
    hits = _found(_violations(corpus_copy), "schema_type", path_end=rel)
    assert hits and "meta" in hits[0].message


def test_truncated_shard(corpus_copy):
    rel = _shard_of(corpus_copy, "mmc4")
    path = corpus_copy / rel
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    violations = _violations(corpus_copy)
    assert _found(violations, "unreadable_shard", path_end=rel)
    assert _found(violations, "manifest_checksum", path_end=rel)


def test_manifest_checksum_that_does_not_match(corpus_copy):
    built = json.loads((corpus_copy / manifest.MANIFEST_NAME).read_text())
    built["shards"][0]["sha256"] = "0" * 64
    manifest.write_json_atomic(corpus_copy / manifest.MANIFEST_NAME, built)
    assert _found(_violations(corpus_copy), "manifest_checksum", path_end=built["shards"][0]["path"])


@pytest.mark.parametrize("garbage", [b"", b"\xff\xd8\xff\xe0 a JPEG, renamed", b"ARROW1\x00\x00junk"])
def test_garbage_in_place_of_a_shard_is_a_violation_not_a_traceback(corpus_copy, garbage, capsys):
    rel = _shard_of(corpus_copy, "laion")
    (corpus_copy / rel).write_bytes(garbage)
    assert cli.main(["validate", str(corpus_copy)]) == 1
    out = capsys.readouterr().out
    assert "[unreadable_shard]" in out and rel in out


def test_extra_missing_and_temporary_files(corpus_copy):
    rel = _shard_of(corpus_copy, "laion")
    shutil.copy(corpus_copy / rel, corpus_copy / "data" / "stray-00000.arrow")
    (corpus_copy / "data" / ".tmp-laion-00009-00000.arrow").write_bytes(b"half")
    (corpus_copy / _shard_of(corpus_copy, "webvid")).unlink()
    violations = _violations(corpus_copy)
    assert _found(violations, "extra_shard", path_end="stray-00000.arrow")
    assert _found(violations, "leftover_tmp")
    assert _found(violations, "missing_shard")


def test_broken_manifest_is_reported(corpus_copy):
    (corpus_copy / manifest.MANIFEST_NAME).write_text('{"rows": "many"}')
    assert _found(_violations(corpus_copy), "manifest_schema")
    (corpus_copy / manifest.MANIFEST_NAME).write_bytes(b"\x00\xff not json")
    assert _found(_violations(corpus_copy), "manifest_unreadable")


def test_unusable_input_exits_2(tmp_path, capsys):
    assert cli.main(["validate", str(tmp_path / "missing")]) == 2
    assert cli.main(["validate", str(tmp_path)]) == 2  # a directory with no emu-data output
    (tmp_path / "f.arrow").write_bytes(b"x")
    assert cli.main(["validate", str(tmp_path / "f.arrow")]) == 2
    assert "not an emu-data directory" in capsys.readouterr().err


def test_violation_lines_name_file_row_key_and_rule(corpus_copy, capsys):
    rel = _shard_of(corpus_copy, "laion")

    def edit(rows):
        rows[2]["meta"] = "[]"
        return rows[2]["key"]

    key = _rewrite(corpus_copy, rel, edit)
    assert cli.main(["validate", str(corpus_copy)]) == 1
    line = next(l for l in capsys.readouterr().out.splitlines() if "[meta_json]" in l)
    assert f"{rel}:2: [meta_json] key={key}" in line
