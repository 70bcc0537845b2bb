"""What every benchmark shares: the machine description stored beside its numbers, device sync.

A benchmark figure without the hardware and library versions it was measured with cannot be compared
with anything, so each results JSON carries this dict.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or ""


def describe_machine(device: Any = None) -> dict[str, Any]:
    """Host, CPU, library versions and, for a CUDA ``device``, the GPU and its CUDA/cuDNN versions."""
    import numpy as np
    import torch

    info: dict[str, Any] = {
        "host": platform.node(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
        "torch": torch.__version__, "numpy": np.__version__, "platform": platform.platform(),
    }
    if device is not None:
        device = torch.device(device)
        info["device"] = str(device)
        if device.type == "cuda":
            props = torch.cuda.get_device_properties(device)
            info.update({"gpu": torch.cuda.get_device_name(device), "gpu_memory_gb": round(props.total_memory / 2**30, 1),
                         "compute_capability": f"{props.major}.{props.minor}", "cuda": torch.version.cuda,
                         "cudnn": torch.backends.cudnn.version()})
    return info


def synchronize(device: Any) -> None:
    """Wait for queued GPU work, so a timer around it measures the work (a no-op off CUDA)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
