"""Training and evaluation engine: the loop (trainer), Adam + warm-up/step schedule (optim),
atomic checkpoints read as data only (checkpoint), the shareable .safetensors model file
(model_file), torchrun/DDP (distributed), feature extraction (features),
evaluation and its table (evaluator), CSV/TensorBoard logs (logging), seeding (seed), the
device/backend choice (runtime), models/losses/data from a config (builders) and the errors that
mean bad input (errors). The command line that drives it lives in scstn_vcn/commands/."""

from scstn_vcn.engine.checkpoint import CheckpointError, atomic_torch_save, load_checkpoint
from scstn_vcn.engine.errors import MissingDependencyError, UsageError
from scstn_vcn.engine.features import extract_features
from scstn_vcn.engine.optim import build_optimizer, build_scheduler, lr_factor
from scstn_vcn.engine.runtime import choose_backend, resolve_device
from scstn_vcn.engine.seed import seed_everything

__all__ = [
    "CheckpointError",
    "MissingDependencyError",
    "UsageError",
    "atomic_torch_save",
    "build_optimizer",
    "build_scheduler",
    "choose_backend",
    "extract_features",
    "load_checkpoint",
    "lr_factor",
    "resolve_device",
    "seed_everything",
]
