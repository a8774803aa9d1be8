"""Import a local LeRobot dataset (v3 layout: ``meta/info.json``, parquet frames, mp4 video) into a store.

Reads through the ``lerobot`` package (``pip install 'vmp[lerobot]'``, a separate environment: see
``make test-lerobot``); it is imported lazily so the core install never needs it. Key mapping:
``observation.images.<cam>`` -> ``<cam>_image`` (uint8 HWC), ``observation.state`` -> ``state``,
``action`` -> ``action`` (float32), any other feature ``a.b`` -> ``a_b``. Each episode's task string
becomes its ``language`` text. Nothing is downloaded: ``root`` must hold the dataset.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..schema import ACTION_KEY, KeySpec
from ..store import EpisodeStore

log = logging.getLogger(__name__)

# Per-frame bookkeeping columns LeRobot adds to every dataset; not observations.
_BOOKKEEPING = {"timestamp", "frame_index", "episode_index", "index", "task_index"}
_INSTALL_HINT = "LeRobot import needs the lerobot package: pip install 'vmp[lerobot]' (in its own environment, see `make test-lerobot`)"


def _require_lerobot() -> Any:
    try:
        from lerobot.datasets.lerobot_dataset import LeRobotDataset
    except ImportError as e:
        raise ImportError(_INSTALL_HINT) from e
    return LeRobotDataset


def store_key(feature: str) -> str:
    """LeRobot feature name -> store key."""
    if feature.startswith("observation.images."):
        return feature[len("observation.images."):].replace(".", "_") + "_image"
    if feature.startswith("observation."):
        return feature[len("observation."):].replace(".", "_")
    return feature.replace(".", "_")


def _to_numpy(value: Any, is_image: bool) -> np.ndarray:
    x = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
    if is_image:  # LeRobot yields float CHW in [0, 1]
        if x.dtype != np.uint8:
            x = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
        x = np.moveaxis(x, 0, -1)
    return x


def import_lerobot(root: str | os.PathLike, out_path: str | os.PathLike, repo_id: str | None = None,
                   features: list[str] | None = None, overwrite: bool = False) -> EpisodeStore:
    """Convert the dataset at ``root`` to a store at ``out_path``; returns the store open for appending."""
    LeRobotDataset = _require_lerobot()
    root, out_path = Path(root), Path(out_path)
    info_path = root / "meta" / "info.json"
    if not info_path.is_file():
        raise FileNotFoundError(f"{root} is not a LeRobot v3 dataset: {info_path} is missing")
    info = json.loads(info_path.read_text())
    version = str(info.get("codebase_version", ""))
    if not version.startswith("v3"):
        raise ValueError(f"{info_path}: codebase_version {version!r}; only the v3 layout is supported")
    # PyAV decodes with the FFmpeg its wheel carries; torchcodec (LeRobot's default) needs system FFmpeg libraries.
    ds = LeRobotDataset(repo_id or root.name, root=root, video_backend="pyav")
    all_features = {k: v for k, v in ds.meta.features.items() if k not in _BOOKKEEPING}
    if ACTION_KEY not in all_features:
        raise KeyError(f"{root}: dataset has no 'action' feature; features: {sorted(all_features)}")
    chosen = list(all_features) if features is None else list(features)
    for k in chosen:
        if k not in all_features:
            raise KeyError(f"{root}: feature {k!r} not in dataset; features: {sorted(all_features)}")
    if ACTION_KEY not in chosen:
        chosen.append(ACTION_KEY)
    is_image = {k: all_features[k].get("dtype") in ("video", "image") for k in chosen}
    keys = {k: store_key(k) for k in chosen}
    if len(set(keys.values())) != len(keys):
        raise ValueError(f"{root}: features {chosen} map to clashing store keys {list(keys.values())}")

    first = ds[0]
    schema = {}
    for k in chosen:
        x = _to_numpy(first[k], is_image[k])
        dtype = "uint8" if is_image[k] else ("float32" if x.dtype.kind == "f" else x.dtype.name)
        shape = x.shape if x.ndim else (1,)
        schema[keys[k]] = KeySpec(tuple(shape), dtype, f"lerobot {k}")
    attrs = {"task": repo_id or root.name, "control_hz": float(ds.fps),
             "source": {"format": "lerobot", "root": root.name, "codebase_version": version,
                        "features": {keys[k]: k for k in chosen}}}
    store = EpisodeStore.create(out_path, schema, attrs, overwrite=overwrite)
    try:
        episodes = ds.meta.episodes
        for e in tqdm(range(ds.num_episodes), desc=f"import {root.name}", unit="episode"):
            lo, hi = int(episodes["dataset_from_index"][e]), int(episodes["dataset_to_index"][e])
            frames = [ds[i] for i in range(lo, hi)]
            episode = {}
            for k in chosen:
                rows = [_to_numpy(f[k], is_image[k]) for f in frames]
                episode[keys[k]] = np.stack([r.reshape(schema[keys[k]].shape) for r in rows])
            text = {"language": frames[0]["task"]} if frames and "task" in frames[0] else None
            store.append_episode(episode, text=text)
    except BaseException:
        store.close()
        raise
    log.info("imported %d LeRobot episodes (%d steps) from %s into %s", store.n_episodes, store.n_steps, root, out_path)
    return store
