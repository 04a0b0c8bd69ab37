"""Ahead-of-time compilation of every Triton kernel for an NVIDIA target, with no GPU needed.

Triton ships ptxas, so the full compiled path (Triton IR -> LLVM -> PTX -> cubin) can be checked on a
machine without a GPU, where the tests otherwise only reach the interpreter. This catches what the
interpreter does not (type promotion, dynamic loop bounds, constexpr handling) and reports the register
and stack (spill) use of each kernel at the block sizes the launchers pick for the paper shapes, for
every dtype (float32, bfloat16, float16, float64 by default), and the blocks a multiprocessor holds at
that use (registers, threads, shared memory). It fails when a kernel spills or needs all 255 registers,
and when a kernel that the launchers compile without fp fusion (affine_hpool.EXACT_POSITIONS) has a
contracted fma or an approximate float32 division in its PTX.

    TRITON_INTERPRET=0 python -m scstn_vcn.kernels._aot_check [--arch 90] [--dtype float32 ...]

Must run in a process where TRITON_INTERPRET is not 1 (the kernels must be real JIT functions).
"""

import argparse
import os
import re
import subprocess
import tempfile

import torch
import triton
import triton.language as tl

from scstn_vcn.kernels import affine_hpool as AH
from scstn_vcn.kernels import affine_hpool_separable as AS
from scstn_vcn.kernels import channel_pool as CP
from scstn_vcn.kernels import vertical_proj as VP
from scstn_vcn.kernels._common import num_warps_for

PAPER = {"O": (2048, 24, 8), "M": (2048, 48, 16)}
K_KERNELS = 6
_PTR = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32", torch.float64: "*fp64"}


