"""Build of scstn-vcn: the Python package, the Triton kernels as `scstn_vcn.kernels`, and the
compiled extension `scstn_vcn._C` from `csrc/`.

The C++ CPU kernels are always compiled. The CUDA kernels are compiled whenever torch is a
CUDA build and nvcc is found -- a GPU is not needed to compile them. The environment
variable SCSTN_VCN_CUDA forces that choice: "1" requires CUDA (and fails if it cannot be
built), "0" skips it. TORCH_CUDA_ARCH_LIST overrides the default targets (sm_80, sm_90 + PTX). The CPU
kernels use AVX2 + FMA when the building machine has them (SCSTN_VCN_CPU_FLAGS overrides the flags).
"""

import glob
import os
import sys
import sysconfig

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"


def _default_cuda_home():
    """torch looks for the toolkit as the parent of `which nvcc`; where nvcc on PATH is a wrapper
    script (/usr/local/bin/nvcc here) that parent has no CUDA libraries. Prefer the conventional
    /usr/local/cuda when the user has not named a toolkit."""
    if not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")):
        if os.path.exists("/usr/local/cuda/bin/nvcc"):
            os.environ["CUDA_HOME"] = "/usr/local/cuda"


def _want_cuda():
    """Decide whether to compile the CUDA sources, and say why."""
    import torch
    from torch.utils import cpp_extension

    forced = os.environ.get("SCSTN_VCN_CUDA", "").strip()
    if forced not in ("", "0", "1"):
        sys.exit(f"SCSTN_VCN_CUDA must be '0', '1' or unset, got {forced!r}")
    have_toolkit = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if forced == "0":
        return False, "SCSTN_VCN_CUDA=0"
    if forced == "1" and not have_toolkit:
        sys.exit(
            "SCSTN_VCN_CUDA=1 but CUDA cannot be built: "
            f"torch.version.cuda={torch.version.cuda!r}, CUDA_HOME={cpp_extension.CUDA_HOME!r} "
            "(install a CUDA build of torch and the CUDA toolkit with nvcc)"
        )
    if not have_toolkit:
        return False, (f"torch.version.cuda={torch.version.cuda!r}, nvcc found: {cpp_extension.CUDA_HOME is not None}")
    return True, f"torch CUDA {torch.version.cuda}, toolkit at {cpp_extension.CUDA_HOME}"


def _cpu_vector_flags():
    """AVX2 + FMA for the C++ CPU kernels when the machine that builds them has both (the extension is
    compiled where it is installed; affine_hpool runs about 1.5x faster with them than with the x86-64
    baseline SSE2). SCSTN_VCN_CPU_FLAGS overrides: e.g. "" for the baseline, for a build meant for other
    machines."""
    forced = os.environ.get("SCSTN_VCN_CPU_FLAGS")
    if forced is not None:
        return forced.split()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags")), [])
    except OSError:
        return []
    return ["-mavx2", "-mfma"] if {"avx2", "fma"} <= set(flags) else []


def _wheel_cuda_includes():
    """Headers that a CUDA 12/13 torch wheel ships only under site-packages/nvidia (cusparse.h ...)."""
    dirs = []
    for base in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}:
        for sub in ("nvidia/cu13/include", "nvidia/cu12/include"):
            path = os.path.join(base, sub)
            if os.path.isdir(path):
                dirs.append(path)
    return dirs


def _extension():
    from torch.utils import cpp_extension

    use_cuda, why = _want_cuda()
    print(f"scstn_vcn._C: CUDA kernels {'ON' if use_cuda else 'OFF'} ({why})")
    sources = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
    cxx_flags = ["-O3", "-fopenmp", "-DNDEBUG"] + _cpu_vector_flags()
    define_macros = []
    extra = {"cxx": cxx_flags}
    include_dirs = [os.path.join(ROOT, "csrc")]
    if use_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        include_dirs += _wheel_cuda_includes()
        define_macros.append(("SCSTN_VCN_WITH_CUDA", None))
        extra["nvcc"] = ["-O3", "--use_fast_math", "-lineinfo", "-DNDEBUG"]
        ext_cls = cpp_extension.CUDAExtension
    else:
        ext_cls = cpp_extension.CppExtension
    return ext_cls(
        name="scstn_vcn._C",
        sources=sources,
        include_dirs=include_dirs,
        define_macros=define_macros,
        extra_compile_args=extra,
        extra_link_args=["-fopenmp"],
    )


def _packages():
    """Every package under scstn_vcn/, discovered (so a new subpackage is never left out of the wheel), and
    kernels/ with its subpackages as scstn_vcn.kernels; tests/ and benchmarks/ are not installed."""
    found = find_packages(include=["scstn_vcn", "scstn_vcn.*"])
    found.append("scstn_vcn.kernels")
    found += [f"scstn_vcn.kernels.{name}" for name in find_packages("kernels")]
    return found


def main():
    _default_cuda_home()
    from torch.utils.cpp_extension import BuildExtension

    setup(
        packages=_packages(),
        # The Triton kernels live in the top-level kernels/ folder but install only as the
        # subpackage scstn_vcn.kernels: no top-level `kernels` module lands in site-packages.
        package_dir={"scstn_vcn.kernels": "kernels"},
        # The report page's script and style are data files of scstn_vcn.report (copied into each report).
        package_data={"scstn_vcn.configs": ["*.yaml"], "scstn_vcn.report": ["assets/*.js", "assets/*.css"]},
        ext_modules=[_extension()],
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    )


if __name__ == "__main__":
    main()
