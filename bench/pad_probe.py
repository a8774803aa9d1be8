"""vmp-bench pad-probe: whether PAD's actions use the future frames it predicts, measured on demonstration windows
that training held out (its validation episodes), without simulation.

Every window is sampled from one fixed starting noise three times, so the only difference between them is the future
the action token sees:
- **own**: the head predicts the future frames and the actions jointly, as it acts;
- **real future**: the real future frames' latents are inpainted in place of the predicted ones (an oracle);
- **wrong future**: another episode's real future frames are.
Reported per task (the instruction) and over all windows:
- the action error (MSE against the demonstrated chunk, normalized units, padded steps left out) of each, and the
  paired differences with 95% intervals. Wrong minus own near zero: the actions ignore the future. Real minus own
  below zero: better prediction would pay;
- the predicted future latents' error against the real ones, beside copying the current frame's latent (what a head
  that foresaw nothing would say): a ratio near 1 means the prediction says little of where the scene goes;
- the share of the action token's attention on each group of tokens (current frame, proprioception, future frames,
  itself), per layer, averaged over heads, denoising steps and windows, beside each group's share of the tokens
  (what attention spread evenly would give).
A head trained without future prediction (`policy.predict_future=false`) gets the action error and attention only.

    vmp-bench pad-probe --checkpoint runs/metaworld_mt-pad [--windows 512] [--batch-size 32] [--device cpu]
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange

from vmp.bench.common import RESULTS_DIR, device_name, given_args, write_result

log = logging.getLogger(__name__)

GROUPS = ("current", "proprio", "future", "action")


def last_token_attention(qkv: torch.Tensor, n_heads: int) -> torch.Tensor:
    """A block's qkv projection [B, S, 3 W] -> the last token's attention weights [B, heads, S] (unmasked)."""
    q, k, _ = rearrange(qkv, "b s (three h d) -> three b h s d", three=3, h=n_heads)
    return torch.softmax(q[:, :, -1:] @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)[:, :, 0]


class ActionAttention:
    """Forward hooks on every DiT block's qkv projection that accumulate, per window, the action token's attention
    share on each token group (the action token is the sequence's last, and may attend to every token)."""

    def __init__(self, policy: Any):
        self.dit, self.layout = policy.dit, policy.layout
        if not bool(policy.mask[-1].all()):
            raise ValueError("the last token of this PAD sequence may not attend to every token: not the action token")
        self.sums: torch.Tensor | None = None  # [B, layers, groups]
        self.calls = 0
        self.active = False
        self._handles = [block.qkv.register_forward_hook(self._hook(layer, block.n_heads))
                         for layer, block in enumerate(self.dit.blocks)]

    def _hook(self, layer: int, n_heads: int):
        def hook(_module, _inputs, qkv: torch.Tensor) -> None:
            if not self.active:
                return
            weights = last_token_attention(qkv, n_heads)
            shares = torch.stack([weights[..., slice(*self.layout[g])].sum(-1) for g in GROUPS], -1).mean(1)  # [B, G]
            if self.sums is None:
                self.sums = torch.zeros(qkv.shape[0], len(self.dit.blocks), len(GROUPS), device=qkv.device)
            self.sums[:, layer] += shares
            if layer == 0:
                self.calls += 1
        return hook

    def take(self) -> torch.Tensor:
        """-> [B, layers, groups]: the mean share over the denoising passes since the last take."""
        out = self.sums / max(self.calls, 1)
        self.sums, self.calls = None, 0
        return out

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def _paired(diff: np.ndarray) -> dict[str, float]:
    """Mean of paired per-window differences with a normal 95% interval."""
    mean = float(diff.mean())
    half = 1.96 * float(diff.std(ddof=1)) / math.sqrt(diff.size) if diff.size > 1 else float("nan")
    return {"mean": mean, "ci95_low": mean - half, "ci95_high": mean + half}


def _summary(rows: dict[str, np.ndarray], sel: np.ndarray, n_future: int) -> dict[str, Any]:
    own = rows["own"][sel]
    out: dict[str, Any] = {"windows": int(sel.sum()), "action_mse": {"own": float(own.mean())}}
    if n_future:
        real, wrong = rows["real_future"][sel], rows["wrong_future"][sel]
        out["action_mse"].update({"real_future": float(real.mean()), "wrong_future": float(wrong.mean())})
        out["action_mse_difference"] = {"real_minus_own": _paired(real - own), "wrong_minus_own": _paired(wrong - own)}
        keep = ~rows["future_is_pad"][sel]  # [N, F]
        pred, copy = rows["future_predicted"][sel], rows["future_copy"][sel]
        out["future_mse"] = {
            "predicted": [float(pred[keep[:, f], f].mean()) for f in range(n_future)],
            "copy_current": [float(copy[keep[:, f], f].mean()) for f in range(n_future)],
        }
        out["future_mse"]["predicted_over_copy"] = [p / c if c > 0 else float("nan") for p, c in
                                                    zip(out["future_mse"]["predicted"], out["future_mse"]["copy_current"])]
    attention = rows["attention"][sel].mean(0)  # [layers, groups]
    out["action_attention"] = {g: [round(float(a), 4) for a in attention[:, i]] for i, g in enumerate(GROUPS)}
    return out


def probe(checkpoint: str | Path, store: str | None = None, n_windows: int = 512, batch_size: int = 32,
          seed: int = 0, device: str = "cpu") -> dict[str, Any]:
    """The measurements above for one PAD checkpoint -> {"overall": {...}, "per_task": {instruction: {...}}, ...}."""
    from omegaconf import OmegaConf

    from vmp.data import SequenceDataset, SequenceSampler
    from vmp.data.schema import LANGUAGE_KEY
    from vmp.data.store import EpisodeStore
    from vmp.policies.checkpoint import load_policy, read_checkpoint, resolve_checkpoint
    from vmp.policies.train import task_image_sizes

    checkpoint = resolve_checkpoint(checkpoint)  # a run folder -> its latest checkpoint
    payload = read_checkpoint(checkpoint)
    head = OmegaConf.create(payload["cfg"]).policy.name
    if head != "pad":
        raise ValueError(f"{checkpoint} holds a {head!r} model; vmp-bench pad-probe reads PAD checkpoints")
    policy, cfg = load_policy(checkpoint, device)
    source = EpisodeStore.open(store or cfg.store, mode="r")
    camera, n_future = policy.camera, policy.n_future
    if camera not in source.schema:
        raise KeyError(f"store {source.path} has no {camera!r} frames, which the head reads; keys: {source.keys}")
    split = "val" if float(cfg.training.val_ratio) > 0 else "all"
    sampler = SequenceSampler(
        source, keys=[*policy.lowdim_keys, camera], n_obs_steps=policy.n_obs_steps, horizon=policy.horizon,
        n_action_steps=policy.n_action_steps, val_ratio=float(cfg.training.val_ratio), seed=int(cfg.seed), split=split,
        language=True, future_keys=[camera] if n_future else None,
        future_offsets=policy.future_offsets if n_future else None,
        image_sizes={k: v for k, v in task_image_sizes(cfg.task, source).items() if k == camera})
    dataset = SequenceDataset(sampler)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(dataset), size=min(n_windows, len(dataset)), replace=False)
    n_img = n_future * int(np.prod(policy.latent_shape))
    n_noise = n_img + policy.horizon * policy.action_dim
    generator = torch.Generator().manual_seed(seed)
    rows: dict[str, list] = {k: [] for k in ("own", "real_future", "wrong_future", "future_predicted", "future_copy",
                                             "future_is_pad", "attention", "task", "episode")}
    attention = ActionAttention(policy)
    try:
        for start in range(0, len(chosen), batch_size):
            batch = dataset.batch(chosen[start : start + batch_size])
            obs = {k: v if k == LANGUAGE_KEY else v.to(device) for k, v in batch["obs"].items()}
            b = len(obs[LANGUAGE_KEY])
            target = policy.normalizer.normalize("action", batch["action"].to(device))
            keep = (~batch["action_is_pad"]).to(device).float()  # [B, H]
            noise = torch.randn(b, n_noise, generator=generator).to(device)

            def action_error(actions: torch.Tensor) -> np.ndarray:
                err = (actions.clamp(-1.0, 1.0) - target).pow(2).mean(-1)  # as `_actions` clamps what it returns
                return ((err * keep).sum(1) / keep.sum(1).clamp(min=1.0)).cpu().numpy()

            attention.active = True
            predicted, actions = policy.sample_joint(obs, noise)
            attention.active = False
            rows["attention"].append(attention.take().cpu().numpy())
            rows["own"].append(action_error(actions))
            episodes = batch["episode"].numpy()
            if n_future:
                real = policy.encode_frames(batch["future"][camera].to(device))  # [B, F, C, h, w]
                current = policy.encode_frames(obs[camera][:, -1:])  # [B, 1, C, h, w]
                # each window's wrong future: the next window in the batch from another episode (itself if none)
                other = np.array([next((j % b for j in range(i + 1, i + b) if episodes[j % b] != episodes[i]), i)
                                  for i in range(b)])
                rows["real_future"].append(action_error(policy.sample_joint(obs, noise, future=real)[1]))
                rows["wrong_future"].append(action_error(policy.sample_joint(obs, noise, future=real[other])[1]))
                rows["future_predicted"].append((predicted - real).pow(2).mean((-3, -2, -1)).cpu().numpy())
                rows["future_copy"].append((current - real).pow(2).mean((-3, -2, -1)).cpu().numpy())
                rows["future_is_pad"].append(batch["future_is_pad"].numpy())
            rows["task"] += list(obs[LANGUAGE_KEY])
            rows["episode"].append(episodes)
            log.info("pad-probe: %d of %d windows", min(start + batch_size, len(chosen)), len(chosen))
    finally:
        attention.close()
    data = {k: np.concatenate(v) if k != "task" else np.asarray(v) for k, v in rows.items() if len(v)}
    everything = np.ones(len(data["own"]), dtype=bool)
    return {"overall": _summary(data, everything, n_future),
            "per_task": {task: _summary(data, data["task"] == task, n_future) for task in sorted(set(data["task"]))},
            "split": split, "episodes": int(len(set(data["episode"].tolist()))), "future_offsets": policy.future_offsets,
            "layers": len(policy.dit.blocks), "sampler": f"{policy.config.n_steps}-step {policy.config.sampler}",
            "token_share": {g: (policy.layout[g][1] - policy.layout[g][0]) / policy.layout["length"] for g in GROUPS},
            "task": str(cfg.task.name), "train_steps": int(payload.get("step") or 0)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="vmp-bench pad-probe", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a PAD checkpoint or run folder")
    parser.add_argument("--store", default=None, help="the demonstration store (default: the one the run trained on)")
    parser.add_argument("--windows", type=int, default=512, help="held-out windows probed (default 512)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0, help="which windows and starting noises")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="where the record goes (default: results/)")
    args = parser.parse_args(given_args(argv))
    if args.windows < 2 or args.batch_size < 2:
        parser.error("--windows and --batch-size must be at least 2 (a wrong future comes from another window)")
    from vmp.policies.checkpoint import resolve_checkpoint

    path = resolve_checkpoint(args.checkpoint)
    metrics = probe(path, args.store, args.windows, args.batch_size, args.seed, args.device)
    task, step = metrics.pop("task"), metrics.pop("train_steps")
    run = Path(args.checkpoint).name if Path(args.checkpoint).is_dir() else path.parent.parent.name
    variant = f"{'future frames predicted' if metrics['future_offsets'] else 'no future prediction'}; {run}, step {step}"
    out = write_result(f"pad_probe_{run}_step{step}", "pad_probe", task, "image", "pad", variant, metrics,
                       device_name(args.device), " ".join(["vmp-bench pad-probe", *given_args(argv)]),
                       budget={"train_steps": step}, out_dir=args.out_dir)
    overall = metrics["overall"]
    log.info("action MSE own %.4f%s -> %s", overall["action_mse"]["own"],
             "".join(f", {k} {v:.4f}" for k, v in overall["action_mse"].items() if k != "own"), out)
