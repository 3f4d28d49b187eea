"""Record definitions, loaded from the versioned JSON files in schemas/.

The JSON files are the single statement of every record's columns; this module turns
them into pyarrow schemas (and the matching Hugging Face `datasets` features, so that
`datasets.load_dataset` decodes images to PIL) and never restates a column itself.

A file may say `"extends": "NAME"`: that record's columns come first, then its own.

Type grammar used by the files:
  string | binary | bool | int32 | int64 | float16 | float32 | float64 | uint16
  json                       a string holding a JSON object
  image                      the datasets Image storage: struct<bytes: binary, path: string>
  dictionary<T>              dictionary-encoded T (int32 indices)
  list<T>                    variable-length list of T
  fixed_size_list<T>[N]      fixed-length list; T and N may be {placeholders} filled at build time
"""

from __future__ import annotations

import functools
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from emu_data.core import files

_PRIMITIVES = {
    "string": pa.string(),
    "json": pa.string(),
    "binary": pa.binary(),
    "bool": pa.bool_(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "uint16": pa.uint16(),
    "float16": pa.float16(),
    "float32": pa.float32(),
    "float64": pa.float64(),
}
IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
_GENERIC = re.compile(r"^(dictionary|list|fixed_size_list)<(.+)>(?:\[(\d+)\])?$")


class SchemaError(ValueError):
    """A schema file is missing or a type string cannot be understood."""


@dataclass(frozen=True)
class FieldDef:
    name: str
    type: str
    nullable: bool
    doc: str
    enum: tuple[str, ...] | None


@dataclass(frozen=True)
class RecordDef:
    """One record kind as the JSON file defines it."""

    name: str
    version: str
    description: str
    fields: tuple[FieldDef, ...]
    required_metadata: dict

    def field(self, name: str) -> FieldDef:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]


def schemas_dir() -> Path:
    """The schemas/ folder: beside the package in a checkout, under share/ when installed."""
    candidates = [
        Path(__file__).resolve().parent.parent.parent / "schemas",
        Path(sys.prefix) / "share" / "emu-data" / "schemas",
    ]
    for path in candidates:
        if (path / "interleaved.json").is_file():
            return path
    raise SchemaError(f"schemas/ not found (looked in {', '.join(map(str, candidates))})")


@functools.cache
def load_json(name: str) -> dict:
    path = schemas_dir() / f"{name}.json"
    if not path.is_file():
        raise SchemaError(f"no schema named {name!r} ({path} missing)")
    return json.loads(path.read_text())


@functools.cache
def record(name: str) -> RecordDef:
    raw = load_json(name)
    base = record(raw["extends"]).fields if "extends" in raw else ()   # its columns, then these
    fields = base + tuple(
        FieldDef(
            name=f["name"],
            type=f["type"],
            nullable=bool(f.get("nullable", True)),
            doc=f.get("doc", ""),
            enum=tuple(f["enum"]) if "enum" in f else None,
        )
        for f in raw["fields"]
    )
    return RecordDef(raw["name"], raw["version"], raw.get("description", ""), fields,
                     raw.get("required_metadata", {}))


def parse_type(spec: str, params: dict | None = None) -> pa.DataType:
    """Turn a type string of the grammar above into a pyarrow type."""
    if params:
        spec = spec.format(**params)
    spec = spec.strip()
    if spec in _PRIMITIVES:
        return _PRIMITIVES[spec]
    if spec == "image":
        return IMAGE_STRUCT
    match = _GENERIC.match(spec)
    if not match:
        raise SchemaError(f"unknown type {spec!r}")
    kind, inner, size = match.groups()
    inner_type = parse_type(inner)
    if kind == "dictionary":
        return pa.dictionary(pa.int32(), inner_type)
    if kind == "list":
        return pa.list_(inner_type)
    if size is None:
        raise SchemaError(f"fixed_size_list needs a [size]: {spec!r}")
    return pa.list_(inner_type, int(size))


def arrow_schema(name: str, *, params: dict | None = None,
                 metadata: dict[str, str] | None = None) -> pa.Schema:
    """The pyarrow schema of record `name`, with the datasets features and our identity in metadata."""
    rec = record(name)
    # Arrow fields stay nullable: `datasets` applies its features metadata only to fields
    # equal to its own, which are nullable. `nullable: false` is enforced by the writer
    # and by validate instead.
    fields = [pa.field(f.name, parse_type(f.type, params)) for f in rec.fields]
    meta = {"emu_data.core.schema": rec.name, "emu_data.version": rec.version}
    meta.update(metadata or {})
    meta["huggingface"] = json.dumps({"info": {"features": _hf_features(rec, params)}})
    return pa.schema(fields, metadata=meta)


