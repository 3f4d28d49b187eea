"""The small Emu's parts on the sample corpus and its tiny-tower features: config, vocabulary,
sequence construction, index, deterministic mixed/packed schedule, loader workers, the
objective's targets, and generation with a KV cache against a full forward."""

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from emu_data.model import config as model_config
from emu_data.model import data, emu
from emu_data.model.config import ConfigError, DataConfig, ModelConfig, TrainConfig
from emu_data.model.tokenizer import BOS, END_IMG, EOS, IMG, PAD, UNK, Vocab
from emu_data import sources as registry

SMALL = ModelConfig(width=64, depth=2, heads=2, queries=4, ct_width=32, ct_depth=1, ct_heads=2)
DATA = DataConfig(seq_len=96, batch_size=3, holdout=0.2, workers=0)


@pytest.fixture(scope="module")
def indexed(sample_dir, sample_features):
    index, counts = data.build_index(sample_dir, sample_features, DATA)
    vocab = Vocab.build(counts, 4096)
    return index, vocab, data.SampleReader(index, sample_dir, sample_features)


# ---- config and vocabulary ---------------------------------------------------------------

def test_config_files_fill_defaults_and_reject_unknown_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {width: 128, heads: 4}\nrun: {steps: 7}\n")
    config = model_config.load(path)
    assert config.model.width == 128 and config.run.steps == 7 and config.model.queries == 32
    assert config.optim.betas == (0.9, 0.98) and config.optim.weight_decay == 0.05 and config.optim.warmup == 0.2
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    path.write_text("model: {widht: 128}\n")
    with pytest.raises(ConfigError, match="widht"):
        model_config.load(path)
    with pytest.raises(ConfigError, match="section"):
        TrainConfig.from_dict({"modle": {}})
    with pytest.raises(ConfigError, match="divisible"):
        ModelConfig(width=100, heads=3)


def test_vocab_keeps_the_most_frequent_bpe_ids_and_maps_the_rest_to_unk(tmp_path):
    vocab = Vocab.build(Counter({320: 5, 736: 3, 7117: 1}), size=2)
    assert len(vocab) == 6 + 2
    ids = vocab.encode("a red circle")   # 320 736 7117 in open_clip's BPE
    assert ids[:2] == [6, 7] and ids[2] == UNK
    assert vocab.decode(ids) == "a red"
    vocab.save(tmp_path / "v.json")
    assert Vocab.load(tmp_path / "v.json").encode("a red circle") == ids
    full = Vocab.build(Counter(), size=0)
    assert full.decode(full.encode("a blue star on the left")) == "a blue star on the left"


# ---- sequences -------------------------------------------------------------------------

def test_a_pair_puts_its_text_first_or_last_at_random_and_images_get_query_slots():
    vocab = Vocab.build(Counter(), 0)
    orders = set()
    for seed in range(12):
        seq = data.build_sequence([None, "a red circle"], vocab, 4, 64, np.random.default_rng(seed))
        assert seq.tokens[0] == BOS and seq.tokens[-1] == EOS and seq.images == 1
        start = seq.tokens.index(IMG)
        assert seq.tokens[start:start + 6] == [IMG, PAD, PAD, PAD, PAD, END_IMG]
        assert seq.slots[start + 1:start + 5] == [(0, 0), (0, 1), (0, 2), (0, 3)]
        orders.add("image first" if start == 1 else "text first")
    assert orders == {"image first", "text first"}


def test_a_document_keeps_its_order_and_truncation_never_splits_an_image():
    vocab = Vocab.build(Counter(), 0)
    texts = ["one", None, "two", None, "three"]
    seq = data.build_sequence(texts, vocab, 4, 64, np.random.default_rng(0))
    assert [i for i, _ in seq.slots if i >= 0] == [0] * 4 + [1] * 4
    assert seq.tokens.index(IMG) < seq.tokens.index(IMG, seq.tokens.index(END_IMG))
    short = data.build_sequence(texts, vocab, 4, 9, np.random.default_rng(0))
    assert len(short.tokens) == 9 and short.images == 1 and END_IMG in short.tokens
    assert [q for i, q in short.slots if i >= 0] == [0, 1, 2, 3]   # the second image did not fit at all


