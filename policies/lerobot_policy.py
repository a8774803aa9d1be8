"""A LeRobot policy (Diffusion Policy or ACT, trained by ``lerobot-train``) behind our `Policy` interface, so that
`vmp-eval` (and its sweeps) and `vmp-bench lerobot` run it on our tasks exactly as they run our heads.

Needs the ``lerobot`` package (``pip install 'vmp[lerobot]'``, its own environment: ``make test-lerobot``), imported
only here. The policy must have been trained on a data set written by ``vmp-data export --format lerobot``: its
``meta/vmp.json`` says which of our observation keys each LeRobot feature concatenates (``observation.state`` from
several low-dim keys) and which task the store came from. The checkpoint's own pre- and post-processors (LeRobot
0.4's pipelines: normalization with the data set's statistics) run around the model, as ``lerobot-eval`` runs them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from vmp.policies.base import Policy

SUPPORTED = ("diffusion", "act")
_HINT = "LeRobot policies need the lerobot package: pip install 'vmp[lerobot]' (its own environment: make test-lerobot)"


def pretrained_dir(path: str | Path) -> Path | None:
    """The folder holding a LeRobot policy's config.json + model.safetensors: ``path`` itself, its
    ``pretrained_model``, or a ``lerobot-train`` output folder's last checkpoint; None when ``path`` is none of these."""
    path = Path(path)
    for candidate in (path, path / "pretrained_model", path / "checkpoints" / "last" / "pretrained_model"):
        if (candidate / "config.json").is_file() and (candidate / "model.safetensors").is_file():
            return candidate
    return None


def feature_map(pretrained: Path) -> dict[str, Any]:
    """The export's mapping for the data set the policy was trained on: {"task", "features": {feature: [{key,
    shape}]}}, found through the checkpoint's train_config.json (dataset.root)."""
    from vmp.data.convert.lerobot import read_export_map

    train_config = pretrained / "train_config.json"
    if not train_config.is_file():
        raise FileNotFoundError(f"{pretrained}: no train_config.json, so the data set it was trained on is unknown")
    root = (json.loads(train_config.read_text()).get("dataset") or {}).get("root")
    mapping = read_export_map(root) if root else {}
    if not mapping:
        raise FileNotFoundError(f"{pretrained} was trained on {root!r}, which has no meta/vmp.json: train LeRobot "
                                f"policies on a data set written by `vmp-data export --format lerobot`")
    return mapping


def lerobot_io(path: str | Path) -> dict[str, Any]:
    """What a LeRobot policy folder is tied to, read from its files without building the model (nor importing
    lerobot): {pretrained, type, task, parts: {input feature: [{key, shape}]}, obs_shapes, obs_kinds, budget}."""
    pretrained = pretrained_dir(path)
    if pretrained is None:
        raise FileNotFoundError(f"{path} is not a LeRobot policy folder (config.json + model.safetensors)")
    config = json.loads((pretrained / "config.json").read_text())
    if config.get("type") not in SUPPORTED:
        raise ValueError(f"{pretrained}: LeRobot policy type {config.get('type')!r}; the adapter runs {list(SUPPORTED)}")
    mapping = feature_map(pretrained)
    parts = {f: mapping["features"].get(f) for f in config.get("input_features") or {}}
    missing = [f for f, p in parts.items() if not p]
    if missing:
        raise KeyError(f"{pretrained}: input features {missing} are not in its data set's meta/vmp.json")
    obs_shapes = {part["key"]: tuple(part["shape"]) for ps in parts.values() for part in ps}
    obs_kinds = {part["key"]: "rgb" if f.startswith("observation.images.") else "low_dim"
                 for f, ps in parts.items() for part in ps}
    return {"pretrained": pretrained, "type": config["type"], "task": mapping.get("task"), "parts": parts,
            "obs_shapes": obs_shapes, "obs_kinds": obs_kinds, "budget": training_budget(pretrained)}


def training_budget(pretrained: Path) -> dict[str, Any]:
    """What lerobot-train recorded of the run: steps done and batch size."""
    cfg = json.loads((pretrained / "train_config.json").read_text())
    step_file = pretrained.parent / "training_state" / "training_step.json"
    steps = json.loads(step_file.read_text())["step"] if step_file.is_file() else cfg.get("steps")
    return {"train_steps": steps, "batch_size": cfg.get("batch_size"), "trainer": "lerobot-train"}


