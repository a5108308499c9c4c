"""kdumpsim: a discrete-event simulation of Linux kdump's crash path that
produces real ELF vmcores. See README.md and docs/ARCHITECTURE.md.

    from kdumpsim import load_model, simulate, run_experiment
"""

from __future__ import annotations

from typing import Any

__version__ = "0.2.0"

_EXPORTS = {"load_model": "kdumpsim.config.model", "simulate": "kdumpsim.measure",
            "run_experiment": "kdumpsim.sweep.runner", "project_path": "kdumpsim.paths"}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    """Lazy exports: `import kdumpsim` stays cheap for the CLI."""
    if name in _EXPORTS:
        import importlib
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'kdumpsim' has no attribute {name!r}")
