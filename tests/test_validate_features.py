"""`emu-data validate` on a features directory: clean as `features` writes it; each planted
fault (missing or stray shards and embeddings, bad values, bad metadata, no corpus) reported.

Features are computed once per module with a tiny random-init open_clip config on CPU; each
test plants its fault in a private copy."""

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from emu_data.ops import encoder, features
from emu_data.core import manifest, schema
from emu_data.cli import main
from emu_data.core.shards import read_shard, write_table
from emu_data.inspect.validate import image_positions, validate

TINY = {"embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
        "text_cfg": {"context_length": 8, "vocab_size": 49408, "width": 16, "heads": 1, "layers": 1}}


@pytest.fixture(scope="module")
def feats(sample_dir, tmp_path_factory, ray_session) -> Path:
    """fp32 pooled features of the sample corpus, computed once; copy before changing."""
    model = tmp_path_factory.mktemp("model") / "tiny-vit.json"
    model.write_text(json.dumps(TINY))
    out = tmp_path_factory.mktemp("features") / "features"
    features.make_features(sample_dir, out, encoder.ModelSpec(str(model), precision="fp32"),
                           features.RunOptions(batch_size=16), ray_session)
    return out


@pytest.fixture
def feats_copy(feats, tmp_path) -> Path:
    return Path(shutil.copytree(feats, tmp_path / "features"))


def _violations(path, corpus=None):
    return validate([path], corpus=corpus).violations


def _found(violations, rule, key=None, path_end=None):
    return [v for v in violations if v.rule == rule and (key is None or v.key == key)
            and (path_end is None or v.path.endswith(path_end))]


def _rules(violations) -> set[str]:
    return {v.rule for v in violations}


def _biggest(out: Path) -> str:
    """The feature shard with the most rows (room to drop, duplicate and swap rows)."""
    paths = sorted((out / "data").glob("*.arrow"), key=lambda p: (-read_shard(p).num_rows, p.name))
    return paths[0].relative_to(out).as_posix()


def _rewrite(out: Path, rel: str, edit) -> pa.Table:
    """Replace a shard by edit(table), keeping the manifest in step so only the planted fault shows."""
    table = edit(read_shard(out / rel))
    info = write_table(out / rel, table, out)
    _edit_manifest(out, lambda built: next(e for e in built["shards"] if e["path"] == rel).update(info.to_dict()))
    return table


def _edit_manifest(out: Path, edit) -> None:
    built = json.loads((out / manifest.MANIFEST_NAME).read_text())
    edit(built)
    built["rows"] = sum(e["rows"] for e in built["shards"])
    manifest.write_json_atomic(out / manifest.MANIFEST_NAME, built)


def _with_embedding(table: pa.Table, matrix: np.ndarray, target: pa.Schema | None = None) -> pa.Table:
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])
    return pa.Table.from_arrays([table.column("key"), table.column("image_index"), embedding],
                                schema=target or table.schema)


def _matrix(table: pa.Table) -> np.ndarray:
    return np.stack(table.column("embedding").to_numpy(zero_copy_only=False))


def _set_meta(table: pa.Table, **changes) -> pa.Table:
    meta = {**table.schema.metadata, **{k.encode(): v.encode() for k, v in changes.items()}}
    return table.replace_schema_metadata(meta)


# ---- clean ---------------------------------------------------------------------------

def test_fresh_features_are_clean(feats, sample_dir):
    report = validate([feats])
    assert report.ok, [str(v) for v in report.violations]
    built = manifest.read(feats)
    assert report.rows == built["rows"] > 20 and report.shards == len(built["shards"])
    assert main(["validate", str(feats)]) == 0
    both = validate([sample_dir, feats])  # a corpus and its features side by side
    assert both.ok and len(both.directories) == 2


def test_image_positions_read_validity_only():
    struct = schema.IMAGE_STRUCT
    image = {"bytes": b"not decoded", "path": None}
    batch = pa.record_batch({"key": ["a", "b", "c", "d"],
                             "images": pa.array([[None, image], None, [image, image], [None]],
                                                pa.list_(struct))})
    assert image_positions(batch) == [("a", 1, 0), ("c", 0, 2), ("c", 1, 2)]
    assert image_positions(batch.slice(1), first_row=10) == [("c", 0, 11), ("c", 1, 11)]


