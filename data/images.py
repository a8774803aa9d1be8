"""Resizing camera frames: one function for training (a store recorded at the camera's resolution trains at the
task's size), recording and deployment (a robot's frames reach the policy at the size it trained on)."""

from __future__ import annotations

import cv2
import numpy as np

from .schema import DEPTH, RGB


def resize_frames(frames: np.ndarray, size: tuple[int, int], kind: str = RGB) -> np.ndarray:
    """``kind`` rgb: [..., H, W, C] uint8; depth: [..., H, W] -> the same with (H, W) = ``size``. Area averaging
    when shrinking (no aliasing), linear otherwise; an array already at ``size`` is returned as it is."""
    if kind not in (RGB, DEPTH):
        raise ValueError(f"resize_frames: kind must be {RGB!r} or {DEPTH!r}, got {kind!r}")
    frames = np.asarray(frames)
    h, w = int(size[0]), int(size[1])
    axis = frames.ndim - (3 if kind == RGB else 2)  # first spatial axis
    if axis < 0:
        raise ValueError(f"resize_frames: a {kind} frame needs {3 if kind == RGB else 2} dims, got shape {frames.shape}")
    spatial = frames.shape[axis:axis + 2]
    if tuple(spatial) == (h, w):
        return frames
    lead, tail = frames.shape[:axis], frames.shape[axis + 2:]
    interp = cv2.INTER_AREA if h <= spatial[0] and w <= spatial[1] else cv2.INTER_LINEAR
    flat = frames.reshape(-1, *frames.shape[axis:])
    out = np.stack([cv2.resize(f, (w, h), interpolation=interp) for f in flat])
    return out.reshape(*lead, h, w, *tail).astype(frames.dtype, copy=False)
