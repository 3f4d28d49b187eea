"""`emu-data export`: a finished corpus in a format trainers read, as a stage like the others.

    OUT/
      _config.json             resolved config (format, corpus, its fingerprint)
      data/SHARD-NNNNN.tar     --format webdataset: WebDataset tar shards (tars.py)
      data/SHARD-NNNNN.parquet --format parquet: Hub-ready Parquet (parquets.py)
                               at most --shard-rows samples and about --shard-bytes each,
                               named after the corpus shard
      status/SHARD-NNNNN.*     one row per corpus sample: ok, or why it could not be written
                               (Arrow beside tars, Parquet beside Parquet)
      README.md                the dataset card: how to read it, what it holds
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
from emu_data.ops import parquets, tars

STAGE = corpus_mod.EXPORT_STAGE
FORMATS = ("webdataset", "parquet")


@dataclass(frozen=True)
class ExportOptions:
    format: str = option("webdataset", choices=FORMATS,
                         help="webdataset: tar shards, one sample per key; parquet: Hub-ready Parquet with "
                              "a dataset card (README, 'emu-data export')")


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
    layout = {"format": options.format, "layout": 1, "corpus_fingerprint": built["fingerprint"]}
    return run_stage(STAGE, units, write_shard, output=output, layout=layout, config=config, ray=ray,
                     writer=_writer(options.format), card=partial(card, built, options.format))


def _writer(form: str):
    if form == "parquet":
        return parquets.ParquetShardWriter   # status rows too: the Hub reads one format per dataset
    return tars.Writers(frozenset(k.name for k in sources.kinds() if k.pair_rank is not None))


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


def card(corpus: dict, form: str, exported: dict) -> str:
    """The export's README.md: how to read it, and what it holds (corpus: the corpus's
    manifest; exported: the export's)."""
    counts = ", ".join(f"{name} {n}" for name, n in exported["source_counts"].items())
    left = {k: n for k, n in exported["status_counts"].items() if k != "ok"}
    about = (f"# emu-data export ({form})\n\n"
             f"Samples: {exported['rows']} ({counts}) of a corpus of {corpus['rows']} made by emu-data "
             f"{corpus['tool']['version']} (fingerprint {corpus['fingerprint'][:16]}); exported by emu-data "
             f"{exported['tool']['version']}. Not written: {left or 'none'} (the status config says why).\n"
             "Sources and filters: the corpus's `_config.json` and status table (`emu-data stats` on it).\n\n")
    if form == "parquet":
        return parquets.card(exported, about + PARQUET_READER)
    return tars.card(about + WEBDATASET_READER)


WEBDATASET_READER = """WebDataset tar shards: each sample is the members that share its key. `KEY.json` holds
`key` (the corpus key), `source`, `texts`, `times`, `meta` and `images`: per position,
the member extension of its image (`000.jpg`, ...) or null. Pair-like sources (one
image, one caption) store them as `KEY.jpg|png|webp` + `KEY.txt`, as open_clip reads.

```python
import glob, io, json, webdataset as wds
from PIL import Image

for sample in wds.WebDataset(sorted(glob.glob("data/*.tar")), shardshuffle=False):
    doc = json.loads(sample["json"])
    sequence = [Image.open(io.BytesIO(sample[ext])) if ext else text
                for text, ext in zip(doc["texts"], doc["images"])]
```

The status table (a row per corpus sample): `datasets.load_dataset("arrow", data_files="status/*.arrow")`.
"""

PARQUET_READER = """Parquet with the corpus's columns: `key`, `source`, `texts` and `images` (parallel lists,
one non-null entry per position; images as `datasets` Image features), `times` (seconds,
or null), `meta` (a JSON string).

```python
from datasets import load_dataset

samples = load_dataset("DIR", split="train", streaming=True)   # or without streaming
for sample in samples:
    sequence = [image if image is not None else text
                for text, image in zip(sample["texts"], sample["images"])]   # PIL images
```
"""
