"""The table a finished run ends with, read back from what the stages wrote (so a rerun that
skipped every stage prints the same table)."""

from __future__ import annotations

import json
from pathlib import Path

from emu_data.core import manifest
from emu_data.pipeline.stages import PlannedStage

# The glance at whether the corpus trains; few-shot rows stay in the eval report (under the
# default per-sample attention they measure the corpus's interleaved documents, not learning).
EVAL_METRICS = (("text_ce", "held-out text CE"), ("cider_d_0shot", "CIDEr-D 0-shot"),
                ("retrieval_r1", "text-to-image R@1"), ("retrieval_r5", "text-to-image R@5"))


def summarize(stages: list[PlannedStage]) -> str:
    sections = [_corpora(stages), _features(stages), _validation(stages), _training(stages), _evaluation(stages),
                _exports(stages), _outputs(stages)]
    return "\n\n".join(s for s in sections if s)


def _corpora(stages) -> str:
    from emu_data.commands import all_commands

    corpus_commands = {c.name for c in all_commands().values() if c.makes_corpus}
    rows = []
    for s in stages:
        if s.command in corpus_commands and s.out and (s.out / manifest.MANIFEST_NAME).exists():
            m = manifest.read(s.out)
            sources = ", ".join(f"{k} {v}" for k, v in m.get("source_counts", {}).items())
            status = ", ".join(f"{k} {v}" for k, v in m.get("status_counts", {}).items())
            rows.append((s.name, str(m["rows"]), sources, status, filters_cell(s.out)))
    header = ("corpus", "samples", "samples per source", "status of every input", "filters")
    if any(row[-1] for row in rows):
        rows = [(*row[:-1], row[-1] or "-") for row in rows]
    else:   # no filter took anything: the table stays as it was
        header, rows = header[:-1], [row[:-1] for row in rows]
    return _table(header, rows)


def filters_cell(out: Path) -> str:
    """What the quality filters of a corpus stage took, in one cell ("" when nothing): the
    sources' counts from its shards' meta and status columns, never their images."""
    from emu_data.inspect import stats

    described = ((source, stats.describe_filters(f)) for source, f in sorted(stats.compute_filters(out).items()))
    described = [(source, text) for source, text in described if text]
    if len(described) == 1:   # the usual case: its filters' names already say which source it is
        return described[0][1]
    return "; ".join(f"{source}: {text}" for source, text in described)


def _features(stages) -> str:
    rows = []
    for s in stages:
        if s.command == "features" and s.out and (s.out / manifest.MANIFEST_NAME).exists():
            m = manifest.read(s.out)
            layout = m["config"]["features"]
            shape = _feature_shape(s.out)
            weights = "RANDOM INIT" if layout["pretrained"] in (None, "none") else layout["pretrained"]
            rows.append((s.name, str(m["rows"]), shape, f"{layout['model']} ({weights}), {layout['tokens']}, "
                                                         f"{layout['precision']}"))
    return _table(("features", "images", "shape", "encoder"), rows)


def _feature_shape(out: Path) -> str:
    """The embedding shape and dtype a feature shard's schema metadata records."""
    from emu_data.core.corpus import shard_paths
    from emu_data.core.shards import read_shard

    paths = shard_paths(out, "data")
    meta = (read_shard(paths[0]).schema.metadata or {}) if paths else {}
    return f"{meta[b'shape'].decode()} {meta.get(b'dtype', b'').decode()}".strip() if b"shape" in meta else "-"


def _validation(stages) -> str:
    checked = [f"{s.name}: {' '.join(a for a in s.argv if not a.startswith('-'))}" for s in stages
               if s.command == "validate"]
    return "validated (no violations): " + "; ".join(checked) if checked else ""


def _training(stages) -> str:
    rows = []
    for s in stages:
        metrics = s.out / "metrics.jsonl" if s.command == "train" and s.out else None
        if metrics and metrics.exists() and metrics.stat().st_size:
            last = json.loads(metrics.read_text().splitlines()[-1])
            rows.append((s.name, str(last["step"]), f"{last['loss']:.3f}", f"{last['text_ce']:.3f}",
                         f"{last['visual_mse']:.4f}"))
    return _table(("training", "step", "loss", "text CE", "visual MSE"), rows)


def _evaluation(stages) -> str:
    for s in stages:
        report = _eval_report(s)
        if report and report.exists():
            data = json.loads(report.read_text())
            models = list(data["models"])
            rows = [(label, *(_number(data["models"][m].get(key)) for m in models)) for key, label in EVAL_METRICS]
            return _table(("eval", *models), rows)
    return ""


def _eval_report(stage: PlannedStage) -> Path | None:
    if stage.command != "eval" or "--run" not in stage.argv:
        return None
    return Path(stage.argv[stage.argv.index("--run") + 1]) / "eval" / "report.json"


def _exports(stages) -> str:
    from emu_data.ops import featurerows

    rows = []
    for s in stages:
        if s.command == "export" and s.out and (s.out / manifest.MANIFEST_NAME).exists():
            m = manifest.read(s.out)
            encoder = m["config"].get("features_encoder")
            left = ", ".join(f"{k} {v}" for k, v in m["status_counts"].items()) or "none"
            rows.append((s.name, m["config"]["export"]["format"], str(m["rows"]), str(len(m["shards"])),
                         f"{sum(x['bytes'] for x in m['shards']) / 2**20:.1f} MB", left,
                         featurerows.short(encoder) if encoder else "-"))
    return _table(("export", "format", "samples", "shards", "size", "not written", "embeddings"), rows)


def _outputs(stages) -> str:
    lines = []
    for s in stages:
        if s.command == "preview" and s.out:
            lines.append(f"preview:     {s.out}")
        report = _eval_report(s)
        if report:
            lines.append(f"eval report: {report.with_suffix('.md')}")
    return "\n".join(lines)


def _number(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _table(header: tuple, rows: list[tuple]) -> str:
    if not rows:
        return ""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(tuple("-" * w for w in widths)), *map(line, rows)])
