"""Corpus samples as Hub-ready Parquet: the interleaved columns, images as `datasets` Image
structs, in row groups small enough to stream, and the dataset card the Hub reads.

The columns and their `huggingface` schema metadata are the corpus's own (schemas/
interleaved.json): `datasets.load_dataset(DIR)` and `load_dataset(DIR, streaming=True)` give
`images` as a list of Image features (decoded to PIL on access) without any cast. A row group
holds at most ROW_GROUP_ROWS samples or about ROW_GROUP_BYTES, so a streaming reader holds
one group of images at a time, not a shard.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from emu_data.core import schema
from emu_data.core.shards import ShardLimits, ShardWriter

SUFFIX = ".parquet"
# Columns whose values repeat get Parquet's dictionary encoding; pyarrow's default tries it on
# every column, hashing each image's bytes only to find them unique (measured: a third of the
# write, and the files come out larger).
REPEATING = frozenset({"source", "status"})
FEATURES_RECORD = "interleaved_features"
ROW_GROUP_ROWS = 1_000
ROW_GROUP_BYTES = 64 * 2**20


class ParquetShardWriter(ShardWriter):
    """Samples (or status rows) into `DIR/PREFIX-NNNNN.parquet`: ShardWriter's shards, limits,
    names and commit, with a row group per batch of ROW_GROUP_ROWS rows or ~ROW_GROUP_BYTES.
    Called as UnitWriter's writer (directory, prefix, record, limits, root)."""

    suffix = SUFFIX
    batch_rows, batch_bytes = ROW_GROUP_ROWS, ROW_GROUP_BYTES

    def __init__(self, directory: Path, prefix: str, record: str, limits: ShardLimits, root: Path,
                 params: dict | None = None):
        super().__init__(directory, prefix, schema.arrow_schema(record, params=params), limits, root)

    def _open_format(self, sink):
        return pq.ParquetWriter(sink, self.schema, compression=_compression(self.schema),
                                use_dictionary=[n for n in self.schema.names if n in REPEATING])


def _compression(arrow_schema: pa.Schema) -> dict[str, str]:
    """zstd for every Parquet column but image bytes: JPEG, PNG and WebP are compressed
    already, so zstd would spend a writer's CPU (measured: ~40% of writing 30 KB images) and
    every reader's, for no space."""
    return {path: "none" if is_image else "zstd" for path, is_image in _leaves(arrow_schema)}


def _leaves(arrow_schema: pa.Schema):
    """(Parquet column path, holds image bytes) of each leaf column, as pyarrow names them."""
    def walk(name: str, kind: pa.DataType, in_image: bool):
        if pa.types.is_list(kind) or pa.types.is_fixed_size_list(kind) or pa.types.is_large_list(kind):
            yield from walk(f"{name}.list.element", kind.value_type, in_image)
        elif pa.types.is_struct(kind):
            for child in kind:
                yield from walk(f"{name}.{child.name}", child.type, kind == schema.IMAGE_STRUCT)
        else:
            yield name, in_image and name.endswith(".bytes")

    for field in arrow_schema:
        yield from walk(field.name, field.type, False)


@dataclass(frozen=True)
class Writers:
    """UnitWriter's writer for a Parquet export: samples, with a `features` column when
    `features` is given (their storage and size), and status rows, all Parquet."""

    features: dict | None = None   # {"storage": "float16" | "float32", "size": N}

    def __call__(self, directory: Path, prefix: str, record: str, limits: ShardLimits, root: Path):
        if record == "interleaved" and self.features:
            return ParquetShardWriter(directory, prefix, FEATURES_RECORD, limits, root, params=self.features)
        return ParquetShardWriter(directory, prefix, record, limits, root)


def card(exported: dict, body: str, features: dict | None = None) -> str:
    """The dataset card: YAML `configs` (data, and status when a sample was not written) and `dataset_info` (features and
    split sizes, which the Hub's viewer reads), then `body`. exported: the export's manifest;
    features: as Writers takes them."""
    import yaml
    from datasets import Features

    def info(name: str, record: str, rows: int) -> dict:
        if record == "interleaved" and features:
            record, params = FEATURES_RECORD, features
        else:
            params = None
        features_of = Features.from_arrow_schema(schema.arrow_schema(record, params=params))
        return {"config_name": name, "features": features_of._to_yaml_list(),
                "splits": [{"name": "train", "num_examples": rows}]}

    configs = [{"config_name": "default", "default": True, "data_files": [{"split": "train", "path": f"data/*{SUFFIX}"}]}]
    infos = [info("default", "interleaved", exported["rows"])]
    if exported["status_shards"]:   # samples not written: the status config lists them
        configs.append({"config_name": "status", "data_files": [{"split": "train", "path": f"status/*{SUFFIX}"}]})
        infos.append(info("status", "status", sum(exported["status_counts"].values())))
    header = {"configs": configs, "dataset_info": infos}
    return "---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n" + body
