"""Import a local LeRobot dataset (v3 layout: ``meta/info.json``, parquet frames, mp4 video) into a store, and
export a store to one (`export_lerobot`, the inverse mapping: a store exported and imported again holds the same
episodes).

A dataset written by `export_lerobot` carries ``meta/vmp.json``: which store keys each LeRobot feature concatenates
(``observation.state`` from several low-dim keys, as LeRobot's policies read one state vector). The importer splits
them back, and `vmp.policies.lerobot_policy` builds a LeRobot policy's inputs from an env's observations with it.

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
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from vmp.progress import progress

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


def _v3_version(root: Path) -> str:
    """The dataset's ``codebase_version``, refusing layouts other than v3 (the only one this importer reads)."""
    info_path = root / "meta" / "info.json"
    if not info_path.is_file():
        raise FileNotFoundError(f"{root} is not a LeRobot v3 dataset: {info_path} is missing")
    info = json.loads(info_path.read_text())
    version = str(info.get("codebase_version", ""))
    if not version.startswith("v3"):
        raise ValueError(f"{info_path}: codebase_version {version!r}; only the v3 layout is supported")
    return version


def import_lerobot(root: str | os.PathLike, out_path: str | os.PathLike, repo_id: str | None = None,
                   features: list[str] | None = None, overwrite: bool = False) -> EpisodeStore:
    """Convert the dataset at ``root`` to a store at ``out_path``; returns the store open for appending."""
    LeRobotDataset = _require_lerobot()
    root, out_path = Path(root), Path(out_path)
    version = _v3_version(root)
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

    # features our exporter concatenated from several store keys: split back into them
    parts = {f: m for f, m in read_export_map(root).get("features", {}).items()
             if f in chosen and (len(m) > 1 or m[0]["key"] != store_key(f))}
    first = ds[0]
    schema = {}
    for k in chosen:
        x = _to_numpy(first[k], is_image[k])
        dtype = "uint8" if is_image[k] else ("float32" if x.dtype.kind == "f" else x.dtype.name)
        if k in parts:
            for part in parts[k]:
                schema[part["key"]] = KeySpec(tuple(part["shape"]), dtype, f"lerobot {k} part")
            continue
        shape = x.shape if x.ndim else (1,)
        schema[keys[k]] = KeySpec(tuple(shape), dtype, f"lerobot {k}")
    attrs = {"task": repo_id or root.name, "control_hz": float(ds.fps),
             "source": {"format": "lerobot", "root": root.name, "codebase_version": version,
                        "features": {keys[k]: k for k in chosen}}}
    store = EpisodeStore.create(out_path, schema, attrs, overwrite=overwrite)
    try:
        episodes = ds.meta.episodes
        for e in progress(range(ds.num_episodes), desc=f"import {root.name}", unit="episode"):
            lo, hi = int(episodes["dataset_from_index"][e]), int(episodes["dataset_to_index"][e])
            frames = [ds[i] for i in range(lo, hi)]
            episode = {}
            for k in chosen:
                rows = np.stack([_to_numpy(f[k], is_image[k]) for f in frames])
                if k in parts:
                    episode.update(split_feature(rows, parts[k]))
                else:
                    episode[keys[k]] = rows.reshape(len(rows), *schema[keys[k]].shape)
            text = {"language": frames[0]["task"]} if frames and "task" in frames[0] else None
            store.append_episode(episode, text=text)
    except BaseException:
        store.close()
        raise
    log.info("imported %d LeRobot episodes (%d steps) from %s into %s", store.n_episodes, store.n_steps, root, out_path)
    return store


def lerobot_feature(key: str) -> str:
    """Store key -> LeRobot feature name (the inverse of `store_key` for the store's key convention)."""
    if key.endswith("_image"):
        return "observation.images." + key[: -len("_image")]
    if key == ACTION_KEY:
        return ACTION_KEY
    return "observation." + key


FEATURE_MAP = "meta/vmp.json"  # {"task": store task, "features": {feature: [{key, shape}, ...]}}


def read_export_map(root: str | os.PathLike) -> dict[str, Any]:
    """An exported dataset's ``meta/vmp.json``: {"task": the store's task, "features": {LeRobot feature: the store
    keys it holds, in order, with their shapes}}; {} when the dataset was not written by `export_lerobot`."""
    path = Path(root) / FEATURE_MAP
    return json.loads(path.read_text()) if path.is_file() else {}


