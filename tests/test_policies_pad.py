"""PAD: token layout and attention mask, action-free samples, the latent cache, and a two-task run through vmp-train
that must tell the tasks apart by their instruction alone."""

import shutil

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from vmp.data import EpisodeStore, KeySpec, Normalizer
from vmp.policies.checkpoint import load_policy, read_checkpoint
from vmp.policies.heads.pad import PADConfig, PADPolicy, attention_mask, cached_latents, latent_cache_path, token_layout
from vmp.policies.train import train

SHAPE_META = {"obs": {"cam_image": {"shape": [16, 16, 3], "type": "rgb"}, "eef_pos": {"shape": [3], "type": "low_dim"}},
              "action": {"shape": [2]}}
INSTRUCTIONS = ("move to the left", "move to the right")


def test_token_layout_and_mask_on_a_fixed_example():
    layout = token_layout(n_obs_steps=1, n_patches=4, n_future=2)
    assert layout == {"current": (0, 4), "proprio": (4, 5), "future": (5, 13), "action": (13, 14), "length": 14}
    mask = attention_mask(layout)
    expected = torch.ones(14, 14, dtype=torch.bool)
    expected[:13, 13] = False  # no image or proprio token reads the action token
    assert torch.equal(mask, expected)
    assert token_layout(2, 4, 0) == {"current": (0, 8), "proprio": (8, 10), "future": (10, 10), "action": (10, 11),
                                     "length": 11}


@pytest.fixture
def vae_dir(tmp_path):
    """A diffusers AutoencoderKL directory on disk (what policy.vae accepts besides a pad_vae checkpoint)."""
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                        up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[8, 8], layers_per_block=1,
                        latent_channels=4, norm_num_groups=8, mid_block_add_attention=False, scaling_factor=0.5)
    vae.save_pretrained(tmp_path / "vae")
    return tmp_path / "vae"


def small_pad(vae_dir, **overrides) -> PADPolicy:
    normalizer = Normalizer.empty({"action": (2,), "eef_pos": (3,)}, {"action": "minmax", "eef_pos": "meanstd"})
    normalizer.set_stats("action", min=-np.ones(2), max=np.ones(2), mean=np.zeros(2), std=np.ones(2))
    normalizer.set_stats("eef_pos", min=-np.ones(3), max=np.ones(3), mean=np.zeros(3), std=np.ones(3))
    settings = dict(vae=str(vae_dir), horizon=4, n_action_steps=2, future_offsets=[2, 4], width=32, depth=2,
                    n_heads=2, n_steps=4)
    settings.update(overrides)
    return PADPolicy(PADConfig(**settings), SHAPE_META, normalizer, action_dim=2)


def batch_of(b: int, action_free: bool, instruction: str = INSTRUCTIONS[0]) -> dict:
    g = torch.Generator().manual_seed(1)
    return {"obs": {"cam_image": torch.randint(0, 256, (b, 1, 3, 16, 16), generator=g, dtype=torch.uint8),
                    "eef_pos": torch.randn(b, 1, 3, generator=g), "language": [instruction] * b},
            "future": {"cam_image": torch.randint(0, 256, (b, 2, 3, 16, 16), generator=g, dtype=torch.uint8)},
            "future_is_pad": torch.zeros(b, 2, dtype=torch.bool),
            "action": torch.zeros(b, 4, 2) if action_free else torch.rand(b, 4, 2, generator=g) * 2 - 1,
            "action_is_pad": torch.full((b, 4), action_free)}


def test_pretrained_vae_directory_is_loaded_frozen_with_its_scaling(vae_dir):
    policy = small_pad(vae_dir)
    assert torch.allclose(policy.latent_scale, torch.full((4,), 0.5))
    assert not any(p.requires_grad for p in policy.vae.parameters())
    assert policy.checkpoint_settings()["vae_arch"]["block_out_channels"] == [8, 8]


