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

import pyarrow as pa
import pyarrow.parquet as pq

from emu_data.core import schema
from emu_data.core.shards import TMP_PREFIX, ShardInfo, ShardLimits, approx_row_bytes, publish, writing

SUFFIX = ".parquet"
ROW_GROUP_ROWS = 1_000
ROW_GROUP_BYTES = 64 * 2**20


class ParquetShardWriter:
    """Samples into `DIR/PREFIX-NNNNN.parquet`, a new file before one would pass the limits,
    each written under a temporary name and renamed when complete (ShardWriter's contract:
    write(row), close() -> [ShardInfo], abort(); names depend on the prefix and rows alone)."""

    def __init__(self, directory: Path, prefix: str, record: str, limits: ShardLimits, root: Path):
        self.directory, self.prefix, self.limits, self.root = Path(directory), prefix, limits, Path(root)
        self.schema = schema.arrow_schema(record)
        self.finished: list[ShardInfo] = []
        self._writer: pq.ParquetWriter | None = None
        self._group: list[dict] = []
        self._group_bytes = self._rows = self._bytes = 0

    def write(self, row: dict) -> None:
        size = approx_row_bytes(row)
        if self._rows and (self._rows + 1 > self.limits.max_rows or self._bytes + size > self.limits.max_bytes):
            self._finish()
        self._group.append(row)
        self._group_bytes += size
        self._rows += 1
        self._bytes += size
        if len(self._group) >= ROW_GROUP_ROWS or self._group_bytes >= ROW_GROUP_BYTES:
            self._flush_group()

    def close(self) -> list[ShardInfo]:
        """Finish the last file; returns every file written, in order."""
        if self._rows:
            self._finish()
        return list(self.finished)

    def abort(self) -> None:
        """Drop the file in progress, keeping finished ones; never raises."""
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:  # noqa: BLE001 - another error is on its way out
                pass
            try:
                self._tmp_path().unlink(missing_ok=True)
            except OSError:
                pass
        self._writer, self._group = None, []
        self._group_bytes = self._rows = self._bytes = 0

    def _final_path(self) -> Path:
        return self.directory / f"{self.prefix}-{len(self.finished):05d}{SUFFIX}"

    def _tmp_path(self) -> Path:
        return self.directory / f"{TMP_PREFIX}{self._final_path().name}"

    def _flush_group(self) -> None:
        if not self._group:
            return
        with writing(self._tmp_path()):
            if self._writer is None:
                self.directory.mkdir(parents=True, exist_ok=True)
                self._writer = pq.ParquetWriter(self._tmp_path(), self.schema, compression="zstd")
            self._writer.write_table(pa.Table.from_pylist(self._group, schema=self.schema),
                                     row_group_size=len(self._group))
        self._group, self._group_bytes = [], 0

    def _finish(self) -> None:
        self._flush_group()
        with writing(self._final_path()):
            self._writer.close()
        self.finished.append(publish(self._tmp_path(), self._final_path(), self._rows, self.root))
        self._writer = None
        self._rows = self._bytes = 0


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
