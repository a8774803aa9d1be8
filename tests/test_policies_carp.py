"""CARP: the multi-scale action tokenizer and the next-scale transformer (block-causal mask, KV cache, vmp-train)."""

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from vmp.data import Normalizer
from vmp.data.testing import LIFT_LOWDIM_KEYS, make_learnable_lift_store
from vmp.policies.base import Policy, StageOneModel
from vmp.policies.build import build_model, build_policy
from vmp.policies.checkpoint import load_model, load_policy, read_checkpoint
from vmp.policies.train import train

H, A = 16, 3
SCALES = [1, 2, 3, 4]


def toy_cfg(head: str, **policy):
    fields = {"name": head, "n_obs_steps": 2, "horizon": H, "n_action_steps": 8}
    if head == "carp":
        fields.update(d_model=32, width=32, depth=2, n_heads=2, dropout=0.0, tokenizer_checkpoint=None,
                      tokenizer={"horizon": H, "scales": SCALES, "codebook_size": 64, "code_dim": 4, "hidden_dim": 16})
    else:
        fields.update(scales=SCALES, codebook_size=64, code_dim=4, hidden_dim=16)
    fields.update(policy)
    return OmegaConf.create({
        "task": {"name": "toy", "goal_keys": [], "shape_meta": {"obs": {"state": {"shape": [2], "type": "low_dim"}},
                                                                "action": {"shape": [A]}}},
        "policy": fields,
        "encoder": {"backbone": "compact_cnn", "backbone_kwargs": {}, "n_keypoints": 8, "crop_ratio": 1.0, "lowdim_hidden": 32},
    })


def unit_normalizer():
    norm = Normalizer.empty({"action": (A,), "state": (2,)}, {"action": "minmax", "state": "meanstd"})
    norm.set_stats("action", min=-np.ones(A), max=np.ones(A), mean=np.zeros(A), std=np.ones(A))
    norm.set_stats("state", min=-np.ones(2), max=np.ones(2), mean=np.zeros(2), std=np.ones(2))
    return norm


def make(head: str, **policy):
    torch.manual_seed(0)
    return build_model(toy_cfg(head, **policy), unit_normalizer())


def randomize_adaln(policy):
    """adaLN-Zero starts every block as the identity; random modulations make the mask and cache tests meaningful."""
    g = torch.Generator().manual_seed(1)
    for name, p in policy.gpt.named_parameters():
        if "ada" in name:
            p.data.copy_(torch.randn(p.shape, generator=g) * 0.3)


def smooth_chunks(n: int, seed: int) -> torch.Tensor:
    """Random smooth chunks in [-1, 1]: an offset plus a low-frequency sinusoid per action dimension."""
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, 1, H)[None, :, None]
    amp, freq = torch.rand(n, 1, A, generator=g) * 0.6, torch.rand(n, 1, A, generator=g) * 1.5 + 0.2
    phase, offset = torch.rand(n, 1, A, generator=g) * 6.28, (torch.rand(n, 1, A, generator=g) - 0.5) * 0.6
    return (offset + amp * torch.sin(6.28 * freq * t + phase)).clamp(-1.0, 1.0)


# ---------------------------------------------------------------- the block-causal mask
@pytest.mark.parametrize("per_dim", [True, False])
def test_mask_lets_a_scale_see_exactly_obs_and_coarser_scales(per_dim):
    policy = make("carp", tokenizer={"horizon": H, "scales": SCALES, "codebook_size": 64, "code_dim": 4,
                                     "hidden_dim": 16, "per_dim": per_dim})
    gpt = policy.gpt
    n_obs = policy.encoder.n_tokens
    assert n_obs == 2  # one low-dim token per observation step
    owner = ["obs"] * n_obs + [k for k, length in enumerate(SCALES) for _ in range(length)]  # who owns each position
    assert gpt.mask.shape == (len(owner), len(owner)) == (n_obs + sum(SCALES),) * 2
    for i, row in enumerate(owner):
        for j, col in enumerate(owner):
            if row == "obs":
                expected = col == "obs"
            else:
                expected = col == "obs" or col <= row
            assert bool(gpt.mask[i, j]) == expected, f"position {i} ({row}) -> {j} ({col})"


