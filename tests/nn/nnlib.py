"""Helpers shared by the nn/ pytest files (tests/nn is their rootdir, so `import nnlib`)."""

from __future__ import annotations

import os
import pathlib

import pytest


def xregctl() -> str:
    """The xregctl binary meson passes in XREGCTL (tests/nn/meson.build)."""
    path = os.environ.get("XREGCTL")
    if not path:
        pytest.fail("XREGCTL is not set (meson sets it; see tests/nn/meson.build)", pytrace=False)
    return path


def avx2_fma() -> bool:
    """Whether this CPU runs nn/'s own AVX2+FMA kernels (else oneDNN or reference ones run)."""
    flags = pathlib.Path("/proc/cpuinfo").read_text().split()
    return "avx2" in flags and "fma" in flags