# ---- index and schedule ----------------------------------------------------------------

def test_the_index_covers_every_sample_and_lines_up_with_the_features(indexed, sample_dir):
    index, _, reader = indexed
    rows = json.loads((sample_dir / "_manifest.json").read_text())["rows"]
    assert len(index) == rows and index.feature_shape == [37, 192] and index.precision == "bf16"
    for sample in range(0, len(index), 7):
        texts = reader.texts(sample)
        features = reader.image_features(sample)
        assert features.shape == (sum(t is None for t in texts), 37, 192)
        assert np.isfinite(features).all()
    chunks = {}
    for sample in np.flatnonzero(index.source == registry.kind_id("yt_storyboard")):
        video = reader.key(int(sample)).split(":")[1]
        chunks.setdefault(video, set()).add(bool(index.heldout[sample]))
    assert all(len(sides) == 1 for sides in chunks.values())   # a video sits on one side only


def test_features_of_another_corpus_are_refused(sample_dir, sample_features, tmp_path):
    other = Path(shutil.copytree(sample_dir, tmp_path / "corpus"))
    (other / "_manifest.json").write_text(
        (other / "_manifest.json").read_text().replace('"data/laion-00000', '"data/other-00000'))
    with pytest.raises(data.DataError, match="no features"):
        data.build_index(other, sample_features, DATA)
    with pytest.raises(data.DataError, match="finished emu-data"):
        data.build_index(sample_dir, tmp_path / "nothing", DATA)


def test_the_schedule_is_a_function_of_the_seed_and_follows_the_weights(indexed):
    index, _, _ = indexed
    weights = {"laion": 3.0, "mmc4": 1.0, "webvid": 0.0}
    first = [next(iter_) for iter_ in [data.draws(index, weights, seed=1)] for _ in range(4000)]
    again = [next(iter_) for iter_ in [data.draws(index, weights, seed=1)] for _ in range(4000)]
    other = [next(iter_) for iter_ in [data.draws(index, weights, seed=2)] for _ in range(4000)]
    assert first == again and first != other
    sources = Counter(registry.kind_names()[index.source[s]] for s in first)
    assert set(sources) == {"laion", "mmc4"}
    assert 2.6 < sources["laion"] / sources["mmc4"] < 3.4
    assert not index.heldout[first].any()
    lengths = index.lengths(SMALL.queries, DATA.seq_len)
    rows = data.pack(iter(first), lengths, DATA.seq_len)
    for row in [next(rows) for _ in range(50)]:
        assert sum(lengths[s] for _, s in row) <= DATA.seq_len or len(row) == 1


def test_loader_workers_and_a_late_start_give_the_same_batches(indexed, sample_dir, sample_features):
    index, vocab, _ = indexed
    make = lambda workers, start: data.PackedBatches(  # noqa: E731
        index, sample_dir, sample_features, vocab, DataConfig(**{**DATA.__dict__, "workers": workers}),
        SMALL.queries, seed=0, start=start)
    serial = [b for _, b in zip(range(6), data.loader(make(0, 0)))]
    parallel = [b for _, b in zip(range(6), data.loader(make(2, 0)))]
    late = [b for _, b in zip(range(2), data.loader(make(0, 4)))]
    for a, b in zip(serial, parallel):
        assert all(torch.equal(a[k], b[k]) for k in a)
    for a, b in zip(serial[4:], late):
        assert all(torch.equal(a[k], b[k]) for k in a)
    batch = serial[0]
    assert batch["tokens"].shape == (DATA.batch_size, DATA.seq_len)
    assert int((batch["slot_image"] >= 0).sum()) == SMALL.queries * batch["features"].shape[0]


