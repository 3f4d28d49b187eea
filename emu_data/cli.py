"""`emu-data`: the command line. Parse arguments, call one command (commands.py), report.

Every option is a field of the dataclass that takes it (options.py); this module only turns
them into argparse parsers and maps what a command raises to an exit code (errors.py).

Exit codes: 0 success, 1 the data is at fault (validation found violations, units failed),
2 the command cannot work with what it was given (bad arguments, missing or foreign path),
130 interrupted (Ctrl-C), 143 terminated (SIGTERM: timeout, Slurm, Kubernetes).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from emu_data import __version__
from emu_data.core import secrets

EPILOG = "Docs: README.md. Record definitions: schemas/*.json."


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is: units stop, what committed stays."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser, commands = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * args.verbose + 10 * args.quiet,
                        format="%(levelname)s %(name)s: %(message)s")
    secrets.redact_log_records()   # a proxy password never reaches a log line
    if args.command is None:
        parser.print_help()
        return 2
    command = commands[args.command]
    with _sigterm_interrupts():
        try:
            from emu_data.commands import build_values

            return command.execute(build_values(command, args))
        except Terminated:
            print("terminated: committed work is kept; rerun the same command to resume", file=sys.stderr)
            return 143
        except KeyboardInterrupt:
            print("interrupted: committed work is kept; rerun the same command to resume", file=sys.stderr)
            return 130
        except Exception as e:   # errors.py: 2 usage, 1 data (or disk) at fault; anything else is a bug
            from emu_data.core import errors

            status = errors.exit_status(e)
            if status is None:
                raise
            print(errors.message(e, args.command), file=sys.stderr)
            return status


class _sigterm_interrupts:
    """While a command runs, SIGTERM raises Terminated in the main thread (Ray's driver
    handler would sys.exit from wherever it lands, and its core worker aborts)."""

    def __enter__(self):
        self.previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _raise_terminated)

    def __exit__(self, *exc):
        signal.signal(signal.SIGTERM, self.previous)


def _raise_terminated(signum, frame):
    raise Terminated()


def build_parser(argv: list[str] | None = None):
    """The parser, and the commands by name. Only the command named in argv gets its options
    (building one imports its modules): `emu-data stats` does not import torch."""
    from emu_data import commands as table

    commands = table.all_commands()
    named = next((word for word in argv or () if word in commands), None)
    parser = argparse.ArgumentParser(
        prog="emu-data",
        description="Build Emu-style interleaved image-text pretraining corpora as Arrow shards.",
        epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"emu-data {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="less log output")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in commands.values():
        p = subparsers.add_parser(command.name, help=command.help, description=_wrapped(command.description),
                                  epilog=command.epilog or None, formatter_class=argparse.RawDescriptionHelpFormatter)
        if command.name == named:
            table.fill_parser(p, command)
    return parser, commands


def _wrapped(text: str) -> str | None:
    """A description as argparse would wrap it, its own line breaks kept (examples keep theirs)."""
    import shutil
    import textwrap

    width = min(shutil.get_terminal_size().columns, 100) - 2
    return "\n".join(textwrap.fill(line, width) for line in text.split("\n")) if text else None


if __name__ == "__main__":
    sys.exit(main())
