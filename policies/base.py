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
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
from torch import nn

from vmp.data.schema import LANGUAGE_KEY  # obs[LANGUAGE_KEY]: the instruction of each row of a batch, B strings
from vmp.data.schema import KeySpec, key_kind


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


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What a head does beyond observation -> chunk, declared on its class so callers never inspect signatures.

    prefix: `predict` takes ``prefix`` [B, L, A] and ``prefix_weights`` [L] (real-time chunking inpaints the chunk's
    start). instruction: the head always needs an instruction (language-conditioned by design; heads whose task
    config adds an instruction token need one too, see `Policy.needs_instruction`). extras: names of the
    `Prediction.extras` it returns (see `EXTRAS`). context: it keeps a context that `refresh_context` renews every
    ``context_every`` control steps, apart from the fast action step.
    """

    prefix: bool = False
    instruction: bool = False
    extras: tuple[str, ...] = ()
    context: bool = False

    def __post_init__(self) -> None:
        unknown = sorted(set(self.extras) - set(EXTRAS))
        if unknown:
            raise ValueError(f"unknown extras {unknown}; known: {sorted(EXTRAS)}")


@dataclasses.dataclass(frozen=True)
class BatchSpec:
    """What a model trains on, declared beside `Capabilities` (`Trainable.batch_spec`): the defaults are the task's
    observations and the actions, nothing more.

    keys: the observation keys the sampler reads (None: the task's; empty: actions only, as an action tokenizer).
    future_keys / future_offsets: keys whose future values at these steps after the window reach the loss
    (``batch["future"]``: predicted frames). train_keys: training-only targets (``batch["train"]``; never the policy
    at run time). text_keys: per-step text such as the expert's phase (``batch["text"]``).
    """

    keys: tuple[str, ...] | None = None
    future_keys: tuple[str, ...] = ()
    future_offsets: tuple[int, ...] = ()
    train_keys: tuple[str, ...] = ()
    text_keys: tuple[str, ...] = ()

    def sampler_settings(self, task_keys: list[str]) -> dict[str, Any]:
        """As `SequenceSampler` settings; ``task_keys``: the task's observation keys."""
        settings: dict[str, Any] = {"keys": list(task_keys if self.keys is None else self.keys)}
        for name in ("future_keys", "future_offsets", "train_keys", "text_keys"):
            if getattr(self, name):
                settings[name] = list(getattr(self, name))
        return settings


# The named extras a head may return beside its chunk, batched like it ([B, ...] / B strings).
EXTRAS = {
    "future_frames": "uint8 [B, F, H, W, 3]: predicted future camera frames",
    "candidates": "float32 [B, N, T, D]: sampled candidate trajectories (T, D the head's: NavDP's K waypoints x, y)",
    "candidate_scores": "float32 [B, N]: a critic's score per candidate (the chosen one is the chunk)",
    "reasoning": "B strings: generated reasoning text",
}


@dataclasses.dataclass
class Prediction:
    """A chunk and the named extras that came with it. Batched tensors from `Policy.predict`; one row of numpy
    arrays (actions [horizon, action_dim] float32) from `Policy.predict_window`."""

    actions: Any
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)


