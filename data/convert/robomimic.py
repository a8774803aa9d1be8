"""Import a robomimic HDF5 dataset into an ordinary `EpisodeStore`.

robomimic layout: ``data`` (attrs ``env_args`` JSON, ``total``), ``data/demo_<i>/actions`` [T, A],
``data/demo_<i>/obs/<key>`` [T, ...] (images uint8 HWC), optional ``mask/<split>`` arrays of demo names.
Demos are imported in numeric order (demo_2 before demo_10); float obs become float32, depth [H, W, 1]
becomes [H, W]; the demo name goes to each episode's text and the masks to the ``splits`` store attr.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from vmp.progress import progress

from ..schema import ACTION_KEY, KeySpec
from ..store import EpisodeStore

log = logging.getLogger(__name__)

# robosuite's default control frequency, used when env_args does not say.
DEFAULT_CONTROL_HZ = 20


def _demo_names(data: h5py.Group, path: Path) -> list[str]:
    names = [n for n in data.keys() if n.startswith("demo_")]
    if not names:
        raise ValueError(f"{path}: group 'data' holds no 'demo_<i>' groups; not a robomimic dataset")
    try:
        return sorted(names, key=lambda n: int(n[len("demo_"):]))
    except ValueError as e:
        raise ValueError(f"{path}: demo group names must be 'demo_<int>', got {names[:5]}") from e


def _step_layout(key: str, ds: h5py.Dataset) -> tuple[tuple, str, bool]:
    """(step shape, store dtype, squeeze last axis) for one robomimic obs dataset."""
    shape = tuple(ds.shape[1:])
    dtype = np.dtype(ds.dtype)
    squeeze = key.endswith("_depth") and len(shape) == 3 and shape[-1] == 1
    if squeeze:
        shape = shape[:-1]
    if dtype.kind == "f":
        name = "float32"
    elif key.endswith("_depth") and dtype == np.uint16:
        name = "uint16"
    else:
        name = dtype.name
    return shape, name, squeeze


def import_robomimic(hdf5_path: str | os.PathLike, out_path: str | os.PathLike, obs_keys: list[str] | None = None,
                     overwrite: bool = False, task: str | None = None, control_hz: float | None = None) -> EpisodeStore:
    """Convert ``hdf5_path`` to a store at ``out_path``; returns the store open for appending (close it)."""
    hdf5_path, out_path = Path(hdf5_path), Path(out_path)
    if not hdf5_path.is_file():
        raise FileNotFoundError(f"robomimic file {hdf5_path} does not exist")
    with h5py.File(hdf5_path, "r") as f:
        if "data" not in f:
            raise ValueError(f"{hdf5_path}: no 'data' group; not a robomimic dataset")
        data = f["data"]
        demos = _demo_names(data, hdf5_path)
        env_args = json.loads(data.attrs["env_args"]) if "env_args" in data.attrs else {}
        first = data[demos[0]]
        if "obs" not in first or ACTION_KEY + "s" not in first:
            raise KeyError(f"{hdf5_path}: data/{demos[0]} lacks 'obs' or 'actions'")
        available = list(first["obs"].keys())
        obs_keys = available if obs_keys is None else list(obs_keys)
        for k in obs_keys:
            if k not in first["obs"]:
                raise KeyError(f"{hdf5_path}: obs key {k!r} not in data/{demos[0]}/obs; available: {available}")
        layout = {k: _step_layout(k, first["obs"][k]) for k in obs_keys}
        schema = {k: KeySpec(shape, dtype, f"robomimic obs/{k}") for k, (shape, dtype, _) in layout.items()}
        schema[ACTION_KEY] = KeySpec(tuple(first["actions"].shape[1:]), "float32", "robomimic actions")

        env_kwargs = env_args.get("env_kwargs", {})
        hz = control_hz if control_hz is not None else env_kwargs.get("control_freq")
        if hz is None:
            log.warning("%s: env_args has no control_freq; assuming %d Hz", hdf5_path, DEFAULT_CONTROL_HZ)
            hz = DEFAULT_CONTROL_HZ
        language = None
        if "problem_info" in data.attrs:  # LIBERO-style robomimic files carry the instruction here
            language = json.loads(data.attrs["problem_info"]).get("language_instruction")
        index = {name: i for i, name in enumerate(demos)}
        splits: dict[str, list[int]] = {}
        if "mask" in f:
            for split, ds in f["mask"].items():
                names = [n.decode() if isinstance(n, bytes) else str(n) for n in ds[:]]
                splits[split] = sorted(index[n] for n in names if n in index)
        attrs: dict[str, Any] = {
            "task": task or env_args.get("env_name") or hdf5_path.stem,
            "control_hz": float(hz),
            "source": {"format": "robomimic", "file": hdf5_path.name, "env_args": env_args},
        }
        if splits:
            attrs["splits"] = splits

        store = EpisodeStore.create(out_path, schema, attrs, overwrite=overwrite)
        try:
            for name in progress(demos, desc=f"import {hdf5_path.name}", unit="demo"):
                demo = data[name]
                episode = {}
                for k, (_, _, squeeze) in layout.items():
                    arr = demo["obs"][k][:]
                    episode[k] = arr[..., 0] if squeeze else arr
                episode[ACTION_KEY] = demo["actions"][:]
                text = {"source_demo": name}
                if language:
                    text["language"] = language
                try:
                    store.append_episode(episode, text=text)
                except (KeyError, ValueError) as e:
                    raise type(e)(f"{hdf5_path}: data/{name}: {e}") from e
        except BaseException:
            store.close()
            raise
    log.info("imported %d demos (%d steps) from %s into %s", store.n_episodes, store.n_steps, hdf5_path, out_path)
    return store
