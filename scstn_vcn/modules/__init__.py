"""The heads of scstn-vcn: SC-STN (and the plain STN it is compared with), VCN and its variants, the
global branch, the BNNeck, and the Table 3 replacements for VCN. Each module's docstring has its math."""

from scstn_vcn.modules.bnneck import BNNeck
from scstn_vcn.modules.global_branch import GlobalBranch
from scstn_vcn.modules.heads import FCHead, GPHead, MGNStripeHead
from scstn_vcn.modules.resample import affine_resample
from scstn_vcn.modules.scstn import SCSTN
from scstn_vcn.modules.stn import STN
from scstn_vcn.modules.vcn import VCN, SharedVCN, VCNNoHPool, horizontal_pool

__all__ = [
    "BNNeck",
    "FCHead",
    "GPHead",
    "GlobalBranch",
    "MGNStripeHead",
    "SCSTN",
    "STN",
    "SharedVCN",
    "VCN",
    "VCNNoHPool",
    "affine_resample",
    "horizontal_pool",
]