def _jobs(dtype, shape):
    """(kernel, argument types, constexprs, num_warps, compile options) for every kernel the launchers run
    on `shape`, with the block sizes and options the launchers pick for `dtype`."""
    C, H, W = shape
    HW = H * W
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    P, A, ACC = _PTR[dtype], _PTR[compute], (tl.float64 if dtype == torch.float64 else tl.float32)
    i32 = "i32"
    jobs = []
    bc, bp = CP._forward_blocks(C, HW, dtype)
    jobs.append(
        (
            CP._channel_pool_fwd_kernel,
            dict(
                x_ptr=P,
                partial_ptr=A,
                gpool_ptr=P,
                argmax_ptr="*i32",
                C=i32,
                HW=i32,
                W=i32,
                n_cblocks=i32,
                s_b=i32,
                s_c=i32,
                s_h=i32,
                s_w=i32,
            ),
            dict(ACC=ACC, BLOCK_C=bc, BLOCK_P=bp),
            num_warps_for(bc * bp),
        )
    )
    jobs.append(
        (
            CP._channel_mean_reduce_kernel,
            dict(partial_ptr=A, cmean_ptr=P, C=i32, HW=i32, n_cblocks=i32),
            dict(ACC=ACC, BLOCK_P=CP._reduce_block(HW)),
            4,
        )
    )
    bc, bp = CP._backward_blocks(C, HW)
    jobs.append(
        (
            CP._channel_pool_bwd_kernel,
            dict(gm_ptr=P, gp_ptr=P, argmax_ptr="*i32", dx_ptr=P, C=i32, HW=i32, n_pblocks=i32),
            dict(ACC=ACC, BLOCK_C=bc, BLOCK_P=bp),
            num_warps_for(bc * bp),
        )
    )
    br, bw = AH._row_blocks(C, H, W)
    geo = dict(C=i32, H=i32, W=i32, s_b=i32, s_c=i32, s_h=i32, s_w=i32)
    jobs.append(
        (
            AH._affine_hpool_fwd_kernel,
            dict(x_ptr=P, theta_ptr=A, out_ptr=P, argmax_ptr="*i32", **geo),
            dict(ACC=ACC, BLOCK_R=br, BLOCK_W=bw),
            num_warps_for(br * bw),
            AH.EXACT_POSITIONS,
        )
    )
    jobs.append(
        (
            AH._affine_hpool_dtheta_kernel,
            dict(x_ptr=P, theta_ptr=A, g_ptr=P, argmax_ptr="*i32", partial_ptr=A, n_rblocks=i32, **geo),
            dict(ACC=ACC, BLOCK_R=br, BLOCK_W=bw),
            num_warps_for(br * bw),
            AH.EXACT_POSITIONS,
        )
    )
    jobs.append((AH._dtheta_reduce_kernel, dict(partial_ptr=A, dtheta_ptr=A, n_rblocks=i32), dict(ACC=ACC), 1))
    be, bj, bp, warps = AH._index_blocks(HW)
    jobs.append(
        (
            AH._inverse_index_kernel,
            dict(
                theta_ptr=A,
                start_ptr="*i32",
                sample_ptr="*i32",
                weight_ptr=A,
                cursor_ptr="*i32",
                pair_key_ptr="*i32",
                pair_weight_ptr=A,
                H=i32,
                W=i32,
            ),
            dict(ACC=ACC, BLOCK_E=be, BLOCK_J=bj, BLOCK_P=bp),
            warps,
            AH.EXACT_POSITIONS,
        )
    )
    bc, bp = AH._dx_blocks(C, HW)
    jobs.append(
        (
            AH._affine_hpool_dx_kernel,
            dict(
                g_ptr=P,
                argmax_ptr="*i32",
                start_ptr="*i32",
                sample_ptr="*i32",
                weight_ptr=A,
                dx_ptr=P,
                C=i32,
                H=i32,
                W=i32,
                n_entries=i32,
                n_pblocks=i32,
            ),
            dict(ACC=ACC, BLOCK_C=bc, BLOCK_P=bp),
            num_warps_for(bc * bp),
        )
    )
    br, bw = AS._row_blocks(C, H, W)
    jobs.append(
        (
            AS._separable_fwd_kernel,
            dict(x_ptr=P, theta_ptr=A, out_ptr=P, argmax_ptr="*i32", **geo),
            dict(ACC=ACC, BLOCK_R=br, BLOCK_W=bw),
            num_warps_for(br * bw),
        )
    )
    br, bx, bw = AS._dtheta_blocks(C, H, W)
    jobs.append(
        (
            AS._separable_dtheta_kernel,
            dict(x_ptr=P, theta_ptr=A, g_ptr=P, argmax_ptr="*i32", partial_ptr=A, n_rblocks=i32, **geo),
            dict(ACC=ACC, BLOCK_R=br, BLOCK_X=bx, BLOCK_W=bw),
            num_warps_for(br * bx),
        )
    )
    jobs.append(
        (
            AS._separable_dtheta_reduce_kernel,
            dict(partial_ptr=A, dtheta_ptr=A, n_rblocks=i32, H=i32, W=i32),
            dict(ACC=ACC, BLOCK_J=AS.REDUCE_BLOCK),
            4,
        )
    )
    bc, bx, bh, bw = AS._dx_blocks(C, H, W, dtype)
    jobs.append(
        (
            AS._separable_dx_kernel,
            dict(theta_ptr=A, g_ptr=P, argmax_ptr="*i32", dx_ptr=P, C=i32, H=i32, W=i32),
            dict(ACC=ACC, BLOCK_C=bc, BLOCK_X=bx, BLOCK_H=bh, BLOCK_W=bw),
            num_warps_for(bc * bx),
        )
    )
    vp = dict(C=i32, K=i32, H=i32)
    fc, bk, bh = VP._forward_blocks(C, K_KERNELS, H, dtype)
    jobs.append(
        (
            VP._vertical_proj_fwd_kernel,
            dict(F_ptr=P, delta_ptr=A, f_ptr=P, **vp),
            dict(ACC=ACC, BLOCK_C=fc, BLOCK_K=bk, BLOCK_H=bh),
            num_warps_for(fc * bk * bh),
        )
    )
    bc, bk, bh = VP._blocks(C, K_KERNELS, H)
    consts = dict(ACC=ACC, BLOCK_C=bc, BLOCK_K=bk, BLOCK_H=bh)
    jobs.append(
        (
            VP._vertical_proj_dF_kernel,
            dict(g_ptr=P, delta_ptr=A, dF_ptr=P, n_hblocks=i32, **vp),
            consts,
            num_warps_for(bc * bk * bh),
        )
    )
    dbc, _, _ = VP._ddelta_blocks(C, K_KERNELS, H)
    jobs.append(
        (
            VP._vertical_proj_ddelta_kernel,
            dict(g_ptr=P, F_ptr=P, partial_ptr=A, B=i32, n_hblocks=i32, per_split=i32, **vp),
            dict(consts, BLOCK_C=dbc),
            num_warps_for(dbc * bk * bh),
        )
    )
    jobs.append(
        (
            VP._ddelta_reduce_kernel,
            dict(partial_ptr=A, ddelta_ptr=A, n=i32, n_splits=i32),
            dict(ACC=ACC, BLOCK=VP._REDUCE_BLOCK),
            4,
        )
    )
    return [job if len(job) == 5 else (*job, {}) for job in jobs]


