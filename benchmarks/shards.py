"""Shard I/O throughput: our writer/reader/validator against bare pyarrow on the same rows.

    python benchmarks/shards.py --rows 20000 --image-kb 12

Reports rows/s and MB/s, and each of ours as a ratio to the bare pyarrow baseline measured
in the same run (machines here are noisy; the ratio is what to compare across runs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from emu_data.core import schema
from emu_data.core.shards import ShardLimits, ShardWriter, read_shard
from emu_data.inspect.validate import validate

from _timing import best_of_pair, timed  # noqa: E402  (benchmarks/ is on sys.path when run as a script)


def make_rows(n: int, image_kb: int) -> list[dict]:
    """LAION-like pairs with real JPEG bytes (noise, so they don't compress away)."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    side = max(8, int((image_kb * 1024 / 3) ** 0.5))
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buf, "JPEG", quality=60)
    jpeg = buf.getvalue()
    return [{"key": f"laion:{i:09d}", "source": "laion", "texts": [None, f"caption number {i} " * 4],
             "images": [{"bytes": jpeg, "path": None}, None], "times": None,
             "meta": json.dumps({"url": f"https://img.invalid/{i}.jpg", "similarity": 0.3})}
            for i in range(n)]






def bench_write(rows: list[dict], out: Path, shard_rows: int) -> dict:
    s = schema.arrow_schema("interleaved")

    def ours():
        writer = ShardWriter(out / "ours", "u", s, ShardLimits(max_rows=shard_rows), root=out)
        for row in rows:
            writer.write(row)
        return writer.close()

    def bare():  # same rows, shard size and 256-row batches; no rename, fsync or sha256
        (out / "bare").mkdir(parents=True, exist_ok=True)
        for k, start in enumerate(range(0, len(rows), shard_rows)):
            with pa.OSFile(str(out / "bare" / f"{k}.arrow"), "wb") as f, pa.ipc.new_file(f, s) as w:
                for b in range(start, min(start + shard_rows, len(rows)), 256):
                    w.write_table(pa.Table.from_pylist(rows[b:min(b + 256, start + shard_rows)], schema=s))

    (t_bare, _), (t_ours, infos) = best_of_pair(bare, ours)
    size = sum(i.bytes for i in infos)
    return infos, {"rows": len(rows), "mb": round(size / 1e6, 1),
            "bare_rows_per_s": round(len(rows) / t_bare), "ours_rows_per_s": round(len(rows) / t_ours),
            "ours_mb_per_s": round(size / 1e6 / t_ours, 1), "ratio_vs_bare": round(t_bare / t_ours, 2)}


def bench_read(out: Path) -> dict:
    paths = sorted((out / "ours").glob("*.arrow"))

    def scan(read):
        total = 0
        for p in paths:
            images = pc.struct_field(pc.list_flatten(read(p).column("images")), "bytes")
            total += pc.sum(pc.binary_length(images)).as_py() or 0
        return total

    def bare_read(p):  # read the whole file into memory, then parse
        return pa.ipc.open_file(pa.BufferReader(Path(p).read_bytes())).read_all()

    (t_bare, n_bare), (t_ours, n_ours) = best_of_pair(lambda: scan(bare_read), lambda: scan(read_shard))
    assert n_bare == n_ours
    return {"image_mb_scanned": round(n_ours / 1e6, 1), "bare_mb_per_s": round(n_bare / 1e6 / t_bare),
            "ours_mb_per_s": round(n_ours / 1e6 / t_ours), "ratio_vs_bare": round(t_bare / t_ours, 2)}


def bench_validate(out: Path, infos: list, rows: int) -> dict:
    from emu_data.core import corpus

    # validate wants a corpus directory: link the shards into one and commit a manifest
    (out / "corpus" / "data").mkdir(parents=True, exist_ok=True)
    for info in infos:
        os.link(out / info.path, out / "corpus" / "data" / Path(info.path).name)
    shards = [{**i.to_dict(), "path": f"data/{Path(i.path).name}"} for i in infos]
    part = {"shards": shards, "status_shards": [], "status_counts": {}, "source_counts": {"laion": rows},
            "unit": "u"}
    corpus.finalize(out / "corpus", stage="benchmark", config={}, fingerprint="-", parts=[part])
    results = {}
    for deep in (False, True):
        t, report = timed(lambda: validate([out / "corpus"], deep=deep))
        results["deep" if deep else "default"] = {
            "rows_per_s": round(rows / t), "images_decoded": report.decoded,
            "violations": len(report.violations)}
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--image-kb", type=int, default=12)
    ap.add_argument("--shard-rows", type=int, default=5_000)
    args = ap.parse_args()
    rows = make_rows(args.rows, args.image_kb)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        infos, write = bench_write(rows, out, args.shard_rows)
        report = {
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
                       f"pyarrow {pa.__version__}",
            "write": write,
            "read": bench_read(out),
            "validate": bench_validate(out, infos, args.rows),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
