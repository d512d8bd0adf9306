"""The search service: CLI, storage, workers, checkpoints and best-model export."""
