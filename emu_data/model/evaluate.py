"""`emu-data eval`: a trained run against its untrained initialisation and a caption prior.

On the run's held-out samples (a hash of the key, fixed at training time):
- text CE and perplexity, visual regression MSE and cosine (teacher-forced, every source);
- zero- and few-shot captioning (k = 0, 2, 4 interleaved demonstrations, as Emu's few-shot
  table) on held-out image-text pairs, greedy, scored with CIDEr-D against the pair's text;
- text-to-image retrieval: from "<bos> caption [IMG]" the model regresses z1..z32
  autoregressively (each prediction fed back as the next input, as Emu generates), and the
  true image must rank first (R@1) / in the top 5 (R@5) among all pairs' images by cosine.
  A stand-in for generation quality: there is no image decoder here.
Baselines: the same model at its seeded initialisation ("untrained"), and a caption prior
that always answers the most frequent training caption and ranks images at random.

The report goes to RUN/eval/report.json and report.md (a markdown table).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from emu_data import sources
from emu_data.model import train
from emu_data.model import cider, data, emu
from emu_data.model.tokenizer import BOS, END_IMG, EOS, IMG, PAD
from emu_data.model.config import EvalOptions  # noqa: F401  (defined with the other option sets)


def pair_kinds() -> list[str]:
    """Record sources read as caption/retrieval pairs, best first (the registry's pair_rank:
    clean captions before alt text)."""
    ranked = [k for k in sources.kinds() if k.pair_rank is not None]
    return [k.name for k in sorted(ranked, key=lambda k: k.pair_rank)]


@dataclass
class Pairs:
    """Held-out samples with one image and one text: their ids, texts and features."""

    source: str
    samples: list[int]
    captions: list[str]
    features: np.ndarray   # [N, T, E]


def evaluate(run_dir: Path, corpus: Path, features: Path, options: EvalOptions = EvalOptions()) -> dict:
    run = train.load(run_dir, corpus, features)
    if not run.paths.checkpoint.exists():
        raise FileNotFoundError(f"{run_dir}: no checkpoint yet (train first)")
    device = train.device_of(options.device)
    reader = data.SampleReader(run.index, Path(corpus), Path(features))
    trained = run.model()
    step = train.load_checkpoint(run.paths.checkpoint, trained)
    pairs = heldout_pairs(run.index, reader, options.max_pairs)
    models = {"trained": trained, "untrained": run.model()}
    report = {"run": str(run_dir), "step": step, "heldout_samples": int(run.index.heldout.sum()),
              "pairs": {"source": pairs.source if pairs else None, "count": len(pairs.samples) if pairs else 0},
              "shots": list(options.shots), "attention": run.config.model.attention,
              "options": asdict(options), "models": {}}
    with torch.no_grad():
        for name, model in models.items():
            model.to(device).eval()
            report["models"][name] = {**heldout_loss(model, run, reader, device, options),
                                      **(_pair_metrics(model, run, pairs, device, options) if pairs else {})}
    if pairs:
        report["models"]["prior"] = prior_baseline(run, reader, pairs, options)
    write_report(run.paths.out / "eval", report)
    return report


# ---- held-out loss ---------------------------------------------------------------------------

def heldout_loss(model: emu.Emu, run: train.Run, reader: data.SampleReader, device, options) -> dict:
    cfg = run.config
    rows = list(data.heldout_rows(run.index, cfg.data, cfg.model.queries))
    sums = Counter()
    for batch_rows in data.batches_of(iter(rows), options.batch_size):
        arrays = data.collate(batch_rows, reader, run.vocab, cfg.model.queries, cfg.data.seq_len, cfg.run.seed)
        arrays.pop("samples")
        losses = model(emu.Batch(**{k: torch.from_numpy(v) for k, v in arrays.items()}).to(device))
        sums["ce"] += losses.text_ce.item() * losses.text_targets
        sums["text"] += losses.text_targets
        sums["mse"] += losses.visual_mse.item() * losses.visual_targets
        sums["cos"] += losses.visual_cosine.item() * losses.visual_targets
        sums["visual"] += losses.visual_targets
    ce = sums["ce"] / max(1, sums["text"])
    return {"text_ce": ce, "perplexity": math.exp(min(ce, 50)),
            "visual_mse": sums["mse"] / max(1, sums["visual"]),
            "visual_cosine": sums["cos"] / max(1, sums["visual"])}


# ---- pairs ------------------------------------------------------------------------------------

def heldout_pairs(index: data.Index, reader: data.SampleReader, limit: int) -> Pairs | None:
    """Up to `limit` held-out one-image-one-text samples of the best pair source present."""
    for name in pair_kinds():
        mask = index.heldout & (index.source == sources.kind_id(name)) & (index.images == 1) & (index.texts == 1)
        chosen = np.flatnonzero(mask)[:limit].tolist()
        if len(chosen) >= 2:
            captions = [next(t for t in reader.texts(s) if t is not None) for s in chosen]
            return Pairs(name, chosen, captions, np.concatenate([reader.image_features(s) for s in chosen]))
    return None


def _pair_metrics(model, run, pairs: Pairs, device, options) -> dict:
    out = {}
    for k in options.shots:
        generated = caption_pairs(model, run, pairs, k, device, options)
        out[f"cider_d_{k}shot"] = _cider(generated, pairs.captions)
    out.update(retrieval(model, run, pairs, device, options))
    return out


def _cider(generated: list[str], references: list[str]) -> float:
    score, _ = cider.cider_d({str(i): g for i, g in enumerate(generated)},
                             {str(i): [r] for i, r in enumerate(references)})
    return score


def prior_baseline(run: train.Run, reader: data.SampleReader, pairs: Pairs, options) -> dict:
    """The most frequent training caption for every image; a random ranking for retrieval
    (exact expectation: R@k = k / N)."""
    index, source = run.index, sources.kind_id(pairs.source)
    train_pairs = np.flatnonzero(~index.heldout & (index.source == source) & (index.images == 1) & (index.texts == 1))
    counts = Counter(next(t for t in reader.texts(s) if t is not None) for s in train_pairs.tolist())
    common = min(counts.items(), key=lambda item: (-item[1], item[0]))[0] if counts else ""
    score = _cider([common] * len(pairs.captions), pairs.captions)
    n = len(pairs.samples)
    return {**{f"cider_d_{k}shot": score for k in options.shots},
            "retrieval_r1": 1 / n, "retrieval_r5": min(5, n) / n, "prior_caption": common}


# ---- generation -------------------------------------------------------------------------------

@dataclass
class Prompt:
    tokens: list[int]
    slot_image: list[int]   # index into the prompt's own features, -1 for tokens
    slot_query: list[int]
    features: list[np.ndarray]


def _image(prompt: Prompt, features: np.ndarray, queries: int, close: bool = True) -> None:
    n = len(prompt.features)
    prompt.tokens += [IMG] + [PAD] * queries + ([END_IMG] if close else [])
    prompt.slot_image += [-1] + [n] * queries + ([-1] if close else [])
    prompt.slot_query += [0] + list(range(queries)) + ([0] if close else [])
    prompt.features.append(features)


def _text(prompt: Prompt, ids: list[int]) -> None:
    prompt.tokens += ids
    prompt.slot_image += [-1] * len(ids)
    prompt.slot_query += [0] * len(ids)


def caption_prompt(run, pairs: Pairs, i: int, shots: int) -> Prompt:
    """k demonstrations (the next k pairs, cyclically), then the query image, laid out as the
    model saw several images in training (model.attention): interleaved in one sample,
    <bos> [IMG] z [/IMG] caption ... [IMG] z [/IMG] -> caption, where a sample sees only
    itself; each its own sample, <bos> [IMG] z [/IMG] caption <eos> ... <bos> [IMG] z [/IMG],
    where samples read the ones packed before them."""
    queries, prompt = run.config.model.queries, Prompt([], [], [], [])
    separate = run.config.model.attention == "row"
    _text(prompt, [BOS])
    for j in [(i + d) % len(pairs.samples) for d in range(1, shots + 1)]:
        _image(prompt, pairs.features[j], queries)
        _text(prompt, run.vocab.encode(pairs.captions[j]) + ([EOS, BOS] if separate else []))
    _image(prompt, pairs.features[i], queries)
    return prompt


def caption_pairs(model, run, pairs: Pairs, shots: int, device, options) -> list[str]:
    out = []
    for start in range(0, len(pairs.samples), options.batch_size):
        prompts = [caption_prompt(run, pairs, i, shots)
                   for i in range(start, min(start + options.batch_size, len(pairs.samples)))]
        out += [run.vocab.decode(ids) for ids in greedy_text(model, prompts, device, options.max_caption_tokens)]
    return out


def _left_padded(prompts: list[Prompt], device) -> tuple[emu.Batch, torch.Tensor, torch.Tensor]:
    """Prompts left-padded into one batch; returns it with positions and the key-valid mask."""
    width = max(len(p.tokens) for p in prompts)
    tokens = torch.full((len(prompts), width), PAD, dtype=torch.long)
    slot_image = torch.full_like(tokens, -1)
    slot_query = torch.zeros_like(tokens)
    valid = torch.zeros_like(tokens, dtype=torch.bool)
    features, base = [], 0
    for b, p in enumerate(prompts):
        n = len(p.tokens)
        tokens[b, width - n:] = torch.tensor(p.tokens)
        slot_image[b, width - n:] = torch.tensor([i + base if i >= 0 else -1 for i in p.slot_image])
        slot_query[b, width - n:] = torch.tensor(p.slot_query)
        valid[b, width - n:] = True
        features += p.features
        base += len(p.features)
    batch = emu.Batch(tokens, slot_image, slot_query, torch.from_numpy(np.stack(features)))
    positions = (valid.cumsum(1) - 1).clamp(min=0)
    return batch.to(device), positions.to(device), valid.to(device)


def _prefix_mask(valid: torch.Tensor) -> torch.Tensor:
    """Causal and not padding; a padding query attends to itself so no row is empty (NaN)."""
    n = valid.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool, device=valid.device).tril()
    mask = causal & valid[:, None, :]
    return (mask | torch.eye(n, dtype=torch.bool, device=valid.device))[:, None]


def _run_prefix(model, prompts, device):
    batch, positions, valid = _left_padded(prompts, device)
    x, _ = model.inputs(batch)
    h, caches = model.hidden(x, positions=positions, mask=_prefix_mask(valid))
    return h[:, -1:], caches, positions[:, -1:], valid


def _step(model, x, caches, positions, valid):
    """One more position for every row (cached keys/values of the earlier ones)."""
    valid = torch.cat([valid, torch.ones_like(valid[:, :1])], dim=1)
    h, caches = model.hidden(x, positions=positions, mask=valid[:, None, None, :], caches=caches)
    return h, caches, valid


def greedy_text(model, prompts: list[Prompt], device, max_tokens: int) -> list[list[int]]:
    h, caches, positions, valid = _run_prefix(model, prompts, device)
    out = torch.zeros(len(prompts), 0, dtype=torch.long, device=device)
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    for _ in range(max_tokens):
        next_id = model.logits(h[:, -1]).argmax(-1)
        out = torch.cat([out, next_id[:, None]], dim=1)
        done |= next_id == EOS
        if done.all():
            break
        positions = positions + 1
        h, caches, valid = _step(model, model.tok_emb(next_id)[:, None], caches, positions, valid)
    return [_until_eos(row) for row in out.tolist()]


def _until_eos(ids: list[int]) -> list[int]:
    return ids[:ids.index(EOS)] if EOS in ids else ids


def retrieval(model, run, pairs: Pairs, device, options) -> dict:
    """Regress each caption's image (z1..zQ, autoregressively) and rank every pair's true z by
    cosine, both centred on the mean true z."""
    queries = run.config.model.queries
    true = model.visual(torch.from_numpy(pairs.features).to(device)).flatten(1)
    predicted = []
    for start in range(0, len(pairs.samples), options.batch_size):
        prompts = []
        for caption in pairs.captions[start:start + options.batch_size]:
            prompt = Prompt([], [], [], [pairs.features[0]])   # a features placeholder: no slot uses it
            _text(prompt, [BOS] + run.vocab.encode(caption) + [IMG])
            prompts.append(prompt)
        predicted.append(regress_image(model, prompts, device, queries))
    # Centred on the candidates' mean: every image's z shares a large common part (the learned
    # queries), and plain cosine would rank by how close an image is to that common part.
    centre = true.mean(0, keepdim=True)
    normalize = torch.nn.functional.normalize
    scores = normalize(torch.cat(predicted) - centre, dim=-1) @ normalize(true - centre, dim=-1).t()
    rank = (scores > scores.diagonal()[:, None]).sum(1)   # images scored above the true one
    return {"retrieval_r1": float((rank < 1).float().mean()), "retrieval_r5": float((rank < 5).float().mean())}


def regress_image(model, prompts: list[Prompt], device, queries: int) -> torch.Tensor:
    """[B, queries * width]: z1 from the prompt's last position, then each z fed back in."""
    h, caches, positions, valid = _run_prefix(model, prompts, device)
    out = []
    for k in range(queries):
        z = model.regress(h[:, -1])
        out.append(z)
        if k + 1 < queries:
            positions = positions + 1
            h, caches, valid = _step(model, z[:, None], caches, positions, valid)
    return torch.cat(out, dim=1)


