"""Every `emu-data` command: its options (dataclasses whose fields are options) and what it runs.

The CLI (cli.py) turns these into argparse parsers; a recipe (pipeline/) plans and runs the
same commands without argparse internals and without going through cli.py. A source's
command comes from the source registry (emu_data.sources): registering a source adds its
command and its recipe stage.

Each command's `params()` imports what it needs only when that command is used, so
`emu-data stats` does not import torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from emu_data import sources as registry
from emu_data.core.options import Params, option, positive_int

# How a command's output is placed when a recipe runs it: a directory (--out RUN/<stage>),
# an HTML file (--out RUN/<stage>.html), or nothing (it reads and reports).
DIRECTORY, FILE, NONE = "directory", "file", "none"


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    params: Callable[[], tuple[Params, ...]]
    execute: Callable[[dict], int]       # built option objects by Params name -> exit code
    writes: str = DIRECTORY
    makes_corpus: bool = False           # its output is a corpus (the run summary's first table)
    description: str = ""
    epilog: str = ""


# ---- small option sets of commands without a library config ------------------------------------

@dataclass(frozen=True)
class CorpusPath:
    path: Path = option(positional=True, parse=Path, metavar="PATH", help="a finished corpus directory")


@dataclass(frozen=True)
class FeaturesCorpus:
    corpus: Path = option(positional=True, parse=Path, metavar="CORPUS", help="a finished corpus directory")


@dataclass(frozen=True)
class Json:
    json: bool = option(False, help="print JSON instead of a table")


@dataclass(frozen=True)
class PreviewOptions:
    out: Path = option(parse=Path, required=True, help="HTML file to write")
    n: int = option(20, parse=positive_int, help="samples to show")


@dataclass(frozen=True)
class ValidateOptions:
    paths: list = option(positional=True, many=True, required=True, parse=Path, metavar="PATH",
                         help="corpus or features directory (or a folder of them)")
    deep: bool = option(False, help="fully decode every image (default: a sample per shard)")
    corpus: Path | None = option(None, parse=Path, metavar="CORPUS",
                                 help="corpus a features directory is checked against (default: the one its "
                                      "manifest names)")
    json: bool = option(False, help="print the report as JSON")
    max_lines: int = option(200, parse=int, help="violation lines to print")
    spill_dir: Path | None = option(None, parse=Path, metavar="DIR",
                                    help="folder for the key check's temporary files (default: the system temp "
                                         "dir; on a cluster, a folder every node sees; never the validated one)")


@dataclass(frozen=True)
class DoctorOptions:
    probe: bool = option(False, help="also open a TCP connection to each proxy (nothing is sent through it)")
    json: bool = option(False, help="print JSON")


@dataclass(frozen=True)
class RetryFailed:
    retry_failed: bool = option(False, help="rerun committed units that hold a retryable failure (timeouts, "
                                                 "5xx, rate limits: the source's list)")


# ---- shared pieces -------------------------------------------------------------------------------

def _output_params():
    from emu_data.engine.stage import OutputOptions

    return Params("output", OutputOptions, "output")


def _ray_params(*extra: str):
    from emu_data.engine.runtime import RayOptions

    return Params("ray", RayOptions, "parallelism (Ray)", only=("address", "num_cpus", *extra))


def _report(out, result) -> None:
    m = result.manifest
    state = "already complete, nothing to do" if result.reused else \
        f"{result.ran_units} unit(s) run, {result.skipped_units} kept"
    print(f"wrote {out}: {m['rows']} samples in {len(m['shards'])} shard(s) ({state})")
    print("  status: " + ", ".join(f"{s} {n}" for s, n in m["status_counts"].items()))


# ---- a source's command ----------------------------------------------------------------------------

def source_command(source: registry.Source) -> Command:
    def params():
        retry = (Params("stage", RetryFailed, "what to take"),) if source.retryable else ()
        return (Params("inputs", source.inputs), Params("config", source.config, "what to take"), *retry,
                *source.extras, _output_params(), _ray_params(*source.ray_options))

    def execute(values: dict) -> int:
        from emu_data.engine.stage import run_source

        if source.configure is not None:
            values = source.configure(values)
        extras = {p.name: values[p.name] for p in source.extras}
        items = source.resolve(values["inputs"], **extras)
        retry = values["stage"].retry_failed if "stage" in values else False
        result = run_source(source, values["config"], items, values["output"], values["ray"], retry, **extras)
        _report(values["output"].out, result)
        return 0

    return Command(source.name, source.help, params, execute, makes_corpus=True,
                   description=source.description, epilog=source.epilog)


# ---- sample ----------------------------------------------------------------------------------------

def _sample_params():
    from emu_data.synthetic.sample import SampleConfig

    return Params("config", SampleConfig), _output_params(), _ray_params()


def _sample(values: dict) -> int:
    from emu_data.synthetic import sample

    result = sample.make_sample(values["config"], values["output"], values["ray"])
    m = result.manifest
    state = "already complete, nothing to do" if result.reused else f"{result.ran_units} unit(s) run"
    print(f"wrote {values['output'].out}: {m['rows']} samples in {len(m['shards'])} shard(s) ({state})")
    print("  by source: " + ", ".join(f"{s} {n}" for s, n in m["source_counts"].items()))
    return 0


# ---- mix -------------------------------------------------------------------------------------------

def _mix_params():
    from emu_data.ops import mix

    return (Params("inputs", mix.MixInputs), Params("weights", mix.Weights), Params("config", mix.MixConfig),
            _output_params(), _ray_params())


def _mix(values: dict) -> int:
    from emu_data.ops import mix

    weights = values["weights"].resolve()
    config = replace(values["config"], weights=weights)
    result, _ = mix.make_mix(values["inputs"].inputs, config, values["output"], values["ray"])
    _report(values["output"].out, result)
    total = sum(result.manifest["source_counts"].values()) or 1
    print("  share:  " + ", ".join(f"{s} {n / total:.1%} (weight {weights.get(s, 0):g})"
                                   for s, n in result.manifest["source_counts"].items()))
    return 0


# ---- features ----------------------------------------------------------------------------------------

def _features_params():
    from emu_data.ops import encoder, features
    from emu_data.engine.stage import OutputOptions

    return (Params("corpus", FeaturesCorpus), Params("output", OutputOptions, only=("out", "overwrite")),
            Params("spec", encoder.ModelSpec, "model"), Params("run", features.RunOptions, "speed"),
            _ray_params())


def _features(values: dict) -> int:
    from emu_data.ops import features

    corpus, out, spec = values["corpus"].corpus, values["output"].out, values["spec"]
    built = features.make_features(corpus, out, spec, values["run"], values["ray"],
                                   overwrite=values["output"].overwrite)
    print(f"wrote {out}: {built['rows']} embeddings in {len(built['shards'])} shard(s), aligned with {corpus}")
    if built["shards"]:
        print(f"  {spec.model} ({'RANDOM INIT' if spec.random_init else spec.pretrained}), {spec.tokens}, "
              f"{spec.precision}")
    return 0


# ---- export ------------------------------------------------------------------------------------------

def _export_params():
    from emu_data.ops import export

    return (Params("corpus", FeaturesCorpus), Params("options", export.ExportOptions, "format"),
            _output_params(), _ray_params())


def _export(values: dict) -> int:
    from emu_data.ops import export

    corpus, output = values["corpus"].corpus, values["output"]
    result = export.export(corpus, output, values["options"], values["ray"])
    built = result.manifest
    print(f"wrote {output.out}: {built['rows']} samples of {corpus} in {len(built['shards'])} "
          f"{values['options'].format} shard(s)")
    encoder_about = built["config"].get("features_encoder")
    if encoder_about:
        from emu_data.ops import featurerows

        print(f"  with each image's embedding: {featurerows.short(encoder_about)}")
    unwritable = {k: n for k, n in built["status_counts"].items() if k != "ok"}
    if unwritable:
        print(f"  not written: {', '.join(f'{k} {n}' for k, n in unwritable.items())} (status/)")
    return 0


# ---- train and eval ----------------------------------------------------------------------------------

def _train_params():
    from emu_data.model import config

    return (Params("inputs", config.TrainInputs), Params("train", config.TrainRun),
            Params("overrides", config.TrainConfig, "overrides (of the config file)", overrides=True))


def _train(values: dict) -> int:
    from emu_data.model import config as model_config

    inputs, run = values["inputs"], values["train"]
    sections: dict[str, dict] = {}
    for (section, name), value in values["overrides"].items():
        sections.setdefault(section, {})[name] = value
    config = model_config.load(run.config).with_overrides(**sections)   # a bad config: said before torch loads
    from emu_data.model import train
    try:
        summary = _train_in_processes(train, inputs, run, config)
    except train.RankFailed as e:   # one line; the rank's own traceback with -v
        import logging
        import sys

        verbose = logging.getLogger().isEnabledFor(logging.INFO)
        if e.traceback and verbose:
            print(e.traceback, file=sys.stderr)
        hint = " (its traceback: rerun with -v)" if e.traceback and e.status != 2 and not verbose else ""
        print(f"emu-data train: {e}{hint}", file=sys.stderr)
        return e.status
    if not train.Ranks.from_env().main:
        return 0   # under torchrun, rank 0 reports
    if "loss" in summary:
        print(f"trained {run.out}: step {summary['steps']} (from {summary['resumed_from']}), "
              f"loss {summary['loss']:.3f} (text CE {summary['text_ce']:.3f}, visual MSE {summary['visual_mse']:.4f})")
    else:
        print(f"{run.out} is already trained to step {summary['steps']}: nothing to do")
    print(f"  metrics: {run.out / 'metrics.jsonl'}   next: emu-data eval --run {run.out} "
          f"--corpus {inputs.corpus} --features {inputs.features}")
    return 0


def _train_in_processes(train, inputs, run, config) -> dict:
    if run.nproc_per_node == 1:
        return train.train(inputs.corpus, inputs.features, run.out, config, stop_after=run.stop_after)
    try:
        return train.launch(inputs.corpus, inputs.features, run.out, config, run.nproc_per_node,
                            stop_after=run.stop_after)
    except train.Stopped as e:
        import signal

        from emu_data.cli import Terminated

        raise (Terminated() if e.signum == signal.SIGTERM else KeyboardInterrupt()) from None


def _eval_params():
    from emu_data.model import config

    return Params("run", config.EvalRun), Params("inputs", config.TrainInputs), Params("options", config.EvalOptions)


def _eval(values: dict) -> int:
    from emu_data.model import evaluate

    run, inputs = values["run"].run, values["inputs"]
    report = evaluate.evaluate(run, inputs.corpus, inputs.features, values["options"])
    print(evaluate.markdown(report), end="")
    print(f"report: {run / 'eval' / 'report.json'}")
    return 0


# ---- validate, stats, preview ------------------------------------------------------------------------

def _validate_params():
    return Params("options", ValidateOptions), _ray_params()


def _validate(values: dict) -> int:
    from emu_data.inspect.validate import Spread, validate

    o = values["options"]
    report = validate(o.paths, deep=o.deep, corpus=o.corpus, spread=Spread(values["ray"], o.spill_dir))
    if o.json:   # violations: the first of each rule (validate.KEEP_PER_RULE); counts: all of them
        print(json.dumps({"ok": report.ok, "summary": report.summary(), "counts": dict(sorted(report.counts.items())),
                          "violations": [v.__dict__ for v in report.violations]}, indent=2))
    else:
        shown = report.violations[:max(o.max_lines, 0)]
        for v in shown:
            print(v)
        if report.total > len(shown):
            print(f"... and {report.total - len(shown)} more")
        print(report.summary())
    return 0 if report.ok else 1


def _stats(values: dict) -> int:
    from emu_data.inspect import stats

    computed = stats.compute(values["corpus"].path)
    print(json.dumps(computed.to_dict(), indent=2) if values["json"].json else stats.format_table(computed))
    return 0


def _preview(values: dict) -> int:
    from emu_data.inspect.preview import write_preview

    o = values["options"]
    shown = write_preview(values["corpus"].path, o.out, o.n)
    print(f"wrote {o.out} ({shown} samples)")
    return 0


# ---- doctor ------------------------------------------------------------------------------------------

def _doctor_params():
    from emu_data.sources.youtube.identities import IdentityOptions
    from emu_data.sources.youtube.ytdl import YtdlOptions

    return (Params("identities", IdentityOptions, "who fetches", only=("identities",)),
            Params("ytdl", YtdlOptions, "who fetches", only=("cookies", "proxy")),
            Params("options", DoctorOptions))


def _doctor(values: dict) -> int:
    from emu_data.sources.youtube import doctor, identities

    ytdl, options = values["ytdl"], values["options"]
    pool = identities.pool_of(values["identities"], ytdl.cookies, ytdl.proxy)
    found = doctor.checks(pool, probe=options.probe)
    print(doctor.as_json(found) if options.json else doctor.report(found))
    return 1 if doctor.crippled(found) else 0


# ---- run ---------------------------------------------------------------------------------------------

def _run_params():
    from emu_data.pipeline import runner

    return (Params("recipe", runner.RecipeFile),
            Params("options", runner.RunOptions, only=("out", "dry_run", "from_stage", "settings")), _ray_params())


def _run(values: dict) -> int:
    import sys

    from emu_data.pipeline import runner, summary

    recipe, options = values["recipe"].recipe, replace(values["options"], ray=values["ray"])
    try:
        plan = runner.run(recipe, options)
    except runner.StageFailed as e:
        print(f"emu-data run: {e}", file=sys.stderr)
        return e.code
    if not options.dry_run:
        print(f"\nfinished {recipe} in {plan.out}\n\n{summary.summarize(plan.stages)}")
    return 0


# ---- the table ---------------------------------------------------------------------------------------

def _fixed() -> list[Command]:
    return [
        Command("run", "run a recipe (pipelines/*.yaml): ingest, mix, features, validate, train, eval in one go",
                _run_params, _run, writes=NONE,
                description="Run the stages of a recipe in order, each an emu-data command with the options the "
                            "recipe gives it, outputs under --out/<stage>. The whole recipe is checked first "
                            "(unknown stages and options, missing inputs: errors name the line). A rerun skips "
                            "finished stages and resumes an interrupted one; --from reruns a stage and all after "
                            "it. The resolved recipe is saved as OUT/recipe.json, progress as OUT/pipeline.json.",
                epilog="examples:\n  emu-data run pipelines/smoke.yaml --out runs/smoke\n"
                       "  emu-data run pipelines/emu_pretrain.yaml --out runs/emu --dry-run\n"
                       "  emu-data run pipelines/smoke.yaml --out runs/smoke --from train"),
        Command("sample", "write a small corpus of every source kind from a generated world (no network)",
                _sample_params, _sample, makes_corpus=True,
                description="Write a small valid corpus of every record source kind ("
                            + ", ".join(k.name for k in registry.kinds() if k.sample) + ") from a generated "
                            "world of drawn scenes whose captions and subtitles name what is drawn. No network.",
                epilog="example: emu-data sample --out runs/sample --n 32"),
    ]


def _after_sources() -> list[Command]:
    return [
        Command("mix", "merge per-source corpora in given proportions, deduplicated and shuffled",
                _mix_params, _mix, makes_corpus=True,
                description="Merge corpora into one: exact dedup by key, image sha256 and normalized URL; "
                            "each source subsampled so the output matches the weights (nothing is repeated: "
                            "the scarcest source relative to its weight sets the total: a source keeps its samples with the "
                            "lowest seeded hash); a deterministic shuffle by --seed. Every input sample gets a status "
                            "row (ok, dedup_image, dedup_url, duplicate_key, over_quota). Runs as Ray tasks over hash "
                            "partitions spilled under OUT/_work: the driver's memory does not grow with the corpus, "
                            "and --ray-address spreads it over a cluster (OUT must be storage every node sees).",
                epilog="examples:\n  emu-data mix runs/yt runs/laion runs/coco runs/mmc4 runs/webvid --out runs/mix\n"
                       "  emu-data mix runs/* --out runs/mix --weights yt_storyboard=16,laion=128 --seed 1"),
        Command("features", "EVA-CLIP embeddings of every corpus image, in shards aligned with the corpus",
                _features_params, _features,
                description="Embed every image of CORPUS with an open_clip vision tower (EVA-CLIP by default): "
                            "decode and resize on CPU tasks, encode on GPU actors (one model per GPU; with no "
                            "GPU, one CPU actor). One feature shard per corpus shard, same name, rows in corpus "
                            "order (key, image_index, embedding). Resumable per shard.",
                epilog="examples:\n"
                       "  emu-data features runs/mix --out runs/mix-eva --model EVA02-L-14 --pretrained merged2b_s4b_b131k\n"
                       "  emu-data features runs/mix --out runs/mix-eva --model EVA01-g-14 --pretrained ~/eva01_g14.bin --tokens patch\n"
                       "  emu-data features runs/sample --out runs/sample-feat --model tiny.json --pretrained none  # random init\n"
                       "then: emu-data validate runs/mix-eva   (checked against the corpus its manifest names)"),
        Command("export", "a finished corpus as WebDataset tar shards or Hub-ready Parquet",
                _export_params, _export,
                description="Write every sample of CORPUS in a format trainers read. webdataset: KEY.json "
                            "(texts, times, meta, and per position the member holding its image), "
                            "KEY.000.jpg ... in position order (image bytes as stored), and for pair-like "
                            "sources KEY.jpg + KEY.txt, which open_clip-style loaders read as they are. "
                            "parquet: the corpus's columns with images as datasets Image features, row groups "
                            "sized for streaming, a dataset card (configs, dataset_info) the Hub reads. Shards "
                            "of bounded size named after the corpus shards, in corpus order; a sample not "
                            "written is a status row saying why; resumable per corpus shard. --features adds "
                            "each image's embedding. OUT/README.md says how to read it.",
                epilog="examples:\n  emu-data export runs/mix --out runs/mix-wds\n"
                       "  emu-data export runs/mix --out runs/mix-hub --format parquet --shard-bytes 512MB\n"
                       "  emu-data export runs/mix --out runs/mix-wds --features runs/mix-eva"),
        Command("train", "train the bundled small Emu on a corpus and its patch features (resumable)",
                _train_params, _train,
                description="Smoke-scale Emu pretraining: a causal transformer (learned queries over the EVA-CLIP "
                            "patch tokens) feeding a decoder-only LM; loss = next-token CE on text + lambda x l2 "
                            "regression of the next visual embedding. Sources mixed by weight (Emu's by default), "
                            "samples packed to --seq-len. AdamW (0.9, 0.98), wd 0.05, cosine with 20% warmup. "
                            "A checkpoint every N steps; rerunning the same command resumes exactly.\n"
                            "--nproc-per-node N trains with N processes (DistributedDataParallel: NCCL, one per "
                            "GPU; gloo with --device cpu). --batch-size stays the global batch: each process "
                            "builds and trains on 1/N of its rows, and the losses are the one-process run's (to "
                            "float rounding). Process 0 prepares the run and writes metrics and checkpoints; a "
                            "run may resume with another N.",
                epilog="examples:\n"
                       "  emu-data train --corpus runs/sample --features runs/sample-feat --out runs/emu-smoke --steps 300\n"
                       "  emu-data train --corpus /data/mix --features /data/mix-eva --out runs/emu --config emu.yaml\n"
                       "  emu-data train --corpus /data/mix --features /data/mix-eva --out runs/emu --config emu.yaml "
                       "--nproc-per-node 8\n"
                       "the same under torchrun (one node; or on every node of several, with a rendezvous, the "
                       "corpus,\nfeatures and --out on storage every node sees):\n"
                       "  torchrun --standalone --nproc-per-node 8 -m emu_data.cli train --corpus /data/mix ...\n"
                       "  torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint NODE0:29400 "
                       "--rdzv-id emu \\\n"
                       "      -m emu_data.cli train --corpus /shared/mix --features /shared/mix-eva --out /shared/runs/emu\n"
                       "config file (JSON or YAML), any subset of:\n"
                       "  model: {width, depth, heads, queries, ct_width, ct_depth, ct_heads, regression_weight,\n"
                       "         image_start_weight, attention: sample (each packed sample sees itself) | row}\n"
                       "  data:  {seq_len, batch_size, weights: {laion: 128, ...}, holdout, vocab_size, workers}\n"
                       "  optim: {lr, min_lr_ratio, betas, weight_decay, warmup, grad_clip}\n"
                       "  run:   {steps, checkpoint_every, seed, device, precision}\n"
                       "then: emu-data eval --run RUN --corpus ... --features ..."),
        Command("eval", "evaluate a trained run: held-out CE, CIDEr-D captioning (0/2/4-shot), retrieval",
                _eval_params, _eval, writes=NONE,
                description="Compare a run's last checkpoint with its untrained initialisation and a caption prior "
                            "on the run's held-out samples: text CE and perplexity, visual regression MSE and "
                            "cosine, zero/few-shot captioning scored with CIDEr-D, and text-to-image retrieval "
                            "R@1/R@5 with the regressed embedding. Writes RUN/eval/report.json and report.md."),
        Command("validate", "check shards and manifests against the schemas",
                _validate_params, _validate, writes=NONE,
                description="Check every shard and manifest under each PATH: schema (names, types), per-row\n"
                            "invariants, images decode, unique keys, manifest vs files.\n"
                            "Shards are checked in parallel Ray tasks (embedded, or a cluster with --ray-address);\n"
                            "keys are spilled to temporary files under --spill-dir, so memory does not grow with\n"
                            "the corpus.\n"
                            "A features directory (emu-data features) is checked against its corpus instead: one\n"
                            "feature shard per corpus shard, one embedding per non-null image in corpus order,\n"
                            "consistent metadata, finite values.\n"
                            "Prints one line per violation (file:row: [rule] key=... message) and a summary.\n"
                            "Exit 0 clean, 1 violations, 2 unusable input.",
                epilog="examples:\n"
                       "  emu-data validate runs/sample --deep\n"
                       "  emu-data validate runs/mix-eva --corpus /data/mix   # features, corpus moved since\n"
                       "  emu-data validate /shared/laion --ray-address auto --spill-dir /shared/tmp"),
        Command("stats", "samples, images, texts and bytes by source; status counts by reason",
                lambda: (Params("corpus", CorpusPath), Params("json", Json)), _stats, writes=NONE,
                epilog="example: emu-data stats runs/sample --json"),
        Command("preview", "write a self-contained HTML page showing samples as a person reads them",
                lambda: (Params("corpus", CorpusPath), Params("options", PreviewOptions)), _preview, writes=FILE,
                epilog="example: emu-data preview runs/sample --out runs/sample.html --n 20"),
        Command("doctor", "is this machine ready for YouTube: yt-dlp's age, deno, ejs, PO tokens, cookies, "
                          "proxies", _doctor_params, _doctor, writes=NONE,
                description="One line per check, each ok, WARN or FAIL: the yt-dlp release and its age "
                            "(YouTube breaks old releases within weeks), the JS runtime yt-dlp finds and its "
                            "version, the yt-dlp-ejs challenge scripts, the PO-token providers registered, and "
                            "for each identity its cookies file (parsed as yt-dlp parses it; unexpired YouTube "
                            "cookies; when the sign-in cookie expires) and its proxy URL (well-formed; with "
                            "--probe, reachable). Cookie values and proxy passwords are never shown. The same "
                            "checks run, as warnings, at the start of every `youtube` run.\n"
                            "Exit 0 ready (warnings allowed), 1 a run would be crippled, 2 unusable options.",
                epilog="examples:\n"
                       "  emu-data doctor                    # this machine, a guest identity\n"
                       "  emu-data doctor --cookies cookies.txt --proxy socks5://user:pass@10.0.0.5:1080 --probe\n"
                       "  emu-data doctor --identities identities.yaml --probe --json"),
    ]


def all_commands() -> dict[str, Command]:
    """Every command, in the order `emu-data --help` lists them."""
    found = [*_fixed(), *(source_command(s) for s in registry.all_sources()), *_after_sources()]
    return {c.name: c for c in found}


def fill_parser(parser, command: Command) -> None:
    from emu_data.core.options import add_options

    add_options(parser, command.params())


def parser(command: Command):
    """A parser of one command alone, as `emu-data COMMAND ...` parses it."""
    import argparse

    alone = argparse.ArgumentParser(prog=f"emu-data {command.name}")
    fill_parser(alone, command)
    return alone


def build_values(command: Command, namespace) -> dict:
    """The option objects of `command` from what its parser parsed."""
    from emu_data.core.options import build

    return {params.name: build(params, namespace) for params in command.params()}