# ---- shards --------------------------------------------------------------------------

def test_deleted_feature_shard(feats_copy):
    rel = _biggest(feats_copy)
    (feats_copy / rel).unlink()
    violations = _violations(feats_copy)
    assert _found(violations, "features_missing_shard", path_end=rel)
    assert _found(violations, "missing_shard", path_end=rel)


def test_feature_shard_without_a_corpus_shard(feats_copy):
    shutil.copy(feats_copy / _biggest(feats_copy), feats_copy / "data" / "stray-00000.arrow")
    violations = _violations(feats_copy)
    assert _found(violations, "features_stray_shard", path_end="stray-00000.arrow")
    assert _found(violations, "extra_shard", path_end="stray-00000.arrow")


# ---- alignment -----------------------------------------------------------------------

def test_dropped_row_is_a_missing_embedding(feats_copy):
    rel = _biggest(feats_copy)
    key = read_shard(feats_copy / rel).column("key")[2].as_py()
    _rewrite(feats_copy, rel, lambda t: pa.concat_tables([t.slice(0, 2), t.slice(3)]))
    violations = _violations(feats_copy)
    assert _found(violations, "embedding_missing", key, path_end=rel)
    assert _rules(violations) == {"embedding_missing"}


def test_duplicated_row(feats_copy):
    rel = _biggest(feats_copy)
    key = read_shard(feats_copy / rel).column("key")[1].as_py()
    _rewrite(feats_copy, rel, lambda t: pa.concat_tables([t.slice(0, 2), t.slice(1, 1), t.slice(2)]))
    violations = _violations(feats_copy)
    hits = _found(violations, "embedding_duplicate", key, path_end=rel)
    assert hits and hits[0].row == 2
    assert _rules(violations) == {"embedding_duplicate"}


def test_stray_key(feats_copy):
    rel = _biggest(feats_copy)

    def edit(table):
        keys = table.column("key").to_pylist()
        keys[0] = "no-such-sample"
        return table.set_column(0, table.schema.field("key"), pa.array(keys, pa.string()))

    _rewrite(feats_copy, rel, edit)
    violations = _violations(feats_copy)
    assert _found(violations, "embedding_stray", "no-such-sample", path_end=rel)[0].row == 0
    assert _found(violations, "embedding_missing", path_end=rel)  # the image it replaced


def test_swapped_rows_are_out_of_order(feats_copy):
    rel = _biggest(feats_copy)
    _rewrite(feats_copy, rel, lambda t: pa.concat_tables([t.slice(1, 1), t.slice(0, 1), t.slice(2)]))
    violations = _violations(feats_copy)
    assert [v.row for v in _found(violations, "embedding_order", path_end=rel)] == [0]
    assert _rules(violations) == {"embedding_order"}


# ---- values and metadata -------------------------------------------------------------

def test_nan_embedding(feats_copy):
    rel = _biggest(feats_copy)
    key = read_shard(feats_copy / rel).column("key")[3].as_py()

    def edit(table):
        matrix = _matrix(table)
        matrix[3, 5] = np.nan
        return _with_embedding(table, matrix)

    _rewrite(feats_copy, rel, edit)
    hits = _found(_violations(feats_copy), "embedding_not_finite", key, path_end=rel)
    assert len(hits) == 1 and hits[0].row == 3


