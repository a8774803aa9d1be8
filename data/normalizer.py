"""`Normalizer`: per-key affine normalisation whose statistics ship in a checkpoint's state_dict.

``normalize(x) = x * scale + offset`` and ``unnormalize(y) = (y - offset) / scale`` per element of a key's
shape, applied over any leading axes. Modes:

- ``minmax``: [min, max] -> [-1, 1]; dims whose range is below ``range_eps`` map to 0 (scale 1) so a
  constant dim neither explodes nor collapses (diffusion_policy's guard).
- ``meanstd``: (x - mean) / std; dims with std below ``range_eps`` get scale 1.
- ``identity``: unchanged (uint8 images pass through untouched).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from .schema import ACTION_KEY
from .store import EpisodeStore

log = logging.getLogger(__name__)

MODES = ("minmax", "meanstd", "identity")
STATS = ("scale", "offset", "min", "max", "mean", "std")
DEFAULT_RANGE_EPS = 1e-4
# Rows read at a time when computing statistics (bounded memory for long stores).
_STATS_BLOCK_STEPS = 100_000


def _buf(key: str, stat: str) -> str:
    # Buffer names may not contain '.', which LeRobot-style keys ("observation.state") do.
    return f"{key.replace('.', '__dot__')}__{stat}"


class Normalizer(nn.Module):
    """Per-key normalisation; build with `from_store`, or `empty` before `load_state_dict`."""

    def __init__(self, shapes: Mapping[str, tuple], modes: Mapping[str, str], range_eps: float = DEFAULT_RANGE_EPS):
        super().__init__()
        missing = [k for k in shapes if k not in modes]
        extra = [k for k in modes if k not in shapes]
        if missing or extra:
            raise KeyError(f"Normalizer keys mismatch: no mode for {missing}, no shape for {extra}")
        for k, m in modes.items():
            if m not in MODES:
                raise ValueError(f"Normalizer mode for key {k!r} must be one of {MODES}, got {m!r}")
        self.shapes = {k: tuple(int(d) for d in s) for k, s in shapes.items()}
        self.modes = dict(modes)
        self.range_eps = float(range_eps)
        for k, shape in self.shapes.items():
            for stat in STATS:
                init = torch.ones(shape) if stat in ("scale", "std") else torch.zeros(shape)
                self.register_buffer(_buf(k, stat), init)

    @classmethod
    def empty(cls, shapes: Mapping[str, tuple], modes: Mapping[str, str], range_eps: float = DEFAULT_RANGE_EPS) -> Normalizer:
        """Identity-initialised normalizer with the right buffers, ready for ``load_state_dict``."""
        return cls(shapes, modes, range_eps)

    @classmethod
    def from_store(cls, store: EpisodeStore, modes: Mapping[str, str], range_eps: float = DEFAULT_RANGE_EPS,
                   episodes: np.ndarray | Mapping[str, np.ndarray] | None = None) -> Normalizer:
        """Statistics over the committed steps of ``store``, or of the given episode indices (e.g. the train split).

        ``episodes`` may map each normalised key to its own episodes (`SequenceSampler.stats_episodes`), e.g.
        the action fitted on fewer episodes than the observations. Whatever is given, the action's statistics
        skip action-free episodes (`EpisodeStore.has_action`): their zero action rows are no actions.
        """
        for k in modes:
            if k not in store.schema:
                raise KeyError(f"Normalizer key {k!r} is not in store {store.path}; keys: {store.keys}")
        norm = cls({k: store.schema[k].shape for k in modes}, modes, range_eps)
        fitted = [k for k, mode in modes.items() if mode != "identity"]
        if isinstance(episodes, Mapping):
            missing = [k for k in fitted if k not in episodes]
            extra = [k for k in episodes if k not in modes]
            if missing or extra:
                raise KeyError(f"Normalizer episodes mapping: no episodes for normalised key(s) {missing}, "
                               f"episodes for key(s) {extra} that have no mode")
        has_action = store.has_action
        for k in fitted:
            eps = episodes.get(k) if isinstance(episodes, Mapping) else episodes
            eps = None if eps is None else _episode_indices(store, eps)
            if k == ACTION_KEY and not has_action.all():
                eps = np.flatnonzero(has_action) if eps is None else eps[has_action[eps]]
            ranges = [(0, store.n_steps)] if eps is None else _episode_ranges(store, eps)
            norm.set_stats(k, **_stats(store.array(k), ranges, k))
        return norm

    # ------------------------------------------------------------------ stats
    def set_stats(self, key: str, min: np.ndarray, max: np.ndarray, mean: np.ndarray, std: np.ndarray) -> None:
        """Set a key's statistics and derive its scale/offset for its mode."""
        self._check(key)
        t = {n: torch.as_tensor(np.asarray(v, dtype=np.float64).reshape(self.shapes[key])) for n, v in
             dict(min=min, max=max, mean=mean, std=std).items()}
        mode = self.modes[key]
        if mode == "minmax":
            rng = t["max"] - t["min"]
            const = rng < self.range_eps
            scale = torch.where(const, torch.ones_like(rng), 2.0 / torch.where(const, torch.ones_like(rng), rng))
            offset = torch.where(const, -(t["max"] + t["min"]) / 2, -1.0 - scale * t["min"])
        elif mode == "meanstd":
            const = t["std"] < self.range_eps
            scale = torch.where(const, torch.ones_like(t["std"]), 1.0 / torch.where(const, torch.ones_like(t["std"]), t["std"]))
            offset = -t["mean"] * scale
        else:
            scale, offset = torch.ones_like(t["min"]), torch.zeros_like(t["min"])
        for name, v in dict(t, scale=scale, offset=offset).items():
            getattr(self, _buf(key, name)).copy_(v.to(torch.float32))

    def stats(self, key: str) -> dict[str, torch.Tensor]:
        self._check(key)
        return {s: getattr(self, _buf(key, s)) for s in STATS}

    @property
    def keys(self) -> list[str]:
        return list(self.shapes)

    # ------------------------------------------------------------------ apply
    def normalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        """x: [..., *shape] -> normalised, same shape (float)."""
        x = self._prep(key, x)
        if self.modes[key] == "identity":
            return x
        return x * getattr(self, _buf(key, "scale")).to(x.dtype) + getattr(self, _buf(key, "offset")).to(x.dtype)

    def unnormalize(self, key: str, y: torch.Tensor) -> torch.Tensor:
        """Exact inverse of `normalize` (up to float rounding)."""
        y = self._prep(key, y)
        if self.modes[key] == "identity":
            return y
        return (y - getattr(self, _buf(key, "offset")).to(y.dtype)) / getattr(self, _buf(key, "scale")).to(y.dtype)

    def normalize_dict(self, d: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Normalise every key of ``d`` (each must be known)."""
        return {k: self.normalize(k, v) for k, v in d.items()}

    def unnormalize_dict(self, d: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: self.unnormalize(k, v) for k, v in d.items()}

    # ------------------------------------------------------------------ checkpoint metadata
    def get_extra_state(self) -> dict[str, Any]:
        return {"shapes": {k: list(s) for k, s in self.shapes.items()}, "modes": dict(self.modes), "range_eps": self.range_eps}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        shapes = {k: tuple(s) for k, s in state["shapes"].items()}
        if shapes != self.shapes or dict(state["modes"]) != self.modes:
            raise ValueError(
                f"checkpoint normalizer has keys/shapes {shapes} and modes {state['modes']}, "
                f"but this normalizer was built with {self.shapes} and {self.modes}")
        self.range_eps = float(state["range_eps"])

    def extra_repr(self) -> str:
        return ", ".join(f"{k}: {self.modes[k]} {list(s)}" for k, s in self.shapes.items())

    def _check(self, key: str) -> None:
        if key not in self.shapes:
            raise KeyError(f"Normalizer has no key {key!r}; known keys: {self.keys}")

    def _prep(self, key: str, x: torch.Tensor) -> torch.Tensor:
        self._check(key)
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(np.asarray(x))
        shape = self.shapes[key]
        if tuple(x.shape[x.ndim - len(shape):]) != shape or x.ndim < len(shape):
            raise ValueError(f"Normalizer[{key!r}] expects [..., {', '.join(map(str, shape))}], got {list(x.shape)}")
        if self.modes[key] != "identity" and not x.is_floating_point():
            x = x.to(torch.float32)
        return x


def _episode_indices(store: EpisodeStore, episodes: Any) -> np.ndarray:
    """Episode indices (negative ones count from the end) as int64 [E] in [0, n_episodes)."""
    eps = np.asarray(episodes, dtype=np.int64).reshape(-1)
    n = store.n_episodes
    if eps.size and (eps.min() < -n or eps.max() >= n):
        raise IndexError(f"Normalizer episodes must lie in [-{n}, {n}) for store {store.path} with {n} episodes, "
                         f"got range [{eps.min()}, {eps.max()}]")
    return eps % max(n, 1)


def _episode_ranges(store: EpisodeStore, episodes: np.ndarray) -> list[tuple[int, int]]:
    """Row ranges of ``episodes`` in store order, back-to-back episodes merged into one range (fewer, longer reads)."""
    if episodes.size == 0:
        return []
    ends = store.episode_ends
    eps = np.sort(episodes)
    starts, stops = np.concatenate([[0], ends[:-1]])[eps], ends[eps]
    first = np.flatnonzero(np.concatenate([[True], starts[1:] != stops[:-1]]))
    last = np.append(first[1:], eps.size) - 1
    return list(zip(starts[first].tolist(), stops[last].tolist()))


def _stats(arr: Any, ranges: list[tuple[int, int]], key: str) -> dict[str, np.ndarray]:
    """min/max/mean/std over rows in ``ranges`` of a zarr array, in float64, block by block."""
    shape = tuple(arr.shape[1:])
    mn, mx = np.full(shape, np.inf), np.full(shape, -np.inf)
    s, ss, n = np.zeros(shape), np.zeros(shape), 0
    for lo, hi in ranges:
        for b in range(lo, hi, _STATS_BLOCK_STEPS):
            x = np.asarray(arr[b:min(hi, b + _STATS_BLOCK_STEPS)], dtype=np.float64)
            mn, mx = np.minimum(mn, x.min(0)), np.maximum(mx, x.max(0))
            s += x.sum(0)
            ss += np.square(x).sum(0)
            n += x.shape[0]
    if n == 0:
        raise ValueError(f"cannot compute normalizer statistics for {key!r} from zero steps (no episodes given, or "
                         f"for {ACTION_KEY!r} only action-free ones)")
    mean = s / n
    std = np.sqrt(np.maximum(ss / n - mean**2, 0.0))
    return dict(min=mn, max=mx, mean=mean, std=std)
