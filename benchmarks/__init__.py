"""Conclave's benchmarks (issue 7). Not part of the installed `conclave` package: run from a checkout."""
