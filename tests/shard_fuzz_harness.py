"""Runs validate, stats and the trainer's index on byte-flipped copies of shards, in one
process that the test starts: a segfault or bus error kills this process, and the test sees
the signal and the case that was running (printed before it starts).

    python shard_fuzz_harness.py CORPUS FEATURES CASES SEED

Prints one JSON line per case: {"case", "shard", "flips", "answers": {command: exit code or
"traceback: ..."}}. Each case writes the mutated bytes over one shard of CORPUS, runs the
three, and puts the original bytes back.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import sys
import traceback
from pathlib import Path

from emu_data import cli
from emu_data.model import data

# Where Arrow keeps what a reader trusts: the schema at the start, the footer and the last
# batch's metadata at the end; most flips land there, the rest anywhere.
EDGE = 2048


def flips(size: int, rng: random.Random) -> list[tuple[int, int]]:
    where = []
    for _ in range(rng.choice((1, 1, 1, 2, 4))):
        zone = rng.random()
        if zone < 0.4:
            at = rng.randrange(min(size, EDGE))
        elif zone < 0.8:
            at = size - 1 - rng.randrange(min(size, EDGE))
        else:
            at = rng.randrange(size)
        where.append((at, rng.randrange(256)))
    return where


def quiet_cli(args: list[str]) -> int | str:
    """cli.main's exit code; an exception escaping it (a traceback for a user) as text."""
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            return cli.main(args)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    except BaseException:  # noqa: BLE001 - what the test must never see
        return "traceback: " + traceback.format_exc(limit=3)[-600:]


def index(corpus: Path, features: Path) -> int | str:
    """The trainer's index: built (0), or the trainer's own DataError (2, as the CLI exits)."""
    try:
        data.build_index(corpus, features, data.DataConfig())
        return 0
    except data.DataError:
        return 2
    except BaseException:  # noqa: BLE001
        return "traceback: " + traceback.format_exc(limit=3)[-600:]


def main(corpus: Path, features: Path, cases: int, seed: int) -> None:
    rng = random.Random(seed)
    shards = sorted(p for kind in ("data", "status") for p in (corpus / kind).glob("*.arrow"))
    for case in range(cases):
        shard = shards[case % len(shards)]
        original = shard.read_bytes()
        mutant = bytearray(original)
        changes = flips(len(original), rng)
        for at, value in changes:
            mutant[at] = value
        print(json.dumps({"case": case, "shard": shard.name, "flips": changes, "start": True}), flush=True)
        shard.write_bytes(bytes(mutant))
        try:
            answers = {"validate": quiet_cli(["validate", str(corpus)]),
                       "stats": quiet_cli(["stats", str(corpus)]),
                       "index": index(corpus, features)}
        finally:
            shard.write_bytes(original)
        print(json.dumps({"case": case, "shard": shard.name, "flips": changes, "answers": answers}), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
