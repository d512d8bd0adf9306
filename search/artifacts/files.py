"""Files written whole or not at all, and tensors read without running code.

torch is imported inside the functions: the worker loop runs without it in the scale
benchmarks.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_atomically(path: Path, data: bytes | memoryview) -> None:
    """Write ``data`` to ``path`` so that a reader (or a crash) never sees half a file, and
    a failure (a full disk) leaves no file and raises OSError."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def serialized(payload: Any, save: Callable[[Any, io.BytesIO], None] | None = None) -> memoryview:
    """``payload`` as ``torch.save`` (or ``save``) writes it. The bytes are made in memory
    first: torch's own file writer reports a full disk as a RuntimeError."""
    import torch

    buffer = io.BytesIO()
    (save or torch.save)(payload, buffer)
    return buffer.getbuffer()


def save_atomically(path: Path, payload: Any, save: Callable[[Any, io.BytesIO], None] | None = None) -> None:
    """``torch.save`` (or ``save``) to ``path``, whole or not at all."""
    write_atomically(path, serialized(payload, save))


def read_tensors(data: bytes) -> dict[str, Any]:
    """Read what ``torch.save`` wrote, refusing anything but plain data."""
    import torch

    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
