"""Where a result came from: the machine, its devices and package versions, and the code's git
commit and whether the work tree was clean (recorded beside every study and checkpoint)."""

from __future__ import annotations

import datetime
import importlib.metadata
from pathlib import Path
import platform
import socket
import subprocess

_PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy")
# The CPU extensions that set XLA:CPU's and PyTorch's speed (AVX-512, its bf16 dot products, AMX):
# machines sold under one model name differ in them (an "AMD EPYC" with AVX-512 BF16 ran the
# benchmarks 2-3.5x faster than one with AVX2 only), so timings name them.
CPU_FEATURES = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def _version(package: str) -> str | None:
    """Installed version of a distribution, None when absent."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    """Output of a git command in this file's repository, None on any failure."""
    try:
        done = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent,
                              capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def git_state() -> dict | None:
    """Commit and dirty flag of the repository holding this code, None outside a git checkout."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain")
    if commit is None or status is None:
        return None
    return {"commit": commit.strip(), "dirty": bool(status.strip())}


def _devices() -> tuple[str | None, list[str] | None]:
    """JAX backend name and device kinds; (None, None) if JAX is unavailable or fails."""
    try:
        import jax
        return jax.default_backend(), [d.device_kind for d in jax.devices()]
    except Exception:  # noqa: BLE001 - any backend failure must not stop a study
        return None, None


def cpu(cpuinfo: str | Path = "/proc/cpuinfo") -> dict:
    """The CPU's model name and which of `CPU_FEATURES` it has, from Linux's `cpuinfo`; elsewhere
    the platform's processor name and features None (unknown)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return {"model": platform.processor() or None, "features": None}
    first = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        first.setdefault(key.strip(), value.strip())
    flags = set(first.get("flags", "").split())
    return {"model": first.get("model name") or platform.processor() or None,
            "features": [f for f in CPU_FEATURES if f in flags]}


def environment() -> dict:
    """Versions, devices, CPU, host and git commit, so every result can be traced to what produced it."""
    backend, devices = _devices()
    return {
        "versions": {"python": platform.python_version(), **{p: _version(p) for p in _PACKAGES}},
        "backend": backend,
        "devices": devices,
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu": cpu(),
        "timestamp_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git": git_state(),
    }
