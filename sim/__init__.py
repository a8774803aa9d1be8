"""Simulation: MuJoCo tasks as gymnasium envs, scripted experts, collection and parallel evaluation.

``make(task_cfg)`` builds the env a task config (``configs/task/<name>.yaml``) describes; every task is
registered with gymnasium under ``vmp/<Name>-v0``.
"""

from __future__ import annotations

import re
from typing import Any

import gymnasium as gym

# gymnasium id -> (entry point, fixed kwargs)
_REGISTRY: dict[str, tuple[str, dict[str, Any]]] = {
    "vmp/Lift-v0": ("vmp.sim.robosuite_env:RobosuiteEnv", {"task": "Lift"}),
    "vmp/Stack-v0": ("vmp.sim.robosuite_env:RobosuiteEnv", {"task": "Stack"}),
    "vmp/PickPlaceCan-v0": ("vmp.sim.robosuite_env:RobosuiteEnv", {"task": "PickPlaceCan"}),
    "vmp/NutAssemblySquare-v0": ("vmp.sim.robosuite_env:RobosuiteEnv", {"task": "NutAssemblySquare"}),
    "vmp/BlockPush-v0": ("vmp.sim.blockpush:BlockPushEnv", {}),
    "vmp/PointNav-v0": ("vmp.sim.pointnav:PointNavEnv", {}),
    "vmp/MetaWorld-v0": ("vmp.sim.metaworld_env:MetaWorldEnv", {}),
    "vmp/MetaWorld-MT50-v0": ("vmp.sim.metaworld_env:MetaWorldEnv", {"multitask": True}),
}
_METAWORLD_ID = re.compile(r"^vmp/MetaWorld-(?P<task>[a-z0-9-]+-v\d)-v0$")


def register(env_id: str | None = None) -> None:
    """Register vmp's tasks with gymnasium (idempotent). ``vmp/MetaWorld-<task>-v0`` ids are made on demand."""
    ids = list(_REGISTRY) if env_id is None else [env_id]
    for eid in ids:
        if eid in gym.registry:
            continue
        if eid in _REGISTRY:
            entry, kwargs = _REGISTRY[eid]
        elif (m := _METAWORLD_ID.match(eid)) is not None:
            entry, kwargs = "vmp.sim.metaworld_env:MetaWorldEnv", {"task_name": m.group("task")}
        else:
            raise KeyError(f"unknown env_id {eid!r}; known: {sorted(_REGISTRY)} and vmp/MetaWorld-<task>-v0")
        gym.register(id=eid, entry_point=entry, kwargs=kwargs, disable_env_checker=True)


register()


def _plain(cfg: Any) -> dict:
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover
        pass
    return dict(cfg)


REQUIRED_TASK_KEYS = ("name", "env_id", "obs_type", "control_hz", "max_episode_steps", "shape_meta")


def make(task_cfg: Any, render_mode: str | None = None, max_episode_steps: int | None = None, **env_overrides: Any) -> gym.Env:
    """Build the env of a task config (dict or OmegaConf). ``render_mode='rgb_array'`` enables ``render()``.

    The env is wrapped in gymnasium's TimeLimit (``max_episode_steps`` from the config unless given).
    """
    cfg = _plain(task_cfg)
    missing = [k for k in REQUIRED_TASK_KEYS if k not in cfg]
    if missing:
        raise KeyError(f"task config {cfg.get('name', '?')!r} lacks keys {missing} (required: {list(REQUIRED_TASK_KEYS)})")
    register(cfg["env_id"])
    kwargs = dict(cfg.get("env_kwargs") or {})
    kwargs.update(env_overrides)
    kwargs.update(
        shape_meta=cfg["shape_meta"],
        obs_type=cfg["obs_type"],
        control_hz=int(cfg["control_hz"]),
    )
    if cfg.get("language"):
        kwargs.setdefault("language", cfg["language"])
    if cfg.get("goal_keys"):
        kwargs.setdefault("goal_keys", list(cfg["goal_keys"]))
    steps = int(max_episode_steps if max_episode_steps is not None else cfg["max_episode_steps"])
    return gym.make(cfg["env_id"], max_episode_steps=steps, render_mode=render_mode, disable_env_checker=True, **kwargs)


def load_task_cfg(name: str, **overrides: Any):
    """The packaged ``configs/task/<name>.yaml`` as an OmegaConf node (``overrides`` merged on top, dotted keys).

    A task config may inherit others of the task group through a hydra defaults list (``defaults: [lift, _drop_obs,
    _self_]``); they are merged here in that order, as hydra's compose does, so this equals ``compose(...).task``.
    """
    from omegaconf import OmegaConf

    cfg = OmegaConf.create()
    for layer in _task_layers(name, ()):  # merged one after another, as hydra does: a later one can empty a key
        cfg.merge_with(layer)
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    return cfg


def task_names() -> list[str]:
    """The packaged task configs (``configs/task/*.yaml``), without the ``_`` partials they share."""
    from importlib import resources

    group = resources.files("vmp.configs").joinpath("task")
    return sorted(p.name[:-5] for p in group.iterdir() if p.name.endswith(".yaml") and not p.name.startswith("_"))


def robosuite_task_names() -> list[str]:
    """Tasks on a robosuite env that have a camera twin ``<task>_image``: the ones timed from state and images."""
    names = task_names()
    robosuite = {eid for eid, (entry, _) in _REGISTRY.items() if entry.endswith(":RobosuiteEnv")}
    return [n for n in names if f"{n}_image" in names and load_task_cfg(n).get("env_id") in robosuite]


def _task_layers(name: str, chain: tuple[str, ...]) -> list:
    """The configs a task is merged from, in hydra's order (its defaults depth-first, `_self_` where listed)."""
    from importlib import resources

    from omegaconf import OmegaConf

    path = resources.files("vmp.configs").joinpath("task", f"{name}.yaml")
    if not path.is_file():
        raise FileNotFoundError(f"no task config configs/task/{name}.yaml; known tasks: {task_names()}")
    if name in chain:
        raise ValueError(f"task config defaults form a cycle: {' -> '.join((*chain, name))}")
    own = OmegaConf.create(path.read_text())
    defaults = [str(d) for d in (own.pop("defaults", None) or [])]
    if "_self_" not in defaults:
        defaults.append("_self_")  # hydra >= 1.1: a config without _self_ in its defaults list comes after them
    layers = []
    for entry in defaults:
        layers += [own] if entry == "_self_" else _task_layers(entry, (*chain, name))
    return layers


__all__ = ["make", "register", "load_task_cfg", "task_names", "robosuite_task_names"]
