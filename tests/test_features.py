"""`emu-data features` on the sample corpus with a tiny random-init open_clip config (CPU):
the stage runs through Ray Data, writes shards aligned with the corpus, resumes per shard,
and equals direct open_clip output (exactly in fp32, within bf16's precision in bf16)."""

import io
import json
import os
import pickle
import shutil

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from emu_data.ops import encoder, features
from emu_data.cli import main
from emu_data.core import manifest, records
from emu_data.core.corpus import LayoutChanged, StaleRun, shard_paths, writers_lock
from emu_data.core.schema import arrow_schema
from emu_data.core.shards import read_shard, write_table
from emu_data.engine import runtime

TINY = {"embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny-vit.json"
    path.write_text(json.dumps(TINY))
    return str(path)


@pytest.fixture(scope="module")
def fp32(sample_dir, tiny, tmp_path_factory, ray_session):
    """Pooled fp32 features, one image per encoder call (the direct calls below do the same)."""
    out = tmp_path_factory.mktemp("features") / "fp32"
    spec = encoder.ModelSpec(tiny, tokens="pooled", precision="fp32")
    built = features.make_features(sample_dir, out, spec, features.RunOptions(batch_size=1, images_per_read=16),
                                   ray_session)
    return out, built


BATCHED = features.RunOptions(batch_size=8, images_per_read=16)


@pytest.fixture(scope="module")
def batched(sample_dir, tiny, tmp_path_factory, ray_session):
    """Pooled fp32 features in batches of 8 that run across decode chunks of 16+ images."""
    out = tmp_path_factory.mktemp("features") / "batched"
    spec = encoder.ModelSpec(tiny, tokens="pooled", precision="fp32")
    return out, features.make_features(sample_dir, out, spec, BATCHED, ray_session)


def corpus_images(corpus):
    """(shard name, key, image_index, bytes) of every corpus image, in corpus order."""
    for path in shard_paths(corpus):
        for row in read_shard(path).to_pylist():
            for index, image in enumerate(row["images"]):
                if image is not None:
                    yield path.name, row["key"], index, image["bytes"]


def feature_rows(out):
    for path in sorted((out / "data").glob("*.arrow")):
        table = read_shard(path)
        for key, index, emb in zip(table.column("key").to_pylist(), table.column("image_index").to_pylist(),
                                   table.column("embedding").to_numpy(zero_copy_only=False)):
            yield path.name, key, index, emb


def assert_same_rows(ours, reference, compare) -> None:
    """Two runs' feature rows (feature_rows) agree: at least one row, as many on each side,
    the same (shard, key, image_index) in the same order, and compare(ours, reference)
    passes on every embedding. A bare zip would pass with no rows or with rows missing."""
    ours, reference = list(ours), list(reference)
    assert reference, "no feature rows to compare"
    assert len(ours) == len(reference), f"{len(ours)} rows against {len(reference)}"
    assert [r[:3] for r in ours] == [r[:3] for r in reference]
    for (*_, a), (*_, b) in zip(ours, reference):
        compare(a, b)


def close_fp32(a, b) -> None:
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


def direct_model(tiny, tokens="pooled"):
    """open_clip called directly: same config, same seed, its own eval transform."""
    import open_clip

    encoder.model_name(tiny)  # registers the JSON config under its stem
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("tiny-vit", pretrained=None)
    return model.eval(), preprocess


def direct_pooled(model, preprocess, data: bytes) -> np.ndarray:
    with torch.no_grad():
        return model.encode_image(preprocess(Image.open(io.BytesIO(data))).unsqueeze(0))[0].numpy()


def test_one_embedding_per_image_in_corpus_order(sample_dir, fp32):
    out, built = fp32
    expected = [(s, k, i) for s, k, i, _ in corpus_images(sample_dir)]
    assert [(s, k, i) for s, k, i, _ in feature_rows(out)] == expected
    assert built["rows"] == len(expected)
    assert sorted(p.name for p in (out / "data").glob("*.arrow")) == sorted(p.name for p in shard_paths(sample_dir))


def test_fp32_embeddings_equal_direct_open_clip_exactly(sample_dir, fp32, tiny):
    out, _ = fp32
    model, preprocess = direct_model(tiny)
    ours = [emb for *_, emb in feature_rows(out)]
    theirs = [direct_pooled(model, preprocess, data) for *_, data in corpus_images(sample_dir)]
    assert len(ours) == len(theirs) > 20
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a, b)


