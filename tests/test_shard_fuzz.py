"""Shards with changed bytes (issue 15, break 2): validate, stats and the trainer's index
answer with an exit code of 0, 1 or 2 and a line, never a traceback, a segfault or a bus
error. A memory-mapped Arrow file used to be trusted before it was checked: one changed
byte in a status shard made `emu-data validate` die with SIGSEGV.

The flipping runs in a child process (tests/shard_fuzz_harness.py) so that a crash of the
reader is seen as the child's signal, with the case it was running.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from emu_data import cli
from emu_data.core.shards import ShardError, read_shard

HARNESS = Path(__file__).with_name("shard_fuzz_harness.py")
CASES = int(os.environ.get("EMU_FUZZ_SHARDS", "80"))


def run_harness(corpus: Path, features: Path, cases: int, seed: int) -> list[dict]:
    done = subprocess.run([sys.executable, str(HARNESS), str(corpus), str(features), str(cases), str(seed)],
                          capture_output=True, text=True, timeout=1800)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    last = lines[-1] if lines else None
    assert done.returncode == 0, f"the harness died (exit {done.returncode}) in case {last}: {done.stderr[-2000:]}"
    return [line for line in lines if "answers" in line]


def assert_every_answer_is_an_exit_code(results: list[dict], cases: int) -> None:
    assert len(results) == cases
    bad = [(r["case"], r["shard"], r["flips"], command, answer)
           for r in results for command, answer in r["answers"].items() if answer not in (0, 1, 2)]
    assert not bad, bad[:3]


def test_flipped_bytes_in_data_and_status_shards_never_crash_a_reader(corpus_copy, sample_features):
    results = run_harness(corpus_copy, sample_features, CASES, seed=0)
    assert_every_answer_is_an_exit_code(results, CASES)
    validated = [r["answers"]["validate"] for r in results]
    assert validated.count(1) > CASES // 2   # a changed byte is (almost always) a violation
    assert any(r["answers"]["stats"] == 2 for r in results)   # refused with a line, not read


@pytest.mark.soak
@pytest.mark.slow   # also out of `pytest -m "not slow"`, whose -m replaces the default "not soak"
def test_flipped_bytes_many_more_cases(corpus_copy, sample_features):
    results = run_harness(corpus_copy, sample_features, 20 * CASES, seed=1)
    assert_every_answer_is_an_exit_code(results, 20 * CASES)


def test_the_byte_that_made_validate_segfault(tmp_path, ray_session, capsys):
    """`emu-data sample --out s1 --n 4 --seed 0`, byte 1451 of status/laion-00000-00000.arrow
    set to 0xD6: SIGSEGV before. Now a violation (exit 1) and a refusal by stats (exit 2)."""
    corpus = tmp_path / "s1"
    assert cli.main(["sample", "--out", str(corpus), "--n", "4", "--seed", "0", "--num-cpus", "2"]) == 0
    shard = corpus / "status" / "laion-00000-00000.arrow"
    data = bytearray(shard.read_bytes())
    data[1451] = 0xD6
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=r"laion-00000-00000\.arrow: record batch 0 is corrupt"):
        read_shard(shard)
    capsys.readouterr()
    assert cli.main(["validate", str(corpus)]) == 1
    out = capsys.readouterr().out
    assert "[unreadable_shard]" in out and "record batch 0 is corrupt" in out
    assert cli.main(["stats", str(corpus)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "laion-00000-00000.arrow" in err and "Traceback" not in err
