"""ObsEncoder branches beyond low-dim: instructions (learned and frozen MiniLM), image token output, and the
sampler that feeds instructions from a store."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from vmp.data import EpisodeStore, Normalizer, SequenceDataset, SequenceSampler
from vmp.data.schema import KeySpec
from vmp.policies.build import build_policy
from vmp.policies.encoders import ObsEncoder
from vmp.policies.nn.text import LearnedTextEncoder

H, A = 8, 2
# Same words, different order: a bag of words cannot tell them apart, the instruction encoder must.
RED_LEFT = "push the red block into the left target and the blue block into the right target"
RED_RIGHT = "push the red block into the right target and the blue block into the left target"


def language_cfg(head="beso", text_encoder="learned", **policy):
    return OmegaConf.create({
        "task": {"name": "toy", "goal_keys": [], "language_conditioned": True,
                 "shape_meta": {"obs": {"state": {"shape": [2], "type": "low_dim"}}, "action": {"shape": [A]}}},
        "policy": {"name": head, "n_obs_steps": 1, "horizon": H, "n_action_steps": 4, "d_model": 64, "n_layers": 2,
                   "n_heads": 4, "dropout": 0.0, **policy},
        "encoder": {"backbone": "compact_cnn", "backbone_kwargs": {}, "n_keypoints": 8, "crop_ratio": 1.0,
                    "lowdim_hidden": 64, "text_encoder": text_encoder},
    })


def unit_normalizer():
    normalizer = Normalizer.empty({"action": (A,), "state": (2,)}, {"action": "minmax", "state": "meanstd"})
    for key in normalizer.keys:
        normalizer.set_stats(key, min=[-1.0, -1.0], max=[1.0, 1.0], mean=[0.0, 0.0], std=[1.0, 1.0])
    return normalizer


def instruction_batch(n):
    """The observation is the same for every row; only the instruction says whether the chunk is +0.8 or -0.8."""
    sign = torch.where(torch.rand(n) < 0.5, 1.0, -1.0)
    return {"obs": {"state": torch.full((n, 1, 2), 0.5), "language": [RED_LEFT if s > 0 else RED_RIGHT for s in sign]},
            "action": 0.8 * sign[:, None, None].expand(n, H, A).clone(), "action_is_pad": torch.zeros(n, H, dtype=torch.bool)}


def test_instruction_selects_the_mode():
    # DDPM trains up to pure noise, where only the conditioning can tell the modes apart (BESO's sigma_max = 1 leaves
    # the mode readable from the noisy chunk itself, so this toy would test its noise range, not the encoder).
    torch.manual_seed(0)
    policy = build_policy(language_cfg("ddpm", n_steps=20, num_train_timesteps=20), unit_normalizer())
    opt = torch.optim.AdamW(policy.parameters(), lr=2e-3)
    losses = []
    for _ in range(300):
        loss = policy.compute_loss(instruction_batch(128))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:20]), "loss did not fall"
    policy.eval()
    for text, sign in ((RED_LEFT, 1.0), (RED_RIGHT, -1.0)):
        obs = {"state": torch.full((100, 1, 2), 0.5), "language": [text] * 100}
        chunks = policy.predict_action_chunk(obs, generator=torch.Generator().manual_seed(0))
        agree = (torch.sign(chunks.mean(dim=(1, 2))) == sign).float().mean()
        assert agree > 0.95, f"{text!r}: only {agree:.2f} of the chunks follow it"
    # step-by-step control gets the instruction from set_language, as vmp-eval passes info["language"]
    policy.reset()
    policy.set_language(RED_RIGHT)
    assert policy.select_action({"state": np.full(2, 0.5, np.float32)}).mean() < 0
    policy.reset()
    with pytest.raises(KeyError, match="set_language"):
        policy.select_action({"state": np.full(2, 0.5, np.float32)})


def test_learned_text_encoder_caches_and_is_order_aware():
    torch.manual_seed(0)
    enc = LearnedTextEncoder(d_model=16)
    out = enc([RED_LEFT, RED_RIGHT, RED_LEFT])
    assert out.shape == (3, 1, 16)
    assert torch.allclose(out[0], out[2])
    assert not torch.allclose(out[0], out[1], atol=1e-4)
    assert set(enc._ids) == {RED_LEFT, RED_RIGHT}
    # hashing is stable: a fresh encoder maps words to the same rows, so checkpoints need no vocabulary
    assert LearnedTextEncoder(d_model=16).token_ids(RED_LEFT) == enc.token_ids(RED_LEFT)


def test_minilm_is_frozen_cached_and_kept_out_of_the_state_dict():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("all_minilm_l6_v2")
    from vmp.policies.nn.text import MiniLMTextEncoder

    enc = MiniLMTextEncoder(d_model=16)
    emb = enc.embed(["push the red block to the left", "push the red cube to the left", "open the top drawer"])
    assert emb.shape == (3, 384)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2, "paraphrases should be closer than unrelated instructions"
    assert len(enc._cache) == 3
    assert set(enc.state_dict()) == {"proj.weight", "proj.bias"}
    out = enc(["push the red block to the left"])
    out.sum().backward()  # gradients reach the projection; the cached sentence embedding is a frozen constant
    assert enc.proj.weight.grad is not None and enc.proj.weight.grad.abs().sum() > 0
    assert not emb.requires_grad


def test_image_token_output_counts_tokens():
    meta = {"obs": {"cam_image": {"shape": [32, 32, 3], "type": "rgb"}, "depth": {"shape": [32, 32], "type": "depth"},
                    "state": {"shape": [3], "type": "low_dim"}}, "action": {"shape": [2]}}
    enc = ObsEncoder(meta, n_obs_steps=2, d_model=16, backbone_kwargs={"channels": 8, "n_layers": 2},
                     image_output="tokens", token_grid=2, crop_ratio=1.0)
    obs = {"cam_image": torch.randint(0, 255, (4, 2, 3, 32, 32), dtype=torch.uint8),
           "depth": torch.rand(4, 2, 32, 32), "state": torch.zeros(4, 2, 3)}
    tokens = enc(obs)
    assert enc.tokens_per_step == 1 + 4 + 4
    assert tokens.shape == (4, 2, 9, 16)
    assert enc.n_tokens == 18
    assert not any("keypoint" in name for name in enc.state_dict())  # checkpoints of "tokens" keep their keys
    both = ObsEncoder(meta, n_obs_steps=2, d_model=16, backbone_kwargs={"channels": 8, "n_layers": 2},
                      image_output="tokens_and_keypoints", token_grid=2, crop_ratio=1.0)
    tokens = both(obs)
    assert both.tokens_per_step == 1 + 5 + 5 and tokens.shape == (4, 2, 11, 16)
    tokens[:, :, 1].sum().backward()  # the camera's first token is its spatial-softmax keypoints
    assert both.images["cam_image"].keypoint_proj.weight.grad.abs().sum() > 0
    assert not both.images["cam_image"].proj.weight.grad.any()  # the grid's projection played no part in it
    with pytest.raises(ValueError, match="image_output"):
        ObsEncoder(meta, n_obs_steps=1, image_output="patches")


def test_sampler_gives_each_window_its_episode_instruction(tmp_path):
    schema = {"state": KeySpec((2,), "float32", "state"), "action": KeySpec((2,), "float32", "action")}
    with EpisodeStore.create(tmp_path / "s.zarr", schema, {"task": "toy", "control_hz": 10}) as store:
        for e, text in enumerate([RED_LEFT, RED_RIGHT, RED_LEFT]):
            ep = {"state": np.full((6, 2), e, np.float32), "action": np.zeros((6, 2), np.float32)}
            store.append_episode(ep, text={"language": text})
    with EpisodeStore.create(tmp_path / "bad.zarr", schema, {"task": "toy", "control_hz": 10}) as store:
        store.append_episode({"state": np.zeros((6, 2), np.float32), "action": np.zeros((6, 2), np.float32)},
                             text={"language": RED_LEFT})
        store.append_episode({"state": np.zeros((6, 2), np.float32), "action": np.zeros((6, 2), np.float32)})
    with pytest.raises(ValueError, match="bad.zarr.*episode 1"):
        SequenceSampler(tmp_path / "bad.zarr", n_obs_steps=1, horizon=4, n_action_steps=2, split="all", language=True)
    sampler = SequenceSampler(tmp_path / "s.zarr", n_obs_steps=1, horizon=4, n_action_steps=2, split="train",
                              val_ratio=0.25, language=True)
    batch = sampler.sample_batch(np.arange(len(sampler)))
    texts = {0: RED_LEFT, 1: RED_RIGHT, 2: RED_LEFT}
    assert batch["obs"]["language"] == [texts[int(e)] for e in batch["episode"]]
    assert sampler[0]["obs"]["language"] == texts[int(sampler[0]["episode"])]
    # through the Dataset and DataLoader collation that vmp-train uses, the instructions stay a list of strings
    loader = torch.utils.data.DataLoader(SequenceDataset(sampler), batch_size=4, shuffle=False)
    batch = next(iter(loader))
    assert batch["obs"]["language"] == [texts[int(e)] for e in batch["episode"]]
    assert batch["obs"]["state"].dtype == torch.float32


def test_goal_in_lowdim_feeds_the_goal_to_every_step():
    meta = {"obs": {"state": {"shape": [2], "type": "low_dim"}, "target": {"shape": [2], "type": "low_dim"}}}
    torch.manual_seed(0)
    enc = ObsEncoder(meta, n_obs_steps=2, d_model=16, goal_keys=["target"], lowdim_hidden=32, goal_in_lowdim=True)
    obs = {"state": torch.randn(3, 2, 2), "target": torch.randn(3, 2, 2)}
    goal_a, goal_b = {"target": torch.full((3, 2), -1.0)}, {"target": torch.full((3, 2), 1.0)}
    a, b = enc(obs, goal_a), enc(obs, goal_b)
    for step in range(2):  # the goal reaches every observation step's token
        assert not torch.allclose(a[:, step], b[:, step], atol=1e-5)
    # a dropped goal reads as a missing one (zeros), row by row
    drop = torch.tensor([True, False, True])
    mixed = enc(obs, goal_a, drop)
    none = enc(obs)
    assert torch.allclose(mixed[drop], none[drop]) and torch.allclose(mixed[~drop], a[~drop])
    # off by default: the observation tokens ignore the goal
    plain = ObsEncoder(meta, n_obs_steps=2, d_model=16, goal_keys=["target"], lowdim_hidden=32)
    assert torch.equal(plain(obs, goal_a), plain(obs, goal_b))
    with pytest.raises(ValueError, match="goal_in_lowdim needs a task with goal_keys"):
        ObsEncoder(meta, n_obs_steps=2, d_model=16, goal_in_lowdim=True)
