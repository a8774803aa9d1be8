"""Synthetic stores for tests and benchmarks (deterministic, quick to write; no downloads).

`synthetic_episode` fills every key with values that encode (episode, step), so a reader can check that
it got exactly the rows it asked for: low-dim/action value = episode * 1000 + step (+ dim / 100),
image pixel value = step % 256 (channel 0) and episode % 256 (channel 1).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .schema import KeySpec
from .store import EpisodeStore


def demo_schema(image_size: int = 84, cameras: tuple[str, ...] = ("agentview",), state_dim: int = 8,
                action_dim: int = 7) -> dict[str, KeySpec]:
    """Schema with RGB cameras (``<cam>_image`` uint8 HWC), ``state`` float32 and ``action`` float32."""
    schema = {f"{cam}_image": KeySpec((image_size, image_size, 3), "uint8", f"{cam} camera, RGB HWC") for cam in cameras}
    schema["state"] = KeySpec((state_dim,), "float32", "proprioceptive state")
    schema["action"] = KeySpec((action_dim,), "float32", "eef delta + gripper")
    return schema


def synthetic_episode(schema: dict[str, KeySpec], episode: int, length: int, random_images: bool = False,
                      seed: int = 0) -> dict[str, np.ndarray]:
    """One episode whose values encode (episode, step); see module doc."""
    rng = np.random.default_rng((seed, episode))
    steps = np.arange(length)
    out = {}
    for key, spec in schema.items():
        if spec.dtype == "uint8" and len(spec.shape) == 3:
            if random_images:
                arr = rng.integers(0, 256, size=(length, *spec.shape), dtype=np.uint8)
            else:
                arr = np.zeros((length, *spec.shape), dtype=np.uint8)
            arr[..., 0] = (steps % 256).reshape(-1, *([1] * (len(spec.shape) - 1)))
            if spec.shape[-1] > 1:
                arr[..., 1] = episode % 256
        else:
            base = (episode * 1000 + steps).astype(np.float64).reshape(-1, *([1] * len(spec.shape)))
            dims = (np.arange(int(np.prod(spec.shape))).reshape(spec.shape) / 100.0) if spec.shape else 0.0
            arr = (base + dims).astype(spec.dtype) if np.dtype(spec.dtype).kind == "f" else \
                np.broadcast_to(base, (length, *spec.shape)).astype(spec.dtype)
        out[key] = np.ascontiguousarray(arr)
    return out


def make_store(path: str | os.PathLike, lengths: list[int], schema: dict[str, KeySpec] | None = None,
               random_images: bool = False, task: str = "synthetic", control_hz: float = 20.0,
               text: bool = False) -> EpisodeStore:
    """Write a store with one synthetic episode per entry of ``lengths``; returns it open read-only."""
    schema = schema or demo_schema()
    with EpisodeStore.create(path, schema, {"task": task, "control_hz": control_hz}) as store:
        for e, length in enumerate(lengths):
            store.append_episode(synthetic_episode(schema, e, length, random_images),
                                 text={"language": f"episode {e}"} if text else None)
    return EpisodeStore.open(path)


def write_diffusion_policy_store(path: str | os.PathLike, lengths: list[int], image_size: int = 96,
                                 seed: int = 0) -> dict[str, np.ndarray]:
    """Write a zarr v2 replay buffer with diffusion_policy's Push-T layout; returns the arrays written.

    ``data/img`` float32 [N, H, W, 3] (values 0-255), ``data/state`` [N, 5], ``data/keypoint`` [N, 9, 2],
    ``data/n_contacts`` [N, 1], ``data/action`` [N, 2], all float32; ``meta/episode_ends`` int64; no attrs.
    """
    import numcodecs
    import zarr

    rng = np.random.default_rng(seed)
    n = int(sum(lengths))
    arrays = {
        "img": rng.integers(0, 256, size=(n, image_size, image_size, 3)).astype(np.float32),
        "state": rng.uniform(0, 512, size=(n, 5)).astype(np.float32),
        "keypoint": rng.uniform(0, 512, size=(n, 9, 2)).astype(np.float32),
        "n_contacts": rng.integers(0, 3, size=(n, 1)).astype(np.float32),
        "action": rng.uniform(0, 512, size=(n, 2)).astype(np.float32),
    }
    root = zarr.open_group(str(Path(path)), mode="w", zarr_format=2)
    data = root.create_group("data")
    compressor = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.NOSHUFFLE)
    for key, arr in arrays.items():
        chunks = (min(n, 161), *arr.shape[1:]) if key == "img" else arr.shape
        z = data.create_array(key, shape=arr.shape, dtype=arr.dtype, chunks=chunks, compressors=compressor)
        z[:] = arr
    meta = root.create_group("meta")
    ends = np.cumsum(lengths).astype(np.int64)
    z = meta.create_array("episode_ends", shape=ends.shape, dtype=ends.dtype, chunks=ends.shape, compressors=compressor)
    z[:] = ends
    arrays["episode_ends"] = ends
    return arrays


LIFT_LOWDIM_KEYS = {"eef_pos": 3, "eef_quat": 4, "gripper_qpos": 2, "object": 10}


def make_learnable_lift_store(path: str | os.PathLike, n_episodes: int = 12, length: int = 30) -> Path:
    """A low-dim store with Lift's keys whose action is a fixed smooth function of the moving end-effector position
    (the other keys are noise): small enough to train on in a test, learnable enough that the loss must fall."""
    rng = np.random.default_rng(0)
    schema = {k: KeySpec((d,), "float32", f"synthetic {k}") for k, d in LIFT_LOWDIM_KEYS.items()}
    schema["action"] = KeySpec((7,), "float32", "synthetic action")
    weights = rng.normal(size=(3, 7)).astype(np.float32)
    with EpisodeStore.create(path, schema, {"task": "lift", "control_hz": 20}) as store:
        for _ in range(n_episodes):
            t = np.linspace(0, 1, length, dtype=np.float32)[:, None]
            pos = rng.normal(size=3).astype(np.float32) + t * rng.normal(size=3).astype(np.float32)
            episode = {"eef_pos": pos, "action": np.tanh(pos @ weights)}
            for key in ("eef_quat", "gripper_qpos", "object"):
                episode[key] = rng.normal(size=(length, LIFT_LOWDIM_KEYS[key])).astype(np.float32)
            store.append_episode(episode)
    return Path(path)
