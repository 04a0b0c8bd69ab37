"""Seeding and the RNG states that a checkpoint carries, so a resumed run draws the same numbers
(sampler order, augmentations, dropout) as one that was never interrupted."""

import random

import numpy as np
import torch


def seed_everything(seed, deterministic=False):
    """Seed python, numpy and torch (all devices). `deterministic` also asks torch for
    deterministic kernels; on the CPU that costs little, on CUDA it may refuse some ops, so it is
    only switched on where requested (warn_only keeps an op without a deterministic version usable)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def get_rng_state():
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        # A run resumed on fewer/more GPUs restores what it can.
        for index in range(min(len(cuda_states), torch.cuda.device_count())):
            torch.cuda.set_rng_state(cuda_states[index], index)