def test_action_free_samples_give_exactly_zero_action_gradient(vae_dir):
    policy = small_pad(vae_dir)
    losses = policy.compute_loss(batch_of(4, action_free=True))
    assert losses["action_loss"] == 0.0 and losses["image_loss"] > 0
    losses["loss"].backward()
    for name in ("action_in", "action_out"):
        for p in getattr(policy, name).parameters():
            assert p.grad is None or torch.count_nonzero(p.grad) == 0, name
    assert torch.count_nonzero(policy.patch_out.weight.grad) > 0  # the image loss still trains
    # with actions, the same parameters do get a gradient
    policy.zero_grad()
    policy.compute_loss(batch_of(4, action_free=False))["loss"].backward()
    assert torch.count_nonzero(policy.action_out.weight.grad) > 0


def test_predict_returns_chunk_and_decoded_future_frames(vae_dir):
    policy = small_pad(vae_dir).eval()
    window = {"cam_image": np.zeros((1, 16, 16, 3), np.uint8), "eef_pos": np.zeros((1, 3), np.float32)}
    pred = policy.predict_window(window, instruction=INSTRUCTIONS[0])
    assert pred.actions.shape == (4, 2) and pred.extras["future_frames"].shape == (2, 16, 16, 3)
    assert pred.extras["future_frames"].dtype == np.uint8
    policy.decode_frames = False
    assert "future_frames" not in policy.predict_window(window, instruction=INSTRUCTIONS[0]).extras
    with pytest.raises(KeyError, match="language-conditioned"):
        policy.predict_window(window)
    with pytest.raises(ValueError, match="multiple of"):
        small_pad(vae_dir, patch_size=3)


def two_task_store(path, n_per_task: int = 6, length: int = 12):
    """Two tasks that differ only in their instruction: the same random frames and states, opposite actions."""
    schema = {"cam_image": KeySpec((16, 16, 3), "uint8"), "eef_pos": KeySpec((3,), "float32"),
              "action": KeySpec((2,), "float32")}
    rng = np.random.default_rng(0)
    with EpisodeStore.create(path, schema, {"task": "two_tasks", "control_hz": 10}) as store:
        for e in range(2 * n_per_task):
            task = e % 2
            frames = rng.integers(0, 256, (length, 16, 16, 3), dtype=np.uint8)
            sign = 1.0 if task else -1.0
            store.append_episode({"cam_image": frames, "eef_pos": rng.normal(size=(length, 3)).astype(np.float32),
                                  "action": np.tile([sign * 0.8, 0.1], (length, 1)).astype(np.float32)},
                                 text={"language": INSTRUCTIONS[task]})
    return path


def train_cfg(store, run_dir, policy: str, *overrides: str):
    with initialize_config_module(config_module="vmp.configs", version_base=None):
        cfg = compose("train", overrides=[
            "task=metaworld_mt", f"policy={policy}", f"store={store}", f"run_dir={run_dir}", "device=cpu",
            "training.warmup_steps=5", "training.val_ratio=0", "training.log_every=10", *overrides])
    cfg.task.shape_meta = OmegaConf.create(SHAPE_META)
    return cfg


def test_two_task_run_learns_the_tasks_apart_by_instruction(tmp_path, monkeypatch):
    monkeypatch.setenv("VMP_CACHE", str(tmp_path / "cache"))
    store = two_task_store(tmp_path / "two.zarr")
    vae_ckpt = train(train_cfg(store, tmp_path / "vae", "pad_vae", "policy.block_out_channels=[8,8]",
                               "training.steps=20", "training.batch_size=8"))
    ckpt = train(train_cfg(store, tmp_path / "pad", "pad", f"policy.vae={vae_ckpt}", "policy.horizon=4",
                           "policy.n_action_steps=2", "policy.future_offsets=[2]", "policy.width=32", "policy.depth=2",
                           "policy.n_heads=2", "training.steps=250", "training.batch_size=32", "training.lr=2e-3"))
    # the latents were encoded once and cached; the checkpoint rebuilds without the autoencoder's file
    assert list((tmp_path / "cache" / "latents").glob("two-cam_image-*.npy"))
    assert read_checkpoint(ckpt)["cfg"].count("vae_arch") == 1
    shutil.rmtree(tmp_path / "vae")
    policy, _ = load_policy(ckpt)
    window = {"cam_image": np.random.default_rng(5).integers(0, 256, (1, 16, 16, 3), dtype=np.uint8),
              "eef_pos": np.zeros((1, 3), np.float32)}
    first = [policy.predict_window(window, instruction=text, generator=torch.Generator().manual_seed(0)).actions[:, 0]
             for text in INSTRUCTIONS]
    assert first[0].mean() < -0.4 and first[1].mean() > 0.4, first


