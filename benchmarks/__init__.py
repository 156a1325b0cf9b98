"""The asv benchmark suite of dicebench (``asv run``; see docs/benchmarks.md)."""
