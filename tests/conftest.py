"""Shared test helpers."""

from __future__ import annotations

import os
import shutil

import pytest


def require_tool(name: str) -> str:
    """Path of the external tool `name`; skip the test if it is missing.

    When the CI environment variable is set (see .ci/run) a missing tool
    fails the test instead, so CI cannot go green by skipping.
    """
    path = shutil.which(name)
    if path is None:
        message = f"{name} not found on PATH"
        if "CI" in os.environ:
            pytest.fail(f"{message} (required because CI is set)")
        pytest.skip(message)
    return path
