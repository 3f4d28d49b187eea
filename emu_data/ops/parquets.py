"""Corpus samples as Hub-ready Parquet: the interleaved columns, images as `datasets` Image
structs, in row groups small enough to stream, and the dataset card the Hub reads.

The columns and their `huggingface` schema metadata are the corpus's own (schemas/
interleaved.json): `datasets.load_dataset(DIR)` and `load_dataset(DIR, streaming=True)` give
`images` as a list of Image features (decoded to PIL on access) without any cast. A row group
holds at most ROW_GROUP_ROWS samples or about ROW_GROUP_BYTES, so a streaming reader holds
one group of images at a time, not a shard.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from emu_data.core import schema
from emu_data.core.shards import ShardLimits, ShardWriter

SUFFIX = ".parquet"
ROW_GROUP_ROWS = 1_000
ROW_GROUP_BYTES = 64 * 2**20


class ParquetShardWriter(ShardWriter):
    """Samples (or status rows) into `DIR/PREFIX-NNNNN.parquet`: ShardWriter's shards, limits,
    names and commit, with a row group per batch of ROW_GROUP_ROWS rows or ~ROW_GROUP_BYTES.
    Called as UnitWriter's writer (directory, prefix, record, limits, root)."""

    suffix = SUFFIX
    batch_rows, batch_bytes = ROW_GROUP_ROWS, ROW_GROUP_BYTES

    def __init__(self, directory: Path, prefix: str, record: str, limits: ShardLimits, root: Path):
        super().__init__(directory, prefix, schema.arrow_schema(record), limits, root)

    def _open_format(self, sink):
        return pq.ParquetWriter(sink, self.schema, compression="zstd")


def card(exported: dict, body: str) -> str:
    """The dataset card: YAML `configs` (data and status) and `dataset_info` (features and
    split sizes, which the Hub's viewer reads), then `body`. exported: the export's manifest."""
    import yaml
    from datasets import Features

    def info(name: str, record: str, rows: int) -> dict:
        features = Features.from_arrow_schema(schema.arrow_schema(record))
        return {"config_name": name, "features": features._to_yaml_list(),
                "splits": [{"name": "train", "num_examples": rows}]}

    header = {"configs": [{"config_name": "default", "default": True,
                           "data_files": [{"split": "train", "path": f"data/*{SUFFIX}"}]},
                          {"config_name": "status", "data_files": [{"split": "train", "path": f"status/*{SUFFIX}"}]}],
              "dataset_info": [info("default", "interleaved", exported["rows"]),
                               info("status", "status", sum(exported["status_counts"].values()))]}
    return "---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n" + body