def test_metadata_records_model_weights_layout_and_preprocessing(fp32, tiny):
    out, built = fp32
    meta = read_shard(next((out / "data").glob("*.arrow"))).schema.metadata
    meta = {k.decode(): v.decode() for k, v in meta.items()}
    assert meta["model"] == tiny and meta["pretrained"] == "none" and meta["tokens"] == "pooled"
    assert json.loads(meta["shape"]) == [32] and meta["dtype"] == "float32"
    assert json.loads(meta["preprocess"])["size"] == [64, 64]
    assert meta["emu_data.random_init_seed"] == "0"
    assert built["schema"]["name"] == "features" and built["config"]["model"]["pretrained"] == "none"


def test_bf16_patch_tokens_match_the_last_block_within_bf16_precision(sample_dir, tiny, tmp_path, ray_session):
    out = tmp_path / "patch"
    spec = encoder.ModelSpec(tiny, tokens="patch", precision="bf16")
    features.make_features(sample_dir, out, spec, features.RunOptions(batch_size=8), ray_session)
    model, preprocess = direct_model(tiny)
    kept = {}
    model.visual.transformer.resblocks[-1].register_forward_hook(lambda m, i, o: kept.update(tokens=o))
    rows, images = list(feature_rows(out)), list(corpus_images(sample_dir))
    assert [r[:3] for r in rows] == [i[:3] for i in images] and len(rows) >= 12
    for (_, key, index, emb), (*_, data) in zip(rows[:12], images):
        direct_pooled(model, preprocess, data)
        ours = encoder.as_float32(emb, "bf16").reshape(17, 64)
        np.testing.assert_allclose(ours, kept["tokens"][0].numpy(), rtol=0.05, atol=0.05)
    meta = read_shard(next(out.glob("data/*.arrow"))).schema.metadata
    assert json.loads(meta[b"shape"]) == [17, 64] and meta[b"dtype"] == b"bfloat16"


def test_deleted_shards_are_recomputed_alone_byte_for_byte_and_only_they(sample_dir, batched, tiny, tmp_path,
                                                                           ray_session, monkeypatch):
    """Batches never cross a shard, so a shard remade alone equals the one the whole run made;
    and all the driver gets back are small messages, never an embedding."""
    out = tmp_path / "resume"
    shutil.copytree(batched[0], out)
    shards = sorted((out / "data").glob("*.arrow"))
    before = {p.name: os.stat(p).st_mtime_ns for p in shards}
    gone = {p.name for p in shards[1::3]}   # shards with neighbours kept on both sides
    for name in gone:
        (out / "data" / name).unlink()
    said = []
    real = features.runtime.inference_units

    def spy(*args, **kwargs):
        for unit, message in real(*args, **kwargs):
            said.append(message)
            yield unit, message

    monkeypatch.setattr(features.runtime, "inference_units", spy)
    spec = encoder.ModelSpec(tiny, tokens="pooled", precision="fp32")
    built = features.make_features(sample_dir, out, spec, BATCHED, ray_session)
    after = {p.name: os.stat(p).st_mtime_ns for p in sorted((out / "data").glob("*.arrow"))}
    assert set(after) == set(before)
    assert {name for name in after if after[name] != before[name]} == gone
    assert [s["sha256"] for s in built["shards"]] == [s["sha256"] for s in batched[1]["shards"]]
    assert_small_messages(said, shards=len(gone))


def assert_small_messages(said: list, shards: int) -> None:
    """What came back from the encoder actors: plain dicts of a few hundred bytes (rows
    written; a shard's path, rows, bytes, sha256), never an array."""
    assert said and all(len(pickle.dumps(m)) < 400 for m in said)
    progress = [m["images"] for m in said if set(m) == {"images"}]
    infos = [m["shard"] for m in said if set(m) == {"shard"}]
    assert len(progress) + len(infos) == len(said) and all(type(n) is int for n in progress)
    assert len(infos) == shards and all(set(i) == {"path", "rows", "bytes", "sha256"} for i in infos)
    assert sum(progress) == sum(i["rows"] for i in infos)


