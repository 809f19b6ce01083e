"""OpenMP defaults that keep training fast when another process takes a core.

Imported before torch (first line of ``main.py``): libgomp reads these variables once, when torch
loads it. Threads that spin at barriers lose whole scheduler slices as soon as a third process
runs on a 2-core machine; passive waiting puts them to sleep instead (see docs/performance.md for
the measured cost of each setting). A value the user has set is never changed.
"""
from __future__ import annotations

import os

DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}


def apply(environ=os.environ) -> dict:
    """Set each default the environment lacks; returns the ones it set."""
    applied = {name: value for name, value in DEFAULTS.items() if name not in environ}
    environ.update(applied)
    return applied


apply()
