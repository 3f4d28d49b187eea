"""`emu-data train` / `emu-data eval` on the sample corpus and its tiny-tower features: exact
resume, refused config changes, the CLI, the report; and (slow) proof that training learns."""

import json
from pathlib import Path

import pytest

from emu_data.model import evaluate, train
from emu_data.cli import main
from emu_data.core.corpus import LayoutChanged
from emu_data.model.config import TrainConfig

TINY = TrainConfig().with_overrides(
    model={"width": 64, "depth": 2, "heads": 2, "queries": 4, "ct_width": 32, "ct_depth": 1, "ct_heads": 2},
    data={"seq_len": 96, "batch_size": 4, "holdout": 0.3, "workers": 0},
    run={"steps": 8, "checkpoint_every": 4})


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_resume_continues_the_uninterrupted_loss_curve_exactly(sample_dir, sample_features, tmp_path):
    whole = train.train(sample_dir, sample_features, tmp_path / "whole", TINY, progress=False)
    assert whole["steps"] == 8
    first = train.train(sample_dir, sample_features, tmp_path / "split", TINY, stop_after=3, progress=False)
    assert first["steps"] == 3 and len(_losses(tmp_path / "split")) == 3
    faster = TINY.with_overrides(data={"workers": 2}, run={"checkpoint_every": 2})   # speed-only changes
    second = train.train(sample_dir, sample_features, tmp_path / "split", faster, progress=False)
    assert second["resumed_from"] == 3 and second["steps"] == 8
    assert _losses(tmp_path / "split") == _losses(tmp_path / "whole")
    assert len(set(_losses(tmp_path / "whole"))) == 8   # it did train: the loss moves every step
    again = train.train(sample_dir, sample_features, tmp_path / "split", TINY, progress=False)
    assert "loss" not in again and again["steps"] == 8   # a finished run is not trained further


def test_a_run_refuses_another_config_or_other_data(sample_dir, sample_features, tmp_path, corpus_copy):
    train.train(sample_dir, sample_features, tmp_path / "run", TINY, stop_after=1, progress=False)
    with pytest.raises(LayoutChanged, match="model.width"):
        train.train(sample_dir, sample_features, tmp_path / "run",
                    TINY.with_overrides(model={"width": 32}), progress=False)
    built = json.loads((corpus_copy / "_manifest.json").read_text())
    built["shards"][0]["sha256"] = "0" * 64   # as if that shard had been rewritten
    (corpus_copy / "_manifest.json").write_text(json.dumps(built))
    with pytest.raises(LayoutChanged, match="other corpus"):
        evaluate.evaluate(tmp_path / "run", corpus_copy, sample_features)


def test_metrics_and_resolved_config_are_written(sample_dir, sample_features, tmp_path):
    train.train(sample_dir, sample_features, tmp_path / "run", TINY, stop_after=2, progress=False)
    line = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"step", "loss", "text_ce", "visual_mse", "lr", "grad_norm", "tokens_per_s", "samples_per_s"} <= set(line)
    assert line["step"] == 2 and line["lr"] > 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert TrainConfig.from_dict(saved["train"]) == TINY
    assert saved["feature_shape"] == [37, 192] and saved["vocab_size"] > 6
    assert train.learning_rate(0, 10, TINY.optim) < train.learning_rate(1, 10, TINY.optim)   # warmup
    assert train.learning_rate(9, 10, TINY.optim) < train.learning_rate(5, 10, TINY.optim)   # cosine


def test_cli_train_then_eval_writes_a_report(sample_dir, sample_features, tmp_path, capsys):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY.to_dict()))
    run = tmp_path / "run"
    args = ["--corpus", str(sample_dir), "--features", str(sample_features)]
    assert main(["train", *args, "--out", str(run), "--config", str(config), "--steps", "4"]) == 0
    assert "step 4" in capsys.readouterr().out
    assert main(["eval", "--run", str(run), *args, "--max-pairs", "6", "--shots", "0,2"]) == 0
    out = capsys.readouterr().out
    assert "| CIDEr-D, 2-shot captioning |" in out and "| text-to-image R@1 |" in out
    report = json.loads((run / "eval" / "report.json").read_text())
    assert set(report["models"]) == {"trained", "untrained", "prior"}
    for name in ("trained", "untrained"):
        metrics = report["models"][name]
        assert {"text_ce", "perplexity", "visual_mse", "visual_cosine", "cider_d_0shot", "cider_d_2shot",
                "retrieval_r1", "retrieval_r5"} <= set(metrics)
    assert report["models"]["trained"]["text_ce"] < report["models"]["untrained"]["text_ce"]
    markdown = (run / "eval" / "report.md").read_text()
    assert markdown.startswith("Eval of") and "(model.attention: sample)" in markdown
    assert report["attention"] == "sample"


