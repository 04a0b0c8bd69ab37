"""The program that benchmarks/gpu_check.sh runs under compute-sanitizer (memcheck, racecheck, initcheck):
every native CUDA op, forward and backward once, at small odd shapes (sizes that are no multiple of a
warp or a block, so every bounds check and tail path runs), in float32 and bfloat16, contiguous and
channels-last, with theta that rotates and samples outside the map.

    compute-sanitizer --tool memcheck python benchmarks/gpu_check_sanitize.py
"""

import inspect
import math
import sys

import torch

from scstn_vcn import ops

K_KERNELS = 6
SHAPES = ((3, 37, 7, 5), (2, 70, 13, 37))  # (B, C, H, W)
DTYPES = (torch.float32, torch.bfloat16)


def _theta(batch, gen):
    """Rotation, scale, shift: some samples fall outside the map."""
    angle = 0.5 * (torch.rand(batch, generator=gen) * 2 - 1)
    scale = 1.2 + 0.3 * torch.rand(batch, generator=gen)
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = scale * torch.cos(angle), -scale * torch.sin(angle)
    theta[:, 1, 0], theta[:, 1, 1] = scale * torch.sin(angle), scale * torch.cos(angle)
    theta[:, :, 2] = 0.6 * (torch.rand(batch, 2, generator=gen) * 2 - 1)
    return theta


def _scale_shift_theta(batch, gen):
    """No rotation (the rotation-free path's contract): scale and shift only."""
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0] = 1 + 0.4 * (torch.rand(batch, generator=gen) * 2 - 1)
    theta[:, 1, 1] = 1 + 0.4 * (torch.rand(batch, generator=gen) * 2 - 1)
    theta[:, :, 2] = 0.4 * (torch.rand(batch, 2, generator=gen) * 2 - 1)
    return theta


def _forward_backward(fn, inputs, gen):
    leaves = [t.detach().requires_grad_() for t in inputs]
    outputs = fn(*leaves)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    grads = [torch.randn(o.shape, generator=gen).to(o.device, o.dtype) for o in outputs]
    torch.autograd.backward(outputs, grads)
    torch.cuda.synchronize()
    for leaf in leaves:
        if leaf.grad is None or not torch.isfinite(leaf.grad.float()).all():
            raise AssertionError("a gradient is missing or not finite")


def cases():
    """(name, fn, inputs) for every op, shape, dtype and layout."""
    rotation_free = "rotation_free" in inspect.signature(ops.affine_hpool).parameters
    gen = torch.Generator().manual_seed(0)
    for B, C, H, W in SHAPES:
        for dtype in DTYPES:
            for layout in (torch.contiguous_format, torch.channels_last):
                kind = "nhwc" if layout == torch.channels_last else "nchw"
                tag = f"{B}x{C}x{H}x{W}-{str(dtype).removeprefix('torch.')}-{kind}"
                x = torch.randn(B, C, H, W, generator=gen).to("cuda", dtype).contiguous(memory_format=layout)
                yield f"channel_pool-{tag}", lambda x: ops.channel_pool(x, backend="native"), [x]
                theta = _theta(B, gen).cuda()
                yield f"affine_hpool-{tag}", lambda x, t: ops.affine_hpool(x, t, backend="native"), [x, theta]
                if rotation_free:
                    theta = _scale_shift_theta(B, gen).cuda()
                    yield (
                        f"affine_hpool_rotation_free-{tag}",
                        lambda x, t: ops.affine_hpool(x, t, rotation_free=True, backend="native"),
                        [x, theta],
                    )
            F = torch.randn(B, C, H, generator=gen).to("cuda", dtype)
            delta = (torch.randn(C, K_KERNELS, H, generator=gen) / math.sqrt(H)).cuda()
            yield (
                f"vertical_proj-{B}x{C}x{H}-{str(dtype).removeprefix('torch.')}",
                lambda f, d: ops.vertical_proj(f, d, backend="native"),
                [F, delta],
            )


def main():
    if not torch.cuda.is_available():
        print("gpu_check_sanitize: needs a CUDA device")
        return 3
    ok, why = ops.backend_status("native", "cuda")
    if not ok:
        print(f"gpu_check_sanitize: the native backend is unavailable on CUDA: {why}")
        return 1
    gen = torch.Generator().manual_seed(1)
    count = 0
    for name, fn, inputs in cases():
        _forward_backward(fn, inputs, gen)
        count += 1
        print(f"ok {name}", flush=True)
    print(f"gpu_check_sanitize: {count} native CUDA cases ran forward and backward")
    return 0


if __name__ == "__main__":
    sys.exit(main())