def test_latent_cache_is_reused_and_keyed_by_store_size(tmp_path, monkeypatch, vae_dir):
    monkeypatch.setenv("VMP_CACHE", str(tmp_path / "cache"))
    path = two_task_store(tmp_path / "s.zarr", n_per_task=1, length=5)
    store = EpisodeStore.open(path)
    latents = cached_latents(store, "cam_image", str(vae_dir))
    assert latents.shape == (10, 4, 8, 8)
    cache = latent_cache_path(store, "cam_image", str(vae_dir))
    np.save(cache, latents + 1.0)  # a second call reads the file, not the autoencoder
    assert np.allclose(cached_latents(store, "cam_image", str(vae_dir)), latents + 1.0)
    store.close()
    with EpisodeStore.open(path, mode="a") as grown:
        grown.append_episode({"cam_image": np.zeros((3, 16, 16, 3), np.uint8), "eef_pos": np.zeros((3, 3), np.float32),
                              "action": np.zeros((3, 2), np.float32)}, text={"language": "x"})
    grown = EpisodeStore.open(path)
    assert latent_cache_path(grown, "cam_image", str(vae_dir)) != cache
    assert cached_latents(grown, "cam_image", str(vae_dir)).shape == (13, 4, 8, 8)


def test_latents_of_a_store_at_another_size_are_encoded_at_the_tasks_size(tmp_path, monkeypatch, vae_dir):
    """A store recorded at twice the task's resolution: its frames are resized before encoding, as the sampler
    resizes the frames it reads, so the latents match the task's size (and here those of the small store exactly)."""
    monkeypatch.setenv("VMP_CACHE", str(tmp_path / "cache"))
    small = EpisodeStore.open(two_task_store(tmp_path / "s.zarr", n_per_task=1, length=5))
    schema = {**small.schema, "cam_image": KeySpec((32, 32, 3), "uint8")}
    with EpisodeStore.create(tmp_path / "big.zarr", schema, {"task": "two_tasks", "control_hz": 10}) as big:
        for e in range(small.n_episodes):
            ep = small.episode(e)
            big.append_episode({**ep, "cam_image": ep["cam_image"].repeat(2, axis=1).repeat(2, axis=2)},
                               text={"language": INSTRUCTIONS[e % 2]})
    big = EpisodeStore.open(tmp_path / "big.zarr")
    task = OmegaConf.create({"name": "two_tasks", "shape_meta": SHAPE_META})
    config = PADConfig(vae=str(vae_dir))
    latents = PADPolicy.precompute(config, task, big)["cam_image_latent"]
    assert latents.shape == (10, 4, 8, 8)  # 16 px frames, not the store's 32 px
    np.testing.assert_allclose(latents, cached_latents(small, "cam_image", str(vae_dir)), atol=1e-5)
    at_task_size = latent_cache_path(big, "cam_image", str(vae_dir), (16, 16))
    assert at_task_size != latent_cache_path(big, "cam_image", str(vae_dir))  # the cache is keyed by the size


def test_prefix_is_inpainted_into_the_action_part_only(vae_dir):
    """Real-time chunking: the chunk starts with the given prefix where its weight is 1; images stay free."""
    policy = small_pad(vae_dir).eval()
    window = {"cam_image": np.zeros((1, 16, 16, 3), np.uint8), "eef_pos": np.zeros((1, 3), np.float32)}
    prefix = np.array([[0.5, -0.25], [0.1, 0.2]], np.float32)
    pred = policy.predict_window(window, instruction=INSTRUCTIONS[0], prefix=prefix,
                                 prefix_weights=np.array([1.0, 1.0], np.float32), generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(pred.actions[:2], prefix, atol=1e-5)
    free = policy.predict_window(window, instruction=INSTRUCTIONS[0], generator=torch.Generator().manual_seed(0))
    assert not np.allclose(free.actions[:2], prefix, atol=1e-2)
