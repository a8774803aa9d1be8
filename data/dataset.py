"""`SequenceDataset`: a torch Dataset over a `SequenceSampler`, with an augmentation hook; `MixedSequenceDataset`:
several of them (several stores) mixed with weights in one training run.

Items (and DataLoader batches, with a leading B axis) are::

    {"obs": {rgb key: uint8 [T, C, H, W], depth key: float32 [T, 1, H, W], low-dim key: float32 [T, *shape]},
     "action": float32 [horizon, A], "action_is_pad": bool [horizon], "episode": int64 [],
     "has_action": bool [],                               # False for action-free (video) episodes
     "goal": {key: same layouts without T},               # only with goal_keys
     "future": {key: same layouts with F for T},          # only with future_keys: [F, C, H, W] uint8 for RGB
     "future_is_pad": bool [F],
     "train": {key: [horizon, ...]},                      # only with train_keys: images as obs, floats float32,
                                                          # integer targets int64, bool targets bool
     "text": {name: str},                                 # only with text_keys; batches: lists of B strings
     "source": int64 []}                                  # only from MixedSequenceDataset: which member

with T = n_obs_steps. Images stored as float 0-255 (diffusion_policy's Push-T) are rounded to uint8.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .sampler import SequenceSampler
from .schema import ACTION_KEY, LANGUAGE_KEY
from .store import DEPTH, LOW_DIM, RGB

log = logging.getLogger(__name__)


def to_training_layout(x: np.ndarray, kind: str) -> torch.Tensor:
    """One key's array as stored, rendered and observed on a robot -> the layout heads consume; ``x`` has leading
    batch/time axes. Training batches and `Policy.window_to_batch` at run time both go through here."""
    if kind == RGB:
        if x.dtype != np.uint8:
            x = np.clip(np.rint(x), 0, 255).astype(np.uint8)
        # ... H W C -> ... C H W as a view; batch collation (or the consumer) makes it contiguous.
        return torch.from_numpy(x).movedim(-1, -3)
    if kind == DEPTH:
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).unsqueeze(-3)  # ... H W -> ... 1 H W
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def _target_tensor(x: np.ndarray, kind: str) -> torch.Tensor:
    """Like `to_training_layout`, but integer and bool low-dim targets keep integer (int64: class labels) / bool dtype."""
    if kind == LOW_DIM and x.dtype.kind in "iub":
        return torch.from_numpy(np.ascontiguousarray(x, dtype=bool if x.dtype.kind == "b" else np.int64))
    return to_training_layout(x, kind)


class SequenceDataset(Dataset):
    """Torch view of a sampler. ``transform(item) -> item`` runs on every item (e.g. image augmentation).

    Works with ``DataLoader(num_workers>0)``: the sampler reopens its store read-only in each worker. The
    batched ``__getitems__`` path reads each image key once per batch.
    """

    def __init__(self, sampler: SequenceSampler, transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None):
        if not isinstance(sampler, SequenceSampler):
            raise TypeError(f"sampler must be a SequenceSampler, got {type(sampler).__name__}")
        self.sampler, self.transform = sampler, transform

    def __len__(self) -> int:
        return len(self.sampler)

    def _convert(self, raw: dict[str, Any]) -> dict[str, Any]:
        kinds = self.sampler.kinds
        item = {
            # the instruction (str, or a list of str for a batch) stays text; the policy's encoder reads it
            "obs": {k: v if k == LANGUAGE_KEY else to_training_layout(v, kinds[k]) for k, v in raw["obs"].items()},
            "action": torch.from_numpy(np.ascontiguousarray(raw["action"], dtype=np.float32)),
            "action_is_pad": torch.from_numpy(np.ascontiguousarray(raw["action_is_pad"])),
            "episode": torch.as_tensor(raw["episode"], dtype=torch.int64),
            "has_action": torch.as_tensor(raw["has_action"], dtype=torch.bool),
        }
        if "goal" in raw:
            item["goal"] = {k: to_training_layout(v, kinds[k]) for k, v in raw["goal"].items()}
        if "future" in raw:
            item["future"] = {k: to_training_layout(v, kinds[k]) for k, v in raw["future"].items()}
            item["future_is_pad"] = torch.from_numpy(np.ascontiguousarray(raw["future_is_pad"]))
        if "train" in raw:
            item["train"] = {k: _target_tensor(v, kinds[k]) for k, v in raw["train"].items()}
        if "text" in raw:
            item["text"] = raw["text"]
        return item

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self._convert(self.sampler[i])
        return self.transform(item) if self.transform is not None else item

    def batch(self, indices: list[int] | np.ndarray) -> dict[str, Any]:
        """Windows ``indices`` as one batch of tensors (leading B axis; the instruction a list of B strings), each
        image key read once. No ``transform``: it runs per item."""
        return self._convert(self.sampler.sample_batch(indices))

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        """DataLoader's batched fetch: one read per image key, then split into items for collation."""
        batch = self.batch(indices)
        items = [_index(batch, j) for j in range(len(indices))]
        if self.transform is not None:
            items = [self.transform(it) for it in items]
        return items


