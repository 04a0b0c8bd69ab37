"""Helpers shared by the Triton launchers: the device to launch on, the accumulation dtype, block-size
choices and grid limits; and the device helpers the affine_hpool kernels share."""

import contextlib

import torch
import triton
import triton.language as tl

from scstn_vcn.kernels import _interpreter_compat

# Every kernel module imports this one before any kernel runs: triton 3.6's interpreter needs a fix to
# run loops over runtime bounds with numpy >= 2.4 (see _interpreter_compat).
_interpreter_compat.apply()


def device_context(tensor):
    """Context in which to launch a kernel on `tensor`: Triton launches on torch.cuda.current_device(),
    so a tensor on another GPU (cuda:1 while the current device is cuda:0) needs that device made
    current around the launch. CPU tensors (the interpreter) need nothing."""
    if tensor.device.type == "cuda":
        return torch.cuda.device(tensor.device)
    return contextlib.nullcontext()


def acc_dtype(dtype):
    """Triton accumulation dtype for activations of torch dtype `dtype`: float64 stays float64,
    float16/bfloat16/float32 accumulate in float32 (the interpreter has no half arithmetic either)."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def torch_acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def pow2(n, lo=1, hi=None):
    """next power of two >= n, clamped to [lo, hi] (a tl.arange length must be a power of two)."""
    value = max(lo, triton.next_power_of_2(max(int(n), 1)))
    return min(value, hi) if hi is not None else value


def num_warps_for(elements):
    """Warps for a tile of `elements` values: 8 from 1024 values up. The gather-heavy kernels then hold
    4 to 8 values per thread and compile without spills (checked with ptxas for sm_90)."""
    return 8 if elements >= 1024 else 4


# CUDA launch limits: grid axis 0 takes up to 2^31 - 1 programs, axes 1 and 2 only 65,535. Every
# launcher therefore puts the blocks that grow with C, H or W on axis 0 and the batch on axis 1.
MAX_GRID_X = 2**31 - 1
MAX_GRID_YZ = 65535
INT32_MAX = 2**31 - 1


def checked_grid(grid, what):
    """`grid` unchanged, or a ValueError naming `what` when it exceeds the CUDA launch limits."""
    limits = (MAX_GRID_X, MAX_GRID_YZ, MAX_GRID_YZ)
    for axis, (size, limit) in enumerate(zip(grid, limits)):
        if size > limit:
            hint = "the batch size" if axis == 1 else "the input"
            raise ValueError(
                f"{what}: {size} programs on grid axis {axis} exceed CUDA's limit of {limit}; reduce {hint}"
            )
    return grid


def require_int32_index(count, block, what):
    """The kernels index rows (or positions) in int32 and widen only the pointer offsets to int64, so
    `count` indices, rounded up to whole blocks of `block`, must stay below 2^31."""
    if triton.cdiv(count, block) * block > INT32_MAX:
        raise ValueError(
            f"{what} = {count}: the Triton kernels index it in int32 and need it below "
            f"2^31 - {block} (split the batch or the channels)"
        )


def row_pool_blocks(C, H, W):
    """(BLOCK_R, BLOCK_W) of the affine_hpool kernels that give a program BLOCK_R rows (c, h) and walk w
    in chunks of BLOCK_W: both forwards (general and separable) and the general dtheta. Paper shapes:
    W = 8 or 16, C H = 49152 or 98304 rows; 1024-sample tiles at 8 warps (4 samples, 16 gathers a thread
    in flight) compile to 80 (forward) and 128 (dtheta) registers without spills on sm_90, where
    2048-sample tiles at 4 warps spilled; B * 384..1536 programs at B = 96. float64 needs 128 and 195
    registers, still without spills."""
    block_w = pow2(W, lo=2, hi=32)
    block_r = pow2(C * H, lo=1, hi=max(1, 1024 // block_w))
    return block_r, block_w


def launch_row_pool_forward(kernel, x, theta, grid, **options):
    """(out, argmax) of an affine_hpool forward `kernel`, whose arguments are (x, theta, out, argmax, C, H,
    W, *x.stride(), ACC, BLOCK_R, BLOCK_W), launched on `grid` with row_pool_blocks tiles: out (B, C, H)
    in x's dtype, argmax (B, C, H) int32. `options` are Triton compile options of the launch (e.g.
    enable_fp_fusion). Call it inside the caller module's device_context(x)."""
    B, C, H, W = x.shape
    theta = theta.contiguous()
    out = torch.empty((B, C, H), device=x.device, dtype=x.dtype)
    argmax = torch.empty((B, C, H), device=x.device, dtype=torch.int32)
    block_r, block_w = row_pool_blocks(C, H, W)
    kernel[grid](
        x,
        theta,
        out,
        argmax,
        C,
        H,
        W,
        *x.stride(),
        ACC=acc_dtype(x.dtype),
        BLOCK_R=block_r,
        BLOCK_W=block_w,
        num_warps=num_warps_for(block_r * block_w),
        **options,
    )
    return out, argmax


@triton.jit
def row_pool_update(val, mask, idx, total, best, best_idx):
    """Fold one chunk of values val [rows, chunk] (at positions idx [chunk] along the pooled axis, valid
    where mask) into each row's running sum, max and argmax. Within the chunk the smallest position of
    the maximum is taken, and a later chunk wins only when strictly greater: the argmax is the first
    maximum of the row."""
    val = tl.where(mask, val, 0.0)
    total += tl.sum(val, axis=1)
    vm = tl.where(mask, val, float("-inf"))
    chunk_max = tl.max(vm, axis=1)
    cand = tl.where((vm == chunk_max[:, None]) & mask, idx[None, :], 2147483647)
    chunk_idx = tl.min(cand, axis=1)
    better = chunk_max > best
    best_idx = tl.where(better, chunk_idx, best_idx)
    best = tl.where(better, chunk_max, best)
    return total, best, best_idx
