"""Scripted and privileged experts, one per task family; ``make_expert(name)`` builds one by name."""

from __future__ import annotations

import importlib
from typing import Any

from vmp.sim.experts.base import Expert

# expert name (task config `expert:`) -> "module:Class"
EXPERTS: dict[str, str] = {
    "lift": "vmp.sim.experts.robosuite_experts:LiftExpert",
    "stack": "vmp.sim.experts.robosuite_experts:StackExpert",
    "pick_place_can": "vmp.sim.experts.robosuite_experts:PickPlaceCanExpert",
    "square": "vmp.sim.experts.robosuite_experts:SquareExpert",
    "blockpush": "vmp.sim.experts.blockpush:BlockPushExpert",
    "metaworld": "vmp.sim.experts.metaworld:MetaWorldExpert",
    "pointnav": "vmp.sim.experts.pointnav:PointNavExpert",
}


def make_expert(name: str, env: Any = None, seed: int | None = None, **kwargs: Any) -> Expert:
    """Build the expert ``name``; bind it to ``env`` when given (privileged state)."""
    if name not in EXPERTS:
        raise KeyError(f"unknown expert {name!r}; known experts: {sorted(EXPERTS)}")
    module, cls = EXPERTS[name].split(":")
    return getattr(importlib.import_module(module), cls)(env=env, seed=seed, **kwargs)


__all__ = ["Expert", "EXPERTS", "make_expert"]
