"""Pure ``nn.Module`` classifiers rebuilt from a plain, JSON-serialisable hyperparameter dict.

This package imports only ``torch``: an exported model loads with it alone.
"""

from models.exported import ExportedModelError, load_exported, read_exported
from models.mlp import ACTIVATIONS, MLPClassifier, build_mlp, describe_layout

__all__ = [
    "ACTIVATIONS",
    "ExportedModelError",
    "MLPClassifier",
    "build_mlp",
    "describe_layout",
    "load_exported",
    "read_exported",
]
