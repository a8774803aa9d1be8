"""Reusable network blocks shared by the heads."""

from vmp.policies.nn.blocks import MLP, NoiseEmbedding, TransformerDenoiser
from vmp.policies.nn.diffusion import DiscreteTimeDiffusion
from vmp.policies.nn.dit import DiTDenoiser
from vmp.policies.nn.film import FiLM
from vmp.policies.nn.transformer import block_mask
from vmp.policies.nn.vision import CompactCNN, ResNet18GN, SpatialSoftmax, make_backbone

__all__ = [
    "MLP", "NoiseEmbedding", "TransformerDenoiser", "DiscreteTimeDiffusion", "DiTDenoiser", "FiLM", "block_mask",
    "CompactCNN", "ResNet18GN", "SpatialSoftmax", "make_backbone",
]
