"""Test-session set-up.

Triton reads TRITON_INTERPRET when its kernels are decorated, i.e. when scstn_vcn.kernels.<op> is first
imported. Without a GPU the Triton backend can only run in the interpreter, so switch it on here, before
any test imports the kernels; with a GPU the Triton tests run compiled.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny problems run on one thread: no thread start-up cost per op on a busy machine. A module opts in
    with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
