"""Refactors keep every head's output: tiny checkpoints written by an earlier revision (tests/fixtures/golden/) give
the same chunks for the same seeds, per sampler and with a prefix, to float rounding (another CPU's matmul kernels
round sums differently; a changed computation moves a chunk by far more than ATOL). Write them anew only on purpose,
when a change is meant to alter what a head computes: `python tests/test_golden_chunks.py` (from the repository root)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from vmp.data import Normalizer
from vmp.policies.base import Policy
from vmp.policies.build import build_policy, normalizer_modes, normalizer_shapes

FIXTURES = Path(__file__).parent / "fixtures" / "golden"
IMG = 16
# Float rounding across CPUs measured 1.0e-6 at most (an AVX-512 machine; the fixtures were written on another CPU); scaling the
# largest weight matrix by 1.001 moves BESO's, DDPM's, Diffusion-VLA's and PAD's chunks 1.2e-5 to 2.8e-4, and a
# changed scale, step or noise draw moves them far more.
ATOL = 1e-5


def _cfg(head: str, obs: dict, action_dim: int, goal_keys=(), encoder: dict | None = None, **policy) -> Any:
    fields = {"name": head, "n_obs_steps": 2, "horizon": 8, "n_action_steps": 4, "d_model": 32, "n_layers": 1,
              "n_heads": 2, "dropout": 0.0}
    fields.update(policy)
    return OmegaConf.create({
        "task": {"name": "golden", "goal_keys": list(goal_keys), "max_episode_steps": 30,
                 "shape_meta": {"obs": obs, "action": {"shape": [action_dim]}}},
        "policy": fields,
        "encoder": encoder or {"backbone": "compact_cnn", "backbone_kwargs": {"channels": 8, "n_layers": 2},
                               "n_keypoints": 4, "crop_ratio": 1.0, "lowdim_hidden": 32},
    })


LOWDIM = {"state": {"shape": [3], "type": "low_dim"}, "target": {"shape": [2], "type": "low_dim"}}
IMAGE = {"camera_image": {"shape": [IMG, IMG, 3], "type": "rgb"}, "state": {"shape": [3], "type": "low_dim"}}


def _unit_normalizer(cfg) -> Normalizer:
    norm = Normalizer.empty(normalizer_shapes(cfg), normalizer_modes(cfg))
    for key in norm.keys:
        d = int(np.prod(norm.shapes[key]))
        norm.set_stats(key, min=-np.ones(d), max=np.ones(d), mean=np.zeros(d), std=np.ones(d))
    return norm


def _beso() -> Policy:
    return build_policy(c := _cfg("beso", LOWDIM, 2, goal_keys=["target"], n_steps=3), _unit_normalizer(c))


def _beso_image() -> Policy:
    return build_policy(c := _cfg("beso", IMAGE, 2, n_steps=3), _unit_normalizer(c))


def _ddpm() -> Policy:
    return build_policy(c := _cfg("ddpm", LOWDIM, 2, n_steps=10, num_train_timesteps=10), _unit_normalizer(c))


def _carp() -> Policy:
    tokenizer = {"horizon": 8, "scales": [1, 2, 4], "codebook_size": 16, "code_dim": 4, "hidden_dim": 16}
    c = _cfg("carp", LOWDIM, 2, width=32, depth=2, tokenizer_checkpoint=None, tokenizer=tokenizer)
    del c.policy.n_layers
    return build_policy(c, _unit_normalizer(c))


def _divla() -> Policy:
    from vmp.policies.heads.divla import DiVLAConfig, DiVLAPolicy
    from vmp.policies.encoders import ObsEncoder
    from vmp.policies.nn.reasoning import train_tokenizer

    phases = ["reach the object", "grasp the object", "move toward the goal"]
    shape_meta = {"obs": {"state": {"shape": [3], "type": "low_dim"}}, "action": {"shape": [2]}}
    config = DiVLAConfig(n_obs_steps=1, horizon=4, n_action_steps=2, d_model=32, n_layers=2, n_heads=2, dropout=0.0,
                         backbone_layers=2, backbone_heads=2, n_steps=4, num_train_timesteps=10,
                         tokenizer=train_tokenizer(phases * 3, vocab_size=64))
    encoder = ObsEncoder(shape_meta, 1, d_model=32, backbone="compact_cnn")
    normalizer = Normalizer.empty({"state": (3,), "action": (2,)}, {"state": "meanstd", "action": "minmax"})
    for key, d in (("state", 3), ("action", 2)):
        normalizer.set_stats(key, min=-np.ones(d), max=np.ones(d), mean=np.zeros(d), std=np.ones(d))
    return DiVLAPolicy(config, encoder, normalizer, action_dim=2)


def _pad() -> Policy:
    import tempfile

    from diffusers import AutoencoderKL

    from vmp.policies.heads.pad import PADConfig, PADPolicy

    torch.manual_seed(1)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                        up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[8, 8], layers_per_block=1,
                        latent_channels=4, norm_num_groups=8, mid_block_add_attention=False, scaling_factor=0.5)
    vae_dir = Path(tempfile.mkdtemp()) / "vae"
    vae.save_pretrained(vae_dir)
    shape_meta = {"obs": {"cam_image": {"shape": [IMG, IMG, 3], "type": "rgb"}, "state": {"shape": [3], "type": "low_dim"}},
                  "action": {"shape": [2]}}
    normalizer = Normalizer.empty({"action": (2,), "state": (3,)}, {"action": "minmax", "state": "meanstd"})
    for key, d in (("state", 3), ("action", 2)):
        normalizer.set_stats(key, min=-np.ones(d), max=np.ones(d), mean=np.zeros(d), std=np.ones(d))
    config = PADConfig(vae=str(vae_dir), horizon=4, n_action_steps=2, future_offsets=[2, 4], width=32, depth=2,
                       n_heads=2, n_steps=4, num_train_timesteps=10)
    return PADPolicy(config, shape_meta, normalizer, action_dim=2)


def _navdp() -> Policy:
    from hydra import compose, initialize_config_module

    tiny = ["policy.d_model=32", "policy.n_layers=1", "policy.trunk_layers=1", "policy.n_heads=2", "policy.dropout=0.0",
            "policy.n_samples=4", "encoder.backbone_kwargs.channels=8", "encoder.backbone_kwargs.n_layers=2",
            "encoder.crop_ratio=1.0", "encoder.image_output=tokens", "task.shape_meta.obs.front_image.shape=[16,16,3]",
            "task.shape_meta.obs.front_depth.shape=[16,16]"]
    with initialize_config_module(config_module="vmp.configs", version_base=None):
        c = compose("train", overrides=["task=pointnav", "policy=navdp", "encoder=compact_cnn", *tiny])
    return build_policy(c, _unit_normalizer(c))


# head -> (builder, [(case name, settings to set on the head's config, predict_window kwargs)])
PREFIX = {"prefix": "prefix"}  # replaced by a prefix of the head's horizon below
HEADS: dict[str, tuple[Callable[[], Policy], list[tuple[str, dict, dict]]]] = {
    "beso": (_beso, [("euler", {"sampler": "euler"}, {}),
                     ("euler_ancestral", {"sampler": "euler_ancestral"}, {}),
                     ("dpmpp_2m", {"sampler": "dpmpp_2m", "n_steps": 4}, {}),
                     ("karras_guided", {"sigma_schedule": "karras", "guidance_weight": 1.5}, {"goal": True}),
                     ("dpmpp_2m_prefix", {"sampler": "dpmpp_2m"}, PREFIX),
                     ("euler_prefix", {"sampler": "euler"}, PREFIX)]),
    "beso_image": (_beso_image, [("euler", {}, {})]),
    "ddpm": (_ddpm, [("ddpm", {"sampler": "ddpm"}, {}), ("ddim", {"sampler": "ddim", "n_steps": 5}, {}),
                     ("ddpm_prefix", {"sampler": "ddpm"}, PREFIX), ("ddim_prefix", {"sampler": "ddim"}, PREFIX)]),
    "carp": (_carp, [("greedy", {}, {})]),
    "navdp": (_navdp, [("critic", {}, {}), ("random", {"selection": "random"}, {}),
                       ("ddim_single", {"sampler": "ddim", "n_steps": 5, "selection": "single"}, {})]),
    "divla": (_divla, [("ddim", {}, {})]),
    "pad": (_pad, [("ddim", {}, {"instruction": "move to the left"})]),
}


def _window(policy: Policy, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    window = {}
    for key, shape in policy.obs_shapes.items():
        kind = policy.obs_kinds[key]
        window[key] = (rng.integers(0, 256, (policy.n_obs_steps, *shape), dtype=np.uint8) if kind == "rgb"
                       else rng.uniform(0.5 if kind == "depth" else -1, 1, (policy.n_obs_steps, *shape)).astype(np.float32))
    return window


def _chunks(head: str, policy: Policy) -> dict[str, np.ndarray]:
    out = {}
    for case, settings, kwargs in HEADS[head][1]:
        for key, value in settings.items():
            setattr(policy.config, key, value)
        for seed in (0, 1):
            window = _window(policy, seed)
            call: dict[str, Any] = {"generator": torch.Generator().manual_seed(seed)}
            if kwargs.get("goal"):
                call["goal"] = {"target": np.float32([0.5, -0.25])}
            if "instruction" in kwargs:
                call["instruction"] = kwargs["instruction"]
            if kwargs is PREFIX:
                call["prefix"] = np.linspace(-0.5, 0.5, 3 * policy.action_dim, dtype=np.float32).reshape(3, -1)
                call["prefix_weights"] = np.float32([1.0, 0.6, 0.2])
            policy.reset()
            out[f"{case}/{seed}"] = policy.predict_window(window, **call).actions
    return out


def _load(head: str) -> Policy:
    torch.manual_seed(0)
    policy = HEADS[head][0]()
    policy.load_state_dict(torch.load(FIXTURES / f"{head}.pt", weights_only=True))
    return policy.eval()


@pytest.fixture(autouse=True)
def one_thread():
    """The same float reductions as far as one machine allows: one intra-op thread, as the fixtures were written with (two
    threads split a matmul's sums differently)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("head", sorted(HEADS))
def test_tiny_checkpoint_gives_the_recorded_chunks(head):
    expected = np.load(FIXTURES / f"{head}_chunks.npz")
    got = _chunks(head, _load(head))
    assert sorted(got) == sorted(expected.files)
    for name in expected.files:
        diff = np.abs(got[name] - expected[name]).max()
        assert diff <= ATOL, f"{head} {name}: max |diff| {diff} > {ATOL}"


def write(heads: list[str]) -> None:
    """Fresh tiny heads with every weight perturbed (a zero-initialised output layer would hide the network)."""
    FIXTURES.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # as the test runs
    for head in heads or HEADS:
        torch.manual_seed(0)
        policy = HEADS[head][0]()
        with torch.no_grad():
            for p in policy.parameters():
                p.add_(0.05 * torch.randn_like(p))
        torch.save(policy.state_dict(), FIXTURES / f"{head}.pt")
        np.savez(FIXTURES / f"{head}_chunks.npz", **_chunks(head, _load(head)))
        print(head, (FIXTURES / f"{head}.pt").stat().st_size, "bytes")


if __name__ == "__main__":
    sys.exit(write(sys.argv[1:]))
