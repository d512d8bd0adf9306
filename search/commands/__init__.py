"""The commands, each a thin use of the layers below: ``work`` (run, worker), ``status``,
``dashboard``, ``best`` (with ``exports``, the files it writes), ``evaluate``, ``report``."""
