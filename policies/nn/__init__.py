"""Reusable network blocks shared by the heads."""

from vmp.policies.nn.blocks import MLP, NoiseEmbedding, TransformerDenoiser
from vmp.policies.nn.vision import CompactCNN, ResNet18GN, SpatialSoftmax, make_backbone

__all__ = ["MLP", "NoiseEmbedding", "TransformerDenoiser", "CompactCNN", "ResNet18GN", "SpatialSoftmax", "make_backbone"]
