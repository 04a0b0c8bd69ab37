"""The version has one source, scstn_vcn/_version.py: scstn_vcn.__version__, the installed package metadata
and `scstn-vcn --version` agree; the build reads it without importing scstn_vcn (and so torch); CHANGELOG.md
has a section for it."""

import importlib.metadata
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.version import Version

import scstn_vcn

ROOT = Path(__file__).resolve().parents[1]


def test_module_and_installed_metadata_agree():
    installed = importlib.metadata.version("scstn-vcn")
    assert scstn_vcn.__version__ == installed, (
        f"scstn_vcn.__version__ is {scstn_vcn.__version__!r} but the installed metadata says {installed!r}: "
        "reinstall the package (pip install --no-build-isolation .) after changing scstn_vcn/_version.py"
    )


def test_cli_prints_the_module_version(tmp_path):
    script = Path(sys.executable).with_name("scstn-vcn")
    script = str(script) if script.exists() else shutil.which("scstn-vcn")
    if script is None:
        pytest.fail("the console script scstn-vcn is not installed (pip install --no-build-isolation .)")
    done = subprocess.run([script, "--version"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"scstn-vcn {scstn_vcn.__version__}"


def test_build_reads_the_version_without_importing_the_package():
    # What setuptools does for pyproject.toml's `version = {attr = ...}`: parse the module's file for a literal,
    # and only if that fails run the file. torch is made unimportable here, so a version source that needs it
    # (scstn_vcn/__init__.py, say) fails this test: an isolated build or a metadata-only step may lack torch.
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from setuptools.config.expand import read_attr\n"
        f"print(read_attr('scstn_vcn._version.__version__', root_dir={str(ROOT)!r}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, f"reading the version imported something it should not:\n{done.stderr}"
    assert done.stdout.strip() == scstn_vcn.__version__
    assert str(Version(scstn_vcn.__version__)) == scstn_vcn.__version__, "not a normalised PEP 440 version"


def test_changelog_has_a_section_for_this_version():
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    headings = re.findall(r"^## \[([^\]]+)\]", changelog, flags=re.MULTILINE)
    assert headings[:1] == ["Unreleased"], "CHANGELOG.md starts with an [Unreleased] section"
    assert scstn_vcn.__version__ in headings, f"CHANGELOG.md has no section for {scstn_vcn.__version__}"