def _resources(cubin):
    """'REG:n STACK:n ...' of a cubin, from the cuobjdump that Triton ships (None if it is missing)."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(cubin)
        handle.flush()
        out = subprocess.run([tool, "--dump-resource-usage", handle.name], capture_output=True, text=True).stdout
    fields = [line for line in out.splitlines() if "REG:" in line]
    return dict(field.split(":") for field in fields[0].split() if ":" in field) if fields else None


# Per multiprocessor: registers, threads, resident blocks, shared memory (bytes) and the shared memory the
# driver reserves per block (CUDA occupancy calculator, compute capability 8.0 and 9.0).
_SM_LIMITS = {80: (65536, 2048, 32, 167936, 1024), 90: (65536, 2048, 32, 233472, 1024)}
# PTX of a rounding that the kernels compiled with enable_fp_fusion=False must not contain: contracted
# multiply-adds, approximate float32 division.
_INEXACT_PTX = re.compile(r"\b(?:fma\.rn\.f(?:32|64)|div\.(?:full|approx)\.f32)\b")


def blocks_per_sm(arch, registers, warps, shared):
    """Resident blocks per multiprocessor of a kernel using `registers` a thread at `warps` warps and
    `shared` bytes of shared memory (None for an architecture not in _SM_LIMITS). Registers are
    allocated per warp in units of 256 (8 a thread)."""
    if arch not in _SM_LIMITS:
        return None
    regs, threads, blocks, smem, reserved = _SM_LIMITS[arch]
    by_regs = regs // (-(-registers // 8) * 8 * 32) // warps
    by_smem = smem // (shared + reserved)
    return min(blocks, threads // (32 * warps), by_regs, by_smem)


def compile_all(arch=90, dtypes=(torch.float32,), shapes=("O",)):
    """Compile every kernel; returns one dict per (kernel, dtype, shape): name, dtype, shape, consts,
    warps, options, resources (cuobjdump's REG, STACK, ...; None without cuobjdump), shared (bytes),
    blocks_per_sm and inexact (PTX roundings a kernel compiled without fp fusion must not have)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("run without TRITON_INTERPRET=1: the interpreter replaces the JIT functions")
    target = GPUTarget("cuda", arch, 32)
    report = []
    for dtype in dtypes:
        for shape in shapes:
            for kernel, types, consts, warps, options in _jobs(dtype, PAPER[shape]):
                signature = {name: ("constexpr" if name in consts else types[name]) for name in kernel.arg_names}
                compiled = triton.compile(
                    ASTSource(kernel, signature, constexprs=consts),
                    target=target,
                    options={"num_warps": warps, **options},
                )
                res = _resources(compiled.asm["cubin"])
                shared = int(getattr(compiled.metadata, "shared", 0))
                exact = options.get("enable_fp_fusion", True) is False
                report.append(
                    dict(
                        name=kernel.__name__,
                        dtype=str(dtype),
                        shape=shape,
                        consts={k: v for k, v in consts.items() if k != "ACC"},
                        warps=warps,
                        options=options,
                        resources=res,
                        shared=shared,
                        blocks_per_sm=None if res is None else blocks_per_sm(arch, int(res["REG"]), warps, shared),
                        inexact=sorted(set(_INEXACT_PTX.findall(compiled.asm["ptx"]))) if exact else [],
                    )
                )
    return report


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 80, 90")
    parser.add_argument(
        "--dtype",
        nargs="+",
        default=["float32", "bfloat16", "float16", "float64"],
        choices=["float16", "bfloat16", "float32", "float64"],
    )
    parser.add_argument("--shape", nargs="+", default=["O", "M"], choices=list(PAPER))
    args = parser.parse_args()
    dtypes = [getattr(torch, name) for name in args.dtype]
    print(f"triton {triton.__version__}, sm_{args.arch}")
    problems = []
    for row in compile_all(args.arch, dtypes, args.shape):
        res, what = row["resources"], f"{row['name']} {row['dtype']} {row['shape']}"
        usage = "" if res is None else f"REG {res.get('REG')} STACK {res.get('STACK')} blocks/SM {row['blocks_per_sm']}"
        exact = " exact" if row["options"].get("enable_fp_fusion", True) is False else ""
        shape = f"{row['shape']} warps={row['warps']}{exact}"
        print(f"{row['name']:32s} {row['dtype']:15s} {shape} {row['consts']} {usage}")
        if res is not None and res.get("STACK", "0") != "0":
            problems.append(f"{what} spills registers to the stack")
        elif res is not None and int(res.get("REG", 0)) >= 255:
            problems.append(f"{what} uses all 255 registers (the next change spills)")
        if row["inexact"]:
            problems.append(f"{what} is compiled without fp fusion but its PTX has {', '.join(row['inexact'])}")
    if problems:  # a spilling tile is a block-size choice to fix in the launcher
        raise SystemExit("kernels that fail the check:\n  " + "\n  ".join(problems))


if __name__ == "__main__":
    main()
