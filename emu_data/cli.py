"""`emu-data`: the command line. Parse arguments, call one library function, report.

Exit codes: 0 success, 1 the data is at fault (validation found violations, units failed),
2 the command cannot work with what it was given (bad arguments, missing or foreign path).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from emu_data import __version__

EPILOG = "Docs: README.md. Record definitions: schemas/*.json."


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * args.verbose + 10 * args.quiet,
                        format="%(levelname)s %(name)s: %(message)s")
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("interrupted: committed work is kept; rerun the same command to resume", file=sys.stderr)
        return 130
    except _user_errors() as e:
        print(f"emu-data {args.command}: error: {e}", file=sys.stderr)
        return 2
    except _data_errors() as e:
        print(f"emu-data {args.command}: {e}", file=sys.stderr)
        return 1


def _user_errors() -> tuple[type[Exception], ...]:
    from emu_data.corpus import LayoutChanged
    from emu_data.manifest import ManifestError
    from emu_data.validate import UnusableInput

    return (LayoutChanged, ManifestError, UnusableInput, FileNotFoundError, NotADirectoryError,
            ValueError)


def _data_errors() -> tuple[type[Exception], ...]:
    from emu_data.stage import StageIncomplete

    return (StageIncomplete,)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emu-data",
        description="Build Emu-style interleaved image-text pretraining corpora as Arrow shards.",
        epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"emu-data {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="less log output")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_sample, _add_validate, _add_stats, _add_preview):
        add(commands)
    return parser


# ---- shared option groups --------------------------------------------------------------

def _output_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--out", type=Path, required=True, help="corpus directory to write (created)")
    g.add_argument("--shard-rows", type=_positive_int, default=10_000, metavar="N",
                   help="at most N samples per shard (default 10000)")
    g.add_argument("--shard-bytes", type=_size, default="256MB", metavar="SIZE",
                   help="at most about SIZE per shard, e.g. 64MB, 1GB (default 256MB)")
    g.add_argument("--overwrite", action="store_true",
                   help="replace what an earlier run with another configuration wrote in --out")


def _ray_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("parallelism (Ray)")
    g.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="join this Ray cluster (e.g. auto, ray://head:10001); default: RAY_ADDRESS, "
                        "else an embedded local Ray")
    g.add_argument("--num-cpus", type=_positive_int, default=None, metavar="N",
                   help="CPUs for the embedded local Ray (default: all)")


def _output_from(args):
    from emu_data.stage import OutputOptions

    return OutputOptions(args.out, args.shard_rows, args.shard_bytes, args.overwrite)


def _ray_from(args):
    from emu_data.runtime import RayOptions

    return RayOptions(address=args.ray_address, num_cpus=args.num_cpus)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def _size(text: str) -> int:
    """Parse 512MB, 1GiB, 1000000 into bytes."""
    number = text.rstrip("KMGIBkmgib")
    unit = text[len(number):].upper()
    try:
        value = int(float(number) * _UNITS[unit])
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 64MB, 1GB, 1GiB)") from None
    if value < 1:
        raise argparse.ArgumentTypeError("size must be positive")
    return value


# ---- commands ----------------------------------------------------------------------------

def _add_sample(commands) -> None:
    p = commands.add_parser(
        "sample", help="write a small corpus of every source kind from a generated world (no network)",
        description="Write a small valid corpus of all five source kinds (yt_storyboard, laion, "
                    "laion_coco, mmc4, webvid) from a generated world of drawn scenes whose "
                    "captions and subtitles name what is drawn. No network.",
        epilog="example: emu-data sample --out runs/sample --n 32")
    p.add_argument("--n", type=_positive_int, default=16, help="items per source (default 16)")
    p.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    p.add_argument("--sources", default=None, metavar="LIST",
                   help="comma-separated subset of sources (default: all five)")
    p.add_argument("--frames-per-sample", type=_positive_int, default=16,
                   help="storyboard frames per sample before a video is cut (default 16)")
    _output_options(p)
    _ray_options(p)
    p.set_defaults(handler=_run_sample)


def _run_sample(args) -> int:
    from emu_data.sources import sample

    config = sample.SampleConfig(
        n=args.n, seed=args.seed, frames_per_sample=args.frames_per_sample,
        sources=tuple(args.sources.split(",")) if args.sources else sample.SOURCES)
    result = sample.make_sample(config, _output_from(args), _ray_from(args))
    m = result.manifest
    state = "already complete, nothing to do" if result.reused else f"{result.ran_units} unit(s) run"
    print(f"wrote {args.out}: {m['rows']} samples in {len(m['shards'])} shard(s) ({state})")
    print("  by source: " + ", ".join(f"{s} {n}" for s, n in m["source_counts"].items()))
    return 0


def _add_validate(commands) -> None:
    p = commands.add_parser(
        "validate", help="check shards and manifests against the schemas",
        description="Check every shard and manifest under each PATH: schema (names, types), "
                    "per-row invariants, images decode, unique keys, manifest vs files. Prints one "
                    "line per violation (file:row: [rule] key=... message) and a summary. Exit 0 "
                    "clean, 1 violations, 2 unusable input.",
        epilog="example: emu-data validate runs/sample --deep")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="corpus directory (or a folder of them)")
    p.add_argument("--deep", action="store_true", help="fully decode every image (default: a sample per shard)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--max-lines", type=int, default=200, help="violation lines to print (default 200)")
    p.set_defaults(handler=_run_validate)


def _run_validate(args) -> int:
    from emu_data.validate import validate

    report = validate(args.paths, deep=args.deep)
    if args.json:
        print(json.dumps({"ok": report.ok, "summary": report.summary(),
                          "violations": [v.__dict__ for v in report.violations]}, indent=2))
    else:
        for v in report.violations[:args.max_lines]:
            print(v)
        if len(report.violations) > args.max_lines:
            print(f"... and {len(report.violations) - args.max_lines} more")
        print(report.summary())
    return 0 if report.ok else 1


def _add_stats(commands) -> None:
    p = commands.add_parser(
        "stats", help="samples, images, texts and bytes by source; status counts by reason",
        epilog="example: emu-data stats runs/sample --json")
    p.add_argument("path", type=Path, metavar="PATH", help="a finished corpus directory")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=_run_stats)


def _run_stats(args) -> int:
    from emu_data import stats

    computed = stats.compute(args.path)
    print(json.dumps(computed.to_dict(), indent=2) if args.json else stats.format_table(computed))
    return 0


def _add_preview(commands) -> None:
    p = commands.add_parser(
        "preview", help="write a self-contained HTML page showing samples as a person reads them",
        epilog="example: emu-data preview runs/sample --out runs/sample.html --n 20")
    p.add_argument("path", type=Path, metavar="PATH", help="a finished corpus directory")
    p.add_argument("--out", type=Path, required=True, help="HTML file to write")
    p.add_argument("--n", type=_positive_int, default=20, help="samples to show (default 20)")
    p.set_defaults(handler=_run_preview)


def _run_preview(args) -> int:
    from emu_data.preview import write_preview

    shown = write_preview(args.path, args.out, args.n)
    print(f"wrote {args.out} ({shown} samples)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
