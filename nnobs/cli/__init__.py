"""The nnobs command line: one function per verb."""

from nnobs.cli.main import main

__all__ = ["main"]
