"""A worker: put together once everything is checked (``assembly``), then the loop that
claims, trains and records trials (``loop``), with its heartbeat, stop signals, settings
(``config``) and what it trains (``workload``: the interface; ``training``: the real one)."""
