"""The one YAML reader for text a user hands us: recipes, `run --set` values, `train --config`.

PyYAML's SafeLoader runs no code, but hostile text still hurts it in three ways, each
refused here while the node tree is composed, before anything walks it:

- anchors and aliases: nine aliases over six levels (a 396-byte "billion laughs") expand
  to 9**6 nodes on every walk (111 s and 2.1 GB for `run --dry-run`). Recipes and configs
  do not need them, so both `&name` and `*name` are refused outright;
- nesting: the composer and constructor recurse per level, so "[" * 20000 ends in
  RecursionError; at most MAX_DEPTH levels are composed;
- errors: a tag with no constructor, bad !!binary, an impossible date, a parse error, any
  exception a constructor raises on a tagged value: each becomes one InputError,
  `SOURCE:LINE: reason` on one line, the user's text in it clipped.
"""

from __future__ import annotations

import yaml

from emu_data.core.errors import UsageError

# Recipes and configs nest 3-4 levels. Composing and constructing recurse several frames a
# level: with Python's default stack, loading "[" * n fails from n = 200 (measured).
MAX_DEPTH = 100
QUOTE_LIMIT = 200
ALIASES = ("anchors and aliases (&name, *name) are refused: recipes and configs do not "
           "need them, and each alias can multiply what the file expands to")


class InputError(UsageError):
    """YAML we do not take, located: str() is `SOURCE:LINE: reason` on one line."""

    def __init__(self, source: str, line: int, reason: str):
        self.source, self.line, self.reason = source, line, one_line(reason)
        super().__init__(f"{source}:{line}: {self.reason}")


def clip(text: str, limit: int = QUOTE_LIMIT) -> str:
    """text, or its first `limit` characters and how many were left out."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


def one_line(text: str) -> str:
    """An error message on one line, user content in it clipped."""
    return clip(" ".join(text.split()), 2 * QUOTE_LIMIT)


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses anchors, aliases and deep nesting while composing, and
    locates every construction error at its node."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.MarkedYAMLError(problem=ALIASES, problem_mark=event.start_mark)
        if self._depth >= MAX_DEPTH:
            raise yaml.MarkedYAMLError(problem=f"nested deeper than {MAX_DEPTH} levels",
                                       problem_mark=event.start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep=deep)
        except yaml.YAMLError:
            raise
        except Exception as e:   # noqa: BLE001 - PyYAML's constructors raise whatever parsing an
            # explicitly tagged value hits: ValueError for 2024-13-45 or a 5000-digit int,
            # AttributeError for `!!timestamp ''`, binascii.Error for bad !!binary
            what = f"{node.tag.rsplit(':', 1)[-1]} {clip(repr(node.value), 60)}"
            raise yaml.MarkedYAMLError(problem=f"{what}: {e}", problem_mark=node.start_mark) from None


def compose(text: str, source: str) -> yaml.Node | None:
    """The node tree of one YAML document (None if empty), with the line of every node."""
    try:
        loader = _Loader(text)   # its reader refuses control characters right here
        try:
            return loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        raise _located(e, source, text) from None


def construct(node: yaml.Node | None, source: str):
    """The plain Python value of a composed node (YAML's own typing of scalars)."""
    if node is None:
        return None
    try:
        return _Loader("").construct_object(node, deep=True)
    except yaml.YAMLError as e:
        raise _located(e, source, "") from None


def load(text: str, source: str):
    """yaml.safe_load, hardened: a plain value, or InputError."""
    return construct(compose(text, source), source)


def decode(data: bytes, source: str) -> str:
    """A file's bytes as UTF-8 text; bytes that are not name their line."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(source, data[:e.start].count(b"\n") + 1, f"not UTF-8 text ({e.reason})") from None


def _located(error: yaml.YAMLError, source: str, text: str) -> InputError:
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        words = " ".join(str(w) for w in (error.context, error.problem) if w)
        return InputError(source, mark.line + 1 if mark else 1, f"YAML: {clip(words)}")
    if isinstance(error, yaml.reader.ReaderError):   # a control character; it has no mark
        line = text[:error.position].count("\n") + 1
        return InputError(source, line, f"YAML: character #x{error.character:04x} is not allowed")
    return InputError(source, 1, f"YAML: {clip(str(error))}")