def _hf_features(rec: RecordDef, params: dict | None) -> dict:
    """The `datasets` Features dict for a record, so load_dataset decodes `image` columns to PIL."""
    return {f.name: _hf_feature(f.type.format(**(params or {}))) for f in rec.fields}


def _hf_feature(spec: str) -> dict:
    if spec == "image":
        return {"_type": "Image"}
    if spec in _PRIMITIVES:
        dtype = "string" if spec == "json" else str(_PRIMITIVES[spec])
        return {"dtype": dtype, "_type": "Value"}
    kind, inner, size = _GENERIC.match(spec).groups()
    if kind == "dictionary":
        return _hf_feature(inner)  # datasets reads dictionary arrays as their values
    feature = {"feature": _hf_feature(inner), "_type": "List"}
    if size is not None:
        feature["length"] = int(size)
    return feature


def field_matches(expected: pa.Field, actual: pa.Field) -> bool:
    """Names and types equal; dictionary columns may also be stored plain (same values)."""
    if expected.name != actual.name:
        return False
    if expected.type == actual.type:
        return True
    if pa.types.is_dictionary(expected.type):
        return actual.type == expected.type.value_type
    return False


# ---- record invariants -------------------------------------------------------------
# Cheap per-row rules shared by the shard writers (which refuse a bad record) and by
# `emu-data validate` (which reports one). Image decoding is validate's, not here.


def interleaved_problems(row: dict) -> list[tuple[str, str]]:
    """(rule, message) for every invariant an `interleaved` row breaks; empty when sound."""
    found = _required_problems("interleaved", row)
    if found:
        return found
    texts, images, times = row["texts"], row["images"], row["times"]
    if len(texts) != len(images):
        found.append(("parallel_lists", f"texts has {len(texts)} positions, images {len(images)}"))
    found += _position_problems(texts, images)
    if times is not None:
        found += _time_problems(times, len(texts))
    found += _enum_problems("interleaved", row)
    found += _meta_problems(row["meta"])
    if not texts:
        found.append(("empty_sample", "the sample has no positions"))
    return found


def status_problems(row: dict) -> list[tuple[str, str]]:
    found = _required_problems("status", row) + _enum_problems("status", row)
    if not found and row["status"] != "ok" and not row.get("error"):
        found.append(("status_error", f"status {row['status']!r} without an error message"))
    return found


def _required_problems(name: str, row: dict) -> list[tuple[str, str]]:
    return [("not_null", f"{f.name} is null") for f in record(name).fields
            if not f.nullable and row.get(f.name) is None]


def _enum_problems(name: str, row: dict) -> list[tuple[str, str]]:
    return [("enum", f"{f.name} {row[f.name]!r} is not one of {', '.join(_allowed(f))}")
            for f in record(name).fields if f.enum and row.get(f.name) not in _allowed(f)]


def allowed_sources() -> tuple[str, ...]:
    """The `source` values a record may hold: the files' and any registered plugin's."""
    return _allowed(record("interleaved").field("source"))


def _allowed(f: FieldDef) -> tuple[str, ...]:
    """A field's enum. `source` also takes the record sources registered in this process
    (a plugin's): the files list the built-in ones, and a test keeps the two in step."""
    if f.name != "source":
        return f.enum
    from emu_data import sources

    return f.enum + tuple(n for n in sources.registered_kind_names() if n not in f.enum)


def _position_problems(texts: list, images: list) -> list[tuple[str, str]]:
    found = []
    for i, (text, image) in enumerate(zip(texts, images)):
        has_image = image is not None and image.get("bytes") is not None
        if (text is None) == (not has_image):
            what = "both text and image" if text is not None else "neither text nor image"
            found.append(("one_per_position", f"position {i} holds {what}"))
    return found


def _time_problems(times: list, positions: int) -> list[tuple[str, str]]:
    if len(times) != positions:
        return [("times_length", f"times has {len(times)} entries for {positions} positions")]
    found = []
    for i, t in enumerate(times):
        if t is None or t != t or t < 0:  # t != t catches NaN
            found.append(("times_non_negative", f"times[{i}] is {t}"))
        elif i and times[i - 1] is not None and t < times[i - 1]:
            found.append(("times_non_decreasing", f"times[{i}]={t} < times[{i - 1}]={times[i - 1]}"))
    return found


def _meta_problems(meta: str) -> list[tuple[str, str]]:
    try:
        value = files.loads_json(meta, "meta")
    except (files.JsonError, TypeError) as e:
        return [("meta_json", f"meta is not JSON: {e}")]
    if not isinstance(value, dict):
        return [("meta_json", f"meta is JSON {type(value).__name__}, not an object")]
    return []
