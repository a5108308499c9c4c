"""The command line: a thin layer over the library (kdumpsim.cli.main)."""

from kdumpsim.cli.main import main

__all__ = ["main"]