class Trainable(nn.Module, abc.ABC):
    """What `vmp-train` trains: a head (`Policy`) or a model a head is built on (`StageOneModel`). The hooks say
    what it trains on; their defaults ask for nothing beyond observations and actions."""

    learned_settings: ClassVar[tuple[str, ...]] = ()  # the ``policy.*`` keys `prepare_settings` fills in

    @abc.abstractmethod
    def compute_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Training loss; the dict holds ``loss`` (the scalar to minimise) and any scalars worth logging."""

    @classmethod
    def batch_spec(cls, config: Any, task: Any) -> BatchSpec:
        """What this model trains on under ``config`` and ``task`` (see `BatchSpec`); a setting that cannot work
        with the task is refused here, by name, before any data is read."""
        return BatchSpec()

    @classmethod
    def prepare_settings(cls, config: Any, task: Any, store: Any) -> dict[str, Any]:
        """Head settings learned from the training store before the head is built (e.g. Diffusion-VLA's subword
        tokenizer, trained on the store's annotations): merged into ``policy.*`` and kept in the checkpoint. A resumed
        run sets its ``learned_settings`` from the checkpoint first, so this learns only the settings still unset."""
        return {}

    @classmethod
    def precompute(cls, config: Any, task: Any, store: Any) -> dict[str, np.ndarray]:
        """Per-step arrays derived once from a store before training ({key: [n_steps, *shape]}, e.g. PAD's image
        latents from its frozen autoencoder), sampled like in-memory low-dim keys under their own names."""
        return {}

    def checkpoint_settings(self) -> dict[str, Any]:
        """Head settings fixed only when training builds the head from its inputs (e.g. the architecture of a
        stage-one model it was given), recorded in the checkpoint's config so that it rebuilds without them."""
        return {}

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """DistributedDataParallel calls forward: it is the training loss."""
        return self.compute_loss(batch)


class Policy(Trainable, abc.ABC):
    """Base class for every head.

    Batches are dicts: ``obs`` {key: [B, n_obs_steps, *shape]} (images uint8 [B, T, C, H, W]),
    ``action`` [B, horizon, action_dim] (raw, unnormalized), ``action_is_pad`` [B, horizon] bool,
    optional ``goal`` {key: [B, *shape]}; a language-conditioned policy also reads ``obs["language"]`` (B strings).
    The normalizer is a submodule, so it ships in checkpoints.

    Callers at run time (`select_action`, the deployment engine, `vmp-eval`, the latency benchmark) go through one
    path, `predict_window`: an observation window as envs and robots give it (numpy, images HWC) -> `window_to_batch`
    (the layout conversion the training data uses) -> `predict` -> one row of numpy arrays, checked.
    """

    name: str = ""
    capabilities: Capabilities = Capabilities()
    # Optional hooks, declared here so that no caller probes for them:
    own_encoder: ClassVar[bool] = False  # built on its own image encoder (PAD's autoencoder), not the shared ObsEncoder
    camera: str | None = None  # the camera whose future frames `predict` returns (extras "future_frames") ...
    future_offsets: Sequence[int] = ()  # ... at these steps after the current one

    def sampling_noise_shape(self, batch: int) -> tuple[int, ...] | None:
        """The Gaussian noise one chunk of ``batch`` consumes, when `predict` takes it drawn outside (``noise=``: CUDA
        graphs replay it); None for heads that draw their own."""
        return None

    def __init__(self, n_obs_steps: int, horizon: int, n_action_steps: int, action_dim: int,
                 obs_shapes: dict[str, tuple[int, ...]] | None = None, obs_kinds: dict[str, str] | None = None):
        super().__init__()
        if not 1 <= n_obs_steps <= horizon:
            raise ValueError(f"n_obs_steps must be in [1, horizon={horizon}], got {n_obs_steps}")
        if not 1 <= n_action_steps <= horizon - n_obs_steps + 1:
            raise ValueError(
                f"n_action_steps must be in [1, horizon - n_obs_steps + 1 = {horizon - n_obs_steps + 1}], got {n_action_steps}"
            )
        self.n_obs_steps, self.horizon, self.n_action_steps, self.action_dim = n_obs_steps, horizon, n_action_steps, action_dim
        # {key: per-step shape as envs give it (images HWC)}: what `window_to_batch` checks and converts
        self.obs_shapes = {k: tuple(int(d) for d in v) for k, v in (obs_shapes or {}).items()}
        # {key: rgb | depth | low_dim}; by default inferred from the key's name and shape as stores do
        self.obs_kinds = {k: (obs_kinds or {}).get(k) or key_kind(k, KeySpec(s, "float32")) for k, s in self.obs_shapes.items()}
        self.context_every = 0  # > 0 with capabilities.context: refresh the slow context every this many steps
        self._obs_history: collections.deque = collections.deque(maxlen=n_obs_steps)
        self._action_queue: collections.deque = collections.deque()
        self._goal: dict[str, np.ndarray] | None = None
        self._language: str | None = None
        self._step = 0
        self._context_step: int | None = None
        self.last_extras: dict[str, Any] = {}
        self.inference_times_ms: list[float] = []
        # False: heads that return images among their extras (PAD's future frames) skip decoding them; vmp-eval
        # clears it for episodes without a video
        self.decode_frames = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not abc.ABC in cls.__bases__ and not cls.name:
            raise TypeError(f"{cls.__name__} must set a class attribute `name`")

    @abc.abstractmethod
    def predict_action_chunk(
        self, obs: dict[str, torch.Tensor], goal: dict[str, torch.Tensor] | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The fast path: obs {key: [B, n_obs_steps, *shape]} (raw, training layout) -> actions [B, horizon,
        action_dim] (unnormalized). Heads with ``capabilities.prefix`` also take ``prefix`` and ``prefix_weights``."""

    def predict(self, obs: dict[str, torch.Tensor], goal: dict[str, torch.Tensor] | None = None,
                generator: torch.Generator | None = None, **kwargs: Any) -> Prediction:
        """The chunk plus the named extras the head produces (`EXTRAS`). Heads with extras override this; the
        default is the fast path with none. ``kwargs``: ``prefix``/``prefix_weights`` for prefix-capable heads."""
        return Prediction(self.predict_action_chunk(obs, goal, generator, **kwargs))

    def refresh_context(self, obs: dict[str, torch.Tensor], goal: dict[str, torch.Tensor] | None) -> None:
        """Renew the slow context (e.g. a reasoning step) from a batch; heads with ``capabilities.context``."""
        raise NotImplementedError(f"{self.name} declares no slow context")

    def enable_frame_cache(self) -> None:
        """Deployment, eager path: encode each camera frame once, not once per observation window it falls in.
        Heads without the shared encoder have nothing to cache."""

    # ---- step-by-step control (simulation evaluation, deployment) ----
    def reset(self) -> None:
        """Forget the observation history, queued actions, goal, instruction and context: every episode start."""
        self._obs_history.clear()
        self._action_queue.clear()
        self._goal = None
        self._language = None
        self._step = 0
        self._context_step = None
        self.last_extras = {}

    def set_goal(self, goal: dict[str, np.ndarray] | None) -> None:
        self._goal = goal

    def bind_env(self, env: Any) -> None:
        """A head acts on its observations alone: nothing to read from the env (privileged experts do)."""

    def set_language(self, instruction: str | None) -> None:
        """The episode's instruction (``info["language"]``); policies without a language branch ignore it."""
        self._language = instruction

    @property
    def needs_instruction(self) -> bool:
        return self.capabilities.instruction

    def window_to_batch(self, window: dict[str, Any], goal: dict[str, Any] | None = None, instruction: str | None = None
                        ) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
        """One observation window as envs and robots give it -> (obs, goal) batches of one, in the training layout.

        window {key: [n_obs_steps, *shape]} with images HWC uint8 and depth HW; goal {key: [*shape]}. The layout
        conversion is the one the training data goes through (`vmp.data.dataset.to_training_layout`), so what a
        policy sees at run time is what it saw in training. Keys the policy does not use are ignored.
        """
        from vmp.data.dataset import to_training_layout

        device = self.device
        obs: dict[str, Any] = {}
        for key, shape in self.obs_shapes.items():
            if key not in window:
                raise KeyError(f"observation window lacks key {key!r} (has {sorted(window)}); the policy needs "
                               f"{sorted(self.obs_shapes)}")
            a = window[key]
            a = a.cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
            if a.shape != (self.n_obs_steps, *shape):
                raise ValueError(f"observation {key!r}: expected shape {(self.n_obs_steps, *shape)} "
                                 f"[n_obs_steps, *shape], got {a.shape}")
            obs[key] = to_training_layout(a[None], self.obs_kinds[key]).to(device).contiguous()
        if instruction is None and self.needs_instruction:
            raise KeyError(f"the {self.name} policy is language-conditioned: give it an instruction "
                           f"(set_language(text), vmp-deploy instruction=...)")
        if instruction is not None:
            obs[LANGUAGE_KEY] = [instruction]
        goal_batch = None
        if goal is not None:
            goal_batch = {k: torch.as_tensor(np.asarray(v), device=device).unsqueeze(0) for k, v in goal.items()}
        return obs, goal_batch

    def predict_window(self, window: dict[str, Any], goal: dict[str, Any] | None = None, instruction: str | None = None,
                       step: int = 0, prefix: np.ndarray | None = None, prefix_weights: np.ndarray | None = None,
                       generator: torch.Generator | None = None, forward: Any = None) -> Prediction:
        """The one path from an observation window to a chunk: -> Prediction(actions [horizon, action_dim] float32
        numpy in raw units, extras as numpy / str, batch row 0).

        step: the control step of the window's newest observation (the slow context is refreshed from it every
        ``context_every`` steps). prefix [L, A] / prefix_weights [L] reach heads with ``capabilities.prefix`` and
        are ignored by the others. forward: what runs the head (default `predict`; the deployment engine passes
        its own, with autocast and CUDA graphs).
        """
        obs, goal_batch = self.window_to_batch(window, goal, instruction)
        kwargs: dict[str, Any] = {}
        if prefix is not None and self.capabilities.prefix:
            kwargs["prefix"] = torch.as_tensor(np.asarray(prefix, np.float32), device=self.device).unsqueeze(0)
            kwargs["prefix_weights"] = torch.as_tensor(np.asarray(prefix_weights, np.float32), device=self.device)
        with torch.inference_mode():
            if self.capabilities.context and self.context_every > 0 and (
                    self._context_step is None or step - self._context_step >= self.context_every):
                self.refresh_context(obs, goal_batch)
                self._context_step = step
            pred = (forward or self.predict)(obs, goal_batch, generator, **kwargs)
        actions = pred.actions[0].float().cpu().numpy()
        if actions.shape != (self.horizon, self.action_dim):
            raise ValueError(f"{self.name} returned a chunk of shape {actions.shape}, expected "
                             f"{(self.horizon, self.action_dim)} [horizon, action_dim]")
        if not np.isfinite(actions).all():
            raise FloatingPointError(f"{self.name} predicted a non-finite action chunk")
        return Prediction(actions, {k: _first_row(v) for k, v in pred.extras.items()})

    def select_action(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """One env step: append ``obs`` (unbatched, raw), return the next action [action_dim].

        A new chunk is predicted when the queue is empty; the first step's observation is repeated to fill
        the history (the same edge padding the sampler uses in training). Its extras stay in `last_extras`.
        """
        self._obs_history.append(obs)
        while len(self._obs_history) < self.n_obs_steps:
            self._obs_history.appendleft(self._obs_history[0])
        if not self._action_queue:
            window = {k: np.stack([o[k] for o in self._obs_history]) for k in self.obs_shapes}
            start = time.perf_counter()
            pred = self.predict_window(window, self._goal, self._language, step=self._step)
            self.inference_times_ms.append((time.perf_counter() - start) * 1e3)
            self.last_extras = pred.extras
            first = self.n_obs_steps - 1
            self._action_queue.extend(pred.actions[first : first + self.n_action_steps])
        self._step += 1
        return self._action_queue.popleft()

    def prefix_target(self, prefix: torch.Tensor, prefix_weights: torch.Tensor | None, batch: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Real-time chunking's prefix as sampler targets: (Y [B, horizon, A] normalized, W [1, horizon, 1]), with
        prefix [B, L, A] in raw units and prefix_weights [L] in [0, 1] (zero past L). Heads with
        ``capabilities.prefix`` own a ``normalizer`` with the action's statistics."""
        if prefix_weights is None or prefix_weights.shape[0] != prefix.shape[1]:
            raise ValueError("prefix_weights must be given with prefix, one weight per prefix step")
        device, length = self.device, prefix.shape[1]
        target_y = torch.zeros(batch, self.horizon, self.action_dim, device=device)
        target_y[:, :length] = self.normalizer.normalize("action", prefix.to(device))
        target_w = torch.zeros(1, self.horizon, 1, device=device)
        target_w[0, :length, 0] = prefix_weights.to(device)
        return target_y, target_w

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


def has_action_stats(normalizer) -> bool:
    """False for `Normalizer.empty` (all statistics zero): the head is being rebuilt to load a checkpoint, whose state
    dict holds what a stage-one model gave it, so the stage-one file is not read."""
    stats = normalizer.stats("action")
    return bool((stats["min"] != 0).any() or (stats["max"] != 0).any())


def _first_row(value: Any) -> Any:
    """Row 0 of a batched extra: a string from a list of B strings, else a numpy array (floats as float32)."""
    if isinstance(value, (list, tuple)):
        return value[0]
    value = value[0].detach()
    return (value.float() if value.is_floating_point() else value).cpu().numpy()


class StageOneModel(Trainable, abc.ABC):
    """A model that a head is built on, trained by `vmp-train` but never acting (CARP's action tokenizer; PAD's image
    autoencoder). Built from (config, normalizer, action_dim); batches as for `Policy.compute_loss`."""

    name: str = ""
    config_class: Any = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not abc.ABC in cls.__bases__ and not (cls.name and cls.config_class):
            raise TypeError(f"{cls.__name__} must set class attributes `name` and `config_class`")


class SharedEncoderPolicy(Policy, abc.ABC):
    """A head built on the shared `ObsEncoder`: conditioned on its tokens (and an optional goal token); owns the
    normalizer.

    `condition()` is the one place that normalizes observations and assembles the token sequence
    [obs tokens of every step..., goal token, instruction token]. A missing or dropped goal uses a learned null
    token, which is what goal dropout trains and classifier-free guidance queries. The instruction travels in the
    observation batch as ``obs["language"]``, a list of B strings (as LeRobot passes its task string).
    """

    def __init__(self, config: Any, encoder: nn.Module, normalizer: nn.Module, action_dim: int):
        super().__init__(config.n_obs_steps, config.horizon, config.n_action_steps, action_dim,
                         obs_shapes=encoder.shapes, obs_kinds=encoder.kinds)
        self.config = config
        self.encoder = encoder
        self.normalizer = normalizer
        if encoder.n_obs_steps != config.n_obs_steps:
            raise ValueError(f"encoder built for n_obs_steps={encoder.n_obs_steps}, head for {config.n_obs_steps}")
        self.null_goal = nn.Parameter(torch.zeros(1, 1, encoder.d_model)) if encoder.goal_keys else None

    @property
    def needs_instruction(self) -> bool:
        return self.capabilities.instruction or self.encoder.text is not None

    def enable_frame_cache(self) -> None:
        self.encoder.cache_frames = True

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

    @staticmethod
    def masked_mse(pred: torch.Tensor, target: torch.Tensor, is_pad: torch.Tensor | None) -> torch.Tensor:
        """Mean squared error over the steps that are real actions, not edge padding past an episode's end."""
        err = (pred - target).pow(2).mean(dim=-1)  # [B, H]
        if is_pad is None:
            return err.mean()
        keep = (~is_pad).float()
        return (err * keep).sum() / keep.sum().clamp(min=1.0)
