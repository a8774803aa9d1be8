"""Build a policy (encoder + normalizer + head) from a composed training config."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from vmp.data import Normalizer
from vmp.policies.base import Policy, StageOneModel
from vmp.policies.encoders import ObsEncoder
from vmp.policies.heads import HEADS


def head_config(cfg: DictConfig):
    """The head's typed config from `cfg.policy` (validated in its __post_init__)."""
    name = cfg.policy.name
    if name not in HEADS:
        raise ValueError(f"policy.name={name!r} is not a head; choose one of {sorted(HEADS)}")
    fields = {k: v for k, v in OmegaConf.to_container(cfg.policy, resolve=True).items() if k != "name"}
    config_class = HEADS[name].config_class
    if name == "carp_tokenizer" and "d_model" in fields:
        raise ValueError("this carp_tokenizer checkpoint predates the tokenizer as a stage-one model (it carries an "
                         "observation encoder): retrain it with vmp-train policy=carp_tokenizer (minutes on a CPU); "
                         "CARP checkpoints trained on it still load")
    known = {f for f in config_class.__dataclass_fields__}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"policy.{unknown[0]} is not a setting of the {name} head; its settings: {sorted(known)}")
    return config_class(**fields)


def normalizer_modes(cfg: DictConfig) -> dict[str, str]:
    """Actions min-max to [-1, 1] (what the diffusion heads' sigma_data assumes); low-dim observations mean/std."""
    modes = {"action": "minmax"}
    for key, meta in cfg.task.shape_meta.obs.items():
        if meta.get("type", "low_dim") == "low_dim":
            modes[key] = "meanstd"
    return modes


def normalizer_shapes(cfg: DictConfig) -> dict[str, tuple[int, ...]]:
    shapes = {"action": tuple(cfg.task.shape_meta.action.shape)}
    for key in normalizer_modes(cfg):
        if key != "action":
            shapes[key] = tuple(cfg.task.shape_meta.obs[key].shape)
    return shapes


def build_model(cfg: DictConfig, normalizer: Normalizer | None = None) -> Policy | StageOneModel:
    """A fresh head, or stage-one model, from a training config. Without a normalizer an empty one is made (its
    statistics come with `load_state_dict`)."""
    config = head_config(cfg)
    if normalizer is None:
        normalizer = Normalizer.empty(normalizer_shapes(cfg), normalizer_modes(cfg))
    shape_meta: Any = OmegaConf.to_container(cfg.task.shape_meta, resolve=True)
    action_dim = shape_meta["action"]["shape"][0]
    cls = HEADS[cfg.policy.name]
    if issubclass(cls, StageOneModel):
        return cls(config, normalizer, action_dim=action_dim)
    if cls.own_encoder:  # PAD: images through its own autoencoder, not the shared encoder
        return cls(config, shape_meta, normalizer, action_dim=action_dim)
    encoder = ObsEncoder(
        shape_meta,
        config.n_obs_steps,
        d_model=config.d_model,
        goal_keys=list(cfg.task.get("goal_keys") or []),
        language=bool(cfg.task.get("language_conditioned", False)),
        **OmegaConf.to_container(cfg.encoder, resolve=True),
    )
    return cls(config, encoder, normalizer, action_dim=action_dim)


def build_policy(cfg: DictConfig, normalizer: Normalizer | None = None) -> Policy:
    """`build_model` for configs that name a policy; a stage-one model is refused by name."""
    model = build_model(cfg, normalizer)
    if not isinstance(model, Policy):
        raise TypeError(f"policy.name={cfg.policy.name!r} is a stage-one model ({type(model).__name__}), not a policy")
    return model
