"""Words in the lines users read: counts ("1 epoch", "2 epochs"), parameters."""

from __future__ import annotations


def counted(number: int | str, noun: str) -> str:
    """``number`` and ``noun``, plural unless ``number`` is 1 (the nouns here take an s);
    ``number`` may be "?" where it is unknown."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def format_params(params: dict[str, object]) -> str:
    """A trial's parameters on one line, floats to four significant digits."""
    return ", ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
                     for key, value in params.items())
