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
