"""Benchmarks of nnobs: every figure a ratio measured side by side in one run, absolutes beside it."""
