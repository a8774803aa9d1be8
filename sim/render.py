"""Rendering helpers shared by every backend: fast offscreen settings and mp4 writing.

On a CPU machine (Mesa llvmpipe behind EGL) rendering dominates the step time of image tasks. Three
settings cost most and rarely matter to a 84-96 px policy input: multi-sample anti-aliasing (the
model's ``vis.quality.offsamples``), shadows and reflections. ``fast_render`` turns them off.
"""

from __future__ import annotations

import atexit
import logging
import weakref
from pathlib import Path
from typing import Sequence

import mujoco
import numpy as np

log = logging.getLogger(__name__)


_LIVE: "weakref.WeakSet[object]" = weakref.WeakSet()


def _close_live() -> None:
    for obj in list(_LIVE):
        try:
            obj.close()
        except Exception:  # exiting anyway: never let a GL teardown error surface
            log.debug("closing %r at exit failed", obj, exc_info=True)


def close_at_exit(obj: object) -> None:
    """Close ``obj`` (an env holding GL contexts) at interpreter exit, before EGL is terminated.

    MuJoCo and robosuite register ``eglTerminate`` with atexit when they create their first context; atexit
    runs callbacks last-in first-out, so (re-)registering after a context exists makes this run first and
    the garbage collector later finds nothing to free (no EGL tracebacks at exit).
    """
    _LIVE.add(obj)
    atexit.unregister(_close_live)
    atexit.register(_close_live)


def set_fast_model_settings(model: mujoco.MjModel, fast: bool = True) -> None:
    """Drop anti-aliasing samples; must happen before an ``MjrContext`` is created from ``model``."""
    if fast:
        model.vis.quality.offsamples = 0


def set_fast_scene_flags(scene: mujoco.MjvScene, fast: bool = True) -> None:
    """Shadows and reflections off (on again when ``fast`` is False)."""
    scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0 if fast else 1
    scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0 if fast else 1


def write_video(path: str | Path, frames: Sequence[np.ndarray], fps: int) -> Path:
    """Write uint8 HWC frames to an H.264 mp4 (imageio + ffmpeg)."""
    import imageio.v2 as imageio

    path = Path(path)
    if len(frames) == 0:
        raise ValueError(f"write_video({path}): no frames to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    # macro_block_size=1 keeps odd sizes (84 px) instead of resizing with a warning.
    with imageio.get_writer(path, fps=fps, codec="libx264", quality=7, macro_block_size=1) as writer:
        for frame in frames:
            writer.append_data(np.ascontiguousarray(frame, dtype=np.uint8))
    return path


def extras_panel(extras: dict, width: int, height: int | None = None) -> np.ndarray:
    """What a head said beside its chunk, drawn under a video frame: predicted future frames side by side,
    candidate trajectories (first two dimensions, the best-scored one green, the rest grey), reasoning text."""
    import cv2

    height = height or max(48, width // 3)
    panel = np.full((height, width, 3), 24, np.uint8)
    x = 0
    frames = extras.get("future_frames")
    if frames is not None and len(frames):
        grid = image_grid(np.asarray(frames, np.uint8))
        scale = height / grid.shape[0]
        grid = cv2.resize(grid, (max(1, int(grid.shape[1] * scale)), height), interpolation=cv2.INTER_AREA)[:, :width]
        panel[:, : grid.shape[1]] = grid
        x = grid.shape[1]
    cands = extras.get("candidates")
    if cands is not None and x < width:
        cands = np.asarray(cands, np.float32)[..., :2]  # [N, T, 2]
        scores = extras.get("candidate_scores")
        best = int(np.argmax(scores)) if scores is not None else -1
        lo, hi = cands.reshape(-1, 2).min(0), cands.reshape(-1, 2).max(0)
        box = min(height, width - x) - 4
        pts = ((cands - lo) / np.maximum(hi - lo, 1e-6) * box + 2).astype(np.int32)
        pts[..., 1] = box + 2 - pts[..., 1]  # y up
        for i in sorted(range(len(pts)), key=lambda i: i == best):
            cv2.polylines(panel[:, x:], [pts[i]], False, (60, 220, 60) if i == best else (140, 140, 140), 1)
        x += box + 4
    text = extras.get("reasoning")
    if text:
        line_h, chars = 12, max(8, (width - x) // 6)
        for row, start in enumerate(range(0, len(text), chars)):
            if (row + 1) * line_h > height:
                break
            cv2.putText(panel, text[start : start + chars], (x + 2, (row + 1) * line_h - 2), cv2.FONT_HERSHEY_PLAIN,
                        0.8, (230, 230, 230), 1, cv2.LINE_AA)
    return panel


def image_grid(frames: np.ndarray) -> np.ndarray:
    """[F, H, W, 3] uint8 -> one row [H, F*W, 3] (a predicted future, left to right)."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"image_grid expects [F, H, W, 3] frames, got shape {frames.shape}")
    return np.concatenate(list(frames), axis=1)
