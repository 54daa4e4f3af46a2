"""Where a number came from: the code version, the machine and its arithmetic, the peak memory. Results files and
trained artifacts record these, so a reader can trace a number to the code and machine that produced it."""

from __future__ import annotations

import platform
import resource
import subprocess
from pathlib import Path
from typing import Any

import torch

import editkit


def code_version() -> str:
    """editkit's version plus the git commit of its source tree, when there is one."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "src" / "editkit").is_dir():  # installed from a wheel: no source tree to ask
        return editkit.__version__
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "src"], capture_output=True, text=True)
        return f"{editkit.__version__}+{commit}{'.dirty' if dirty.stdout.strip() else ''}"
    except (OSError, subprocess.CalledProcessError):
        return editkit.__version__


def peak_memory_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / (1024 if platform.system() == "Darwin" else 1)


def cpu() -> dict[str, str]:
    """The processor and the vector kernels torch uses on it: the last bits of a run's arithmetic depend on
    them, so a run resumed on another machine may part from where it would have gone."""
    name = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        models = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
        ]
        name = models[0] if models else name
    return {"cpu": name, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def environment(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Python, torch, threads, device, processor and vector kernels: what the last bits of a run depend on."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(device),
        **cpu(),
    }
