"""One file per head; `HEADS` maps the config name (`policy.name`) to its class: a `Policy`, or a `StageOneModel`
that a policy is built on (CARP's action tokenizer)."""

from vmp.policies.heads.beso import BESOPolicy
from vmp.policies.heads.carp import CARPPolicy, CARPTokenizer
from vmp.policies.heads.ddpm import DDPMPolicy

HEADS = {cls.name: cls for cls in (BESOPolicy, DDPMPolicy, CARPTokenizer, CARPPolicy)}

__all__ = ["HEADS", "BESOPolicy", "CARPPolicy", "CARPTokenizer", "DDPMPolicy"]
