"""What every benchmark shares: results records, percentiles, device names."""

from __future__ import annotations

import datetime
import json
import logging
import platform
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)
RESULTS_DIR = Path("results")


def device_name(device: str = "cpu") -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})"


def percentiles_ms(times_s: list[float]) -> dict[str, float]:
    ms = np.asarray(times_s) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean())}


def write_result(name: str, kind: str, task: str, obs: str, policy: str, variant: str, metrics: dict[str, Any],
                 device: str, command: str, budget: dict[str, Any] | None = None, out_dir: Path = RESULTS_DIR) -> Path:
    """One measurement -> results/<name>.json in the results-record format (written atomically)."""
    from vmp.policies.checkpoint import environment, git_revision

    record = {
        "kind": kind, "task": task, "obs": obs, "policy": policy, "variant": variant, "metrics": metrics,
        "budget": budget or {}, "device": device, "command": command, "git_rev": git_revision(),
        "date": datetime.date.today().isoformat(), **environment(),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)
    log.info("wrote %s", path)
    return path
