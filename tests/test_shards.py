import pyarrow as pa
import pytest

from emu_data.core import schema
from emu_data.core.shards import ShardLimits, ShardWriter, approx_row_bytes, file_sha256, read_shard


def _rows(n, text_len=10):
    return [{"key": f"laion:{i}", "source": "laion", "texts": [None, "x" * text_len],
             "images": [{"bytes": b"\xff\xd8" + bytes(50), "path": None}, None],
             "times": None, "meta": "{}"} for i in range(n)]


def _write(tmp_path, rows, limits):
    writer = ShardWriter(tmp_path / "data", "u0001", schema.arrow_schema("interleaved"), limits, root=tmp_path)
    for row in rows:
        writer.write(row)
    return writer.close()


def test_shards_are_bounded_by_rows_and_named_deterministically(tmp_path):
    infos = _write(tmp_path, _rows(25), ShardLimits(max_rows=10))
    assert [i.path for i in infos] == ["data/u0001-00000.arrow", "data/u0001-00001.arrow",
                                      "data/u0001-00002.arrow"]
    assert [i.rows for i in infos] == [10, 10, 5]
    keys = [k for i in infos for k in read_shard(tmp_path / i.path).column("key").to_pylist()]
    assert keys == [f"laion:{i}" for i in range(25)]


def test_shards_are_bounded_by_bytes(tmp_path):
    infos = _write(tmp_path, _rows(20, text_len=1000), ShardLimits(max_rows=1000, max_bytes=5000))
    assert len(infos) >= 4
    assert all(i.rows <= 5 for i in infos)


def test_manifest_facts_match_the_files_and_no_temporary_file_remains(tmp_path):
    infos = _write(tmp_path, _rows(7), ShardLimits(max_rows=3))
    for info in infos:
        path = tmp_path / info.path
        assert path.stat().st_size == info.bytes
        assert file_sha256(path) == info.sha256
    assert not [p for p in (tmp_path / "data").iterdir() if p.name.startswith(".tmp-")]


def test_an_aborted_shard_never_appears_under_its_final_name(tmp_path):
    writer = ShardWriter(tmp_path / "data", "u0002", schema.arrow_schema("interleaved"),
                         ShardLimits(max_rows=3), root=tmp_path)
    for row in _rows(400):  # enough rows that a batch was flushed to the temporary file
        writer.write(row)
    finished = list(writer.finished)
    writer.abort()
    names = sorted(p.name for p in (tmp_path / "data").iterdir())
    assert names == sorted(f"u0002-{i:05d}.arrow" for i in range(len(finished)))


def test_same_rows_give_byte_identical_shards(tmp_path):
    a = _write(tmp_path / "a", _rows(12), ShardLimits(max_rows=5))
    b = _write(tmp_path / "b", _rows(12), ShardLimits(max_rows=5))
    assert [i.sha256 for i in a] == [i.sha256 for i in b]


def test_reader_memory_maps_instead_of_copying(tmp_path):
    info = _write(tmp_path, _rows(300, text_len=10_000), ShardLimits())[0]
    before = pa.total_allocated_bytes()
    table = read_shard(tmp_path / info.path)
    allocated = pa.total_allocated_bytes() - before
    assert table.num_rows == 300
    assert table.nbytes > 3_000_000
    assert allocated < table.nbytes / 10  # the column data stays in the mapped file


def test_limits_must_be_positive():
    with pytest.raises(ValueError):
        ShardLimits(max_rows=0)


def test_values_that_differ_between_batches_write_fine(tmp_path):
    """A shard spans many 256-row batches with different sources and reasons in each: the
    columns must not depend on one dictionary per file (Arrow IPC files allow only one)."""
    sources = ["laion"] * 300 + ["mmc4"] * 300
    rows = [{**r, "key": f"{s}:{i}", "source": s} for i, (r, s) in enumerate(zip(_rows(600), sources))]
    infos = _write(tmp_path, rows, ShardLimits(max_rows=10_000))
    assert read_shard(tmp_path / infos[0].path).column("source").to_pylist() == sources
    status = ShardWriter(tmp_path / "status", "u", schema.arrow_schema("status"), ShardLimits(), root=tmp_path)
    for i in range(600):
        status.write({"key": f"laion:{i}", "source": "laion", "input": None, "attempts": 1, "samples": 0,
                      "status": "ok" if i < 300 else "http_404", "error": None if i < 300 else "gone"})
    assert status.close()[0].rows == 600


@pytest.mark.parametrize("limits", [ShardLimits(max_rows=7), ShardLimits(max_rows=1000, max_bytes=3000)])
def test_tables_and_rows_mix_in_order_within_the_same_limits(tmp_path, limits):
    """write_table places Arrow rows as write() places Python ones (its byte bound by the
    table's average row); mixed, the rows keep their order; batches split into bounded
    record batches."""
    rows = _rows(40, text_len=100)
    table = pa.Table.from_pylist(rows, schema=schema.arrow_schema("interleaved"))
    writer = ShardWriter(tmp_path / "data", "u", schema.arrow_schema("interleaved"), limits, root=tmp_path)
    writer.batch_rows = 4
    writer.write_table(table.slice(0, 15))
    for row in rows[15:20]:
        writer.write(row)
    assert writer.write_table(table.slice(20)) == {}
    infos = writer.close()
    keys = [k for i in infos for k in read_shard(tmp_path / i.path).column("key").to_pylist()]
    assert keys == [r["key"] for r in rows]
    row_bytes = min(approx_row_bytes(rows[0]), table.nbytes // 40)   # write()'s estimate, write_table()'s
    row_bound = 7 if limits.max_rows == 7 else 3000 // row_bytes
    assert all(i.rows <= row_bound for i in infos) and len(infos) >= 40 // row_bound
    for info in infos:
        batches = pa.ipc.open_file(str(tmp_path / info.path)).num_record_batches
        assert batches >= -(-info.rows // 4)