def split_feature(rows: np.ndarray, parts: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """A concatenated feature's rows [N, D] -> {store key: [N, *shape]}."""
    out, at = {}, 0
    for part in parts:
        size = int(np.prod(part["shape"]))
        out[part["key"]] = rows[:, at:at + size].reshape(len(rows), *part["shape"])
        at += size
    if at != rows.shape[1]:
        raise ValueError(f"feature of width {rows.shape[1]} does not split into {[p['key'] for p in parts]} ({at})")
    return out


def export_lerobot(store_path: str | os.PathLike, out_root: str | os.PathLike, repo_id: str | None = None,
                   keys: list[str] | None = None, video: bool = True, overwrite: bool = False,
                   state_keys: list[str] | None = None, env_state_keys: list[str] | None = None) -> Path:
    """Write the store's episodes that have actions as a LeRobot dataset (v3 layout) at ``out_root``; -> out_root.

    ``keys``: the observation keys to export (default: every camera and low-dim observation; training-only keys such
    as ``phase`` stay behind). Cameras become ``observation.images.<cam>`` (mp4 video, or PNG frames with
    ``video=False``: lossless), ``state`` becomes ``observation.state``, each episode's ``language`` its task string.
    ``state_keys`` / ``env_state_keys``: low-dim keys concatenated, in order, into ``observation.state`` /
    ``observation.environment_state`` (the vectors LeRobot's policies read: Diffusion Policy and ACT ignore other
    low-dim features; ACT needs a camera or an environment state). ``meta/vmp.json`` records the mapping.
    Action-free episodes are skipped (a LeRobot dataset needs actions)."""
    LeRobotDataset = _require_lerobot()
    store = EpisodeStore.open(store_path)
    out_root = Path(out_root)
    if out_root.exists() and not overwrite:
        raise FileExistsError(f"{out_root} exists: pass overwrite=True (--overwrite) to replace it")
    chosen = _export_keys(store, keys)
    groups = _state_groups(store, chosen, state_keys, env_state_keys)
    feature_map, features = _export_features(store, chosen, groups, video)
    fps = store.attrs.get("control_hz")
    if not fps:
        raise ValueError(f"{store.path}: root attrs lack control_hz, which a LeRobot dataset needs as its fps")
    partial = out_root.with_name(f".{out_root.name}.partial")  # the export is written here, then swapped in
    shutil.rmtree(partial, ignore_errors=True)  # what an interrupted export left
    try:
        exported = _write_dataset(LeRobotDataset, store, partial, repo_id or out_root.name, int(round(float(fps))),
                                  chosen, feature_map, features, video)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # an interrupted export leaves nothing half-written behind
        raise
    _swap_in(partial, out_root)
    log.info("exported %d episodes of %s to the LeRobot dataset %s", exported, store.path, out_root)
    return out_root


def _write_dataset(dataset_cls: Any, store: EpisodeStore, root: Path, repo_id: str, fps: int, chosen: list[str],
                   feature_map: dict[str, list[dict[str, Any]]], features: dict[str, dict[str, Any]], video: bool) -> int:
    """Write the episodes with actions as a LeRobot dataset at ``root``, with its feature map; -> how many."""
    ds = dataset_cls.create(repo_id, fps=fps, features=features, root=root, use_videos=video)
    exported = 0
    for e in progress(range(store.n_episodes), desc=f"export {Path(str(store.path)).name}", unit="episode"):
        if not store.has_action[e]:
            log.warning("episode %d has no actions: not exported", e)
            continue
        _add_episode(ds, store, e, chosen, feature_map, features)
        exported += 1
    ds.finalize()
    (root / FEATURE_MAP).write_text(json.dumps({"store": str(store.path), "task": store.attrs.get("task"),
                                                "features": feature_map}, indent=2) + "\n")
    return exported


def _swap_in(partial: Path, out_root: Path) -> None:
    """Put the finished export at ``out_root``; a dataset there (``overwrite``) is removed only now, so a refused
    or failed export leaves it as it was."""
    old = out_root.with_name(f".{out_root.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out_root.exists():
        out_root.rename(old)
    partial.rename(out_root)
    shutil.rmtree(old, ignore_errors=True)


def _export_keys(store: EpisodeStore, keys: list[str] | None) -> list[str]:
    """The observation keys to export: camera and low-dim keys, neither the action nor the training-only ``phase``."""
    bookkeeping = {ACTION_KEY, "phase"}
    candidates = [k for k in store.keys if k not in bookkeeping and store.kind(k) in ("rgb", "low_dim")]
    chosen = candidates if keys is None else list(keys)
    unknown = [k for k in chosen if k not in candidates]
    if unknown:
        raise KeyError(f"{store.path}: {unknown} are not observation keys to export; choose from {candidates}")
    if ACTION_KEY not in store.schema or not store.has_action.any():
        raise ValueError(f"{store.path} has no episodes with actions: nothing a LeRobot dataset can hold")
    return chosen


def _state_groups(store: EpisodeStore, chosen: list[str], state_keys: list[str] | None,
                  env_state_keys: list[str] | None) -> dict[str, list[str]]:
    """{concatenated LeRobot feature: its store keys}, only the non-empty ones; each key may join one group only."""
    groups = {"observation.state": list(state_keys or []), "observation.environment_state": list(env_state_keys or [])}
    grouped = [k for g in groups.values() for k in g]
    for name, option in (("state_keys", state_keys), ("env_state_keys", env_state_keys)):
        bad = [k for k in option or [] if k not in chosen or store.kind(k) != "low_dim"]
        if bad:
            raise KeyError(f"{store.path}: {name} {bad} are not low-dim observation keys being exported; choose from "
                           f"{[k for k in chosen if store.kind(k) == 'low_dim']}")
    if len(set(grouped)) != len(grouped) or (state_keys and "state" in chosen and "state" not in grouped):
        raise ValueError(f"{store.path}: state_keys {state_keys} and env_state_keys {env_state_keys} must name each "
                         f"key once and not clash with a 'state' key exported on its own")
    return {g: ks for g, ks in groups.items() if ks}


def _export_features(store: EpisodeStore, chosen: list[str], groups: dict[str, list[str]], video: bool
                     ) -> tuple[dict[str, list[dict[str, Any]]], dict[str, dict[str, Any]]]:
    """(feature map written to ``meta/vmp.json``, LeRobot ``features``): the groups first, then every other
    exported key and the action as a feature of its own."""
    grouped = [k for ks in groups.values() for k in ks]
    feature_map = {g: [{"key": k, "shape": list(store.schema[k].shape) or [1]} for k in ks] for g, ks in groups.items()}
    features = {}
    for g, ks in groups.items():
        width = sum(int(np.prod(store.schema[k].shape or (1,))) for k in ks)
        features[g] = {"dtype": "float32", "shape": (width,), "names": None}
    for k in [*[k for k in chosen if k not in grouped], ACTION_KEY]:
        feature_map.setdefault(lerobot_feature(k), [{"key": k, "shape": list(store.schema[k].shape) or [1]}])
        spec = store.schema[k]
        if store.kind(k) == "rgb":
            if video and min(spec.shape[:2]) < 32:  # the AV1 encoder LeRobot uses dies on tinier frames (SIGFPE)
                raise ValueError(f"{store.path}: {k!r} frames are {spec.shape[0]}x{spec.shape[1]} px, too small for "
                                 f"LeRobot's video encoder (32 px at least); export them as images (--no-video)")
            features[lerobot_feature(k)] = {"dtype": "video" if video else "image", "shape": tuple(spec.shape),
                                            "names": ["height", "width", "channels"]}
        else:
            features[lerobot_feature(k)] = {"dtype": "float32", "shape": tuple(spec.shape) or (1,), "names": None}
    return feature_map, features


def _add_episode(ds: Any, store: EpisodeStore, e: int, chosen: list[str], feature_map: dict[str, list[dict[str, Any]]],
                 features: dict[str, dict[str, Any]]) -> None:
    """Episode ``e`` as LeRobot frames: camera features as stored, the others float32, groups concatenated."""
    episode = store.episode(e, [*chosen, ACTION_KEY])
    task = str(store.episode_text(e).get("language") or store.attrs.get("language") or store.attrs.get("task", ""))
    n = len(episode[ACTION_KEY])
    columns = {}
    for feature, parts in feature_map.items():
        if len(parts) == 1 and store.kind(parts[0]["key"]) == "rgb":
            columns[feature] = episode[parts[0]["key"]]
        else:
            columns[feature] = np.concatenate([np.asarray(episode[p["key"]], np.float32).reshape(n, -1) for p in parts],
                                              axis=1).reshape(-1, *features[feature]["shape"])
    for t in range(n):
        ds.add_frame({**{f: c[t] for f, c in columns.items()}, "task": task})
    ds.save_episode()
