"""Options defined once: as fields of the dataclasses that take them.

A config dataclass marks a field as a command-line option with `option(default, help=...)`:
the default lives in the field, the flag is the field's name (`rows_per_unit` ->
`--rows-per-unit`) unless the metadata names another, and the help shows the default by
itself. From these fields `add_options` builds argparse arguments, `build` makes the
dataclass back from what argparse parsed, and `find` answers a recipe's option names, so
the command line, the recipe checker and `--dry-run` never restate an option.

A field without `option(...)` is not exposed; a field holding a dataclass whose own fields
are options (LaionConfig.image) is walked into.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

_KEY = "option"


@dataclass(frozen=True)
class Opt:
    """How one field shows on the command line."""

    help: str
    flag: str | None = None              # default: --field-name
    metavar: str | None = None
    parse: Callable[[str], Any] | None = None   # one word -> value (argparse `type`)
    choices: tuple | None = None
    positional: bool = False
    many: bool = False                   # one or more words
    repeat: bool = False                 # the flag once per value
    required: bool = False
    show: Callable[[Any], str] | None = None    # the default as --help shows it
    store: Callable[[Any], Any] | None = None   # the parsed value -> the field's value
    mapping: Callable[[dict], Any] | None = None  # a recipe may give a mapping: checked, saved as JSON


def option(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING,
           repr: bool = True, compare: bool = True, **opt) -> Any:
    """A dataclass field that is also a command-line option (see Opt for the keywords)."""
    kwargs = {"default": default} if default_factory is dataclasses.MISSING else {"default_factory": default_factory}
    return dataclasses.field(**kwargs, repr=repr, compare=compare, metadata={_KEY: Opt(**opt)})


@dataclass(frozen=True)
class Params:
    """One dataclass a command takes from its command line, handed to it under `name`."""

    name: str
    type: type
    group: str | None = None             # argparse group title
    only: tuple[str, ...] | None = None  # the fields exposed (default: every option field)
    overrides: bool = False              # options only override a loaded config: unset is None


@dataclass(frozen=True)
class Spec:
    """One option as found in a Params: where it lives and how it shows."""

    params: Params
    path: tuple[str, ...]                # field names from the Params' dataclass down
    opt: Opt
    default: Any

    @property
    def dest(self) -> str:
        return ".".join((self.params.name, *self.path))

    @property
    def name(self) -> str:
        """What a recipe calls it: the flag without dashes, - as _ (or the field, positionals)."""
        return self.path[-1] if self.opt.positional else self.flag[2:].replace("-", "_")

    @property
    def flag(self) -> str:
        return self.opt.flag or "--" + self.path[-1].replace("_", "-")

    @property
    def is_flag(self) -> bool:
        """A switch: a bool with no value word."""
        return isinstance(self.default, bool) and self.opt.parse is None

    @property
    def is_path(self) -> bool:
        return self.opt.parse is Path


def specs(params: Params) -> list[Spec]:
    found = list(_walk(params, params.type, (), None))
    if params.only is not None:
        found = [s for s in found if s.path[0] in params.only]
    return found


def _walk(params: Params, cls: type, path: tuple, defaults) -> Iterator[Spec]:
    for f in dataclasses.fields(cls):
        default = _default(f, defaults)
        opt = f.metadata.get(_KEY)
        if opt is not None:
            yield Spec(params, (*path, f.name), opt, default)
        elif dataclasses.is_dataclass(default):
            yield from _walk(params, type(default), (*path, f.name), default)


def _default(f: dataclasses.Field, parent) -> Any:
    if parent is not None:
        return getattr(parent, f.name)
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


# ---- argparse ----------------------------------------------------------------------------

def add_options(parser: argparse.ArgumentParser, all_params: tuple[Params, ...]) -> None:
    groups: dict[str | None, Any] = {None: parser}
    for params in all_params:
        if params.group not in groups:
            groups[params.group] = parser.add_argument_group(params.group)
        for spec in specs(params):
            _add(groups[params.group], spec)


def _add(group, spec: Spec) -> None:
    opt = spec.opt
    default = None if spec.params.overrides else spec.default
    kwargs: dict[str, Any] = {"help": _help(spec)}
    if spec.is_flag:
        kwargs["action"] = argparse.BooleanOptionalAction if spec.default else "store_true"
        kwargs["default"] = None if spec.params.overrides else spec.default
    else:
        metavar = opt.metavar or (None if opt.choices else spec.flag[2:].upper().replace("-", "_"))
        kwargs.update(type=_parser(opt.parse), choices=opt.choices, metavar=metavar)
        if opt.repeat:
            kwargs.update(action="append", default=None)
        else:
            kwargs["default"] = default
        if opt.many:
            kwargs["nargs"] = "+" if opt.required or not opt.positional else "*"
    if opt.positional:
        kwargs["metavar"] = opt.metavar or spec.path[-1].upper()
        group.add_argument(spec.dest, **kwargs)
        return
    if opt.required:
        kwargs["required"] = True
    group.add_argument(spec.flag, dest=spec.dest, **kwargs)


def _parser(parse):
    """parse, with a UsageError's message shown by argparse as it is (it names the option)."""
    if parse is None or parse in (int, float, Path, str):
        return parse

    def typed(text: str):
        from emu_data.core.errors import UsageError

        try:
            return parse(text)
        except UsageError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    typed.__name__ = getattr(parse, "__name__", "value")
    return typed


