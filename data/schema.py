"""Per-key schema of a demonstration store and the checks every appended episode goes through.

A store's schema maps each key to a `KeySpec` (the shape of ONE step, its dtype and a free-text meaning).
Images are uint8 HWC (keys ending in ``_image``), depth maps float32/uint16 HW (keys ending in ``_depth``),
actions float32 [A] under ``action``; everything else is low-dim.

One key convention for every path into a store, so data deploys on the robot that made it with no overrides:
a camera named ``<cam>`` is ``<cam>_image``; a robot's joint/state vector (LeRobot's ``observation.state``, the
scalar features of a LeRobot robot in their driver order) is ``state``; the command is ``action``. The LeRobot
importer, `vmp-record` and the LeRobot robot adapter all follow it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

# Version of the on-disk layout written by this code. Stores with a larger version are refused.
SCHEMA_VERSION = 1

ACTION_KEY = "action"
STATE_KEY = "state"  # a robot's proprioceptive vector (joint positions, ...), in the driver's feature order
LANGUAGE_KEY = "language"  # the per-episode text holding the instruction, and the obs key it travels under
PHASE_KEY = "phase"
REASONING_KEY = "reasoning"  # the per-episode text holding the expert's phases in order
RGB, DEPTH, LOW_DIM = "rgb", "depth", "low_dim"
# diffusion_policy's replay buffers name their camera keys without a suffix.
_LEGACY_IMAGE_NAMES = {"img", "image"}


@dataclasses.dataclass(frozen=True)
class KeySpec:
    """What one step of a key holds: ``shape`` excludes the time axis; ``dtype`` is a numpy dtype name."""

    shape: tuple
    dtype: str
    meaning: str = ""

    def __post_init__(self) -> None:
        try:
            shape = tuple(int(d) for d in self.shape)
        except (TypeError, ValueError) as e:
            raise ValueError(f"KeySpec.shape must be a tuple of ints, got {self.shape!r}") from e
        if any(d <= 0 for d in shape):
            raise ValueError(f"KeySpec.shape must have positive dims, got {self.shape!r}")
        try:
            dtype = np.dtype(self.dtype).name
        except TypeError as e:
            raise ValueError(f"KeySpec.dtype {self.dtype!r} is not a numpy dtype") from e
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "dtype", dtype)

    def to_json(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": self.dtype, "meaning": self.meaning}

    @classmethod
    def from_json(cls, key: str, d: Mapping[str, Any]) -> KeySpec:
        missing = [f for f in ("shape", "dtype") if f not in d]
        if missing:
            raise KeyError(f"schema entry for key {key!r} lacks field(s) {missing}; expected shape, dtype, meaning")
        return cls(tuple(d["shape"]), d["dtype"], d.get("meaning", ""))


def key_kind(key: str, spec: KeySpec) -> str:
    """Classify a key as ``rgb``, ``depth`` or ``low_dim`` (decides chunking, caching and tensor layout)."""
    if key.endswith("_depth"):
        return DEPTH
    if key.endswith("_image") or key in _LEGACY_IMAGE_NAMES:
        return RGB
    if len(spec.shape) == 3 and spec.shape[-1] in (1, 3, 4) and spec.shape[0] >= 8 and spec.shape[1] >= 8:
        return RGB
    return LOW_DIM


def check_schema(schema: Mapping[str, KeySpec], attrs: Mapping[str, Any]) -> dict[str, KeySpec]:
    """Validate a schema for a new store; returns it as a plain dict of KeySpec."""
    if not schema:
        raise ValueError("schema is empty: a store needs at least the 'action' key")
    out: dict[str, KeySpec] = {}
    for key, spec in schema.items():
        if not isinstance(key, str) or not key or "/" in key:
            raise ValueError(f"schema key {key!r} must be a non-empty string without '/'")
        if isinstance(spec, Mapping):
            spec = KeySpec.from_json(key, spec)
        if not isinstance(spec, KeySpec):
            raise TypeError(f"schema[{key!r}] must be a KeySpec, got {type(spec).__name__}")
        if key.endswith("_image") and (spec.dtype != "uint8" or len(spec.shape) != 3 or spec.shape[-1] not in (1, 3, 4)):
            raise ValueError(f"schema[{key!r}]: image keys are uint8 HWC with C in (1, 3, 4), got {spec.dtype} {spec.shape}")
        if key.endswith("_depth") and (spec.dtype not in ("float32", "uint16") or len(spec.shape) != 2):
            raise ValueError(f"schema[{key!r}]: depth keys are float32 or uint16 HW, got {spec.dtype} {spec.shape}")
        out[key] = spec
    if ACTION_KEY not in out:
        raise ValueError(f"schema lacks the {ACTION_KEY!r} key (float32 [A]); keys given: {sorted(out)}")
    act = out[ACTION_KEY]
    if act.dtype != "float32" or len(act.shape) != 1:
        raise ValueError(f"schema['action'] must be float32 [A], got {act.dtype} {act.shape}")
    if PHASE_KEY in out:
        ph = out[PHASE_KEY]
        if ph.dtype != "int16" or ph.shape not in ((), (1,)):
            raise ValueError(f"schema['phase'] must be int16 with shape () or (1,), got {ph.dtype} {ph.shape}")
        if "phase_names" not in attrs:
            raise ValueError("schema has a 'phase' key but attrs lack 'phase_names' (list of phase names)")
    return out


def check_episode(
    episode: Mapping[str, Any], schema: Mapping[str, KeySpec], phase_names: list[str] | None = None,
    action_free: bool = False,
) -> dict[str, np.ndarray]:
    """Validate one episode against the schema; returns arrays ready to write (float64 -> float32 etc).

    Every array is [T, *spec.shape] with the same T >= 1. Floats may be given at any float precision and are
    cast to the schema dtype; integer, bool and uint8 keys must match exactly. Actions and low-dim floats
    must be finite. An ``action_free`` episode (video without actions) must omit ``action``; its action rows
    are returned as zeros (finite, so masked losses and statistics can never turn them into NaN).
    """
    if not isinstance(episode, Mapping):
        raise TypeError(f"episode must be a dict of arrays, got {type(episode).__name__}")
    if action_free:
        action_spec = schema[ACTION_KEY]
        if ACTION_KEY in episode:
            raise ValueError(f"an action-free episode must not hold {ACTION_KEY!r}; drop it or append with action_free=False")
        if len(schema) == 1:
            raise ValueError(f"the store's schema holds only {ACTION_KEY!r}, so an action-free episode would be empty")
        schema = {k: s for k, s in schema.items() if k != ACTION_KEY}
    missing = [k for k in schema if k not in episode]
    if missing:
        raise KeyError(f"episode lacks key(s) {missing}; the store's schema expects {sorted(schema)}")
    extra = [k for k in episode if k not in schema]
    if extra:
        raise KeyError(f"episode has key(s) {extra} not in the store's schema {sorted(schema)}")
    out: dict[str, np.ndarray] = {}
    length = None
    for key, spec in schema.items():
        arr = np.asarray(episode[key])
        want = np.dtype(spec.dtype)
        if arr.dtype != want:
            if arr.dtype.kind == "f" and want.kind == "f":
                arr = arr.astype(want)
            else:
                raise ValueError(f"episode[{key!r}] has dtype {arr.dtype}, expected {want}")
        if arr.ndim != 1 + len(spec.shape) or tuple(arr.shape[1:]) != spec.shape:
            expected = "(T" + "".join(f", {d}" for d in spec.shape) + ")"
            raise ValueError(f"episode[{key!r}] has shape {arr.shape}, expected {expected}")
        if length is None:
            length = arr.shape[0]
        elif arr.shape[0] != length:
            raise ValueError(f"episode[{key!r}] has {arr.shape[0]} steps but other keys have {length}; all keys share the time axis")
        if want.kind == "f" and not key.endswith("_depth") and key_kind(key, spec) == LOW_DIM:
            bad = ~np.isfinite(arr)
            if bad.any():
                step = int(np.argwhere(bad)[0][0])
                raise ValueError(f"episode[{key!r}] holds NaN or inf (first at step {step}); values must be finite")
        out[key] = np.ascontiguousarray(arr)
    if not length:
        raise ValueError("episode has length 0; an episode needs at least one step")
    if action_free:
        out[ACTION_KEY] = np.zeros((length, *action_spec.shape), dtype=action_spec.dtype)
    if phase_names is not None and PHASE_KEY in out:
        ph = out[PHASE_KEY]
        if ph.size and (ph.min() < 0 or ph.max() >= len(phase_names)):
            raise ValueError(f"episode['phase'] values must lie in [0, {len(phase_names)}) (phase_names), got [{ph.min()}, {ph.max()}]")
    return out