# ---- the objective and generation ---------------------------------------------------------

def _model(vocab, index, seed=0):
    shape = index.feature_shape
    return emu.build(SMALL, len(vocab), (np.zeros(shape, np.float32), np.ones(shape, np.float32)),
                     DATA.seq_len, seed)


def _first_batch(indexed, sample_dir, sample_features, rows=2):
    index, vocab, reader = indexed
    planned = data.plan_rows(index, DATA, SMALL.queries, seed=0)
    arrays = data.collate([next(planned) for _ in range(rows)], reader, vocab, SMALL.queries, DATA.seq_len, 0)
    arrays.pop("samples")
    return emu.Batch(**{k: torch.from_numpy(v) for k, v in arrays.items()})


def test_the_loss_has_one_visual_target_per_query_and_text_targets_skip_slots(indexed, sample_dir, sample_features):
    index, vocab, _ = indexed
    batch = _first_batch(indexed, sample_dir, sample_features)
    model = _model(vocab, index)
    losses = model(batch)
    images = batch.features.shape[0]
    assert losses.visual_targets == SMALL.queries * images     # [IMG]->z1 and zk->z(k+1), k < Q
    tokens = batch.tokens
    is_text = (batch.slot_image < 0) & (tokens != PAD) & (tokens != BOS)
    # every text position after the first has its predecessor predict it, unless that is a slot
    expected = int((is_text[:, 1:] & (batch.slot_image[:, :-1] < 0)).sum())
    assert losses.text_targets == expected
    assert torch.isfinite(losses.loss) and losses.text_ce > 0 and losses.visual_mse > 0
    assert _model(vocab, index)(batch).loss == losses.loss        # the seeded init is reproducible


def test_the_text_conditioned_z1_term_carries_image_start_weight(indexed, sample_dir, sample_features):
    """visual_mse = (w * n1 * a + n_rest * b) / (w * n1 + n_rest): a, the mean error of the z1
    targets ([IMG] -> z1), b of the continuations, w = image_start_weight."""
    index, vocab, _ = indexed
    batch = _first_batch(indexed, sample_dir, sample_features)
    model = _model(vocab, index)

    def mse(weight):
        model.config = ModelConfig(**{**SMALL.__dict__, "image_start_weight": weight})
        return float(model(batch).visual_mse.detach())

    a, b = mse(1e9), mse(0.0)          # the z1 terms alone, the continuations alone
    n1 = batch.features.shape[0]
    n_rest = n1 * (SMALL.queries - 1)
    for w in (1.0, 32.0):
        assert mse(w) == pytest.approx((w * n1 * a + n_rest * b) / (w * n1 + n_rest), rel=1e-4)
    assert a != pytest.approx(b)
    with pytest.raises(ConfigError):
        ModelConfig(image_start_weight=-1)


def test_regression_targets_are_detached(indexed, sample_dir, sample_features):
    """The l2 term moves the causal transformer only through the LM's inputs, never by pulling
    the target toward the prediction: with the LM's input path cut, its gradient is zero."""
    index, vocab, _ = indexed
    batch = _first_batch(indexed, sample_dir, sample_features)
    model = _model(vocab, index)
    model.config = ModelConfig(**{**SMALL.__dict__, "regression_weight": 1.0})
    original = model.inputs
    model.inputs = lambda b: (original(b)[0].detach(), original(b)[1])
    model(batch).visual_mse.backward()
    assert all(p.grad is None or not p.grad.any() for p in model.visual.parameters())
    assert model.regress.weight.grad.abs().sum() > 0


