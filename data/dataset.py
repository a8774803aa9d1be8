"""`SequenceDataset`: a torch Dataset over a `SequenceSampler`, with an augmentation hook.

Items (and DataLoader batches, with a leading B axis) are::

    {"obs": {rgb key: uint8 [T, C, H, W], depth key: float32 [T, 1, H, W], low-dim key: float32 [T, *shape]},
     "action": float32 [horizon, A], "action_is_pad": bool [horizon], "episode": int64 [],
     "goal": {key: same layouts without T}}           # only with goal_keys

with T = n_obs_steps. Images stored as float 0-255 (diffusion_policy's Push-T) are rounded to uint8.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .sampler import SequenceSampler
from .schema import LANGUAGE_KEY
from .store import DEPTH, RGB


def _to_tensor(x: np.ndarray, kind: str) -> torch.Tensor:
    """Convert one key's array (store layout) to the training layout; ``x`` has leading batch/time axes."""
    if kind == RGB:
        if x.dtype != np.uint8:
            x = np.clip(np.rint(x), 0, 255).astype(np.uint8)
        # ... H W C -> ... C H W as a view; batch collation (or the consumer) makes it contiguous.
        return torch.from_numpy(x).movedim(-1, -3)
    if kind == DEPTH:
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).unsqueeze(-3)  # ... H W -> ... 1 H W
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


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
            "obs": {k: v if k == LANGUAGE_KEY else _to_tensor(v, kinds[k]) for k, v in raw["obs"].items()},
            "action": torch.from_numpy(np.ascontiguousarray(raw["action"], dtype=np.float32)),
            "action_is_pad": torch.from_numpy(np.ascontiguousarray(raw["action_is_pad"])),
            "episode": torch.as_tensor(raw["episode"], dtype=torch.int64),
        }
        if "goal" in raw:
            item["goal"] = {k: _to_tensor(v, kinds[k]) for k, v in raw["goal"].items()}
        return item

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self._convert(self.sampler[i])
        return self.transform(item) if self.transform is not None else item

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        """DataLoader's batched fetch: one read per image key, then split into items for collation."""
        batch = self._convert(self.sampler.sample_batch(indices))
        items = [_index(batch, j) for j in range(len(indices))]
        if self.transform is not None:
            items = [self.transform(it) for it in items]
        return items


def _index(tree: Any, j: int) -> Any:
    if isinstance(tree, dict):
        return {k: _index(v, j) for k, v in tree.items()}
    return tree[j]
