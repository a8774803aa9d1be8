"""The `Policy` interface every head implements, and the observation/action timeline they share.

Timeline (diffusion_policy's convention, one window of `horizon` steps starting at t0):

    obs:     |o_t0 ... o_{t0+n_obs_steps-1}|                       (n_obs_steps observations)
    action:  |a_t0 ..... a_{t0+n_obs_steps-1} ... a_{t0+horizon-1}| (horizon actions)
    execute:                 ^-- a_{t0+n_obs_steps-1} ... + n_action_steps

The chunk predicted from the newest observation o_t starts at index n_obs_steps-1 (the action for t).
"""

from __future__ import annotations

import abc
import collections
import dataclasses
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from vmp.data.schema import LANGUAGE_KEY  # obs[LANGUAGE_KEY]: the instruction of each row of a batch, B strings


@dataclasses.dataclass
class DiffusionHeadConfig:
    """Settings every diffusion head shares: the chunk timeline and the transformer denoiser's size."""

    n_obs_steps: int = 2
    horizon: int = 16
    n_action_steps: int = 8
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    dropout: float = 0.05
    goal_dropout: float = 0.0


class Policy(nn.Module, abc.ABC):
    """Base class for every head.

    Batches are dicts: ``obs`` {key: [B, n_obs_steps, *shape]} (images uint8 [B, T, C, H, W]),
    ``action`` [B, horizon, action_dim] (raw, unnormalized), ``action_is_pad`` [B, horizon] bool,
    optional ``goal`` {key: [B, *shape]}; a language-conditioned policy also reads ``obs["language"]`` (B strings).
    The normalizer is a submodule, so it ships in checkpoints.
    """

    name: str = ""

    def __init__(self, n_obs_steps: int, horizon: int, n_action_steps: int, action_dim: int):
        super().__init__()
        if not 1 <= n_obs_steps <= horizon:
            raise ValueError(f"n_obs_steps must be in [1, horizon={horizon}], got {n_obs_steps}")
        if not 1 <= n_action_steps <= horizon - n_obs_steps + 1:
            raise ValueError(
                f"n_action_steps must be in [1, horizon - n_obs_steps + 1 = {horizon - n_obs_steps + 1}], got {n_action_steps}"
            )
        self.n_obs_steps, self.horizon, self.n_action_steps, self.action_dim = n_obs_steps, horizon, n_action_steps, action_dim
        self._obs_history: collections.deque = collections.deque(maxlen=n_obs_steps)
        self._action_queue: collections.deque = collections.deque()
        self._goal: dict[str, np.ndarray] | None = None
        self._language: str | None = None
        self.inference_times_ms: list[float] = []

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not abc.ABC in cls.__bases__ and not cls.name:
            raise TypeError(f"{cls.__name__} must set a class attribute `name`")

    @abc.abstractmethod
    def compute_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Training loss; the dict holds ``loss`` (the scalar to minimise) and any scalars worth logging."""

    @abc.abstractmethod
    def predict_action_chunk(
        self, obs: dict[str, torch.Tensor], goal: dict[str, torch.Tensor] | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """obs {key: [B, n_obs_steps, *shape]} (raw) -> actions [B, horizon, action_dim] (unnormalized)."""

    # ---- step-by-step control (simulation evaluation, deployment) ----
    def reset(self) -> None:
        """Forget the observation history, queued actions, goal and instruction: call at every episode start."""
        self._obs_history.clear()
        self._action_queue.clear()
        self._goal = None
        self._language = None

    def set_goal(self, goal: dict[str, np.ndarray] | None) -> None:
        self._goal = goal

    def set_language(self, instruction: str | None) -> None:
        """The episode's instruction (``info["language"]``); policies without a language branch ignore it."""
        self._language = instruction

    @torch.no_grad()
    def select_action(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """One env step: append ``obs`` (unbatched, raw), return the next action [action_dim].

        A new chunk is predicted when the queue is empty; the first step's observation is repeated to fill
        the history (the same edge padding the sampler uses in training).
        """
        self._obs_history.append(obs)
        while len(self._obs_history) < self.n_obs_steps:
            self._obs_history.appendleft(self._obs_history[0])
        if not self._action_queue:
            device = self.device
            window = self.env_obs_to_batch(
                {k: torch.as_tensor(np.stack([o[k] for o in self._obs_history]), device=device).unsqueeze(0)
                 for k in self._obs_history[-1]}
            )
            if self._language is not None:
                window[LANGUAGE_KEY] = [self._language]
            goal = None
            if self._goal is not None:
                goal = {k: torch.as_tensor(np.asarray(v), device=device).unsqueeze(0) for k, v in self._goal.items()}
            start = time.perf_counter()
            chunk = self.predict_action_chunk(window, goal=goal)
            self.inference_times_ms.append((time.perf_counter() - start) * 1e3)
            chunk = chunk[0].float().cpu().numpy()
            if not np.isfinite(chunk).all():
                raise FloatingPointError(f"{self.name} predicted a non-finite action chunk")
            first = self.n_obs_steps - 1
            self._action_queue.extend(chunk[first : first + self.n_action_steps])
        return self._action_queue.popleft()

    def env_obs_to_batch(self, window: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Observations as environments and robots give them -> the layout training batches use. Identity here."""
        return window

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


class ConditionalPolicy(Policy, abc.ABC):
    """A head conditioned on `ObsEncoder` tokens (and an optional goal token); owns the normalizer.

    `condition()` is the one place that normalizes observations and assembles the token sequence
    [obs tokens of every step..., goal token, instruction token]. A missing or dropped goal uses a learned null
    token, which is what goal dropout trains and classifier-free guidance queries. The instruction travels in the
    observation batch as ``obs["language"]``, a list of B strings (as LeRobot passes its task string).
    """

    def __init__(self, config: Any, encoder: nn.Module, normalizer: nn.Module, action_dim: int):
        super().__init__(config.n_obs_steps, config.horizon, config.n_action_steps, action_dim)
        self.config = config
        self.encoder = encoder
        self.normalizer = normalizer
        if encoder.n_obs_steps != config.n_obs_steps:
            raise ValueError(f"encoder built for n_obs_steps={encoder.n_obs_steps}, head for {config.n_obs_steps}")
        self.null_goal = nn.Parameter(torch.zeros(1, 1, encoder.d_model)) if encoder.goal_keys else None

    def condition(
        self,
        obs: dict[str, torch.Tensor],
        goal: dict[str, torch.Tensor] | None = None,
        drop_goal: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """obs {key: [B, T, ...]} raw -> conditioning tokens [B, encoder.n_tokens, D].

        drop_goal: bool [B], True where the goal token is replaced by the null token (goal dropout, unconditional
        branch of guidance). Without a goal every row gets the null token.
        """
        nobs = {k: self.normalizer.normalize(k, obs[k]) if k in self.encoder.lowdim_keys else obs[k] for k in self.encoder.obs_keys}
        ngoal = None
        if goal is not None:
            missing = [k for k in self.encoder.goal_keys if k not in goal]
            if missing:
                raise KeyError(f"goal is missing keys {missing}; the policy was trained with goal_keys {self.encoder.goal_keys}")
            ngoal = {k: self.normalizer.normalize(k, goal[k]) for k in self.encoder.goal_keys}
        tokens = [self.encoder(nobs, ngoal, drop_goal).flatten(1, 2)]
        b = tokens[0].shape[0]
        if self.null_goal is not None:
            null = self.null_goal.expand(b, -1, -1)
            if ngoal is None:
                goal_token = null
            else:
                goal_token = self.encoder.encode_goal(ngoal)
                if drop_goal is not None:
                    goal_token = torch.where(drop_goal[:, None, None], null, goal_token)
            tokens.append(goal_token)
        if self.encoder.text is not None:
            if obs.get(LANGUAGE_KEY) is None:
                raise KeyError(f"this policy is language-conditioned: give the instruction with set_language(text), or as "
                               f"obs[{LANGUAGE_KEY!r}] = [B strings] in a batch")
            tokens.append(self.encoder.encode_language(obs[LANGUAGE_KEY]))
        return torch.cat(tokens, dim=1)

    def training_inputs(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(normalized actions [B, H, A], conditioning tokens) for a training batch; the goal token is dropped with
        probability `config.goal_dropout` per sample (how the goal-free branch for guidance is trained)."""
        actions = self.normalizer.normalize("action", batch["action"])
        drop_goal = None
        if self.null_goal is not None:
            drop_goal = torch.rand(actions.shape[0], device=actions.device) < getattr(self.config, "goal_dropout", 0.0)
        return actions, self.condition(batch["obs"], batch.get("goal"), drop_goal)

    def env_obs_to_batch(self, window: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """RGB images arrive HWC (as stored and rendered) and are fed CHW: [B, T, H, W, C] -> [B, T, C, H, W]."""
        out = dict(window)
        for key, net in self.encoder.images.items():
            if net.obs_type == "rgb" and key in out and out[key].shape[-1] == net.in_channels:
                out[key] = out[key].permute(0, 1, 4, 2, 3)
        return out

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """DistributedDataParallel calls forward: it is the training loss."""
        return self.compute_loss(batch)

    @staticmethod
    def masked_mse(pred: torch.Tensor, target: torch.Tensor, is_pad: torch.Tensor | None) -> torch.Tensor:
        """Mean squared error over the steps that are real actions, not edge padding past an episode's end."""
        err = (pred - target).pow(2).mean(dim=-1)  # [B, H]
        if is_pad is None:
            return err.mean()
        keep = (~is_pad).float()
        return (err * keep).sum() / keep.sum().clamp(min=1.0)
