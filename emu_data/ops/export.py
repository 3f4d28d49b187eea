"""`emu-data export`: a finished corpus in a format trainers read, as a stage like the others.

    OUT/
      _config.json             resolved config (format, corpus, its fingerprint)
      data/SHARD-NNNNN.tar     --format webdataset: WebDataset tar shards (tars.py)
      data/SHARD-NNNNN.parquet --format parquet: Hub-ready Parquet (parquets.py)
                               at most --shard-rows samples and about --shard-bytes each,
                               named after the corpus shard
      status/SHARD-NNNNN.*     a row per corpus sample that could not be written, and why
                               (Arrow beside tars, Parquet beside Parquet); a sample is in
                               data/ or here
      README.md                the dataset card: how to read it, what it holds (and with
                               --features, the encoder: model, weights, tokens, shape, dtype)
      _manifest.json           written last

A corpus shard is a unit of work: a Ray task reads it (memory-mapped, a record batch at a
time) and writes its tars; resume, the run lock and the manifest are the stage engine's, so
an interrupted export redoes only the shards it had not committed, and a corpus shard whose
bytes changed since is redone. Samples keep the corpus's order.

Rows move some thousand at a time, never as Python objects where Parquet is written: they
are checked a column at a time (batchcheck) and Parquet gets them as they are. A row that
breaks the record becomes an `invalid_record` status row, one that cannot become tar
members an `unwritable` one; neither stops the unit. --features DIR (`emu-data features` of this corpus) adds each
image's embedding: a `.npy` member per image, or a `features` column (featurerows.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from emu_data import sources
from emu_data.core import batchcheck, corpus as corpus_mod, errors, manifest, schema
from emu_data.core.corpus import Unit, UnitWriter
from emu_data.core.options import option
from emu_data.core.shards import read_shard
from emu_data.engine import runtime
from emu_data.engine.stage import OutputOptions, StageResult, run_stage
from emu_data.ops import featurerows, parquets, tars

STAGE = corpus_mod.EXPORT_STAGE
FORMATS = ("webdataset", "parquet")


@dataclass(frozen=True)
class ExportOptions:
    format: str = option("webdataset", choices=FORMATS,
                         help="webdataset: tar shards, one sample per key; parquet: Hub-ready Parquet with "
                              "a dataset card (README, 'emu-data export')")
    features: Path | None = option(None, parse=Path, metavar="DIR",
                                   help="also export each image's embedding from DIR, this corpus's "
                                        "`emu-data features` output (webdataset: KEY.000.npy members; "
                                        "parquet: a features column)")


@dataclass(frozen=True)
class ShardJob:
    """One corpus shard to export; its sha256 (and its feature shard's) makes a changed
    shard a changed unit."""

    corpus: str
    path: str      # relative to the corpus (and to the features directory)
    sha256: str
    features: featurerows.FeaturesInput | None = None
    features_sha256: str | None = None


def export(corpus: Path, output: OutputOptions, options: ExportOptions = ExportOptions(),
           ray: runtime.RayOptions = runtime.RayOptions()) -> StageResult:
    """Export every sample of the finished corpus at `corpus` into output.out."""
    corpus = Path(corpus)
    built = _corpus_manifest(corpus)
    features, encoder_about, feature_digests = None, None, {}
    if options.features is not None:
        features, encoder_about, feature_digests = featurerows.plan(options.features, corpus, built["shards"])
    units = [Unit(_unit_id(s["path"]), ShardJob(str(corpus.resolve()), s["path"], s["sha256"], features,
                                                 feature_digests.get(s["path"])))
             for s in built["shards"]]
    config = {"export": {**asdict(options), "features": features and features.path},
              "corpus": str(corpus.resolve()), "corpus_fingerprint": built["fingerprint"],
              "features_encoder": encoder_about,
              "output": {**asdict(output), "out": str(output.out)}, "ray": asdict(ray)}
    layout = {"format": options.format, "layout": 1, "corpus_fingerprint": built["fingerprint"],
              "features": features and {"encoder": encoder_about, "shards": feature_digests}}
    return run_stage(STAGE, units, write_shard, output=output, layout=layout, config=config, ray=ray,
                     writer=_writer(options.format, features),
                     card=partial(card, built, options.format, features, encoder_about))


def _writer(form: str, features: featurerows.FeaturesInput | None):
    if form == "parquet":   # status rows too: the Hub reads one format per dataset
        return parquets.Writers(_column_params(features))
    return tars.Writers(frozenset(k.name for k in sources.kinds() if k.pair_rank is not None),
                        features and features.shape)


def _column_params(features: featurerows.FeaturesInput | None) -> dict | None:
    return features and {"storage": features.storage, "size": features.size}


def write_shard(job: ShardJob, writer: UnitWriter) -> None:
    """The unit's work: one corpus shard, some thousand rows at a time, to the writer; a
    status row for each sample that could not be written (invalid_record or unwritable)."""
    table = read_shard(Path(job.corpus) / job.path, "interleaved")   # memory-mapped, columns checked
    features = job.features and featurerows.ShardFeatures(job.features, job.path)
    step = _rows_per_step(table, job.features)
    unsound_rows = batchcheck.unsound_rows(table)   # once: it reads validity bitmaps and offsets only
    for start in range(0, table.num_rows, step):
        part, unsound = table.slice(start, step), unsound_rows[start:start + step]
        sound = part.filter(pa.array(~unsound)) if unsound.any() else part
        if features:
            sound = sound.append_column("features", features.column(part, ~unsound))
        refused = writer.add_table(sound)
        if unsound.any() or refused:
            writer.add_status_table(_status_table(job, part, start, unsound, refused))
    if features:
        features.close()


ROWS_PER_STEP = 4096
FEATURE_BYTES_PER_STEP = 256 * 2**20


def _rows_per_step(table: pa.Table, features: featurerows.FeaturesInput | None) -> int:
    """Rows moved at once: enough that the column-wise work pays (a record batch of a corpus
    is 256 rows), few enough that the embeddings of a step stay ~FEATURE_BYTES_PER_STEP."""
    if features is None or not table.num_rows:
        return ROWS_PER_STEP
    images = pc.sum(pc.list_value_length(table.column("images"))).as_py() or 0
    per_row = max(1.0, images / table.num_rows) * features.size * 4
    return max(1, min(ROWS_PER_STEP, int(FEATURE_BYTES_PER_STEP // per_row)))


def _status_table(job: ShardJob, part: pa.Table, start: int, unsound: np.ndarray, refused: dict[int, str]) -> pa.Table:
    """A status row for each row of `part` not written: invalid_record (the rules it breaks)
    or unwritable (refused: numbered among the sound rows). A row without a key is named by
    its place, SHARD#ROW."""
    failed = {int(i): ("invalid_record", _problems(part, int(i))) for i in np.flatnonzero(unsound)}
    sound_rows = np.flatnonzero(~unsound)
    failed.update({int(sound_rows[i]): ("unwritable", why) for i, why in refused.items()})
    rows = sorted(failed)
    found = part.select(["key", "source"]).take(pa.array(rows, pa.int64())).to_pylist()
    keys = [row["key"] if row["key"] is not None else f"{job.path}#{start + i}" for i, row in zip(rows, found)]
    return pa.table({"key": keys, "source": [row["source"] or "unknown" for row in found], "input": keys,
                     "status": [failed[i][0] for i in rows], "error": [failed[i][1] for i in rows],
                     "attempts": pa.array([1] * len(rows), pa.int32()), "samples": pa.array([0] * len(rows), pa.int32())})


def _problems(part: pa.Table, row: int) -> str:
    problems = schema.interleaved_problems(part.slice(row, 1).to_pylist()[0])
    return "; ".join(f"{rule}: {message}" for rule, message in problems)


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


def card(corpus: dict, form: str, features: featurerows.FeaturesInput | None, encoder_about: dict | None,
         exported: dict) -> str:
    """The export's README.md: how to read it, and what it holds (corpus: the corpus's
    manifest; exported: the export's; the features and their encoder, if any)."""
    counts = ", ".join(f"{name} {n}" for name, n in exported["source_counts"].items())
    left = {k: n for k, n in exported["status_counts"].items() if k != "ok"}
    about = (f"# emu-data export ({form})\n\n"
             f"Samples: {exported['rows']} ({counts}) of a corpus of {corpus['rows']} made by emu-data "
             f"{corpus['tool']['version']} (fingerprint {corpus['fingerprint'][:16]}); exported by emu-data "
             f"{exported['tool']['version']}. Not written: {left or 'none'}{' (status/ says why)' if left else ''}.\n"
             "Sources and filters: the corpus's `_config.json` and status table (`emu-data stats` on it).\n\n")
    if features:
        about += (f"Image embeddings: {featurerows.describe(encoder_about)}; exported as {features.storage}"
                  f"{' (bfloat16 widened exactly)' if features.dtype == 'bfloat16' else ''}. "
                  + (FEATURES_PARQUET if form == "parquet" else FEATURES_WEBDATASET) + "\n\n")
    if form == "parquet":
        return parquets.card(exported, about + PARQUET_READER, _column_params(features))
    return tars.card(about + WEBDATASET_READER)


FEATURES_WEBDATASET = ("Each image's embedding is a `.npy` member beside it (`KEY.000.npy` for `KEY.000.jpg`, "
                       "`KEY.npy` for a pair's `KEY.jpg`); `features` in `KEY.json` names them per position.")
FEATURES_PARQUET = ("The `features` column is parallel to `images`: per position the embedding flattened "
                    "row-major (reshape to the shape above), null where the position holds text.")


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

Samples that could not be written, if any, are rows of status/ (key, status, error):
`datasets.load_dataset("arrow", data_files="status/*.arrow")`. For `datasets` and the Hub's
viewer, export with `--format parquet`: their webdataset reader wants every sample to have
the same members, and interleaved samples do not.
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
