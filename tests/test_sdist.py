"""The source distribution holds what the build and the package need, installs with a CPU-only build, and
its compiled ops work: the release path of a user who installs from the sdist instead of a clone.

The sdist is built from a copy of the working tree's files (what `git ls-files` lists, tracked or not yet
tracked, none of the ignored build outputs), not from the tree itself: setuptools re-adds every file named
in an existing scstn_vcn.egg-info/SOURCES.txt, so a tree that was built before would hide a header that
MANIFEST.in forgot. The copy also gets the leftovers of an in-place build (the compiled extension, byte
code), which the sdist must leave out.

The package is installed with `pip install --target` into a temporary folder, with only the C++ CPU
kernels compiled (SCSTN_VCN_CUDA=0), without debug information (CFLAGS=-g0 halves the compile time), and
imported in a subprocess that runs outside the source tree, so the source scstn_vcn/ cannot shadow it.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IN_SDIST = ("csrc", "kernels", "scstn_vcn", "docs")  # folders shipped whole (MANIFEST.in grafts them)
TOP_FILES = ("README.md", "LICENSE", "CHANGELOG.md", "pyproject.toml", "setup.py", "MANIFEST.in")
NOT_IN_SDIST = ("tests", "benchmarks")
BUILD_OUTPUTS = (".so", ".o", ".pyc")
PLANTED = (
    f"scstn_vcn/_C{sysconfig.get_config_var('EXT_SUFFIX')}",
    f"scstn_vcn/__pycache__/cli.{sys.implementation.cache_tag}.pyc",
)

pytestmark = pytest.mark.slow


def _run(args, cwd, env=None, timeout=600):
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, args))} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done


def _working_tree_files():
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("the sdist is built from a git checkout's working tree (no .git or no git here)")

    def listed(*which):
        names = _run(["git", "ls-files", "-z", *which], cwd=ROOT).stdout.split("\0")
        return {name for name in names if name and (ROOT / name).is_file()}  # not the deleted ones

    tracked = listed("--cached")
    folders = {name.split("/")[0] for name in tracked if "/" in name}
    # New files count, except in folders git has never seen (./scstn_vcn_demo and other run outputs).
    untracked = listed("--others", "--exclude-standard")
    return sorted(tracked | {name for name in untracked if "/" not in name or name.split("/")[0] in folders})


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A copy of the working tree's files, plus the leftovers of an in-place build."""
    copy = tmp_path_factory.mktemp("sdist") / "tree"
    files = _working_tree_files()
    for name in files:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, copy / name)
    for name in PLANTED:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).write_bytes(b"a build output, not a source")
    return copy, files


@pytest.fixture(scope="module")
def sdist(tree):
    copy, _ = tree
    outdir = copy.parent / "dist"
    _run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(outdir), str(copy)], cwd=copy)
    (archive,) = outdir.glob("scstn_vcn-*.tar.gz")
    return archive


@pytest.fixture(scope="module")
def installed(sdist):
    target = sdist.parent.parent / "site"
    env = dict(
        os.environ,
        SCSTN_VCN_CUDA="0",
        SCSTN_VCN_CPU_FLAGS="",
        MAX_JOBS="2",
        CFLAGS=f"{os.environ.get('CFLAGS', '')} -g0".strip(),
    )
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-build-isolation",
            "--no-deps",
            "--no-index",
            "--no-cache-dir",
            "--target",
            str(target),
            str(sdist),
        ],
        cwd=sdist.parent,
        env=env,
    )
    return target


def test_sdist_holds_the_sources_and_no_build_outputs(tree, sdist):
    _, files = tree
    with tarfile.open(sdist) as archive:
        prefix = archive.getnames()[0].split("/")[0]
        members = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    expected = {name for name in files if name in TOP_FILES or name.split("/")[0] in IN_SDIST}
    missing = sorted(expected - members)
    assert not missing, f"{sdist.name} lacks {missing}: MANIFEST.in must include them"
    assert prefix == sdist.name.removesuffix(".tar.gz")
    assert "PKG-INFO" in members
    unwanted = sorted(
        name
        for name in members
        if name.split("/")[0] in NOT_IN_SDIST or name.endswith(BUILD_OUTPUTS) or "__pycache__" in name
    )
    assert not unwanted, f"{sdist.name} holds {unwanted}, which MANIFEST.in should leave out"


