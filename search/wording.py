"""Counts in the lines users read: "1 epoch", "2 epochs"."""

from __future__ import annotations


def counted(number: int | str, noun: str) -> str:
    """``number`` and ``noun``, plural unless ``number`` is 1 (the nouns here take an s);
    ``number`` may be "?" where it is unknown."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"
