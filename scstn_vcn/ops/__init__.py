"""The three fused ops of scstn-vcn and the choice of backend that runs them.

    channel_pool(x)           -> (cmean, gpool)   channel mean (SC-STN input) + GAP+GMP (global branch)
    affine_hpool(x, theta)    -> F                affine grid-sample + horizontal avg+max pooling
    affine_hpool(x, theta, rotation_free=True)    the same for theta without rotation/shear, separable
    vertical_proj(F, delta)   -> f                VCN per-channel vertical projection

Each takes backend="eager" | "triton" | "native" (default: the process-wide setting, which starts at
"eager"; see set_backend / use_backend); available_backends(device) lists what runs on a device.
The math of each op is in its module's docstring.
"""

from scstn_vcn.ops import _wiring  # noqa: F401  (defines the Triton ops)
from scstn_vcn.ops._backend import (
    BACKENDS,
    BackendUnavailableError,
    available_backends,
    backend_status,
    get_backend,
    load_native,
    set_backend,
    use_backend,
)
from scstn_vcn.ops.affine_hpool import affine_hpool, affine_hpool_eager
from scstn_vcn.ops.affine_hpool_separable import affine_hpool_separable, affine_hpool_separable_eager
from scstn_vcn.ops.channel_pool import channel_pool, channel_pool_eager
from scstn_vcn.ops.vertical_proj import vertical_proj, vertical_proj_eager

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "affine_hpool",
    "affine_hpool_eager",
    "affine_hpool_separable",
    "affine_hpool_separable_eager",
    "available_backends",
    "backend_status",
    "channel_pool",
    "channel_pool_eager",
    "get_backend",
    "load_native",
    "set_backend",
    "use_backend",
    "vertical_proj",
    "vertical_proj_eager",
]
