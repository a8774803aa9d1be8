"""One file per head; `HEADS` maps the config name (`policy.name`) to its class: a `Policy`, or a `StageOneModel`
that a policy is built on (CARP's action tokenizer, PAD's image autoencoder)."""

from vmp.policies.heads.beso import BESOPolicy
from vmp.policies.heads.carp import CARPPolicy, CARPTokenizer
from vmp.policies.heads.ddpm import DDPMPolicy
from vmp.policies.heads.divla import DiVLAPolicy
from vmp.policies.heads.navdp import NavDPPolicy
from vmp.policies.heads.pad import PADVAE, PADPolicy

HEADS = {cls.name: cls for cls in (BESOPolicy, DDPMPolicy, CARPTokenizer, CARPPolicy, PADVAE, PADPolicy, NavDPPolicy, DiVLAPolicy)}

__all__ = ["HEADS", "BESOPolicy", "CARPPolicy", "CARPTokenizer", "DDPMPolicy", "DiVLAPolicy", "NavDPPolicy", "PADVAE", "PADPolicy"]
