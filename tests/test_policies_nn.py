"""Shared blocks for the next heads: FiLM, the DiT denoiser and the level-based attention mask."""

import pytest
import torch
import torch.nn.functional as F

from vmp.policies.heads.carp import NextScaleTransformer
from vmp.policies.nn import DiTDenoiser, FiLM, block_mask

W, MAX_LEN, C = 32, 10, 6


def randomize(module, key: str, std: float = 0.3) -> None:
    """Zero-initialised modulations make a block the identity; random ones make its inputs matter."""
    g = torch.Generator().manual_seed(1)
    for name, p in module.named_parameters():
        if key in name:
            p.data.copy_(torch.randn(p.shape, generator=g) * std)


# ---------------------------------------------------------------- FiLM
@pytest.mark.parametrize("shape", [(4, 8), (4, 5, 8)])
def test_film_starts_as_identity_and_modulates_once_trained(shape):
    torch.manual_seed(0)
    film, x, c = FiLM(C, 8), torch.randn(shape), torch.randn(4, C)
    assert torch.equal(film(x, c), x)
    randomize(film, "proj")
    out = film(x, c)
    assert out.shape == x.shape and not torch.allclose(out, x, atol=1e-3)
    scale, shift = film.proj(c).chunk(2, dim=-1)
    view = (4,) + (1,) * (len(shape) - 2) + (8,)
    assert torch.allclose(out, x * (1 + scale.reshape(view)) + shift.reshape(view))
    assert not torch.allclose(out[1], film(x, c.flip(0))[1], atol=1e-3), "the condition of a row must modulate it"


def test_film_on_channels_first_features_equals_channels_last():
    torch.manual_seed(0)
    last, first = FiLM(C, 8), FiLM(C, 8, channel_dim=1)
    randomize(last, "proj")
    first.load_state_dict(last.state_dict())
    x_BFL, c = torch.randn(4, 8, 5), torch.randn(4, C)
    assert torch.allclose(first(x_BFL, c), last(x_BFL.transpose(1, 2), c).transpose(1, 2))
    assert not torch.equal(FiLM(C, 8, zero_init=False)(x_BFL.transpose(1, 2), c), x_BFL.transpose(1, 2))
    with pytest.raises(ValueError, match="features"):
        last(x_BFL, c)


# ---------------------------------------------------------------- DiT
def make_dit(cond_dim=C):
    torch.manual_seed(0)
    return DiTDenoiser(W, depth=2, n_heads=4, mlp_ratio=2.0, dropout=0.0, max_len=MAX_LEN, cond_dim=cond_dim).eval()


def test_dit_blocks_start_as_identity_then_noise_and_condition_modulate():
    dit = make_dit()
    x, cond = torch.randn(3, 7, W), torch.randn(3, C)
    out = dit(x, torch.tensor([0, 5, 9]), cond)
    assert out.shape == (3, 7, W)
    assert torch.allclose(out, F.layer_norm(x + dit.pos[:, :7], (W,)), atol=1e-5), "adaLN-Zero: identity blocks at init"
    assert torch.allclose(dit(x, torch.tensor([50, 1, 2]), -cond), out, atol=1e-6)
    randomize(dit, "ada")
    out = dit(x, torch.tensor([0, 5, 9]), cond)
    assert not torch.allclose(dit(x, torch.tensor([50, 1, 2]), cond), out, atol=1e-4), "the noise level has no effect"
    assert not torch.allclose(dit(x, torch.tensor([0, 5, 9]), -cond), out, atol=1e-4), "the condition has no effect"


def test_dit_honours_the_attention_mask():
    """PAD-style levels: context 0, image latents 1, action 2. The image tokens never see the action token."""
    dit = make_dit(cond_dim=None)
    randomize(dit, "ada")
    levels = torch.tensor([0, 0, 1, 1, 1, 2])
    mask = block_mask(levels)
    x, t = torch.randn(2, 6, W), torch.tensor([3, 7])
    bump = torch.randn(W)  # a constant bump would vanish in the layer norms
    base = dit(x, t, mask=mask)
    for pos in range(6):
        bumped = x.clone()
        bumped[:, pos] += bump
        out = dit(bumped, t, mask=mask)
        for i in range(6):
            changed = not torch.allclose(out[:, i], base[:, i], atol=1e-5)
            assert changed == bool(mask[i, pos]), f"token {pos} {'leaked into' if changed else 'did not reach'} position {i}"
    per_row = torch.stack([torch.ones(6, 6, dtype=torch.bool), mask])  # row 0 attends everywhere, row 1 as above
    bumped = x.clone()
    bumped[:, 5] += bump
    out, base = dit(bumped, t, mask=per_row), dit(x, t, mask=per_row)
    assert not torch.allclose(out[0, 2], base[0, 2], atol=1e-5) and torch.allclose(out[1, 2], base[1, 2], atol=1e-5)


def test_dit_rejects_bad_inputs():
    dit = make_dit()
    with pytest.raises(ValueError, match="<= 10"):
        dit(torch.randn(1, MAX_LEN + 1, W), torch.zeros(1), torch.zeros(1, C))
    with pytest.raises(ValueError, match="cond_dim=6"):
        dit(torch.randn(1, 4, W), torch.zeros(1))
    with pytest.raises(ValueError, match="mask"):
        dit(torch.randn(1, 4, W), torch.zeros(1), torch.zeros(1, C), mask=torch.ones(5, 5, dtype=torch.bool))


# ---------------------------------------------------------------- block_mask
def test_block_mask_rebuilds_carps_mask():
    n_cond, scales = 2, [1, 2, 3]
    gpt = NextScaleTransformer(n_cond_tokens=n_cond, cond_dim=8, in_dim=4, tokens_per_scale=scales, groups=1, vocab=16,
                               width=16, depth=1, n_heads=2, mlp_ratio=2.0, dropout=0.0)
    levels = torch.tensor([0] * n_cond + [k + 1 for k, n in enumerate(scales) for _ in range(n)])
    assert torch.equal(block_mask(levels), gpt.mask)


def test_block_mask_keeps_image_tokens_off_the_action():
    expected = torch.tensor([[1, 0, 0, 0],   # context sees context
                             [1, 1, 1, 0],   # image latents see context and images, not the action
                             [1, 1, 1, 0],
                             [1, 1, 1, 1]],  # the action sees everything
                            dtype=torch.bool)
    assert torch.equal(block_mask(torch.tensor([0, 1, 1, 2])), expected)
    with pytest.raises(ValueError, match="levels"):
        block_mask(torch.zeros(2, 2))
