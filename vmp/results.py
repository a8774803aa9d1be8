"""Results records and latency summaries: the one format every measurement is written in (benchmarks, vmp-eval,
vmp-deploy), so that the results tables are regenerated from files alone.

A record names what was measured (kind, task, obs, policy, variant), the figures (metrics), what it cost (budget), where
and how it ran (device, command, machine, package versions, git revision) and when. `write_record` is atomic: a
crash leaves the previous record or the new one, never half of one.
"""

from __future__ import annotations

import datetime
import logging
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable

import numpy as np

log = logging.getLogger(__name__)


def git_revision() -> str:
    """The short revision of the checkout vmp runs from ("unknown" outside a git checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment() -> dict[str, Any]:
    """Where a measurement ran: the machine (CPU model, cores, memory, GPU) and the versions of the packages."""
    import importlib.metadata

    import torch

    versions = {"python": platform.python_version()}
    for package in ("torch", "numpy", "mujoco", "robosuite", "metaworld", "diffusers", "zarr", "lerobot"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    cpu = platform.processor() or platform.machine()
    try:
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    try:
        memory_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        memory_gb = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"machine": {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": memory_gb, "gpu": gpu,
                        "system": platform.system()}, "versions": versions}


def command_line() -> str:
    """The command this process runs, as a user would type it: the console script's name (not its path), or
    ``python -m <module>`` for a module run as a script."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    program = f"python -m {spec.name}" if spec is not None and spec.name != "__main__" else Path(sys.argv[0]).name
    return " ".join([program, *sys.argv[1:]])


def latency_summary(values_ms: Iterable[float]) -> dict[str, Any]:
    """Latencies in milliseconds -> p50, p99, mean and max (None each when there are none: JSON has no NaN) and n."""
    a = np.asarray(list(values_ms), dtype=np.float64)
    if not a.size:
        return {"p50_ms": None, "p99_ms": None, "mean_ms": None, "max_ms": None, "n": 0}
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()),
            "max_ms": float(a.max()), "n": int(a.size)}


def make_record(kind: str, task: str, obs: str, policy: str, variant: str, metrics: dict[str, Any], *,
                budget: dict[str, Any] | None = None, device: str | None = None,
                command: str | None = None) -> dict[str, Any]:
    """One measurement as a results record. device: what ran it (default: this CPU and its torch threads);
    command: what remakes it (default: this process's command line)."""
    if device is None:
        import torch

        device = f"cpu ({torch.get_num_threads()} threads)"
    return {"kind": kind, "task": task, "obs": obs, "policy": policy, "variant": variant, "metrics": metrics,
            "budget": budget or {}, "device": device, "command": command or command_line(),
            "git_rev": git_revision(), "date": datetime.date.today().isoformat(), **environment()}


def write_record(path: str | Path, record: dict[str, Any]) -> Path:
    """Write a record as JSON, atomically (`vmp.disk.write_json`): a failed write (a full disk) leaves the record
    there as it was and raises OSError naming ``path`` and the reason ("No space left on device")."""
    from vmp.disk import write_json

    path = write_json(path, record)
    log.info("wrote %s", path)
    return path
