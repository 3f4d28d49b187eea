import json

import pyarrow as pa
import pytest

from emu_data.core import schema


@pytest.mark.parametrize("name", ["interleaved", "status", "features"])
def test_arrow_schema_has_exactly_the_json_columns(name):
    raw = json.loads((schema.schemas_dir() / f"{name}.json").read_text())
    built = schema.arrow_schema(name, params={"storage": "float16", "size": 4})
    assert built.names == [f["name"] for f in raw["fields"]]
    assert built.metadata[b"emu_data.core.schema"] == name.encode()
    assert built.metadata[b"emu_data.version"] == raw["version"].encode()


def test_interleaved_types_follow_the_grammar():
    s = schema.arrow_schema("interleaved")
    # plain strings: an Arrow IPC file holds one dictionary per column, and a shard's
    # batches can carry different sources or reasons
    assert s.field("source").type == pa.string()
    assert s.field("images").type == pa.list_(schema.IMAGE_STRUCT)
    assert s.field("times").type == pa.list_(pa.float64())
    assert s.field("meta").type == pa.string()


def test_fixed_size_list_takes_parameters():
    t = schema.parse_type("fixed_size_list<{storage}>[{size}]", {"storage": "uint16", "size": 257})
    assert t == pa.list_(pa.uint16(), 257)


@pytest.mark.parametrize("bad", ["strng", "list<>", "map<string,int32>", "fixed_size_list<float16>"])
def test_unknown_types_are_refused(bad):
    with pytest.raises(schema.SchemaError):
        schema.parse_type(bad)


def test_manifest_schema_is_a_json_schema():
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(schema.load_json("manifest"))


def _row(**changes):
    row = {"key": "laion:1", "source": "laion", "texts": [None, "a red circle"],
           "images": [{"bytes": b"\xff\xd8", "path": None}, None], "times": None, "meta": "{}"}
    row.update(changes)
    return row


@pytest.mark.parametrize("changes, rule", [
    ({"texts": ["both", "a"]}, "one_per_position"),
    ({"texts": [None, None]}, "one_per_position"),
    ({"times": [1.0, 0.5]}, "times_non_decreasing"),
    ({"times": [-1.0, 0.5]}, "times_non_negative"),
    ({"times": [0.0]}, "times_length"),
    ({"source": "flickr"}, "enum"),
    ({"meta": "[1, 2]"}, "meta_json"),
    ({"meta": "{oops"}, "meta_json"),
    ({"key": None}, "not_null"),
    ({"texts": ["a"], "images": [None, None]}, "parallel_lists"),
])
def test_interleaved_invariants(changes, rule):
    assert rule in {r for r, _ in schema.interleaved_problems(_row(**changes))}


def test_a_sound_row_has_no_problems():
    assert schema.interleaved_problems(_row(times=[0.0, 0.0])) == []