def test_mask_holds_in_the_network_outputs():
    """Changing the inputs of scale k changes logits of scales >= k only; changing the observation changes all."""
    policy = make("carp").eval()
    randomize_adaln(policy)
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(4, 2, 32, generator=g)
    in_dim = policy.vq.groups * policy.vq.code_dim
    inputs = [torch.randn(4, length, in_dim, generator=g) for length in SCALES[1:]]
    base = policy.gpt(cond, inputs)
    bounds = [(s - 2, e - 2) for s, e in policy.gpt.bounds]  # action-token positions of each scale
    for k in range(1, len(SCALES)):
        changed = [x.clone() for x in inputs]
        changed[k - 1] += 1.0
        out = policy.gpt(cond, changed)
        for scale, (s, e) in enumerate(bounds):
            differs = not torch.allclose(out[:, s:e], base[:, s:e], atol=1e-6)
            assert differs == (scale >= k), f"input of scale {k} {'leaked into' if differs else 'did not reach'} scale {scale}"
    out = policy.gpt(cond + 1.0, inputs)
    for s, e in bounds:
        assert not torch.allclose(out[:, s:e], base[:, s:e], atol=1e-6)


def test_conditioning_vector_knows_which_token_said_what():
    """The adaLN vector (also added to scale 0's input) is a projection of all observation tokens together: swapping
    the two observation steps changes it, and with it scale 0's input (a mean over tokens would change neither)."""
    policy = make("carp").eval()
    cond = torch.randn(3, 2, 32, generator=torch.Generator().manual_seed(0))
    _, c = policy.gpt.embed_cond(cond)
    _, c_swapped = policy.gpt.embed_cond(cond.flip(1))
    assert c.shape == (3, 32)
    assert not torch.allclose(c, c_swapped, atol=1e-4)
    start = policy.gpt.embed_scale(0, c, None)
    assert not torch.allclose(start, policy.gpt.embed_scale(0, c_swapped, None), atol=1e-4)


# ---------------------------------------------------------------- inference
@pytest.mark.parametrize("sampling", ["greedy", "top_k"])
def test_kv_cache_gives_the_same_tokens(sampling):
    policy = make("carp", sampling=sampling, top_k=5, temperature=2.0).eval()
    randomize_adaln(policy)
    cond = policy.condition({"state": torch.randn(6, 2, 2, generator=torch.Generator().manual_seed(3))})
    cached = policy.generate_tokens(cond, torch.Generator().manual_seed(7), kv_cache=True)
    plain = policy.generate_tokens(cond, torch.Generator().manual_seed(7), kv_cache=False)
    assert [tuple(t.shape) for t in cached] == [(6, A, length) for length in SCALES]
    for k, (a, b) in enumerate(zip(cached, plain)):
        assert torch.equal(a, b), f"scale {k}: cached decoding differs"
    if sampling == "top_k":  # sampling really samples: another seed gives other tokens somewhere
        other = policy.generate_tokens(cond, torch.Generator().manual_seed(8), kv_cache=True)
        assert any(not torch.equal(a, b) for a, b in zip(cached, other))


def test_predict_action_chunk_batch_1_and_n_and_select_action():
    policy = make("carp").eval()
    for b in (1, 5):
        chunk = policy.predict_action_chunk({"state": torch.randn(b, 2, 2)})
        assert chunk.shape == (b, H, A) and torch.isfinite(chunk).all()
        assert chunk.abs().max() <= 1.0 + 1e-5  # clamped to the normalizer's action range [-1, 1]
    policy.reset()
    actions = [policy.select_action({"state": np.zeros(2, dtype=np.float32)}) for _ in range(9)]
    assert actions[0].shape == (A,)
    assert len(policy.inference_times_ms) == 2  # 8 actions executed per chunk: steps 1 and 9 predict


