"""``python -m search.cli``: what the ``search`` command runs."""

from search.cli import entry_point

entry_point()
