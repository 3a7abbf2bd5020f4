"""The machine a run runs on: its default device, what ``OUT/env.json`` records of it
(``environment``: versions, device, CPU, threads, platform, command), and the peak memory of each
epoch (``PeakMemory``, the metrics' ``peak_memory_mb``)."""

from __future__ import annotations

import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment(device: torch.device, command: str) -> dict[str, Any]:
    try:
        from importlib.metadata import version

        adahessian_version = version("adahessian")
    except Exception:
        adahessian_version = "unknown"
    env = {
        "torch": torch.__version__,
        "adahessian": adahessian_version,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": command,
    }
    if hasattr(os, "sched_getaffinity"):
        env["cpus_usable"] = len(os.sched_getaffinity(0))
    return env


class PeakMemory:
    """Peak memory since the last reset, in MiB: the peak RSS on CPU (Linux: VmHWM, which writing
    5 to /proc/self/clear_refs resets; elsewhere the process's lifetime peak), and
    torch.cuda.max_memory_allocated on GPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass

    def read(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, B on macOS
        return maxrss / (2**20 if sys.platform == "darwin" else 1024)
