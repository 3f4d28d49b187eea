"""emu-data export: every sample read back exactly, as WebDataset (by webdataset and by tarfile)
and as Hub Parquet (by datasets, loaded and streamed)."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import webdataset as wds
from hypothesis import given, settings
from hypothesis import strategies as st

from emu_data import sources
from emu_data.cli import main
from emu_data.core import manifest
from emu_data.core.corpus import shard_paths
from emu_data.core.shards import read_shard, write_table
from emu_data.engine.stage import OutputOptions
from emu_data.ops import export, tars

from conftest import TINY_PIXEL_VIT_PATH


def corpus_samples(corpus: Path) -> dict[str, dict]:
    return {row["key"]: row for path in shard_paths(corpus) for row in read_shard(path).to_pylist()}


def rebuilt(doc: dict, members: dict) -> dict:
    """The corpus row a sample's members stand for (the 10-line reader of the card, checked)."""
    images = [None if ext is None else {"bytes": members[ext], "path": None} for ext in doc["images"]]
    return {"key": doc["key"], "source": doc["source"], "texts": doc["texts"], "images": images,
            "times": doc["times"], "meta": doc["meta"]}


def comparable(row: dict) -> dict:
    """A corpus row with its image bytes as sha256 and its meta parsed, for equality."""
    return {**row, "meta": json.loads(row["meta"]) if isinstance(row["meta"], str) else row["meta"],
            "images": [None if i is None else hashlib.sha256(i["bytes"]).hexdigest() for i in row["images"]]}


def read_with_webdataset(out: Path) -> dict[str, dict]:
    urls = [str(out / s["path"]) for s in manifest.read(out)["shards"]]
    samples = {}
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        doc = json.loads(sample["json"])
        assert sample["__key__"] == tars.tar_key(doc["key"])
        samples[doc["key"]] = rebuilt(doc, sample)
    return samples


def read_with_tarfile(out: Path) -> dict[str, dict]:
    """No library: a sample is the members up to the first dot of their name."""
    grouped: dict[str, dict] = {}
    for path in sorted((out / "data").glob("*.tar")):
        with tarfile.open(path) as tar:
            for member in tar:
                key, ext = member.name.split(".", 1)
                grouped.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return {doc["key"]: rebuilt(doc, members) for doc, members in
            ((json.loads(m["json"]), m) for m in grouped.values())}


@pytest.fixture(scope="module")
def exported(sample_dir, tmp_path_factory, ray_session):
    out = tmp_path_factory.mktemp("export") / "wds"
    export.export(sample_dir, OutputOptions(out, shard_rows=3), ray=ray_session)
    return out


@pytest.fixture(scope="module")
def parquet_export(sample_dir, tmp_path_factory, ray_session):
    out = tmp_path_factory.mktemp("export") / "parquet"
    export.export(sample_dir, OutputOptions(out, shard_rows=4), export.ExportOptions(format="parquet"), ray_session)
    return out


def read_with_datasets(out: Path, streaming: bool) -> dict[str, dict]:
    """load_dataset as a user calls it: decoded images (PIL), then their bytes undecoded."""
    import datasets

    loaded = datasets.load_dataset(str(out), split="train", streaming=streaming)
    decoded = next(iter(loaded))
    assert all(image is None or image.size[0] > 0 for image in decoded["images"])   # PIL images
    raw = loaded.cast_column("images", datasets.List(datasets.Image(decode=False)))
    return {row["key"]: {**row, "images": [None if i is None else {"bytes": i["bytes"], "path": None}
                                           for i in row["images"]]} for row in raw}


def test_every_sample_of_every_source_is_rebuilt_exactly_by_webdataset_and_by_tarfile(sample_dir, exported):
    corpus = corpus_samples(sample_dir)
    assert {row["source"] for row in corpus.values()} >= {k.name for k in sources.kinds() if k.sample}
    for read in (read_with_webdataset, read_with_tarfile):
        back = read(exported)
        assert back.keys() == corpus.keys()
        for key, row in corpus.items():
            assert comparable(back[key]) == comparable(row), key
    built = manifest.read(exported)
    assert built["rows"] == len(corpus) and built["status_counts"] == {}   # status rows: the samples not written
    assert all(s["rows"] <= 3 for s in built["shards"])


def test_pair_like_sources_read_as_open_clip_reads_them_jpg_and_txt(sample_dir, exported):
    pair_like = {k.name for k in sources.kinds() if k.pair_rank is not None}
    seen = 0
    has_pair = lambda s: "txt" in s and any(ext in s for ext in ("jpg", "png", "webp"))  # noqa: E731 - open_clip's filter
    for sample in (wds.WebDataset(sorted(map(str, (exported / "data").glob("*.tar"))), shardshuffle=False,
                                  empty_check=False)
                   .select(has_pair).decode("pil").to_tuple("jpg;png;webp", "txt", "json")):
        image, caption, doc = sample
        assert doc["source"] in pair_like and caption in doc["texts"] and image.size[0] > 0
        seen += 1
    pairs = [row for row in corpus_samples(sample_dir).values() if row["source"] in pair_like
             and sum(map(bool, row["images"])) == 1 and sum(t is not None for t in row["texts"]) == 1]
    assert seen == len(pairs) > 0


