"""Benchmarks of nnobs: every figure a ratio measured side by side in one run, absolutes beside it."""

import os

# One BLAS thread, set before numpy loads: the comparison with PyTorch is on one thread each.
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")
