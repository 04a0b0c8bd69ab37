"""Seeding and the RNG states that a checkpoint carries, so a resumed run draws the same numbers
(sampler order, augmentations, dropout) as one that was never interrupted.

The states are stored as plain data that `torch.load(..., weights_only=True)` reads without an
allow-list: tensors, ints, floats, strings, None, dicts and lists. Python's Mersenne Twister state
(624 words + position) and numpy's legacy MT19937 key (624 uint32 words) become int64 tensors
(every word is < 2**32, so the conversion is exact); torch's CPU and CUDA states already are
uint8 tensors.
"""

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


def plain_rng_state(python_state, numpy_state, torch_state, cuda_states=None):
    """The states as `random.getstate()`, `np.random.get_state()` (legacy tuple), `torch.get_rng_state()`
    and `torch.cuda.get_rng_state_all()` return them -> the plain-data dict a checkpoint stores."""
    version, words, gauss_next = python_state
    bit_generator, key, pos, has_gauss, cached_gaussian = numpy_state
    state = {
        "python": {
            "version": int(version),
            "words": torch.tensor([int(w) for w in words], dtype=torch.int64),
            "gauss_next": None if gauss_next is None else float(gauss_next),
        },
        "numpy": {
            "bit_generator": str(bit_generator),
            "key": torch.from_numpy(np.asarray(key, dtype=np.uint32).astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.as_tensor(torch_state, dtype=torch.uint8).clone(),
    }
    if cuda_states is not None:
        state["cuda"] = [torch.as_tensor(s, dtype=torch.uint8).clone() for s in cuda_states]
    return state


def get_rng_state():
    return plain_rng_state(
        random.getstate(),
        np.random.get_state(),
        torch.get_rng_state(),
        torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    )


def set_rng_state(state):
    """Restore a state of get_rng_state(); a malformed one raises ValueError before anything is changed."""
    try:
        python, numpy_state = state["python"], state["numpy"]
        gauss_next = None if python["gauss_next"] is None else float(python["gauss_next"])
        python_state = (int(python["version"]), tuple(int(w) for w in python["words"].tolist()), gauss_next)
        key = numpy_state["key"]
        if not isinstance(key, torch.Tensor) or key.dtype != torch.int64 or tuple(key.shape) != (624,):
            raise ValueError("numpy key: expected a tensor of 624 int64 words")
        numpy_tuple = (
            str(numpy_state["bit_generator"]),
            key.numpy().astype(np.uint32),
            int(numpy_state["pos"]),
            int(numpy_state["has_gauss"]),
            float(numpy_state["cached_gaussian"]),
        )
        torch_state = state["torch"]
        if not isinstance(torch_state, torch.Tensor) or torch_state.dtype != torch.uint8:
            raise ValueError("torch: expected a uint8 tensor")
        # Each state is tried on a scratch generator first, so a bad one changes nothing.
        random.Random().setstate(python_state)
        np.random.RandomState().set_state(numpy_tuple)
        torch.Generator().set_state(torch_state)
    except (KeyError, TypeError, AttributeError, ValueError, RuntimeError) as error:
        raise ValueError(f"not an RNG state of this version of scstn-vcn ({type(error).__name__}: {error})") from None
    random.setstate(python_state)
    np.random.set_state(numpy_tuple)
    torch.set_rng_state(torch_state)
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        # A run resumed on fewer/more GPUs restores what it can.
        for index in range(min(len(cuda_states), torch.cuda.device_count())):
            torch.cuda.set_rng_state(cuda_states[index], index)
