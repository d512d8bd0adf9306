"""Command-line options that also read ``SEARCH_*`` environment variables, checked up front.

A value comes from its flag, else from its environment variable (or the file named by
``<variable>_FILE``, for secrets), else from its default.
The environment is read only for the command being run, after parsing, so an unrelated
bad variable (``SEARCH_N_TRIALS=abc`` while running ``search status``) is never touched,
and a bad one is reported under its own name. Every converter rejects what the command
could not use (a negative timeout, NaN, a seed out of range, an empty path), so bad
input ends before anything is opened, created or written.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from search.errors import UserError

DEFAULT_STORAGE = "sqlite:///search.db"  # the embedded default: a file, no server
DEFAULT_ARTIFACTS = "search-artifacts"
DEFAULT_VIEW_TRIALS = 250  # search dashboard: a big study's best, and latest, trials shown
MAX_SEED = 2**32 - 1  # numpy's RandomState (inside Optuna's samplers) takes seeds below 2**32
MAX_STUDY_NAME = 512  # Optuna's column for study names


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one ``search: error:`` line and exit 2 like every other."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message}; see `{self.prog} --help`")


def whole(low: int, high: int | None = None) -> Callable[[str], int]:
    """A converter to a whole number of at least ``low`` (and at most ``high``)."""
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            bound = f"must be at least {low}" if high is None else f"is outside {low}..{high}"
            raise argparse.ArgumentTypeError(f"{value} {bound}")
        return value
    return convert


def choice(*allowed: str) -> Callable[[str], str]:
    """A converter that accepts only one of ``allowed``."""
    def convert(value: str) -> str:
        if value not in allowed:
            raise argparse.ArgumentTypeError(f"{value!r} is not one of {', '.join(allowed)}")
        return value
    return convert


positive_int = whole(1)
seed = whole(0, MAX_SEED)
port = whole(1, 65535)


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be a positive number of seconds")
    return value


def seconds_from(low: float) -> Callable[[str], float]:
    """A converter to a number of seconds of at least ``low``."""
    def convert(text: str) -> float:
        value = seconds(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"{text} must be at least {low:g} seconds")
        return value
    return convert


def text(value: str) -> str:
    if not value.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    if any(ord(character) < 32 or ord(character) == 127 for character in value):
        # A line break pasted into a URL or left in a secret file would name a file "x\ny".
        raise argparse.ArgumentTypeError("contains a line break or another control character")
    return value


def study_name(value: str) -> str:
    value = text(value)
    if len(value) > MAX_STUDY_NAME:
        raise argparse.ArgumentTypeError(f"is {len(value)} characters long; the storage keeps at most "
                                         f"{MAX_STUDY_NAME}")
    if not value.isprintable():
        raise argparse.ArgumentTypeError(f"{value!r} holds control characters")
    return value


@dataclass(frozen=True)
class EnvDefault:
    variable: str
    convert: Callable[[str], Any]
    default: Any


FROM_ENV: dict[str, dict[str, EnvDefault]] = {}  # command -> option dest -> where its default comes from


def add(parser: argparse.ArgumentParser, command: str, flag: str, env: str, help: str,
        convert: Callable[[str], Any] = text, default: Any = None, **kwargs: Any) -> None:
    """An option ``flag`` whose default is ``SEARCH_<env>``, else ``default``."""
    shown = f" (default {default})" if default is not None else ""
    action = parser.add_argument(flag, type=convert, default=None, help=f"{help}{shown} [SEARCH_{env}]", **kwargs)
    FROM_ENV.setdefault(command, {})[action.dest] = EnvDefault(f"SEARCH_{env}", convert, default)


def from_environment(variable: str) -> tuple[str, str, str] | None:
    """``variable``'s value, or the content of the file ``<variable>_FILE`` names (Docker and
    Kubernetes secrets are files: ``SEARCH_STORAGE_FILE=/run/secrets/storage``); with how a
    message names where it came from, and the fix. None if neither is set."""
    raw, path = os.environ.get(variable), os.environ.get(f"{variable}_FILE")
    if path is None:
        return None if raw is None else (raw, f"{variable}={raw!r} (from the environment)",
                                         f"fix or unset {variable}")
    if raw is not None:
        raise UserError(f"both {variable} and {variable}_FILE are set; unset one of them")
    if not path.strip():
        raise UserError(f"{variable}_FILE is set but empty; give the path of the file holding {variable}, "
                        f"or unset {variable}_FILE")
    try:
        content = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "it is not UTF-8 text"
        raise UserError(f"{variable}_FILE={path!r}: cannot read it ({reason}); "
                        f"fix the path or mount the secret there") from None
    # The file's content is not shown: it is usually a secret.
    return content.strip(), f"{variable}_FILE={path!r} (the file's content)", f"fix the file or unset {variable}_FILE"


def resolve(args: argparse.Namespace) -> None:
    """Fill options not given on the command line from the environment, then defaults."""
    for dest, source in FROM_ENV.get(args.command, {}).items():
        if getattr(args, dest) is not None:
            continue
        found = from_environment(source.variable)
        if found is None:
            setattr(args, dest, source.default)
            continue
        raw, origin, fix = found
        try:
            setattr(args, dest, source.convert(raw))
        except (argparse.ArgumentTypeError, ValueError) as error:
            raise UserError(f"{origin}: {error}; {fix}") from None