def test_the_same_corpus_gives_the_same_bytes_and_a_resume_redoes_only_what_is_missing(sample_dir, exported,
                                                                                       tmp_path, ray_session):
    again = tmp_path / "again"
    shutil.copytree(exported, again)
    removed = manifest.read(again)["shards"][1]["path"]
    (again / removed).unlink()
    (again / "_manifest.json").unlink()
    result = export.export(sample_dir, OutputOptions(again, shard_rows=3), ray=ray_session)
    assert result.ran_units == 1
    assert [s["sha256"] for s in manifest.read(again)["shards"]] == \
           [s["sha256"] for s in manifest.read(exported)["shards"]]


def test_a_sample_that_cannot_become_members_gets_a_status_row_and_the_rest_are_written(corpus_copy, tmp_path,
                                                                                         ray_session):
    path = shard_paths(corpus_copy)[0]
    table = read_shard(path)
    rows = table.to_pylist()
    bad = next(i for i, row in enumerate(rows) if any(row["images"]))
    first = next(j for j, image in enumerate(rows[bad]["images"]) if image)
    rows[bad]["images"][first] = {"bytes": b"GIF89a not a stored format", "path": None}
    write_table(path, table.from_pylist(rows, schema=table.schema), corpus_copy)
    out = tmp_path / "wds"
    built = export.export(corpus_copy, OutputOptions(out), ray=ray_session).manifest
    total = len(corpus_samples(corpus_copy))
    assert built["rows"] == total - 1 and built["status_counts"] == {"unwritable": 1}
    status = [r for p in manifest.read(out)["status_shards"] for r in read_shard(out / p["path"]).to_pylist()]
    assert [(r["key"], r["samples"]) for r in status] == [(rows[bad]["key"], 0)]
    assert "not JPEG, PNG or WebP" in status[0]["error"]
    assert rows[bad]["key"] not in read_with_tarfile(out)


def test_cli_exports_and_refuses_what_is_not_a_corpus(sample_dir, tmp_path, capsys, ray_session):
    assert main(["export", str(sample_dir), "--out", str(tmp_path / "wds"), "--num-cpus", "2"]) == 0
    assert "webdataset shard(s)" in capsys.readouterr().out
    card = (tmp_path / "wds" / "README.md").read_text()
    assert "WebDataset" in card and card.startswith("---\nviewer: false\n---\n")   # see tars.card
    assert main(["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
    assert "not a finished corpus" in capsys.readouterr().err


@pytest.mark.parametrize("command", [
    ["validate", "{wds}"], ["stats", "{wds}"], ["export", "{wds}", "--out", "{tmp}/again"],
    ["mix", "{wds}", "--out", "{tmp}/mixed"], ["preview", "{wds}", "--out", "{tmp}/p.html"],
    ["features", "{wds}", "--out", "{tmp}/f", "--model", str(TINY_PIXEL_VIT_PATH), "--pretrained", "none"],
    ["train", "--corpus", "{wds}", "--features", "{wds}", "--out", "{tmp}/run"]])
def test_what_reads_corpora_says_an_export_is_not_one(exported, tmp_path, capsys, command):
    argv = [part.format(wds=exported, tmp=tmp_path) for part in command]
    assert main(argv) == 2
    assert "is an export (webdataset), not a corpus" in capsys.readouterr().err


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=150), min_size=2, max_size=6, unique=True))
def test_tar_keys_are_one_to_one_and_what_webdataset_groups_by(keys):
    made = [tars.tar_key(k) for k in keys]
    assert len(set(made)) == len(made)
    for key, safe in zip(keys, made):
        assert re.fullmatch(r"[A-Za-z0-9_~-]{1,100}", safe)
        assert (safe == key) == bool(re.fullmatch(r"[A-Za-z0-9_-]{1,100}", key))


@pytest.mark.parametrize("streaming", [False, True])
def test_datasets_loads_and_streams_the_parquet_export_sample_for_sample(sample_dir, parquet_export, streaming):
    corpus = corpus_samples(sample_dir)
    back = read_with_datasets(parquet_export, streaming)
    assert list(back) == list(corpus)   # the corpus's order
    for key, row in corpus.items():
        assert comparable(back[key]) == comparable(row), key


