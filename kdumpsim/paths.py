"""Where the project's data lives (models/, experiments/, tests/golden/):
beside the package in the checkout it is installed from (`pip install -e .`),
so a notebook copied anywhere finds it through the package."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def project_path(*parts: str) -> Path:
    """A path inside the project checkout, e.g. project_path("models", "modern-x86_64.yaml")."""
    path = ROOT.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"{path}: not in the kdumpsim checkout at {ROOT}")
    return path