def test_bfloat16_shards_are_decoded(feats_copy):
    """bf16 is stored as uint16 bits: clean when finite, an inf in the bits is caught."""
    rels = sorted(p.relative_to(feats_copy).as_posix() for p in (feats_copy / "data").glob("*.arrow"))

    def to_bf16(table):
        bits = (_matrix(table).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
        meta = {**{k.decode(): v.decode() for k, v in table.schema.metadata.items()}, "dtype": "bfloat16"}
        target = schema.arrow_schema("features", params={"storage": "uint16", "size": bits.shape[1]},
                                     metadata=meta)
        return _with_embedding(table, bits, target)

    for rel in rels:
        _rewrite(feats_copy, rel, to_bf16)
    assert validate([feats_copy]).ok

    def plant_inf(table):
        bits = _matrix(table)
        bits[0, 0] = 0x7F80  # +inf in bfloat16
        return _with_embedding(table, bits)

    _rewrite(feats_copy, rels[0], plant_inf)
    assert [v.rule for v in _violations(feats_copy)] == ["embedding_not_finite"]


@pytest.mark.parametrize("shape, rule", [("[4, 8]", "features_inconsistent"),   # same size, other shape
                                         ("[-1]", "features_metadata_invalid"),
                                         ("[31]", "schema_type")])                # column is 32 wide
def test_wrong_shape_metadata(feats_copy, shape, rule):
    rel = _biggest(feats_copy)
    _rewrite(feats_copy, rel, lambda t: _set_meta(t, shape=shape))
    assert _found(_violations(feats_copy), rule, path_end=rel)


def test_missing_metadata_and_unknown_dtype(feats_copy):
    rel = _biggest(feats_copy)

    def edit(table):
        meta = {k: v for k, v in table.schema.metadata.items() if k != b"model"}
        return _set_meta(table.replace_schema_metadata(meta), dtype="float64")

    _rewrite(feats_copy, rel, edit)
    violations = _violations(feats_copy)
    assert "model" in _found(violations, "features_metadata_missing", path_end=rel)[0].message
    assert "float64" in _found(violations, "features_metadata_invalid", path_end=rel)[0].message


def test_garbage_shard_and_null_embedding_are_violations_not_tracebacks(feats_copy, capsys):
    rels = sorted(p.relative_to(feats_copy).as_posix() for p in (feats_copy / "data").glob("*.arrow"))
    (feats_copy / rels[0]).write_bytes(b"ARROW1\x00\x00junk")

    def edit(table):
        embedding = table.column("embedding").to_pylist()
        embedding[0] = None
        return table.set_column(2, table.schema.field("embedding"), pa.array(embedding, table.schema.field(2).type))

    _rewrite(feats_copy, rels[1], edit)
    violations = _violations(feats_copy)
    assert _found(violations, "unreadable_shard", path_end=rels[0])
    assert [v.row for v in _found(violations, "not_null", path_end=rels[1])] == [0]
    assert not _found(violations, "embedding_not_finite")
    assert main(["validate", str(feats_copy)]) == 1
    assert "[unreadable_shard]" in capsys.readouterr().out


# ---- the corpus ----------------------------------------------------------------------

@pytest.mark.parametrize("named", ["elsewhere", None, 5])
def test_corpus_missing_and_given_with_corpus(feats_copy, sample_dir, tmp_path, named, capsys):
    def edit(built):
        if named is None:
            del built["config"]["corpus"]
        else:
            built["config"]["corpus"] = str(tmp_path / named) if isinstance(named, str) else named

    _edit_manifest(feats_copy, edit)
    assert _rules(_violations(feats_copy)) == {"corpus_missing"}
    assert validate([feats_copy], corpus=sample_dir).ok
    assert main(["validate", str(feats_copy)]) == 1
    assert "[corpus_missing]" in capsys.readouterr().out
    assert main(["validate", str(feats_copy), "--corpus", str(sample_dir)]) == 0


def test_corpus_changed_since_makes_features_stale(feats, corpus_copy):
    rel = sorted(e["path"] for e in manifest.read(corpus_copy)["shards"])[0]
    table = read_shard(corpus_copy / rel)
    meta = table.column("meta").to_pylist()
    meta[0] = json.dumps({"edited": True})
    info = write_table(corpus_copy / rel, table.set_column(table.schema.get_field_index("meta"),
                                                            table.schema.field("meta"), pa.array(meta)), corpus_copy)
    _edit_manifest(corpus_copy, lambda b: next(e for e in b["shards"] if e["path"] == rel).update(info.to_dict()))
    violations = _violations(feats, corpus=corpus_copy)
    assert _found(violations, "features_stale", path_end=rel)
    assert _rules(violations) == {"features_stale"}
