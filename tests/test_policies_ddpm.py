"""The shared DDPM/DDIM helper (masked loss, sampling, a toy distribution learned end to end) and the DDPM head on it."""

from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from test_policies_beso import fit, make_policy, toy_cfg, two_mode_batch

from vmp.policies.nn import MLP, DiscreteTimeDiffusion

T = 20


def time_mlp(hidden: int) -> tuple[MLP, Callable]:
    """A tiny denoiser: the sample and a one-hot of the timestep in, the prediction out."""
    net = MLP(1 + T, hidden, 1, n_layers=3)
    return net, lambda x, t: net(torch.cat([x, F.one_hot(t, T).float()], dim=-1))


# ---------------------------------------------------------------- the helper: loss
def test_masked_out_sample_adds_exactly_zero_loss_and_gradient():
    diffusion = DiscreteTimeDiffusion(T, "squaredcos_cap_v2")
    x0 = torch.randn(4, 5, 2)
    gain = torch.ones(4, 1, 1, requires_grad=True)  # one parameter per sample: its gradient says who contributed
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[0] = False
    mask[1, 3:] = False  # padding at the end of sample 1
    loss = diffusion.loss(lambda x, t: gain * x, x0, mask, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert gain.grad[0].item() == 0.0 and (gain.grad[1:] != 0).all()
    x0[0] = 1e3  # whatever the masked sample holds
    again = diffusion.loss(lambda x, t: gain * x, x0, mask, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, loss)


def test_per_sample_mask_equals_its_per_step_expansion():
    diffusion = DiscreteTimeDiffusion(T, "squaredcos_cap_v2")
    x0, keep = torch.randn(4, 5, 2), torch.tensor([True, False, True, True])
    fn = lambda x, t: 0.5 * x  # noqa: E731
    per_sample = diffusion.loss(fn, x0, keep, generator=torch.Generator().manual_seed(0))
    per_step = diffusion.loss(fn, x0, keep[:, None].expand(4, 5), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(per_sample, per_step)
    assert not torch.allclose(per_sample, diffusion.loss(fn, x0, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="prefix"):
        diffusion.loss(fn, x0, keep[:3])


def test_training_targets_follow_the_prediction_type():
    x0 = torch.randn(64, 3)
    for prediction_type in ("epsilon", "sample", "v_prediction"):
        diffusion = DiscreteTimeDiffusion(T, "squaredcos_cap_v2", prediction_type=prediction_type)
        noisy, t, target = diffusion.training_target(x0, torch.Generator().manual_seed(0))
        a = diffusion.scheduler.alphas_cumprod[t][:, None]
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
        assert torch.allclose(noisy, a.sqrt() * x0 + (1 - a).sqrt() * noise, atol=1e-6)
        expected = {"epsilon": noise, "sample": x0, "v_prediction": a.sqrt() * noise - (1 - a).sqrt() * x0}
        assert torch.allclose(target, expected[prediction_type], atol=1e-6), prediction_type
    with pytest.raises(ValueError, match="prediction_type"):
        DiscreteTimeDiffusion(T, "squaredcos_cap_v2", prediction_type="x0")


# ---------------------------------------------------------------- the helper: sampling
@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_sampling_from_a_given_noise_is_deterministic(sampler):
    diffusion = DiscreteTimeDiffusion(T, "squaredcos_cap_v2")
    torch.manual_seed(0)
    _, fn = time_mlp(16)
    noise = torch.randn(8, 1, generator=torch.Generator().manual_seed(0))
    kept = noise.clone()
    with torch.no_grad():
        first, second = (diffusion.sample(fn, (8, 1), 10, sampler, generator=torch.Generator().manual_seed(1), noise=noise)
                         for _ in range(2))
        drawn = diffusion.sample(fn, (8, 1), 10, sampler, generator=torch.Generator().manual_seed(0))
        other = diffusion.sample(fn, (8, 1), 10, sampler, generator=torch.Generator().manual_seed(2), noise=noise)
    assert torch.equal(first, second) and torch.equal(noise, kept)
    assert not torch.allclose(first, noise, atol=1e-3)
    if sampler == "ddim":  # deterministic given the start; the start drawn from a generator is that generator's randn
        assert torch.equal(first, other) and torch.equal(first, drawn)
    else:  # DDPM draws fresh noise at every step from the generator
        assert not torch.allclose(first, other, atol=1e-3)


def test_sampling_arguments_are_checked():
    diffusion = DiscreteTimeDiffusion(T, "squaredcos_cap_v2")
    fn = lambda x, t: x  # noqa: E731
    with pytest.raises(ValueError, match="sampler"):
        diffusion.sample(fn, (2, 1), 10, "euler")
    with pytest.raises(ValueError, match="n_steps"):
        diffusion.sample(fn, (2, 1), T + 1)
    with pytest.raises(ValueError, match="noise"):
        diffusion.sample(fn, (2, 1), 10, noise=torch.zeros(3, 1))


def test_helper_learns_a_gaussian():
    """N(0.3, 0.2^2), learned by a tiny MLP: samples match the data's moments, and the samples the exact epsilon
    (known in closed form for a Gaussian) gives from the same noise. Few-step samplers shrink the spread a little:
    the last step returns the posterior mean at the smallest noise level."""
    mu, sd = 0.3, 0.2
    diffusion = DiscreteTimeDiffusion(T, "squaredcos_cap_v2")
    torch.manual_seed(0)
    net, fn = time_mlp(64)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 500)
    for _ in range(500):
        loss = diffusion.loss(fn, mu + sd * torch.randn(256, 1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    alpha_bar = diffusion.scheduler.alphas_cumprod

    def exact(x, t):
        a = alpha_bar[t][:, None]
        return (1 - a).sqrt() * (x - a.sqrt() * mu) / (a * sd**2 + 1 - a)

    noise = torch.randn(4000, 1, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for sampler, n_steps in (("ddpm", T), ("ddim", 10)):
            x, ref = (diffusion.sample(f, (4000, 1), n_steps, sampler, generator=torch.Generator().manual_seed(1), noise=noise)
                      for f in (fn, exact))
            assert abs(x.mean().item() - mu) < 0.03, sampler
            assert abs(x.std().item() - sd) < 0.05, sampler
            assert (x - ref).abs().mean() < 0.05, sampler


# ---------------------------------------------------------------- the DDPM head
def tiny_ddpm(**policy):
    return make_policy(toy_cfg("ddpm", d_model=32, n_layers=1, n_steps=10, num_train_timesteps=10, **policy))


def test_ddpm_head_loss_and_sampling_match_the_scheduler_code_they_replace():
    policy = tiny_ddpm()
    scheduler = DDPMScheduler(num_train_timesteps=10, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon", clip_sample=True)
    batch = two_mode_batch(16)
    batch["action_is_pad"][::2, -3:] = True
    torch.manual_seed(3)
    loss = policy.compute_loss(batch)["loss"]
    torch.manual_seed(3)
    actions, cond = policy.training_inputs(batch)
    noise = torch.randn_like(actions)
    t = torch.randint(0, 10, (16,))
    err = (policy.denoiser(scheduler.add_noise(actions, noise, t), t, cond) - noise).pow(2).mean(-1)
    keep = (~batch["action_is_pad"]).float()
    assert torch.allclose(loss, (err * keep).sum() / keep.sum(), rtol=1e-6)

    policy.eval()
    obs = {"state": torch.randn(3, 1, 2)}
    for sampler, n_steps in (("ddpm", 10), ("ddim", 4)):
        policy.config.sampler, policy.config.n_steps = sampler, n_steps
        chunk = policy.predict_action_chunk(obs, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            cond = policy.condition(obs)
            sampling = (DDPMScheduler if sampler == "ddpm" else DDIMScheduler).from_config(scheduler.config)
            sampling.set_timesteps(n_steps)
            g = torch.Generator().manual_seed(0)
            x = torch.randn(3, 8, 2, generator=g)
            for step in sampling.timesteps:
                x = sampling.step(policy.denoiser(x, step.expand(3), cond), step, x, generator=g).prev_sample
        assert torch.equal(chunk, policy.normalizer.unnormalize("action", x.clamp(-1.0, 1.0))), sampler


def test_ddpm_head_learns_and_samples_reproducibly():
    policy = tiny_ddpm()
    losses = fit(policy, 200)
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < 0.5 * first and last < 0.4, (first, last)
    policy.eval()
    obs = {"state": torch.full((4, 1, 2), 0.5)}
    for sampler in ("ddpm", "ddim"):
        policy.config.sampler = sampler
        a, b, c = (policy.predict_action_chunk(obs, generator=torch.Generator().manual_seed(s)) for s in (0, 0, 1))
        assert a.shape == (4, 8, 2) and torch.equal(a, b) and not torch.allclose(a, c, atol=1e-4), sampler


def test_ddpm_head_state_dict_holds_no_scheduler():
    keys = tiny_ddpm().state_dict().keys()
    assert {k.split(".")[0] for k in keys} == {"encoder", "normalizer", "denoiser"}


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_ddpm_head_keeps_a_real_time_chunking_prefix(sampler):
    """The prefix is inpainted at every denoising step: kept exactly where its weight is 1, pulled towards where it is
    between 0 and 1, free after it (the deployment engine passes it to every head whose capabilities say prefix)."""
    policy = make_policy(toy_cfg("ddpm", n_steps=10, num_train_timesteps=10, sampler=sampler)).eval()
    assert policy.capabilities.prefix
    prefix = torch.tensor([[[0.3, -0.2]] * 3])
    weights = torch.tensor([1.0, 1.0, 0.5])
    out = policy.predict_action_chunk({"state": torch.zeros(1, 1, 2)}, prefix=prefix, prefix_weights=weights,
                                      generator=torch.Generator().manual_seed(0))
    free = policy.predict_action_chunk({"state": torch.zeros(1, 1, 2)}, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out[0, :2], prefix[0, :2])
    assert (out[0, 2] - prefix[0, 2]).abs().sum() < (free[0, 2] - prefix[0, 2]).abs().sum()
    with pytest.raises(ValueError, match="prefix_weights"):
        policy.predict_action_chunk({"state": torch.zeros(1, 1, 2)}, prefix=prefix)