class LeRobotPolicy(Policy):
    """Our observation window -> the LeRobot policy's batch (features built from our keys by the export's map,
    images as float in [0, 1]) -> its preprocessor -> its chunk -> its postprocessor.

    Diffusion Policy predicts ``n_action_steps`` actions from the newest observation on (its ``generate_actions``,
    what its own ``select_action`` calls on a stacked history); ACT predicts ``chunk_size`` from one observation. The
    chunk is placed at index n_obs_steps - 1 of our timeline (entries before it are zeros, never executed)."""

    name = "lerobot"

    def __init__(self, path: str | Path, device: str | torch.device = "cpu"):
        io = lerobot_io(path)
        try:
            from lerobot.configs.policies import PreTrainedConfig
            from lerobot.policies.factory import get_policy_class, make_pre_post_processors
        except ImportError as err:
            raise ImportError(_HINT) from err
        from vmp.policies.checkpoint import resolve_device

        pretrained = io["pretrained"]
        config = PreTrainedConfig.from_pretrained(pretrained)
        if config.type == "act" and config.temporal_ensemble_coeff is not None:
            raise ValueError(f"{pretrained}: ACT with temporal ensembling queries every step; evaluate it with "
                             f"temporal_ensemble_coeff=None (chunked execution)")
        device = resolve_device(device)
        config.device = str(device)
        n_obs = int(getattr(config, "n_obs_steps", 1))
        chunk = int(config.n_action_steps) if config.type == "diffusion" else int(config.chunk_size)
        super().__init__(n_obs, n_obs - 1 + chunk, int(config.n_action_steps),
                         int(config.output_features["action"].shape[0]), io["obs_shapes"], io["obs_kinds"])
        self.task, self.parts, self.budget, self.lerobot_type = io["task"], io["parts"], io["budget"], config.type
        self.model = get_policy_class(config.type).from_pretrained(pretrained, config=config).to(device).eval()
        self.preprocessor, self.postprocessor = make_pre_post_processors(
            config, pretrained_path=str(pretrained),
            preprocessor_overrides={"device_processor": {"device": str(device)}})
        self.image_features = list(config.image_features)

    def compute_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        raise NotImplementedError("LeRobot policies train with lerobot-train (see docs/lerobot.md)")

    def lerobot_batch(self, obs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Our batch {key: [B, T, ...]} (training layout) -> LeRobot features [B, T, ...] (ACT: [B, ...])."""
        batch = {}
        for feature, parts in self.parts.items():
            if feature.startswith("observation.images."):
                batch[feature] = obs[parts[0]["key"]].float() / 255.0
            else:
                b, t = obs[parts[0]["key"]].shape[:2]
                batch[feature] = torch.cat([obs[p["key"]].float().reshape(b, t, -1) for p in parts], dim=-1)
        if self.lerobot_type == "act":
            batch = {k: v[:, -1] for k, v in batch.items()}
        return batch

    @torch.no_grad()
    def predict_action_chunk(self, obs: dict[str, torch.Tensor], goal: dict[str, torch.Tensor] | None = None,
                             generator: torch.Generator | None = None) -> torch.Tensor:
        batch = self.preprocessor(self.lerobot_batch(obs))
        if self.lerobot_type == "diffusion":
            if self.image_features:
                batch["observation.images"] = torch.stack([batch[k] for k in self.image_features], dim=-4)
            actions = self.model.diffusion.generate_actions(batch)
        else:
            actions = self.model.predict_action_chunk(batch)
        actions = self.postprocessor(actions).to(self.device)
        b = actions.shape[0]
        lead = torch.zeros(b, self.n_obs_steps - 1, self.action_dim, device=actions.device, dtype=actions.dtype)
        return torch.cat([lead, actions], dim=1)


def lerobot_checkpoint_policy(path: str, device: str = "cpu") -> LeRobotPolicy:
    """A picklable factory for evaluation workers."""
    import os

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    return LeRobotPolicy(path, device)
