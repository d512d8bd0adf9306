"""Reading a joblib-dumped numpy array without running code from the file.

scikit-learn caches CoverType as ``joblib.dump`` files: pickles, which can run any code
when loaded, and a data directory is often a shared volume. This reader decompresses
the file itself and unpickles it with joblib's own unpickler (it reads the array bytes
that follow the pickle), restricted to the three classes such a file needs. An object
array (whose elements joblib would unpickle unrestricted) is refused as well.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import pickle
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from joblib import numpy_pickle

ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("joblib.numpy_pickle", "NumpyArrayWrapper")}


class UnsafePickle(pickle.UnpicklingError):
    def __init__(self, path: Path, what: str) -> None:
        super().__init__(str(path))
        self.what = what


def decompressed(raw: bytes) -> bytes:
    """The pickle stream, whichever compressor joblib.dump used (or none)."""
    if raw[:2] == b"\x1f\x8b":
        return gzip.decompress(raw)
    if raw[:3] == b"BZh":
        return bz2.decompress(raw)
    if raw[:6] == b"\xfd7zXZ\x00" or raw[:1] == b"\x5d":
        return lzma.decompress(raw)
    if raw[:1] == b"\x78":  # zlib (joblib's default for compress=N)
        return zlib.decompress(raw)
    return raw


class _SafeWrapper(numpy_pickle.NumpyArrayWrapper):
    """Joblib's array record; its ``read`` would unpickle an object array unrestricted."""

    def read(self, unpickler: Any, *args: Any, **kwargs: Any) -> Any:
        if np.dtype(self.dtype).hasobject:
            raise UnsafePickle(unpickler.filename, "an array of Python objects")
        return super().read(unpickler, *args, **kwargs)


class _RestrictedUnpickler(numpy_pickle.NumpyUnpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED:
            raise UnsafePickle(Path(self.filename), f"{module}.{name}")
        if name == "NumpyArrayWrapper":
            return _SafeWrapper
        return super().find_class(module, name)


def load_array(path: Path) -> np.ndarray:
    stream = io.BytesIO(decompressed(path.read_bytes()))
    array = _RestrictedUnpickler(str(path), stream, True).load()
    if not isinstance(array, np.ndarray):
        raise UnsafePickle(path, f"a {type(array).__name__}")
    return array
