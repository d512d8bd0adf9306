"""What the tests and the benchmarks share: throwaway PostgreSQL servers (``postgres``) and
PgBouncers (``pooler``), a TCP proxy that injects faults (``proxy``), real ``search``
processes (``workers``), data files in the real formats (``datafiles``).

Run benchmarks from the repository root as modules (``python -m bench.NAME``), so that
``tests.support`` imports as it does under pytest."""
