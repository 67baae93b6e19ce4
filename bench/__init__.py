"""Benchmarks of mmae_fast (repository tools, not part of the installed package)."""
