"""BESO and DDPM heads on a toy two-mode data set, EDM maths, guidance and the prefix blend."""

import math

import pytest
import torch
from omegaconf import OmegaConf

from vmp.data import Normalizer
from vmp.policies.build import build_policy

H, A = 8, 2


def toy_cfg(head: str, goal: bool = False, **policy):
    fields = {"name": head, "n_obs_steps": 1, "horizon": H, "n_action_steps": 4, "d_model": 64, "n_layers": 2, "n_heads": 4, "dropout": 0.0}
    fields.update(policy)
    obs = {"state": {"shape": [2], "type": "low_dim"}}
    if goal:
        obs["target"] = {"shape": [2], "type": "low_dim"}
    return OmegaConf.create({
        "task": {"name": "toy", "goal_keys": ["target"] if goal else [], "shape_meta": {"obs": obs, "action": {"shape": [A]}}},
        "policy": fields,
        "encoder": {"backbone": "compact_cnn", "backbone_kwargs": {}, "n_keypoints": 8, "crop_ratio": 1.0, "lowdim_hidden": 64},
    })


def make_policy(cfg):
    torch.manual_seed(0)
    normalizer = Normalizer.empty({"action": (A,), "state": (2,), **({"target": (2,)} if cfg.task.goal_keys else {})},
                                  {"action": "minmax", "state": "meanstd", **({"target": "meanstd"} if cfg.task.goal_keys else {})})
    unit = dict(min=[-1.0, -1.0], max=[1.0, 1.0], mean=[0.0, 0.0], std=[1.0, 1.0])
    for key in normalizer.keys:
        normalizer.set_stats(key, **unit)
    return build_policy(cfg, normalizer)


def two_mode_batch(n, goal=False):
    """Every chunk is a constant +0.8 or -0.8 (a fair coin): the mean, 0, is never a demonstrated action."""
    sign = torch.where(torch.rand(n) < 0.5, 1.0, -1.0)
    batch = {"obs": {"state": torch.full((n, 1, 2), 0.5)}, "action": 0.8 * sign[:, None, None].expand(n, H, A).clone(),
             "action_is_pad": torch.zeros(n, H, dtype=torch.bool)}
    if goal:
        batch["obs"]["target"] = torch.zeros(n, 1, 2)
        batch["goal"] = {"target": sign[:, None].expand(n, 2).clone()}
    return batch


