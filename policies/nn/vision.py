"""Image backbones written in the project (torchvision does not import beside the CPU torch build here).

`ResNet18GN` is the standard ResNet-18 layout with GroupNorm in place of BatchNorm (diffusion_policy's choice: BatchNorm
interacts badly with EMA); `CompactCNN` is a 4-layer CNN sized for CPU training. Both output a feature map [B, C, h, w].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _gn(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(max(1, channels // 16), channels)


class _BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.norm1 = _gn(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.norm2 = _gn(out_ch)
        self.shortcut = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), _gn(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(y)) + self.shortcut(x))


class ResNet18GN(nn.Module):
    def __init__(self, in_channels: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False), _gn(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        widths, layers, ch = (64, 128, 256, 512), [], 64
        for i, w in enumerate(widths):
            layers += [_BasicBlock(ch, w, 1 if i == 0 else 2), _BasicBlock(w, w, 1)]
            ch = w
        self.layers = nn.Sequential(*layers)
        self.out_channels = 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.stem(x))


class CompactCNN(nn.Module):
    def __init__(self, in_channels: int = 3, channels: int = 32, n_layers: int = 4):
        super().__init__()
        layers, ch = [], in_channels
        for i in range(n_layers):
            layers += [nn.Conv2d(ch, channels, 3, 2 if i < 2 else 1, 1), _gn(channels), nn.ReLU()]
            ch = channels
        self.net = nn.Sequential(*layers)
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SpatialSoftmax(nn.Module):
    """Feature map [B, C, h, w] -> expected image coordinates of `n_keypoints` learned heatmaps, flattened [B, 2K]."""

    def __init__(self, in_channels: int, n_keypoints: int = 32):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, n_keypoints, 1)
        self.out_dim = 2 * n_keypoints

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        heat = self.proj(feat)
        b, k, h, w = heat.shape
        attn = torch.softmax(heat.flatten(2), dim=-1)  # [B, K, h*w]
        ys = torch.linspace(-1, 1, h, device=feat.device)
        xs = torch.linspace(-1, 1, w, device=feat.device)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        coords = torch.stack([grid_x.flatten(), grid_y.flatten()], dim=-1)  # [h*w, 2]
        return (attn @ coords).reshape(b, 2 * k)


def make_backbone(name: str, in_channels: int, **kwargs) -> nn.Module:
    backbones = {"resnet18_gn": ResNet18GN, "compact_cnn": CompactCNN}
    if name not in backbones:
        raise ValueError(f"unknown image backbone {name!r}; choose one of {sorted(backbones)}")
    return backbones[name](in_channels=in_channels, **kwargs)