def test_goal_conditioned_task_adds_a_goal_token():
    cfg = toy_cfg("carp")
    cfg.task.goal_keys = ["target"]
    cfg.task.shape_meta.obs["target"] = {"shape": [2], "type": "low_dim"}
    norm = Normalizer.empty({"action": (A,), "state": (2,), "target": (2,)}, {"action": "minmax", "state": "meanstd", "target": "meanstd"})
    for key, dim in (("action", A), ("state", 2), ("target", 2)):
        norm.set_stats(key, min=-np.ones(dim), max=np.ones(dim), mean=np.zeros(dim), std=np.ones(dim))
    policy = build_policy(cfg, norm).eval()
    randomize_adaln(policy)
    assert policy.gpt.n_cond == 2 + 1  # one low-dim token per observation step, plus the goal token
    obs = {"state": torch.zeros(2, 2, 2), "target": torch.zeros(2, 2, 2)}
    goal_a, goal_b = {"target": torch.full((2, 2), -1.0)}, {"target": torch.full((2, 2), 1.0)}
    tokens_a = policy.generate_tokens(policy.condition(obs, goal_a))
    tokens_b = policy.generate_tokens(policy.condition(obs, goal_b))
    assert any(not torch.equal(a, b) for a, b in zip(tokens_a, tokens_b)), "the goal does not reach the tokens"
    assert policy.predict_action_chunk(obs).shape == (2, H, A)  # no goal: the learned null token
    with pytest.raises(KeyError, match=r"goal is missing keys \['target'\]"):
        policy.predict_action_chunk(obs, goal={"goal_pos": torch.zeros(2, 2)})


