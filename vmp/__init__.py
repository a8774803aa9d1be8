"""vmp: visuomotor policy stack.

The code lives in the repository's top-level folders (data/, sim/, policies/, real/, bench/), installed
as subpackages of `vmp`. Importing `vmp` sets the process-wide defaults every entry point needs.
"""

import os

# Offscreen MuJoCo rendering without a display: EGL (Mesa on CPU machines). A user's choice wins.
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"] if os.environ["MUJOCO_GL"] != "glfw" else "")

__version__ = "0.1.0"