class MixedSequenceDataset(Dataset):
    """Items drawn from several `SequenceDataset` s (e.g. several stores) in proportion to ``weights``.

    The mix is a seeded table of ``length`` slots (default: the members' total length), built once: member m
    gets its share of the slots (largest remainder of ``length * weights[m] / sum(weights)``), filled by
    cycling through seeded permutations of its windows, so each window of a member appears equally often (up
    to one). The table is fixed, so an epoch-level permutation over it (``shuffle=True``, vmp-train's sampler)
    stays reproducible; a member with fewer slots than windows only ever shows a seeded subset of them (logged).
    Each item gains ``"source"``: the index of its member. Members must produce items of one layout (same
    keys, shapes, horizon, n_obs_steps, ...) so batches collate.
    """

    def __init__(self, datasets: list[SequenceDataset], weights: list[float], seed: int = 0, length: int | None = None):
        datasets, weights = list(datasets), [float(w) for w in weights]
        if not datasets:
            raise ValueError("MixedSequenceDataset needs at least one dataset")
        for m, ds in enumerate(datasets):
            if not isinstance(ds, SequenceDataset):
                raise TypeError(f"datasets[{m}] must be a SequenceDataset, got {type(ds).__name__}")
        if len(weights) != len(datasets):
            raise ValueError(f"got {len(weights)} weights for {len(datasets)} datasets; give one weight per dataset")
        if not all(np.isfinite(w) and w > 0 for w in weights):
            raise ValueError(f"weights must be positive and finite (drop a dataset instead of weighting it 0), got {weights}")
        reference = _layout(datasets[0].sampler)
        for m, ds in enumerate(datasets[1:], start=1):
            layout = _layout(ds.sampler)
            for what, ref in reference.items():
                if layout[what] != ref:
                    raise ValueError(f"datasets[{m}] ({ds.sampler._path}) disagrees with datasets[0] "
                                     f"({datasets[0].sampler._path}) on {what}: {layout[what]} vs {ref}")
        sizes = np.array([len(ds) for ds in datasets], dtype=np.int64)
        length = int(sizes.sum()) if length is None else int(length)
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        self.datasets, self.weights, self.seed = datasets, weights, seed
        # Slots per member: the floor of each share, the remaining slots to the largest remainders.
        share = length * np.asarray(weights) / sum(weights)
        counts = np.floor(share).astype(np.int64)
        counts[np.argsort(-(share - counts), kind="stable")[: length - int(counts.sum())]] += 1
        rng = np.random.default_rng(seed)
        members = []
        for m, (count, size) in enumerate(zip(counts, sizes)):
            laps = -(-int(count) // int(size))
            members.append(np.concatenate([np.zeros(0, np.int64), *(rng.permutation(size) for _ in range(laps))])[:count])
            if count < size:
                log.info("mixed dataset: member %d (%s) gets %d slots for its %d windows; %d windows are never drawn",
                         m, datasets[m].sampler._path, count, size, size - count)
        order = rng.permutation(length)  # interleave the members
        self._source = np.repeat(np.arange(len(datasets)), counts)[order]
        self._index = np.concatenate(members).astype(np.int64)[order]

    def __len__(self) -> int:
        return int(self._source.size)

    def slot(self, i: int) -> tuple[int, int]:
        """(member, index in that member) of item ``i``."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a mixed dataset of {len(self)} items")
        return int(self._source[i]), int(self._index[i])

    def __getitem__(self, i: int) -> dict[str, Any]:
        m, j = self.slot(i)
        return {**self.datasets[m][j], "source": torch.tensor(m, dtype=torch.int64)}

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        """Batched fetch: one batched read per member present, items returned in the order asked."""
        slots = [self.slot(int(i)) for i in indices]
        items: list[dict[str, Any] | None] = [None] * len(slots)
        source = np.array([m for m, _ in slots], dtype=np.int64)
        for m in np.unique(source).tolist():
            where = np.flatnonzero(source == m)
            got = self.datasets[m].__getitems__([slots[p][1] for p in where])
            for p, item in zip(where.tolist(), got):
                items[p] = {**item, "source": torch.tensor(m, dtype=torch.int64)}
        return items


def _layout(sampler: SequenceSampler) -> dict[str, Any]:
    """What decides the layout of a sampler's items: mixed members must agree on all of it."""
    def spec(keys: list[str]) -> dict[str, tuple]:
        return {k: (sampler.kinds[k], sampler.shapes[k]) for k in keys}

    return {"observation keys": sorted(sampler.keys), "observation (kind, shape)": spec(sorted(sampler.keys)),
            "horizon": sampler.horizon, "n_obs_steps": sampler.n_obs_steps,
            "action shape": sampler.shapes[ACTION_KEY], "language": sampler.language,
            "goal (kind, shape)": spec(sorted(sampler.goal_keys)),
            "future (kind, shape)": spec(sorted(sampler.future_keys)),
            "future_offsets": sampler.future_offsets.tolist(),
            "train (kind, shape)": spec(sorted(sampler.train_keys)), "text_keys": sorted(sampler.text_keys)}


def _index(tree: Any, j: int) -> Any:
    if isinstance(tree, dict):
        return {k: _index(v, j) for k, v in tree.items()}
    return tree[j]
