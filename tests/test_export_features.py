"""emu-data export --features: each image's embedding travels with it (a .npy member, a
Parquet column), equal to the feature shard's row; features that are not this corpus's are
refused before anything is written."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
import webdataset as wds

from emu_data.cli import main
from emu_data.core import manifest
from emu_data.core.shards import read_shard
from emu_data.engine.stage import OutputOptions
from emu_data.ops import encoder, export, featurerows

from test_export import comparable, corpus_samples, read_with_datasets, rebuilt


def feature_vectors(features_dir) -> dict[tuple[str, int], np.ndarray]:
    """(key, image position) -> embedding as float32, shaped, from the feature shards."""
    built = manifest.read(features_dir)
    vectors = {}
    for entry in built["shards"]:
        table = read_shard(features_dir / entry["path"])
        shape = json.loads(table.schema.metadata[b"shape"])
        flat = table.column("embedding").combine_chunks().flatten().to_numpy()
        flat = encoder.as_float32(flat, "bf16").reshape(len(table), *shape)   # the fixture is bf16
        for key, index, vector in zip(table.column("key").to_pylist(), table.column("image_index").to_pylist(), flat):
            vectors[key, index] = vector
    return vectors


def test_webdataset_members_hold_every_images_embedding(sample_dir, sample_features, tmp_path, ray_session):
    out = tmp_path / "wds"
    export.export(sample_dir, OutputOptions(out, shard_rows=5), export.ExportOptions(features=sample_features),
                  ray_session)
    vectors, corpus = feature_vectors(sample_features), corpus_samples(sample_dir)
    urls = [str(out / s["path"]) for s in manifest.read(out)["shards"]]
    seen = 0
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        doc = json.loads(sample["json"])
        assert comparable(rebuilt(doc, sample)) == comparable(corpus[doc["key"]])
        for position, name in enumerate(doc["features"]):
            assert (name is None) == (doc["images"][position] is None)
            if name is not None:
                stored = np.load(io.BytesIO(sample[name]), allow_pickle=False)
                assert stored.dtype == np.float32 and np.array_equal(stored, vectors[doc["key"], position])
                seen += 1
    assert seen == len(vectors) > 0
    card = (out / "README.md").read_text()
    assert "tiny" in card and "random init" in card and "bfloat16 widened exactly" in card


def test_parquet_has_a_features_column_parallel_to_images(sample_dir, sample_features, tmp_path, ray_session,
                                                          capsys):
    out = tmp_path / "parquet"
    assert main(["export", str(sample_dir), "--out", str(out), "--format", "parquet", "--features",
                 str(sample_features), "--shard-rows", "7", "--num-cpus", "2"]) == 0
    assert "with each image's embedding" in capsys.readouterr().out
    vectors, corpus = feature_vectors(sample_features), corpus_samples(sample_dir)
    back = read_with_datasets(out, streaming=True)
    assert list(back) == list(corpus)
    seen = 0
    for key, row in back.items():
        features = row.pop("features")
        assert comparable(row) == comparable(corpus[key])
        for position, vector in enumerate(features):
            assert (vector is None) == (row["images"][position] is None)
            if vector is not None:
                assert np.array_equal(np.asarray(vector, np.float32), vectors[key, position].reshape(-1))
                seen += 1
    assert seen == len(vectors)


def test_features_of_another_corpus_or_stale_ones_are_refused_before_writing(sample_dir, sample_features, corpus_copy,
                                                                           tmp_path, capsys):
    # the corpus copy's first shard changed: its features are stale
    first = manifest.read(corpus_copy)["shards"][0]["path"]
    data = bytearray((corpus_copy / first).read_bytes())
    rebuilt_manifest = manifest.read(corpus_copy)
    rebuilt_manifest["shards"][0]["sha256"] = "0" * 64
    with pytest.raises(featurerows.FeaturesMismatch, match="stale"):
        featurerows.plan(sample_features, corpus_copy, rebuilt_manifest["shards"])
    assert data   # the copy itself is untouched
    # not a features directory, or none at all: a usage error naming it, nothing written
    for wrong in (sample_dir, tmp_path / "nothing"):
        out = tmp_path / f"out-{wrong.name}"
        assert main(["export", str(sample_dir), "--out", str(out), "--features", str(wrong)]) == 2
        assert "--features" in capsys.readouterr().err and not out.exists()
    # a features directory missing a shard's features
    partial = tmp_path / "partial"
    shutil.copytree(sample_features, partial)
    built = manifest.read(partial)
    built["shards"] = built["shards"][1:]
    (partial / manifest.MANIFEST_NAME).write_text(json.dumps(built))
    with pytest.raises(featurerows.FeaturesMismatch, match="has no features for corpus shard"):
        featurerows.plan(partial, sample_dir, manifest.read(sample_dir)["shards"])


def test_a_steps_embeddings_do_not_depend_on_how_the_corpus_batches_are_chunked(sample_dir, sample_features):
    import pyarrow as pa

    built = manifest.read(sample_dir)
    features, _, _ = featurerows.plan(sample_features, sample_dir, built["shards"])
    shard = next(s["path"] for s in built["shards"] if s["path"].startswith("data/mmc4"))
    table = read_shard(sample_dir / shard)
    keep = np.arange(table.num_rows) % 3 != 1   # rows left out (as unsound rows are) keep their place
    whole = featurerows.ShardFeatures(features, shard).column(table.combine_chunks(), keep)
    chunked = pa.Table.from_batches(table.to_batches(max_chunksize=2), schema=table.schema)
    reader = featurerows.ShardFeatures(features, shard)
    assert reader.column(chunked, keep).equals(whole) and len(whole) == int(keep.sum())
    reader.close()   # every feature row used: no FeaturesMismatch
