"""One file per head; `HEADS` maps the config name (`policy.name`) to its class."""

from vmp.policies.heads.beso import BESOPolicy
from vmp.policies.heads.carp import CARPPolicy, CARPTokenizerPolicy
from vmp.policies.heads.ddpm import DDPMPolicy

HEADS = {cls.name: cls for cls in (BESOPolicy, DDPMPolicy, CARPTokenizerPolicy, CARPPolicy)}

__all__ = ["HEADS", "BESOPolicy", "CARPPolicy", "CARPTokenizerPolicy", "DDPMPolicy"]