# ---- the report -------------------------------------------------------------------------------

ROWS = (("text_ce", "held-out text CE (lower is better)"), ("perplexity", "held-out perplexity"),
        ("visual_mse", "visual regression MSE"), ("visual_cosine", "visual regression cosine"),
        ("retrieval_r1", "text-to-image R@1"), ("retrieval_r5", "text-to-image R@5"))


def markdown(report: dict) -> str:
    models = list(report["models"])
    rows = list(ROWS[:4]) + [(f"cider_d_{k}shot", f"CIDEr-D, {k}-shot captioning") for k in report["shots"]] \
        + list(ROWS[4:])
    lines = [f"Eval of {report['run']} at step {report['step']}: {report['heldout_samples']} held-out samples, "
             f"{report['pairs']['count']} {report['pairs']['source']} pairs for captioning and retrieval.", "",
             "| metric | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for key, label in rows:
        cells = [_cell(report["models"][m].get(key)) for m in models]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "CIDEr-D's IDF comes from these references only: not comparable with published COCO numbers.",
              "Retrieval ranks the regressed embedding (no image decoder): a stand-in for generation quality."]
    if report.get("attention") == "sample" and any(report["shots"]):
        lines.append("Few-shot demonstrations share the query image's sample (model.attention: sample): "
                     "in-context captioning is learned only from the corpus's interleaved documents.")
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if abs(value) < 1000 else f"{value:.3g}"


def write_report(directory: Path, report: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    train.write_json_atomic(directory / "report.json", report)
    (directory / "report.md").write_text(markdown(report))
