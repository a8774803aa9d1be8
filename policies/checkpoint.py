"""Checkpoints: one file holding the config, every state dict, the step and the git revision (`vmp.results`).

Written atomically (temporary name, fsync, rename) so a crash never leaves a truncated checkpoint. Loaded with
`torch.load(weights_only=True)`: a checkpoint holds tensors and plain containers only, never pickled objects.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

FORMAT = "vmp-checkpoint"
VERSION = 1
log = logging.getLogger(__name__)


def model_io(cfg: DictConfig) -> dict[str, Any]:
    """What a trained model is tied to: its head and the task's observation keys/shapes and action shape."""
    meta = cfg.task.shape_meta
    return {"head": str(cfg.policy.name), "obs": {str(k): [int(d) for d in v.shape] for k, v in meta.obs.items()},
            "action": [int(d) for d in meta.action.shape]}


def check_same_io(ours: dict[str, Any], theirs: dict[str, Any], ours_name: str, theirs_name: str) -> None:
    """Refuse, naming both sides, when two model_io records disagree (head, observation keys/shapes, action)."""
    diffs = []
    if ours["head"] != theirs["head"]:
        diffs.append(f"head {ours['head']!r} vs {theirs['head']!r}")
    for key in sorted(set(ours["obs"]) | set(theirs["obs"])):
        a, b = ours["obs"].get(key), theirs["obs"].get(key)
        if a != b:
            diffs.append(f"observation {key!r}: {a or 'absent'} vs {b or 'absent'}")
    if ours["action"] != theirs["action"]:
        diffs.append(f"action shape {ours['action']} vs {theirs['action']}")
    if diffs:
        raise ValueError(f"{ours_name} does not fit {theirs_name} ({ours_name} vs {theirs_name}): " + "; ".join(diffs))


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically. A failed write (a full disk) leaves the file there as it was, removes
    its temporary file and raises OSError naming ``path``."""
    path = Path(path)
    payload = {"format": FORMAT, "version": VERSION, **payload}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        tmp.unlink(missing_ok=True)  # a partial file would hold the space the next attempt needs
        cause = _os_error(err)  # torch.save reports a failed write as RuntimeError("... unexpected pos ...")
        if cause is None:
            raise
        kept = f"; {path.name} there is unchanged" if path.exists() else ""
        raise OSError(cause.errno, f"could not write checkpoint {path}: {cause.strerror or cause}{kept}") from err


def _os_error(err: BaseException | None) -> OSError | None:
    """The OSError (with an errno) that ``err`` is or was raised while handling, if any."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError) and err.errno is not None:
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run folder (vmp-train's run_dir) -> its checkpoints/latest.pt."""
    path = Path(path)
    if path.is_dir():
        inside = path / "checkpoints" / "latest.pt"
        if not inside.is_file():
            raise FileNotFoundError(f"checkpoint {path} is a folder without checkpoints/latest.pt: give a checkpoint "
                                    f"file or a vmp-train run_dir")
        return inside
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return path


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` (every command's default): the GPU when there is one, else the CPU; otherwise as torch reads it."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = resolve_checkpoint(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or foreign files
        raise ValueError(f"{path} is not a readable vmp checkpoint: {err}") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a vmp checkpoint (no format={FORMAT!r} field)")
    if payload["version"] > VERSION:
        raise ValueError(f"{path} has checkpoint version {payload['version']}; this vmp reads up to {VERSION}: upgrade vmp")
    return payload


def load_model(path: str | Path, device: str | torch.device = "cpu", overrides: dict[str, Any] | None = None,
               use_ema: bool = True, policy_only: bool = False):
    """-> (head or stage-one model in eval mode with EMA weights when present, training cfg).

    overrides: inference-time head settings, e.g. {"sampler": "dpmpp_2m", "n_steps": 5, "guidance_weight": 1.5}.
    policy_only: refuse a stage-one model (`refuse_stage_one`) before building it.
    """
    from diffusers.training_utils import EMAModel

    from vmp.policies.build import build_model

    payload = read_checkpoint(path)
    cfg: DictConfig = OmegaConf.create(payload["cfg"])
    if policy_only:
        refuse_stage_one(path, cfg)
    if payload.get("io") is not None:  # weights saved by one head never load under another's config
        check_same_io(payload["io"], model_io(cfg), f"{path}'s weights", "its config")
    for key, value in (overrides or {}).items():
        if key not in cfg.policy:
            raise KeyError(f"{key!r} is not a setting of the {cfg.policy.name} head; its settings: {sorted(cfg.policy)}")
        cfg.policy[key] = value
    model = build_model(cfg)
    missing, unexpected = model.load_state_dict(payload["policy"], strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: checkpoint does not match the {cfg.policy.name} head: missing {missing}, unexpected {unexpected}")
    if use_ema and payload.get("ema") is not None:
        ema = EMAModel(model.parameters())
        ema.load_state_dict(payload["ema"])
        ema.copy_to(model.parameters())
    return model.to(resolve_device(device)).eval(), cfg


def refuse_stage_one(path: str | Path, cfg: DictConfig) -> None:
    """For callers that act (vmp-eval, vmp-deploy): a stage-one checkpoint is refused by name, before it is built."""
    from vmp.policies.base import StageOneModel
    from vmp.policies.heads import HEADS

    head = HEADS.get(cfg.policy.name)
    if isinstance(head, type) and issubclass(head, StageOneModel):
        raise ValueError(f"{path} holds {cfg.policy.name!r}, a stage-one model that never acts; evaluate or deploy "
                         f"the policy trained on it (e.g. vmp-train policy=carp policy.tokenizer_checkpoint={path})")


def load_policy(path: str | Path, device: str | torch.device = "cpu", overrides: dict[str, Any] | None = None,
                use_ema: bool = True):
    """`load_model` for callers that act (vmp-eval, vmp-deploy): a stage-one checkpoint is refused by name."""
    return load_model(path, device, overrides, use_ema, policy_only=True)


def save_acting_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """``dst``: ``src`` with its EMA weights folded into the model's and no optimizer, schedule or EMA state (about a
    quarter of the size): what vmp-eval and vmp-deploy load, for moving a run off the machine that trained it. It
    cannot resume training."""
    model, _ = load_model(src)
    payload = read_checkpoint(src)
    for key in ("optimizer", "lr_schedule", "ema", "format", "version"):
        payload.pop(key, None)
    payload["policy"] = model.state_dict()
    save_checkpoint(dst, payload)
    return Path(dst)


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m vmp.policies.checkpoint",
                                     description="Write the acting part of a checkpoint (EMA weights, no optimizer).")
    parser.add_argument("src", help="a checkpoint file or run folder")
    parser.add_argument("dst", help="the file to write")
    args = parser.parse_args(argv)
    path = save_acting_checkpoint(args.src, args.dst)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
