"""What every benchmark shares: where results records go, device names."""

from __future__ import annotations

import platform
import sys
from pathlib import Path
from typing import Any

from vmp.results import make_record, write_record

RESULTS_DIR = Path("results")


def given_args(argv: list[str] | None) -> list[str]:
    """The arguments a benchmark's ``main`` runs with: those `vmp-bench` passed it, or (run as ``python -m
    vmp.bench.<name>``) the script's own; what its record's command line repeats."""
    return list(sys.argv[1:] if argv is None else argv)


def device_name(device: str = "cpu") -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})"


def write_result(name: str, kind: str, task: str, obs: str, policy: str, variant: str, metrics: dict[str, Any],
                 device: str, command: str, budget: dict[str, Any] | None = None, out_dir: Path = RESULTS_DIR) -> Path:
    """One benchmark measurement -> results/<name>.json (`vmp.results`' record, written atomically)."""
    return write_record(out_dir / f"{name}.json", make_record(kind, task, obs, policy, variant, metrics, budget=budget,
                                                              device=device, command=command))
