"""The installed extension scstn_vcn._C: were its CUDA kernels built, registered, and compiled for
the GPUs we target?

  * When the build compiled CUDA (scstn_vcn._C.WITH_CUDA), each of the six ops has a CUDA kernel in
    the dispatcher, and the shared object embeds device code for sm_80 (A100) and sm_90 (H100):
    read from the CUDA fat binaries in its `.nv_fatbin` ELF section (no cuobjdump needed).
  * In CI (CI=true) with nvcc and a CUDA build of torch present, the build must have compiled CUDA.
  * Otherwise these tests skip, saying why.
"""

import os
import shutil
import struct

import pytest
import torch

from scstn_vcn.ops._wiring import SCHEMAS

OPS = tuple(SCHEMAS)  # the six registered ops, forward and backward
DEFAULT_ARCHS = "8.0;9.0+PTX"  # setup.py's default TORCH_CUDA_ARCH_LIST

FATBIN_MAGIC = 0xBA55ED50
KIND_PTX, KIND_ELF = 1, 2


def _extension():
    try:
        import scstn_vcn._C as ext
    except ImportError as error:
        pytest.skip(f"scstn_vcn._C is not built ({error}); install with `pip install --no-build-isolation .`")
    return ext


def _with_cuda_extension():
    ext = _extension()
    if not ext.WITH_CUDA:
        pytest.skip("scstn_vcn._C was built without CUDA kernels (WITH_CUDA is False)")
    return ext


def _elf_section(data, wanted):
    """Bytes of the ELF64 little-endian section named `wanted`, or None."""
    assert data[:4] == b"\x7fELF", "not an ELF file"
    assert data[4] == 2 and data[5] == 1, "expected a 64-bit little-endian ELF"
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names_offset = headers[shstrndx][4]
    for name_index, _type, _flags, _addr, offset, size, *_ in headers:
        start = names_offset + name_index
        name = data[start : data.index(b"\0", start)].decode("ascii", "replace")
        if name == wanted:
            return data[offset : offset + size]
    return None


def fatbin_entries(section):
    """(kind, sm) of every entry of the CUDA fat binaries concatenated in `section`.

    A fat binary is a 16-byte header (magic 0xBA55ED50, version, header size, payload size) followed
    by entries, each a header (kind: 1 PTX, 2 ELF cubin; its header size at byte 4, padded payload
    size at byte 8, target sm at byte 28) and its payload. Consecutive fat binaries may be padded.
    """
    entries = []
    pos = 0
    while pos + 16 <= len(section):
        magic, _version, header_size, fat_size = struct.unpack_from("<IHHQ", section, pos)
        if magic != FATBIN_MAGIC:
            pos += 8  # alignment padding between fat binaries
            continue
        entry = pos + header_size
        end = entry + fat_size
        assert end <= len(section), "truncated fat binary"
        while entry < end:
            kind, _ver, entry_header, padded = struct.unpack_from("<HHIQ", section, entry)
            sm = struct.unpack_from("<I", section, entry + 28)[0]
            assert kind in (KIND_PTX, KIND_ELF), f"unknown fat binary entry kind {kind}"
            assert entry_header >= 32 and padded > 0, "malformed fat binary entry"
            entries.append((kind, sm))
            entry += entry_header + padded
        pos = end
    return entries


def expected_targets():
    """(cubin sms, ptx sms) that TORCH_CUDA_ARCH_LIST (or setup.py's default) asks for."""
    cubins, ptx = set(), set()
    for item in os.environ.get("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCHS).replace(",", ";").replace(" ", ";").split(";"):
        if not item:
            continue
        arch = item.removesuffix("+PTX")
        sm = int(arch.replace(".", "").rstrip("a").rstrip("f"))
        cubins.add(sm)
        if item.endswith("+PTX"):
            ptx.add(sm)
    return cubins, ptx


def test_cuda_kernels_registered():
    _with_cuda_extension()
    missing = [op for op in OPS if not torch._C._dispatch_has_kernel_for_dispatch_key(f"scstn_vcn::{op}", "CUDA")]
    assert not missing, f"scstn_vcn._C has WITH_CUDA but no CUDA kernel for: {missing}"


def test_shared_object_has_sm80_and_sm90_code():
    ext = _with_cuda_extension()
    with open(ext.__file__, "rb") as handle:
        data = handle.read()
    section = _elf_section(data, ".nv_fatbin")
    assert section is not None, f"{ext.__file__} has no .nv_fatbin section: no device code was linked in"
    entries = fatbin_entries(section)
    cubins = {sm for kind, sm in entries if kind == KIND_ELF}
    ptx = {sm for kind, sm in entries if kind == KIND_PTX}
    want_cubins, want_ptx = expected_targets()
    if "TORCH_CUDA_ARCH_LIST" not in os.environ:
        assert {80, 90} <= want_cubins
    assert want_cubins <= cubins, (
        f"device code for sm {sorted(want_cubins - cubins)} missing; found cubins {sorted(cubins)}"
    )
    assert want_ptx <= ptx, f"PTX for compute {sorted(want_ptx - ptx)} missing; found PTX {sorted(ptx)}"


def _synthetic_fatbin(targets):
    """A fat binary in the layout fatbin_entries reads, with one empty payload per (kind, sm)."""
    body = b""
    for kind, sm in targets:
        header = bytearray(64)
        struct.pack_into("<HHIQ", header, 0, kind, 0x101, 64, 16)
        struct.pack_into("<I", header, 28, sm)
        body += bytes(header) + bytes(16)
    return struct.pack("<IHHQ", FATBIN_MAGIC, 1, 16, len(body)) + body


def test_fatbin_parser_reads_targets():
    """The parser behind the sm_80/sm_90 check reads what it is given (so that check can fail)."""
    section = _synthetic_fatbin([(KIND_ELF, 80), (KIND_PTX, 90)]) + bytes(8) + _synthetic_fatbin([(KIND_ELF, 75)])
    assert fatbin_entries(section) == [(KIND_ELF, 80), (KIND_PTX, 90), (KIND_ELF, 75)]
    with open(torch._C.__file__, "rb") as handle:
        data = handle.read()
    assert _elf_section(data, ".no_such_section") is None
    assert _elf_section(data, ".text")


def test_ci_builds_cuda():
    if os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
        pytest.skip("not in CI (CI is not true)")
    if os.environ.get("SCSTN_VCN_CUDA", "").strip() == "0":
        pytest.skip("SCSTN_VCN_CUDA=0 turns the CUDA kernels off on purpose")
    if torch.version.cuda is None:
        pytest.skip("torch is not a CUDA build, so the CUDA kernels cannot be compiled")
    have_nvcc = shutil.which("nvcc") is not None or os.path.exists("/usr/local/cuda/bin/nvcc")
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if cuda_home:
        have_nvcc = have_nvcc or os.path.exists(os.path.join(cuda_home, "bin", "nvcc"))
    if not have_nvcc:
        pytest.skip("nvcc is not installed, so the CUDA kernels cannot be compiled")
    ext = _extension()
    assert ext.WITH_CUDA, (
        "in CI with nvcc and a CUDA torch, scstn_vcn._C must be built with its CUDA kernels "
        "(setup.py turned them off; see its 'CUDA kernels ON/OFF' line in the build log)"
    )