def test_another_layout_in_the_same_directory_is_refused(sample_dir, fp32, tiny, tmp_path, ray_session):
    out = tmp_path / "other"
    shutil.copytree(fp32[0], out)
    with pytest.raises(LayoutChanged):
        features.make_features(sample_dir, out, encoder.ModelSpec(tiny, precision="bf16"),
                               features.RunOptions(), ray_session)


def test_cli_runs_features_and_validate_accepts_them(sample_dir, tiny, tmp_path, ray_session):
    out = tmp_path / "cli"
    assert main(["features", str(sample_dir), "--out", str(out), "--model", tiny, "--pretrained", "none",
                 "--precision", "fp16", "--batch-size", "16"]) == 0
    assert main(["validate", str(out)]) == 0
    emb = next(feature_rows(out))[3]
    assert emb.dtype == np.float16


def test_bad_model_and_weights_are_clear_errors(sample_dir, tiny, tmp_path, capsys):
    assert main(["features", str(sample_dir), "--out", str(tmp_path / "x"), "--model", "no-such-model",
                 "--pretrained", "none"]) == 2
    assert "not an open_clip model name" in capsys.readouterr().err
    with pytest.raises(encoder.ModelError, match="cannot load weights"):
        encoder.load_visual(encoder.ModelSpec(tiny, pretrained=str(tmp_path / "missing.pt")))


def test_a_one_cpu_cluster_shares_its_cpu_between_encoder_and_decoding(monkeypatch, ray_session):
    """Whole CPUs each on a 1-CPU Ray would deadlock: the actor holds the CPU the reads need."""
    monkeypatch.setattr(runtime, "cluster_cpus", lambda ray=None: 1)
    monkeypatch.setattr(runtime, "cluster_gpus", lambda ray=None: 0)
    plan = features.plan_inference(features.RunOptions(), ray_session)
    assert plan.cpus_per_actor + plan.cpus_per_read <= 1
    monkeypatch.setattr(runtime, "cluster_cpus", lambda ray=None: 4)
    assert features.plan_inference(features.RunOptions(), ray_session).cpus_per_actor == 2
    with pytest.raises(features.FeatureError, match="leaves none"):
        features.plan_inference(features.RunOptions(encoder_cpus=4), ray_session)


def test_row_comparison_refuses_no_rows_missing_rows_and_misaligned_rows():
    """assert_same_rows (the GPU-vs-CPU check) fails on what a bare zip lets through."""
    emb = np.zeros(2, np.float32)
    row, other = ("a.arrow", "k", 0, emb), ("a.arrow", "j", 0, emb)
    assert_same_rows([row], [row], np.testing.assert_array_equal)
    for ours, reference in [([], []), ([row], []), ([], [row]), ([row], [row, row]), ([other], [row])]:
        with pytest.raises(AssertionError):
            assert_same_rows(ours, reference, np.testing.assert_array_equal)


def test_batched_cpu_features_match_unbatched_fp32(batched, fp32):
    """The GPU test's comparison on CPU: batches of 8 against one image per call."""
    assert_same_rows(feature_rows(batched[0]), feature_rows(fp32[0]), close_fp32)


def test_the_encoder_worker_writes_a_shard_itself_and_returns_only_its_summary(sample_dir, batched, tiny,
                                                                                tmp_path, ray_session):
    """ShardEncoder called as its actor calls it: the messages it yields are what the remote
    call returns to the driver. The shard is the one the whole run wrote, byte for byte, a
    record batch per decode chunk."""
    spec = encoder.ModelSpec(tiny, tokens="pooled", precision="fp32")
    preprocess = encoder.preprocess_for(spec)
    entry = max(batched[1]["shards"], key=lambda e: e["rows"])   # several chunks and batches
    corpus_entry = next(e for e in json.loads((sample_dir / "_manifest.json").read_text())["shards"]
                        if e["path"] == entry["path"])
    unit = features._unit(sample_dir, corpus_entry, BATCHED.images_per_read)
    counts = features.image_counts(sample_dir / unit.shard)
    per_chunk = [sum(counts[c.start:c.stop]) for c in unit.chunks]
    assert any(sum(per_chunk[:i]) % BATCHED.batch_size for i in range(1, len(per_chunk)))   # a batch spans chunks
    plan = features.plan_inference(BATCHED, ray_session)
    fingerprint = json.loads((batched[0] / "_config.json").read_text())["fingerprint"]
    worker = features.ShardEncoder(str(sample_dir), str(tmp_path), spec, preprocess, fingerprint, plan)   # no run
    said = list(worker(unit))
    worker.close()
    assert_small_messages(said, shards=1)
    assert said[-1]["shard"] == {**entry, "bytes": (tmp_path / entry["path"]).stat().st_size}
    assert said[-1]["shard"]["sha256"] == entry["sha256"]
    written = pa.ipc.open_file(str(tmp_path / entry["path"]))
    assert [written.get_batch(i).num_rows for i in range(written.num_record_batches)] == \
        [m["images"] for m in said[:-1]] == per_chunk