def _help(spec: Spec) -> str:
    shown = shown_default(spec)
    text = spec.opt.help
    if "{default}" in text:
        return text.replace("{default}", shown or "none").replace("%", "%%")
    text = text.replace("%", "%%")
    return f"{text} (default {shown})" if shown is not None else text


def shown_default(spec: Spec) -> str | None:
    value = spec.default
    if spec.opt.show is not None:
        return spec.opt.show(value)
    if value is None or value is False or value == () or spec.opt.required or spec.opt.positional:
        return None
    if value is True:
        return "on"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return str(value)


def build(params: Params, namespace: argparse.Namespace):
    """The Params' dataclass from parsed arguments (overrides: {path: value} of those given)."""
    given = {spec.path: _stored(spec, getattr(namespace, spec.dest)) for spec in specs(params)}
    if params.overrides:
        return {path: value for path, value in given.items() if value is not None}
    return _make(params.type, (), given, None)


def _stored(spec: Spec, value):
    if spec.opt.repeat:
        value = tuple(value or ())
    elif spec.opt.many and value is not None:
        value = list(value)
    return spec.opt.store(value) if spec.opt.store is not None and value is not None else value


def _make(cls: type, path: tuple, given: dict, base):
    kwargs = {}
    for f in dataclasses.fields(cls):
        here = (*path, f.name)
        if here in given:
            kwargs[f.name] = given[here]
        elif any(p[:len(here)] == here for p in given):
            kwargs[f.name] = _make(type(_default(f, base)), here, given, _default(f, base))
    return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)


def find(all_params: tuple[Params, ...], name: str) -> Spec | None:
    """The option a recipe calls `name`."""
    for params in all_params:
        for spec in specs(params):
            if spec.name == name:
                return spec
    return None


def names(all_params: tuple[Params, ...]) -> list[str]:
    return [spec.name for params in all_params for spec in specs(params)]


# ---- value types ---------------------------------------------------------------------------

def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def size(text: str) -> int:
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


def show_size(value: int | None) -> str | None:
    """Bytes as `size` reads them back: 268435456 -> 256MiB, 64000000 -> 64MB."""
    if not value:
        return None
    for unit in ("GiB", "GB", "MiB", "MB", "KiB", "KB"):
        if value % _UNITS[unit.upper()] == 0:
            return f"{value // _UNITS[unit.upper()]}{unit}"
    return str(value)


def network(text: str) -> str:
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError as e:
        if text.startswith("[") or text.count(":") == 1:   # 10.0.0.5:8080, [::1]:8080
            raise argparse.ArgumentTypeError(f"{text!r}: give an address or CIDR without a port; "
                                             "it opens every port of that address") from None
        raise argparse.ArgumentTypeError(str(e)) from None


def threshold(text: str) -> float:
    """A filter's threshold: a number >= 0, where 0 (or "off") turns the filter off."""
    if text.strip().lower() == "off":
        return 0.0
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number or 'off': {text!r}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0 (0 or 'off' turns it off), got {text!r}")
    return value


def show_threshold(value: float) -> str:
    return "off" if not value else f"{value:g}"


def words(text: str) -> tuple[str, ...]:
    """'en, de' -> ('en', 'de')."""
    return tuple(word.strip() for word in text.split(",") if word.strip())


def show_words(value) -> str | None:
    return ",".join(map(str, value)) if value else None