def fit(policy, steps, goal=False, lr=2e-3):
    torch.manual_seed(0)
    opt = torch.optim.AdamW(policy.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = policy.compute_loss(two_mode_batch(128, goal))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.fixture(scope="module")
def two_mode_beso():
    """BESO fit to the two-mode toy data once; the sampler is an inference setting, so each test sets its own."""
    policy = make_policy(toy_cfg("beso"))
    losses = fit(policy, 500)
    assert sum(losses[-20:]) / 20 < 0.5 * sum(losses[:20]) / 20, "loss did not fall"
    return policy.eval()


@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral", "dpmpp_2m"])
def test_beso_covers_both_modes(sampler, two_mode_beso):
    policy = two_mode_beso
    policy.config.sampler = sampler
    obs = {"state": torch.full((400, 1, 2), 0.5)}
    chunks = policy.predict_action_chunk(obs, generator=torch.Generator().manual_seed(0))
    assert chunks.shape == (400, H, A)
    means = chunks.mean(dim=(1, 2))
    near_plus, near_minus = (means - 0.8).abs() < 0.3, (means + 0.8).abs() < 0.3
    assert near_plus.float().mean() > 0.15 and near_minus.float().mean() > 0.15, "one mode is missing"
    # Training noise from the truncated distribution (as the reference draws it) leaves about a quarter of these
    # 3-step samples on the way between the modes at this toy budget (clamping to sigma_max gave ~13%); what must
    # not happen is the regressor's answer, the mean 0 that no demonstration contains.
    assert (near_plus | near_minus).float().mean() > 0.7, "samples fall between the modes"
    assert (means.abs() < 0.2).float().mean() < 0.15, "samples collapse onto the mean of the modes (mode averaging)"


@pytest.mark.parametrize("distribution", ["loglogistic", "lognormal"])
def test_training_sigmas_follow_the_truncated_distribution(distribution):
    """Inverse-CDF draws inside [sigma_min, sigma_max]: no pile-up at sigma_max (clamping put a fifth of the
    log-logistic's samples there), and the mass below sigma_data is the truncated CDF's."""
    policy = make_policy(toy_cfg("beso", noise_distribution=distribution))
    cfg = policy.config
    torch.manual_seed(0)
    sigma = policy.sample_training_sigmas(200_000, torch.device("cpu"))
    assert cfg.sigma_min <= sigma.min() and sigma.max() <= cfg.sigma_max
    assert (sigma >= 0.999 * cfg.sigma_max).float().mean() < 0.005
    if distribution == "loglogistic":
        loc = math.log(cfg.sigma_data)
        cdf = lambda s: 1 / (1 + math.exp(-(math.log(s) - loc) / cfg.noise_scale))  # noqa: E731
    else:
        loc = -1.2
        cdf = lambda s: 0.5 * (1 + math.erf((math.log(s) - loc) / (cfg.noise_scale * math.sqrt(2))))  # noqa: E731
    expected = (cdf(cfg.sigma_data) - cdf(cfg.sigma_min)) / (cdf(cfg.sigma_max) - cdf(cfg.sigma_min))
    assert (sigma < cfg.sigma_data).float().mean().item() == pytest.approx(expected, abs=0.005)


def test_ddpm_covers_both_modes():
    policy = make_policy(toy_cfg("ddpm", n_steps=20, num_train_timesteps=20))
    fit(policy, 400)
    policy.eval()
    chunks = policy.predict_action_chunk({"state": torch.full((200, 1, 2), 0.5)}, generator=torch.Generator().manual_seed(0))
    means = chunks.mean(dim=(1, 2))
    near_plus, near_minus = (means - 0.8).abs() < 0.3, (means + 0.8).abs() < 0.3
    assert near_plus.float().mean() > 0.15 and near_minus.float().mean() > 0.15, "one mode is missing"
    assert (near_plus | near_minus).float().mean() > 0.9


def test_beso_goal_conditioning_selects_the_mode():
    policy = make_policy(toy_cfg("beso", goal=True, goal_dropout=0.1))
    fit(policy, 400, goal=True)
    policy.eval()
    n = 100
    obs = {"state": torch.full((n, 1, 2), 0.5), "target": torch.zeros(n, 1, 2)}
    for sign in (1.0, -1.0):
        goal = {"target": torch.full((n, 2), sign)}
        for w in (1.0, 2.0):
            policy.config.guidance_weight = w
            chunks = policy.predict_action_chunk(obs, goal=goal, generator=torch.Generator().manual_seed(1))
            agree = (torch.sign(chunks.mean(dim=(1, 2))) == sign).float().mean()
            assert agree > 0.95, f"goal {sign} with guidance {w}: only {agree:.2f} of chunks go to it"


def test_edm_scalings_match_karras():
    policy = make_policy(toy_cfg("beso"))
    sigma = torch.tensor([0.01, 0.5, 1.0])
    c_skip, c_out, c_in, c_noise = policy.scalings(sigma)
    sd = 0.5
    for i, s in enumerate(sigma.tolist()):
        assert c_skip[i].item() == pytest.approx(sd**2 / (s**2 + sd**2))
        assert c_out[i].item() == pytest.approx(s * sd / math.sqrt(s**2 + sd**2))
        assert c_in[i].item() == pytest.approx(1 / math.sqrt(s**2 + sd**2))
        assert c_noise[i].item() == pytest.approx(math.log(s) / 4)
    sigmas = policy.sample_training_sigmas(10_000, torch.device("cpu"))
    assert sigmas.min() >= 0.001 and sigmas.max() <= 1.0
    # the truncated log-logistic's median: F(median) halfway between F(ln sigma_min) and F(ln sigma_max) = 0.8
    f = lambda x: 1 / (1 + math.exp(-(x - math.log(0.5)) / 0.5))  # noqa: E731
    u = (f(math.log(0.001)) + f(0.0)) / 2
    assert sigmas.log().median().item() == pytest.approx(math.log(0.5) + 0.5 * math.log(u / (1 - u)), abs=0.05)


def test_prefix_is_kept_exactly_where_weight_is_one():
    policy = make_policy(toy_cfg("beso"))
    policy.eval()
    prefix = torch.tensor([[[0.3, -0.2]] * 3])
    weights = torch.tensor([1.0, 1.0, 0.5])
    out = policy.predict_action_chunk({"state": torch.zeros(1, 1, 2)}, prefix=prefix, prefix_weights=weights,
                                      generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out[0, :2], prefix[0, :2], atol=1e-5)
    assert not torch.allclose(out[0, 2], prefix[0, 2], atol=1e-3)


def test_bad_policy_settings_are_named():
    with pytest.raises(ValueError, match="sampler"):
        make_policy(toy_cfg("beso", sampler="heun3"))
    with pytest.raises(ValueError, match="not a setting"):
        make_policy(toy_cfg("beso", n_stepz=3))
    policy = make_policy(toy_cfg("beso"))
    with pytest.raises(ValueError, match="n_obs_steps"):
        policy.predict_action_chunk({"state": torch.zeros(1, 3, 2)})


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m"])
def test_graph_safe_updates_equal_diffusers_schedulers(sampler):
    """BESO's sampling loop runs over precomputed float sigmas (capturable in a CUDA graph); its updates are the ones
    diffusers' EDM schedulers make from the same noise."""
    policy = make_policy(toy_cfg("beso", sampler=sampler, n_steps=5)).eval()
    obs = {"state": torch.randn(4, 1, 2, generator=torch.Generator().manual_seed(1))}
    noise = torch.randn(policy.sampling_noise_shape(4), generator=torch.Generator().manual_seed(0))
    ours = policy.predict_action_chunk(obs, noise=noise)
    with torch.no_grad():
        cond = policy.condition(obs)
        scheduler = policy._scheduler()
        scheduler.set_timesteps(5)
        x = noise[0] * scheduler.sigmas[0]
        for t in scheduler.timesteps:
            f = policy.denoiser(scheduler.scale_model_input(x, t), t.expand(4), cond)
            x = scheduler.step(f, t, x).prev_sample
    reference = policy.normalizer.unnormalize("action", x.clamp(-1.0, 1.0))
    assert not torch.allclose(ours, torch.zeros_like(ours))
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="sampling_noise_shape"):
        policy.predict_action_chunk(obs, noise=noise[:, :2])