def test_cli_errors_are_clear(sample_dir, sample_features, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {widht: 3}\n")
    args = ["--corpus", str(sample_dir), "--features", str(sample_features), "--out", str(tmp_path / "r")]
    assert main(["train", *args, "--config", str(bad)]) == 2
    assert "widht" in capsys.readouterr().err
    assert main(["train", "--corpus", str(sample_dir), "--features", str(tmp_path / "none"),
                 "--out", str(tmp_path / "r2")]) == 2
    assert "finished emu-data" in capsys.readouterr().err
    assert main(["eval", "--run", str(tmp_path / "never"), "--corpus", str(sample_dir),
                 "--features", str(sample_features)]) == 2


@pytest.mark.slow
@pytest.mark.timeout(1800)  # ~6-8 min on CI's two cores: setup.cfg's 600 s is too close
def test_a_few_minutes_of_cpu_training_learns_to_caption_and_retrieve(tmp_path_factory, tiny_vit, ray_session):
    """The issue's proof: on a sample corpus (captions name what is drawn) a short CPU run
    captions held-out images and finds them from their captions (text-to-image retrieval with
    the regressed embeddings) far better than the untrained model and the caption prior.
    Few-shot captioning is reported, not asserted: with each packed sample attending only to
    itself, in-context use of demonstrations has to come from the corpus's interleaved
    documents, whose text is not caption-like here (BENCHMARKS.md)."""
    from emu_data.ops import encoder, features
    from emu_data.synthetic import sample
    from emu_data.engine.stage import OutputOptions

    work = tmp_path_factory.mktemp("learns")
    corpus, feats = work / "corpus", work / "features"
    sample.make_sample(sample.SampleConfig(n=400), OutputOptions(corpus), ray_session)
    features.make_features(corpus, feats, encoder.ModelSpec(str(tiny_vit), tokens="patch", precision="bf16"),
                           features.RunOptions(batch_size=128), ray_session)
    config = TrainConfig().with_overrides(
        model={"width": 192, "depth": 3, "heads": 4, "ct_width": 128},
        # workers 0: the same batches (seeded), ~12% faster on 2 cores than a loader process
        # competing with the two torch threads
        # 800 steps: R@1 0.25 (asserted >= 0.089), CIDEr-D 2.72 (> 1.61), text CE 0.60 (< 1.28);
        # 1,000 gave more margin for 25% more time (BENCHMARKS.md); 600 is not enough (R@1 0.054)
        data={"holdout": 0.15, "workers": 0}, run={"steps": 800, "checkpoint_every": 800})
    train.train(corpus, feats, work / "run", config, progress=False)
    report = evaluate.evaluate(work / "run", corpus, feats, evaluate.EvalOptions(shots=(0, 2)))
    trained, untrained, prior = (report["models"][m] for m in ("trained", "untrained", "prior"))
    assert report["pairs"]["count"] >= 40
    assert trained["text_ce"] < 0.25 * untrained["text_ce"]
    assert trained["cider_d_0shot"] > 2 * prior["cider_d_0shot"], report
    assert trained["cider_d_0shot"] > untrained["cider_d_0shot"] + 1.0, report
    chance = 1 / report["pairs"]["count"]   # the prior ranks at random
    assert trained["retrieval_r1"] >= 5 * chance, report
    assert trained["retrieval_r1"] >= untrained["retrieval_r1"] + 4 * chance, report
    assert trained["retrieval_r5"] >= 2 * max(prior["retrieval_r5"], untrained["retrieval_r5"]), report

