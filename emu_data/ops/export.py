"""`emu-data export`: a finished corpus in a format trainers read, as a stage like the others.

    OUT/
      _config.json             resolved config (format, corpus, its fingerprint)
      data/SHARD-NNNNN.tar     WebDataset tar shards (tars.py), at most --shard-rows samples
                               and about --shard-bytes each, named after the corpus shard
      status/SHARD-NNNNN.arrow one row per corpus sample: ok, or why it could not be written
      README.md                how to read it (the 10-line reader below)
      _manifest.json           written last

A corpus shard is a unit of work: a Ray task reads it (memory-mapped, a record batch at a
time) and writes its tars; resume, the run lock and the manifest are the stage engine's, so
an interrupted export redoes only the shards it had not committed, and a corpus shard whose
bytes changed since is redone. Samples keep the corpus's order.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

from emu_data import sources
from emu_data.core import corpus as corpus_mod, errors, manifest
from emu_data.core.corpus import Unit, UnitWriter
from emu_data.core.options import option
from emu_data.core.shards import iter_batches
from emu_data.engine import runtime
from emu_data.engine.stage import OutputOptions, StageResult, run_stage
from emu_data.ops import tars

STAGE = corpus_mod.EXPORT_STAGE
FORMATS = ("webdataset",)


@dataclass(frozen=True)
class ExportOptions:
    format: str = option("webdataset", choices=FORMATS,
                         help="webdataset: tar shards, one sample per key (README, 'Export')")


@dataclass(frozen=True)
class ShardJob:
    """One corpus shard to export; its sha256 makes a changed shard a changed unit."""

    corpus: str
    path: str      # relative to the corpus
    sha256: str


def export(corpus: Path, output: OutputOptions, options: ExportOptions = ExportOptions(),
           ray: runtime.RayOptions = runtime.RayOptions()) -> StageResult:
    """Export every sample of the finished corpus at `corpus` into output.out."""
    corpus = Path(corpus)
    built = _corpus_manifest(corpus)
    units = [Unit(_unit_id(s["path"]), ShardJob(str(corpus.resolve()), s["path"], s["sha256"]))
             for s in built["shards"]]
    config = {"export": asdict(options), "corpus": str(corpus.resolve()),
              "corpus_fingerprint": built["fingerprint"],
              "output": {**asdict(output), "out": str(output.out)}, "ray": asdict(ray)}
    layout = {"format": options.format, "tar_layout": 1, "corpus_fingerprint": built["fingerprint"]}
    pair_like = frozenset(k.name for k in sources.kinds() if k.pair_rank is not None)
    return run_stage(STAGE, units, write_shard, output=output, layout=layout, config=config, ray=ray,
                     samples=partial(tars.TarShardWriter, pair_like=pair_like.__contains__),
                     card=card(built, options))


def write_shard(job: ShardJob, writer: UnitWriter) -> None:
    """The unit's work: every sample of one corpus shard to tar members, or a status row."""
    for batch in iter_batches(Path(job.corpus) / job.path):
        for row in batch.to_pylist():
            try:
                writer.add_sample(row)
            except tars.Unwritable as e:
                writer.add_status(_status(row, "unwritable", str(e), samples=0))
            else:
                writer.add_status(_status(row, "ok", None, samples=1))


def _status(row: dict, status: str, error: str | None, *, samples: int) -> dict:
    return {"key": row["key"], "source": row["source"], "input": row["key"], "status": status,
            "error": error, "attempts": 1, "samples": samples}


def _unit_id(shard_path: str) -> str:
    """data/laion-00000-00000.arrow -> laion-00000-00000: the tars keep the shard's name."""
    return Path(shard_path).stem


def _corpus_manifest(corpus: Path) -> dict:
    if not (corpus / manifest.MANIFEST_NAME).is_file():
        raise errors.UsageError(f"{corpus} is not a finished corpus (no {manifest.MANIFEST_NAME}); "
                                "export reads what a stage, mix or sample wrote")
    built = manifest.read(corpus)
    corpus_mod.refuse_export(corpus, built)
    if built["schema"]["name"] != "interleaved":
        raise errors.UsageError(f"{corpus} holds {built['schema']['name']} records, not a corpus of samples")
    return built


def card(built: dict, options: ExportOptions) -> str:
    counts = ", ".join(f"{name} {n}" for name, n in built["source_counts"].items())
    return (
        "---\n"
        "configs:\n"
        "- config_name: default\n"
        "  data_files: \"data/*.tar\"\n"
        "  default: true\n"
        "- config_name: status\n"
        "  data_files: \"status/*.arrow\"\n"
        "---\n"
        f"# emu-data export ({options.format})\n\n"
        f"Samples: {built['rows']} ({counts}), from a corpus made by emu-data "
        f"{built['tool']['version']} (fingerprint {built['fingerprint'][:16]}).\n\n"
        "WebDataset tar shards: each sample is the members that share its key. `KEY.json` holds\n"
        "`key` (the corpus key), `source`, `texts`, `times`, `meta` and `images`: per position,\n"
        "the member extension of its image (`000.jpg`, ...) or null. Pair-like sources (one\n"
        "image, one caption) store them as `KEY.jpg|png|webp` + `KEY.txt`, as open_clip reads.\n\n"
        "```python\n"
        "import glob, io, json, webdataset as wds\n"
        "from PIL import Image\n\n"
        "for sample in wds.WebDataset(sorted(glob.glob(\"data/*.tar\")), shardshuffle=False):\n"
        "    doc = json.loads(sample[\"json\"])\n"
        "    sequence = [Image.open(io.BytesIO(sample[ext])) if ext else text\n"
        "                for text, ext in zip(doc[\"texts\"], doc[\"images\"])]\n"
        "```\n"
    )