def test_the_parquet_card_names_the_configs_the_hub_reads(parquet_export, sample_dir):
    import datasets
    import yaml

    card = (parquet_export / "README.md").read_text()
    header = yaml.safe_load(card.split("---\n")[1])
    assert [c["config_name"] for c in header["configs"]] == ["default"]   # every sample written: no status
    info = {i["config_name"]: i for i in header["dataset_info"]}
    assert {"name": "images", "list": "image"} in info["default"]["features"]
    total = len(corpus_samples(sample_dir))
    assert info["default"]["splits"] == [{"name": "train", "num_examples": total}]
    assert len(datasets.load_dataset(str(parquet_export), split="train")) == total
    built = manifest.read(parquet_export)
    assert all(s["rows"] <= 4 for s in built["shards"]) and f"Samples: {total}" in card and "Not written: none" in card
    group = pq.ParquetFile(parquet_export / built["shards"][0]["path"]).metadata.row_group(0)
    codecs = {group.column(i).path_in_schema: group.column(i).compression for i in range(group.num_columns)}
    assert codecs.pop("images.list.element.bytes") == "UNCOMPRESSED"   # JPEG/PNG/WebP: compressed already
    assert set(codecs.values()) == {"ZSTD"}


@pytest.fixture(scope="module")
def mixed(sample_dir, tmp_path_factory, ray_session):
    out = tmp_path_factory.mktemp("mixed") / "mix"
    assert main(["mix", str(sample_dir), "--out", str(out), "--shard-rows", "5", "--seed", "3", "--num-cpus", "2"]) == 0
    return out


@pytest.mark.parametrize("form", ["webdataset", "parquet"])
def test_a_mixed_corpus_round_trips_in_both_formats(mixed, tmp_path, ray_session, form):
    """A mix's shards interleave every source: each sample comes back whole, whatever its kind."""
    out = tmp_path / form
    export.export(mixed, OutputOptions(out), export.ExportOptions(format=form), ray_session)
    corpus = corpus_samples(mixed)
    assert len({row["source"] for row in corpus.values()}) >= 4
    back = read_with_webdataset(out) if form == "webdataset" else read_with_datasets(out, streaming=True)
    assert back.keys() == corpus.keys()
    for key, row in corpus.items():
        assert comparable(back[key]) == comparable(row), key


def test_rows_that_break_the_record_get_status_rows_and_the_unit_goes_on(corpus_copy, tmp_path, ray_session):
    """A shard a stranger wrote: a key missing, a position with both text and image, times
    going back. Each such row is an invalid_record status row naming the rule; the others
    are written, in both formats."""
    path = shard_paths(corpus_copy)[0]
    table = read_shard(path)
    rows = table.to_pylist()
    rows[0]["key"] = None
    with_text = next(i for i, row in enumerate(rows) if i and any(t is not None for t in row["texts"]))
    position = next(j for j, t in enumerate(rows[with_text]["texts"]) if t is not None)
    rows[with_text]["images"][position] = {"bytes": b"\xff\xd8\xff", "path": None}
    write_table(path, table.from_pylist(rows, schema=table.schema), corpus_copy)
    total = sum(read_shard(p).num_rows for p in shard_paths(corpus_copy))
    for form in export.FORMATS:
        out = tmp_path / form
        built = export.export(corpus_copy, OutputOptions(out), export.ExportOptions(format=form), ray_session).manifest
        assert built["rows"] == total - 2 and built["status_counts"] == {"invalid_record": 2}
        read = read_shard if form == "webdataset" else pq.read_table
        status = [r for p in built["status_shards"] for r in read(out / p["path"]).to_pylist()]
        bad = status
        assert [r["key"] for r in bad] == [f"{path.relative_to(corpus_copy).as_posix()}#0", rows[with_text]["key"]]
        assert "key is null" in bad[0]["error"] and f"position {position} holds both" in bad[1]["error"]
        if form == "parquet":   # the card's second config: the Hub shows the samples left out
            import datasets

            status = datasets.load_dataset(str(out), "status", split="train")
            assert status["status"] == ["invalid_record"] * 2 and "invalid_record" in (out / "README.md").read_text()


def test_a_tar_is_byte_for_byte_what_tarfile_writes_and_its_sha256_is_the_files(sample_dir, tmp_path):
    """The writer encodes headers with tarfile's TarInfo.tobuf and ends the archive itself:
    the bytes must equal TarFile.addfile's for the same members, long (PAX) names included,
    and the sha256 it hashed while writing must be the file's."""
    from emu_data.core.shards import ShardLimits, file_sha256

    rows = list(corpus_samples(sample_dir).values())[:40]
    rows[0] = {**rows[0], "key": "laion:" + "long-" * 40}   # a name past ustar's 100 bytes
    writer = tars.TarShardWriter(tmp_path / "ours", "u", ShardLimits(), tmp_path)
    for row in rows:
        writer.write(row)
    [info] = writer.close()
    with tarfile.open(tmp_path / "theirs.tar", "w", format=tarfile.PAX_FORMAT) as tar:
        for row in rows:
            for name, data in tars.members(row, False):
                member = tarfile.TarInfo(name)
                member.size, member.mode, member.mtime = len(data), 0o444, 0
                tar.addfile(member, io.BytesIO(data))
    ours = tmp_path / info.path
    assert ours.read_bytes() == (tmp_path / "theirs.tar").read_bytes()
    assert info.sha256 == file_sha256(ours) and info.bytes == ours.stat().st_size