def test_a_packed_sample_computes_what_it_computes_alone(indexed, sample_dir, sample_features):
    """Packing changes no sample: attention stays inside the sample and its positions restart at
    its <bos>, so each sample's hidden states equal those of the sample run by itself (which is
    how eval and generation see a prompt)."""
    index, vocab, _ = indexed
    batch = _first_batch(indexed, sample_dir, sample_features, rows=16)
    model = _model(vocab, index).eval()
    positions, mask = emu.sample_layout(batch.tokens)
    with torch.no_grad():
        x, _ = model.inputs(batch)
        packed = model.hidden(x, positions=positions, mask=mask)[0]
        checked = 0
        for row in range(batch.tokens.shape[0]):
            starts = (batch.tokens[row] == BOS).nonzero().flatten().tolist()
            for start, end in zip(starts, starts[1:] + [batch.tokens.shape[1]]):
                assert positions[row, start:end].tolist() == list(range(end - start))
                alone = model.hidden(x[row:row + 1, start:end])[0][0]
                torch.testing.assert_close(packed[row, start:end], alone, rtol=1e-4, atol=1e-5)
                checked += start > 0
    assert checked > 0   # some sample sat behind another one in its row


def test_row_attention_lets_a_packed_sample_read_the_ones_before_it(indexed, sample_dir, sample_features):
    """model.attention "row": plain causal attention over the row (the trade-off in BENCHMARKS.md),
    so the loss differs from "sample" where rows pack several samples; an unknown mode is refused."""
    index, vocab, _ = indexed
    batch = _first_batch(indexed, sample_dir, sample_features, rows=16)
    model = _model(vocab, index).eval()
    with torch.no_grad():
        per_sample = model(batch).loss
        model.config = ModelConfig(**{**SMALL.__dict__, "attention": "row"})
        per_row = model(batch).loss
    assert per_row != pytest.approx(float(per_sample), rel=1e-4)
    with pytest.raises(ConfigError, match="attention"):
        ModelConfig(attention="document")


@pytest.mark.parametrize("attention, bos, eos", [("sample", 1, 0), ("row", 3, 2)])
def test_few_shot_demonstrations_are_laid_out_as_training_saw_several_images(attention, bos, eos):
    """Two demonstrations then the query image: in one sample under "sample" attention (the
    only way they are visible), each its own sample under "row"."""
    from types import SimpleNamespace

    from emu_data.model import evaluate

    run = SimpleNamespace(config=TrainConfig().with_overrides(model={"queries": 2, "attention": attention}),
                          vocab=SimpleNamespace(encode=lambda text: [100 + len(text)]))
    pairs = evaluate.Pairs("laion_coco", [0, 1, 2], ["a", "bb", "ccc"], np.zeros((3, 4, 8), np.float32))
    prompt = evaluate.caption_prompt(run, pairs, 0, shots=2)
    assert (prompt.tokens.count(BOS), prompt.tokens.count(EOS), prompt.tokens.count(IMG)) == (bos, eos, 3)
    assert [t for t in prompt.tokens if t >= 100] == [102, 103]      # the next two pairs' captions
    assert prompt.tokens[-4:] == [IMG, PAD, PAD, END_IMG] and len(prompt.features) == 3


def test_cached_generation_equals_a_full_forward(indexed, sample_dir, sample_features):
    from emu_data.model import evaluate

    index, vocab, _ = indexed
    model = _model(vocab, index).eval()
    prompts = [evaluate.Prompt([BOS, 6, 7, 8, IMG], [-1] * 5, [0] * 5, [np.zeros((37, 192), np.float32)]),
               evaluate.Prompt([BOS, 9, IMG], [-1] * 3, [0] * 3, [np.zeros((37, 192), np.float32)])]
    with torch.no_grad():
        generated = evaluate.greedy_text(model, prompts, torch.device("cpu"), max_tokens=5)
        for prompt, ids in zip(prompts, generated):
            tokens = list(prompt.tokens)
            for token in ids:   # each greedy choice equals the argmax of an uncached, unpadded forward
                x = model.tok_emb(torch.tensor([tokens]))
                assert int(model.logits(model.hidden(x)[0][0, -1]).argmax()) == token
                tokens.append(token)