# ---------------------------------------------------------------- the tokenizer
def train_tokenizer(tok, steps: int) -> dict[str, torch.Tensor]:
    """`steps` AdamW steps of batch 64 on 2000 synthetic smooth chunks -> the last step's losses."""
    train_set = smooth_chunks(2000, seed=0)
    opt = torch.optim.AdamW(tok.vq.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        out = tok.compute_loss({"action": train_set[torch.randint(0, 2000, (64,), generator=g)]})
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    return out


def test_tokenizer_reconstructs_held_out_chunks():
    """After 300 steps on 2000 synthetic smooth chunks, held-out chunks reconstruct with MSE < 0.01 (normalized
    units; the chunks' variance is ~0.1, and an untrained tokenizer is above 0.1)."""
    tok = make("carp_tokenizer")
    held_out = smooth_chunks(256, seed=1)
    before = (tok.reconstruct(held_out) - held_out).pow(2).mean().item()
    out = train_tokenizer(tok, 300)
    assert set(out) >= {"loss", "recon_mse", "commit", "codebook_usage"}
    assert 0.1 < out["codebook_usage"].item() <= 1.0
    after = (tok.reconstruct(held_out) - held_out).pow(2).mean().item()
    assert before > 0.05
    assert after < 0.01, f"held-out reconstruction MSE {after:.4f} (untrained {before:.4f})"
    # the coarse scales alone already explain part of the chunk: coarse-to-fine, not just the last scale
    nact = held_out
    idx = tok.vq.tokenize(nact)
    f_hat, mse_per_prefix = None, []
    for k, i in enumerate(idx):
        f_hat, _ = tok.vq.add_scale(k, i, f_hat)
        mse_per_prefix.append((tok.vq.decode(f_hat) - nact).pow(2).mean().item())
    assert mse_per_prefix[0] < before and mse_per_prefix[-1] < mse_per_prefix[0]


def test_requantized_targets_repair_a_wrong_coarse_token():
    """tokenize_with_errors: with no proposal taken it is tokenize + teacher_inputs; when scale 0 takes a wrong token,
    the re-quantized finer targets leave a smaller latent error than the finer tokens of the clean chunk would."""
    tok = make("carp_tokenizer")
    train_tokenizer(tok, 150)
    vq = tok.vq.eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        f = vq.encode(smooth_chunks(256, seed=1))
        clean = vq.quantize(f)[1]
        none = [torch.zeros_like(i, dtype=torch.bool) for i in clean]
        targets, inputs = vq.tokenize_with_errors(f, clean, none)
        assert all(torch.equal(a, b) for a, b in zip(targets, clean))
        assert all(torch.allclose(a, b) for a, b in zip(inputs, vq.teacher_inputs(clean)))

        wrong = [(clean[0] + 1 + torch.randint(0, 62, clean[0].shape, generator=g)) % 64] + clean[1:]
        use = [torch.ones_like(none[0])] + none[1:]
        repaired, _ = vq.tokenize_with_errors(f, wrong, use)
        assert torch.equal(repaired[0], clean[0])  # the target at the wrong scale itself is still the best token
        assert any(not torch.equal(a, b) for a, b in zip(repaired[1:], clean[1:]))

        def latent_error(fine):
            f_hat = None
            for k, idx in enumerate([wrong[0], *fine]):
                f_hat, _ = vq.add_scale(k, idx, f_hat)
            return (f - f_hat).pow(2).mean().item()

        stale, fixed = latent_error(clean[1:]), latent_error(repaired[1:])
    assert fixed < 0.7 * stale, f"re-quantized finer tokens leave {fixed:.4f}, the clean chunk's finer tokens {stale:.4f}"


def test_self_correction_changes_training_inputs_only():
    policy = make("carp", self_correction=1.0)
    randomize_adaln(policy)
    batch = {"obs": {"state": torch.randn(8, 2, 2)}, "action": smooth_chunks(8, seed=2)}
    policy.eval()
    eval_loss = policy.compute_loss(batch)["loss"].item()
    assert policy.compute_loss(batch)["loss"].item() == pytest.approx(eval_loss)  # no guessing outside training
    policy.train()
    for module in policy.modules():  # dropout off: the only difference left is the self-correction pass
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    assert policy.compute_loss(batch)["loss"].item() != pytest.approx(eval_loss)
    with pytest.raises(ValueError, match="self_correction"):
        make("carp", self_correction=1.5)


def test_tokenizer_is_a_stage_one_model_and_settings_are_checked():
    tok = make("carp_tokenizer")
    assert isinstance(tok, StageOneModel) and not isinstance(tok, Policy) and tok.batch_spec(None, None).keys == ()
    assert {name.split(".")[0] for name, _ in tok.named_parameters()} == {"vq"}  # no observation encoder at all
    with pytest.raises(TypeError, match="stage-one model"):
        build_policy(toy_cfg("carp_tokenizer"), unit_normalizer())
    with pytest.raises(ValueError, match="scales"):
        make("carp_tokenizer", scales=[2, 1])
    with pytest.raises(ValueError, match="power-of-two"):
        make("carp_tokenizer", scales=[1, 3])
    with pytest.raises(ValueError, match="policy.tokenizer.codebok_size"):
        make("carp", tokenizer={"codebok_size": 8})
    with pytest.raises(ValueError, match="policy.sampling"):
        make("carp", sampling="beam")
    with pytest.raises(ValueError, match="policy.horizon=8 differs"):
        make("carp", horizon=8, n_action_steps=4)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        make("carp", tokenizer_checkpoint="nope.pt")


# ---------------------------------------------------------------- vmp-train, both stages
STORE_KEYS = LIFT_LOWDIM_KEYS


def make_store(path: Path, n_episodes: int = 10, length: int = 40) -> Path:
    return make_learnable_lift_store(path, n_episodes, length)


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    """metrics.csv rows as {column: value}, empty cells left out."""
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def compose_cfg(*overrides: str):
    with initialize_config_module(config_module="vmp.configs", version_base=None):
        return compose("train", overrides=["task=lift", "training.batch_size=32", "training.warmup_steps=2",
                                           "training.val_ratio=0.2", "training.log_every=10", "training.lr=2e-3",
                                           *overrides])


def test_vmp_train_tokenizer_then_carp_then_load_without_tokenizer_file(tmp_path):
    store = make_store(tmp_path / "s.zarr")
    small_tok = ["policy.codebook_size=64", "policy.hidden_dim=8", "policy.code_dim=4"]
    tok_ckpt = train(compose_cfg("policy=carp_tokenizer", f"store={store}", f"run_dir={tmp_path / 'tok'}",
                                 "training.steps=60", "training.val_every=60", *small_tok))
    assert read_checkpoint(tok_ckpt)["step"] == 60
    logged = [r for r in read_metrics(tmp_path / "tok") if "recon_mse" in r]
    assert logged and all(0.0 < r["codebook_usage"] <= 1.0 and r["commit"] >= 0.0 for r in logged)
    assert logged[-1]["recon_mse"] < logged[0]["recon_mse"]
    with pytest.raises(ValueError, match="stage-one model .* never acts"):
        load_policy(tok_ckpt)  # what vmp-eval and vmp-deploy call
    refused = subprocess.run([sys.executable, "-m", "vmp.sim.evaluate", f"checkpoint={tok_ckpt}", "n_episodes=1"],
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "stage-one model that never acts" in refused.stderr
    tok, _ = load_model(tok_ckpt)

    carp_overrides = [f"store={store}", f"policy.tokenizer_checkpoint={tok_ckpt}", "policy.d_model=32",
                      "policy.width=32", "policy.depth=2", "policy.n_heads=2",
                      *(o.replace("policy.", "policy.tokenizer.") for o in small_tok)]
    # a setting that disagrees with the tokenizer checkpoint is named
    with pytest.raises(ValueError, match="policy.tokenizer.codebook_size=512 but .* trained with 64"):
        train(compose_cfg("policy=carp", f"run_dir={tmp_path / 'bad'}", "training.steps=1",
                          *carp_overrides, "policy.tokenizer.codebook_size=512"))
    carp_ckpt = train(compose_cfg("policy=carp", f"run_dir={tmp_path / 'carp'}", "training.steps=60",
                                  "training.val_every=60", *carp_overrides))
    payload = read_checkpoint(carp_ckpt)
    for key, value in tok.vq.state_dict().items():  # the frozen tokenizer is stored in CARP, unchanged by training
        torch.testing.assert_close(payload["policy"][f"vq.{key}"], value)
    rows = read_metrics(tmp_path / "carp")
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < 0.9 * losses[0], f"CARP loss did not fall: {losses[0]:.3f} -> {losses[-1]:.3f}"
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows if "accuracy" in r)

    tok_ckpt.unlink()
    policy, cfg = load_policy(carp_ckpt, overrides={"sampling": "top_k"})
    assert cfg.policy.name == "carp" and policy.config.sampling == "top_k"
    for key, value in tok.vq.state_dict().items():
        torch.testing.assert_close(policy.vq.state_dict()[key], value)
    obs = {k: torch.zeros(3, 2, d) for k, d in STORE_KEYS.items()}
    assert policy.predict_action_chunk(obs, generator=torch.Generator().manual_seed(0)).shape == (3, H, 7)

    # one config switch: the same task and store train BESO
    beso = compose_cfg("policy=beso", f"store={store}")
    assert beso.policy.name == "beso" and beso.task == cfg.task


def test_checkpoints_from_before_the_stage_one_tokenizer(tmp_path):
    """A CARP config saved when tokenizer configs still carried an encoder width (d_model) builds; such a tokenizer
    checkpoint itself is refused with what to do."""
    cfg = toy_cfg("carp")
    cfg.policy.tokenizer.d_model = 32
    assert build_model(cfg, unit_normalizer()).name == "carp"
    old_tok = toy_cfg("carp_tokenizer", d_model=32)
    with pytest.raises(ValueError, match="predates the tokenizer as a stage-one model .* retrain it"):
        build_model(old_tok, unit_normalizer())