def test_an_image_that_does_not_decode_stops_the_run_with_a_feature_error(tmp_path, tiny, ray_session):
    """Raised in a decode task inside an encoder actor, it reaches the caller as itself, naming
    shard, key and image; no temporary file and no manifest are left."""
    good = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(good, "PNG")
    rows = [records.sample("laion:good", "laion", [good.getvalue(), "caption"]),
            records.sample("laion:bad", "laion", [b"\x89PNG not really", "caption"])]
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    info = write_table(corpus / "data" / "x.arrow", pa.Table.from_pylist(rows, schema=arrow_schema("interleaved")),
                       corpus)
    part = {"shards": [info.to_dict()], "status_shards": [], "status_counts": {"ok": 2}, "source_counts": {}}
    manifest.write(corpus, manifest.build(record="interleaved", stage="sample", config={}, fingerprint="f",
                                          parts=[part]))
    with pytest.raises(features.FeatureError, match=r"data/x\.arrow: laion:bad image 0 does not decode"):
        features.make_features(corpus, out, encoder.ModelSpec(tiny), features.RunOptions(), ray_session)
    assert not (out / manifest.MANIFEST_NAME).exists() and not list(out.glob("data/*"))


def test_an_encoder_actor_of_another_run_writes_nothing(tmp_path, tiny):
    """An actor of a killed run that starts after a rerun has prepared `out` refuses before
    anything is read or written (the writers' lock of the corpus stages); a rerun's prepare
    waits for the actors still holding it."""
    out = tmp_path / "out"
    out.mkdir()
    with writers_lock(out, exclusive=True) as lock:
        lock.claim("the-rerun")
    spec = encoder.ModelSpec(tiny)
    with pytest.raises(StaleRun):
        features.ShardEncoder(str(tmp_path), str(out), spec, encoder.preprocess_for(spec), "f",
                              runtime.InferencePlan(), run_id="the-killed-run")
    assert [p.name for p in out.iterdir()] == [".lock"]


def test_the_stage_pickles():
    reader = features.ChunkReader("/corpus", encoder.preprocess_for(encoder.ModelSpec("EVA02-B-16")))
    assert pickle.loads(pickle.dumps(reader)).preprocess.size == (224, 224)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_features_match_cpu_fp32(sample_dir, fp32, tiny, tmp_path, ray_session):
    out = tmp_path / "gpu"
    spec = encoder.ModelSpec(tiny, tokens="pooled", precision="fp32")
    features.make_features(sample_dir, out, spec, features.RunOptions(batch_size=64, gpus=1), ray_session)
    assert_same_rows(feature_rows(out), feature_rows(fp32[0]), close_fp32)


@pytest.mark.parametrize("precision, tf32_inside", [("fp32", False), ("bf16", True)])
def test_fp32_encodes_without_tf32_and_leaves_the_flags_as_they_were(tiny, precision, tf32_inside):
    """cuDNN's TF32 convolutions made an H200's fp32 features differ from the CPU's by 4e-4:
    fp32 turns TF32 off while it encodes (read here from inside the forward), and only then."""
    spec = encoder.ModelSpec(tiny, tokens="pooled", precision=precision)
    enc = encoder.Encoder(spec, encoder.preprocess_for(spec), device="cpu")
    seen = []
    enc.visual.register_forward_hook(
        lambda *_: seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)))
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        size = encoder.preprocess_for(spec).size
        enc({"pixels": np.zeros((2, *size, 3), np.uint8)})
        assert seen == [(tf32_inside, tf32_inside)]
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (True, True)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before