def test_installed_package_holds_every_module_and_data_file(tree, installed):
    _, files = tree
    missing = []
    for name in files:
        top, _, rest = name.partition("/")
        if top == "scstn_vcn":
            if not (installed / name).is_file():
                missing.append(name)
        elif top == "kernels" and not (installed / "scstn_vcn" / "kernels" / rest).is_file():
            missing.append(name)
    assert not missing, f"installing the sdist left out {missing}"
    assert not (installed / "kernels").exists(), "the Triton kernels must install only as scstn_vcn.kernels"
    assert list((installed / "scstn_vcn").glob("_C*.so")), "the compiled extension scstn_vcn._C was not installed"


CHECK_INSTALLED = textwrap.dedent("""
    import functools
    import importlib.metadata
    import json

    import torch

    import scstn_vcn
    import scstn_vcn._C
    import scstn_vcn.kernels
    from scstn_vcn import ops
    from scstn_vcn.configs import load_config

    def compare(name, function, inputs):
        native_in = [t.clone().requires_grad_() for t in inputs]
        eager_in = [t.clone().requires_grad_() for t in inputs]
        native_out = function(*native_in, backend="native")
        eager_out = function(*eager_in, backend="eager")
        native_out = native_out if isinstance(native_out, tuple) else (native_out,)
        eager_out = eager_out if isinstance(eager_out, tuple) else (eager_out,)
        grads = [torch.randn_like(out) for out in eager_out]
        torch.autograd.backward(native_out, grads)
        torch.autograd.backward(eager_out, grads)
        for got, want in zip(native_out, eager_out):
            torch.testing.assert_close(got, want, msg=lambda m: f"{name} forward: {m}")
        for got, want in zip(native_in, eager_in):
            torch.testing.assert_close(got.grad, want.grad, msg=lambda m: f"{name} backward: {m}")
        return name

    torch.manual_seed(0)
    x = torch.randn(2, 5, 6, 4, dtype=torch.float64)
    theta = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64).repeat(2, 1, 1)
    theta = theta + 0.2 * torch.randn(2, 2, 3, dtype=torch.float64)
    F = torch.randn(2, 5, 6, dtype=torch.float64)
    delta = torch.randn(5, 3, 6, dtype=torch.float64)
    checked = [
        compare("channel_pool", ops.channel_pool, [x]),
        compare("affine_hpool", ops.affine_hpool, [x, theta]),
        compare("affine_hpool rotation_free", functools.partial(ops.affine_hpool, rotation_free=True), [x, theta]),
        compare("vertical_proj", ops.vertical_proj, [F, delta]),
    ]
    print(json.dumps({
        "package": scstn_vcn.__file__,
        "extension": scstn_vcn._C.__file__,
        "kernels": scstn_vcn.kernels.__file__,
        "with_cuda": bool(scstn_vcn._C.WITH_CUDA),
        "version": scstn_vcn.__version__,
        "metadata_version": importlib.metadata.version("scstn-vcn"),
        "preset_epochs": load_config("r50o_market1501")["train"]["epochs"],
        "checked": checked,
    }))
""")


def test_installed_sdist_runs_each_native_op_like_eager(installed, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(installed), PYTHONNOUSERSITE="1")
    done = _run([sys.executable, "-c", CHECK_INSTALLED], cwd=tmp_path, env=env)
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    for key in ("package", "extension", "kernels"):
        path = Path(facts[key]).resolve()
        assert path.is_relative_to(installed.resolve()), f"{key} imported from {path}, not from the installed sdist"
        assert not path.is_relative_to(ROOT), f"{key} imported from the source tree: {path}"
    assert facts["with_cuda"] is False
    assert facts["version"] == facts["metadata_version"]
    assert facts["preset_epochs"] > 0  # a preset and the recipe it names as _base_, read from the installed files
    assert facts["checked"] == ["channel_pool", "affine_hpool", "affine_hpool rotation_free", "vertical_proj"]
