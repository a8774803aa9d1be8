"""The expert interface: ``act(obs) -> action`` plus a per-step phase annotation.

Experts are privileged: they read object poses from the env they are bound to (``bind_env``), so the
same expert drives the low-dim and the image variant of a task. They are also policy-like
(``reset``, ``set_goal``, ``select_action``), so ``vmp-eval policy=expert`` runs them through the
same runner as a learned policy.
"""

from __future__ import annotations

import abc
import dataclasses
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import gymnasium as gym
import numpy as np


@dataclasses.dataclass(frozen=True)
class ActionOnly:
    """The capabilities of an actor that returns nothing beside its action: what the evaluation runner reads of
    `vmp.policies.base.Capabilities`, without importing torch into expert workers."""

    extras: tuple[str, ...] = ()


class ActorDefaults:
    """The members of the evaluation runner's `Actor` that a scripted actor (an expert, a test's stub) has no use
    for, at their defaults: no env to bind, no extras, no predicted frames, no latencies. Subclasses write ``reset``,
    ``set_goal``, ``set_language`` and ``select_action``."""

    capabilities: ActionOnly = ActionOnly()
    camera: str | None = None
    future_offsets: Sequence[int] = ()
    last_extras: Mapping[str, Any] = MappingProxyType({})
    inference_times_ms: Sequence[float] = ()
    decode_frames: bool = False

    def bind_env(self, env: Any) -> None:
        """Nothing to read from the env."""


class Expert(ActorDefaults, abc.ABC):
    """Scripted policy with phases.

    ``phase_names`` is the fixed vocabulary of phases (stored as the store attr ``phase_names``);
    ``phase`` is the index of the phase the last ``act`` was in (stored per step as int16 ``phase``).
    """

    name: str = ""
    phase_names: tuple[str, ...] = ()

    def __init__(self, env: gym.Env | None = None, seed: int | None = None):
        self.env: Any = None
        self.phase = 0
        self.rng = np.random.default_rng(seed)
        self._phase_log: list[int] = []
        if env is not None:
            self.bind_env(env)

    def bind_env(self, env: gym.Env) -> None:
        """Attach to the env whose privileged state the expert reads."""
        self.env = env.unwrapped

    def reset(self, seed: int | None = None) -> None:
        """Start a new episode; ``seed`` fixes the expert's own random choices (multimodal experts)."""
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.phase = 0
        self._phase_log = []

    def set_goal(self, goal: dict[str, np.ndarray] | None) -> None:
        """Goal-conditioned tasks: the expert follows the goal's assignment. Default: ignored."""

    def set_language(self, instruction: str | None) -> None:
        """Experts read the privileged state, not the instruction."""

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """One step: the action [action_dim] for ``obs``; updates ``phase``."""
        if self.env is None:
            raise RuntimeError(f"{type(self).__name__}: call bind_env(env) before act()")
        action = np.asarray(self._act(obs), dtype=np.float32)
        self._phase_log.append(self.phase)
        return action

    @abc.abstractmethod
    def _act(self, obs: dict[str, np.ndarray]) -> np.ndarray: ...

    # policy-like alias used by the evaluation runner
    def select_action(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return self.act(obs)

    def extra_specs(self) -> dict[str, Any]:
        """Training-only per-step keys this expert writes beside the observations, {key: KeySpec}; ``vmp-collect``
        adds them to the store's schema. None by default."""
        return {}

    def extras(self) -> dict[str, np.ndarray]:
        """The values of ``extra_specs()``'s keys for the step of the last ``act``."""
        return {}

    def reasoning(self) -> str:
        """The episode's phases in order, deduplicated: the per-episode reasoning text stored with it."""
        seq: list[str] = []
        for p in self._phase_log:
            name = self.phase_names[p]
            if not seq or seq[-1] != name:
                seq.append(name)
        return "; ".join(seq)
