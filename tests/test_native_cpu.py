"""The native CPU kernels (csrc/cpu/): that they are what runs, fp64 gradients against finite differences,
bitwise-deterministic backward passes (also across thread counts), layout independence, and input errors
raised from C++ that name the argument. The random-case comparison against eager lives in test_op_*.py."""

import os
import subprocess
import sys

import pytest
import torch

from scstn_vcn import ops
from scstn_vcn.ops._wiring import SCHEMAS

pytestmark = pytest.mark.skipif(
    not ops.backend_status("native", "cpu")[0], reason=f"native CPU backend: {ops.backend_status('native', 'cpu')[1]}"
)

OPS = tuple(SCHEMAS)  # every registered op, forward and backward


def native():
    ops.load_native()
    return torch.ops.scstn_vcn


def make_theta(batch, kind, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.rand(*shape, generator=gen, dtype=dtype) * 2 - 1  # noqa: E731
    theta = torch.zeros(batch, 2, 3, dtype=dtype)
    theta[:, 0, 0] = 1 + 0.3 * rand(batch)
    theta[:, 1, 1] = 1 + 0.3 * rand(batch)
    theta[:, :, 2] = 0.3 * rand(batch, 2)
    if kind == "rotation":
        theta[:, 0, 1] = 0.4 * rand(batch)
        theta[:, 1, 0] = 0.4 * rand(batch)
    elif kind == "outside":  # a good part of every map sampled outside (zeros)
        theta[:, :, 2] += 0.9
    elif kind != "norot":
        raise ValueError(kind)
    return theta


# --- the native kernels are what runs ---


@pytest.mark.parametrize("op", OPS)
def test_dispatcher_has_a_cpu_kernel(op):
    native()
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"scstn_vcn::{op}", "CPU")


def test_profiler_shows_the_fused_kernel_and_no_grid_sample():
    x = torch.randn(2, 5, 6, 4, requires_grad=True)
    theta = make_theta(2, "norot", torch.float32).requires_grad_()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        ops.affine_hpool(x, theta, backend="native").sum().backward()
    names = {event.name for event in prof.events()}
    assert "scstn_vcn::affine_hpool" in names
    assert "scstn_vcn::affine_hpool_backward" in names
    assert not any("grid_sampler" in name or "affine_grid" in name for name in names), sorted(names)


def test_profiler_shows_the_separable_kernel_for_rotation_free():
    x = torch.randn(2, 5, 6, 4, requires_grad=True)
    theta = make_theta(2, "norot", torch.float32).requires_grad_()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        ops.affine_hpool(x, theta, rotation_free=True, backend="native").sum().backward()
    names = {event.name for event in prof.events()}
    assert {"scstn_vcn::affine_hpool_separable", "scstn_vcn::affine_hpool_separable_backward"} <= names
    assert "scstn_vcn::affine_hpool" not in names
    assert not any("grid_sampler" in name or "affine_grid" in name for name in names), sorted(names)


# --- fp64 gradients through the public ops ---


@pytest.mark.parametrize("kind", ["norot", "rotation", "outside"])
def test_affine_hpool_gradcheck(kind):
    gen = torch.Generator().manual_seed(1)
    # offset so that no row's maximum is one of the exact zeros an outside sample reads (a tie there
    # has no derivative for finite differences to find)
    x = (torch.randn(2, 3, 7, 5, generator=gen, dtype=torch.float64) + 4).requires_grad_()
    theta = make_theta(2, kind).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, t: ops.affine_hpool(a, t, backend="native"), (x, theta))


@pytest.mark.parametrize("kind", ["norot", "rotation", "outside"])
def test_affine_hpool_separable_gradcheck(kind):
    """rotation: the off-diagonal entries are ignored (gradient 0, which finite differences confirm)."""
    gen = torch.Generator().manual_seed(2)
    x = (torch.randn(2, 11, 7, 9, generator=gen, dtype=torch.float64) + 4).requires_grad_()
    theta = make_theta(2, kind).requires_grad_()
    fn = lambda a, t: ops.affine_hpool(a, t, rotation_free=True, backend="native")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, theta))


@pytest.mark.parametrize("shape", [(2, 37, 24, 8), (2, 19, 9, 16), (1, 9, 48, 16), (2, 11, 5, 24)])
def test_affine_hpool_separable_vectorised_widths_match_fp64_eager(shape):
    """float32 at the widths with dedicated vector code (W = 8, 16: the paper's O and M maps) and one
    without, against the fp64 eager reference on the masked theta."""
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(*shape, generator=gen)
    theta = make_theta(shape[0], "rotation", torch.float32, seed=4)
    g = torch.randn(shape[:3], generator=gen)
    x32, t32 = x.clone().requires_grad_(), theta.clone().requires_grad_()
    out = ops.affine_hpool(x32, t32, rotation_free=True, backend="native")
    out.backward(g)
    x64, t64 = x.double().requires_grad_(), theta.double().requires_grad_()
    ref = ops.affine_hpool_separable_eager(x64, t64)
    ref.backward(g.double())
    for got, want in ((out, ref), (x32.grad, x64.grad), (t32.grad, t64.grad)):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4 * max(1.0, want.abs().max().item()))


def test_affine_hpool_fully_outside_row_gives_zero_output_and_gradient():
    x = torch.randn(1, 2, 4, 3, dtype=torch.float64, requires_grad=True)
    theta = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 5.0]]], dtype=torch.float64, requires_grad=True)
    out = ops.affine_hpool(x, theta, backend="native")
    out.sum().backward()
    assert torch.equal(out, torch.zeros_like(out))
    assert torch.equal(x.grad, torch.zeros_like(x))
    assert torch.equal(theta.grad, torch.zeros_like(theta))


def test_channel_pool_gradcheck():
    x = torch.randn(2, 5, 3, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: ops.channel_pool(a, backend="native"), (x,))


def test_vertical_proj_gradcheck():
    F = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True)
    delta = torch.randn(5, 4, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f, d: ops.vertical_proj(f, d, backend="native"), (F, delta))


def test_ties_send_the_max_gradient_to_the_first_element():
    x = torch.zeros(1, 1, 2, 3, dtype=torch.float64)
    x[0, 0, 0, 1] = x[0, 0, 1, 2] = 2.0  # two equal maxima; the first in row-major order is (0, 1)
    _, _, argmax = native().channel_pool(x)
    assert argmax.item() == 1
    grad = native().channel_pool_backward(
        torch.zeros(1, 2, 3, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64), argmax, x
    )
    assert grad[0, 0, 0, 1].item() == pytest.approx(1 + 1 / 6) and grad[0, 0, 1, 2].item() == pytest.approx(1 / 6)

    # H * W = 40: the vectorised scan, with equal maxima in different lanes and in the scalar tail
    for first, later in ((11, 3 + 8 * 4), (6, 9), (2, 38), (33, 39)):
        x = torch.randn(1, 1, 5, 8, dtype=torch.float64)
        x.view(-1)[first] = x.view(-1)[later] = 10.0
        assert native().channel_pool(x)[2].item() == first

    rows = torch.tensor([[[[1.0, 3.0, 3.0, 0.0]]]])  # identity theta: the resampled row is the row itself
    identity = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    _, argmax = native().affine_hpool(rows, identity)
    assert argmax.item() == 1


# --- determinism ---


def _grads(fn, inputs, upstream_seed=3):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    out = out if isinstance(out, tuple) else (out,)
    gen = torch.Generator().manual_seed(upstream_seed)
    torch.autograd.backward(out, [torch.randn(o.shape, generator=gen).to(o.dtype) for o in out])
    return [leaf.grad for leaf in leaves]


def _cases():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(3, 75, 9, 6, generator=gen)  # C = 75: several channel tiles and a partial lane group
    yield "channel_pool", (lambda a: ops.channel_pool(a, backend="native")), (x,)
    for kind in ("norot", "rotation"):
        theta = make_theta(3, kind, torch.float32, seed=7)
        yield f"affine_hpool-{kind}", (lambda a, t: ops.affine_hpool(a, t, backend="native")), (x, theta)
    theta = make_theta(3, "norot", torch.float32, seed=7)
    separable = lambda a, t: ops.affine_hpool(a, t, rotation_free=True, backend="native")  # noqa: E731
    yield "affine_hpool_separable", separable, (x, theta)
    yield "affine_hpool_separable-bf16", separable, (x.to(torch.bfloat16), theta)
    F = torch.randn(5, 75, 9, generator=gen)
    delta = torch.randn(75, 6, 9, generator=gen)
    yield "vertical_proj", (lambda f, d: ops.vertical_proj(f, d, backend="native")), (F, delta)


@pytest.mark.parametrize(
    "name",
    [
        "channel_pool",
        "affine_hpool-norot",
        "affine_hpool-rotation",
        "affine_hpool_separable",
        "affine_hpool_separable-bf16",
        "vertical_proj",
    ],
)
def test_backward_is_bitwise_deterministic_across_runs_and_thread_counts(name):
    fn, inputs = next((f, i) for n, f, i in _cases() if n == name)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        first = _grads(fn, inputs)
        second = _grads(fn, inputs)
        torch.set_num_threads(1)
        single = _grads(fn, inputs)
    finally:
        torch.set_num_threads(threads)
    for a, b, c in zip(first, second, single):
        assert torch.equal(a, b)
        assert torch.equal(a, c)


@pytest.mark.parametrize("kind", ["norot", "rotation"])
def test_layouts_give_bitwise_equal_results(kind):
    """The kernels read x through its strides (no copy): every layout must see the same values."""
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(2, 19, 5, 7, generator=gen)
    theta = make_theta(2, kind, torch.float32, seed=2)
    layouts = {
        "contiguous": x,
        "channels_last": x.contiguous(memory_format=torch.channels_last),
        "transposed": x.transpose(2, 3).contiguous().transpose(2, 3),
        "sliced": torch.stack([x, torch.zeros_like(x)], dim=2).flatten(1, 2)[:, ::2],  # channel stride 2HW
    }
    results = {}
    for name, tensor in layouts.items():
        assert name == "contiguous" or not tensor.is_contiguous()
        grads = _grads(lambda a, t: ops.affine_hpool(a, t, backend="native"), (tensor, theta))
        pooled = _grads(lambda a: ops.channel_pool(a, backend="native"), (tensor,))
        separable = _grads(lambda a, t: ops.affine_hpool(a, t, rotation_free=True, backend="native"), (tensor, theta))
        results[name] = grads + pooled + separable
    for name, values in results.items():
        for a, b in zip(values, results["contiguous"]):
            assert torch.equal(a, b), name


@pytest.mark.parametrize("shape", [(2, 19, 6, 8), (3, 40, 5, 7)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_separable_layouts_give_bitwise_equal_results(shape, dtype):
    """(2, 19, 6, 8): H W a multiple of 8, so contiguous float32 full lane groups take the vectorised
    transposing load and the partial group and other layouts the generic one; both must agree."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(*shape, generator=gen).to(dtype)
    theta = make_theta(shape[0], "outside", torch.float64 if dtype == torch.float64 else torch.float32, seed=3)
    layouts = {
        "contiguous": x,
        "channels_last": x.contiguous(memory_format=torch.channels_last),
        "transposed": x.transpose(2, 3).contiguous().transpose(2, 3),
        "sliced": torch.stack([x, torch.zeros_like(x)], dim=2).flatten(1, 2)[:, ::2],
    }
    fn = lambda a, t: ops.affine_hpool(a, t, rotation_free=True, backend="native")  # noqa: E731
    results = {name: [fn(t, theta)] + _grads(fn, (t, theta)) for name, t in layouts.items()}
    for name, values in results.items():
        for a, b in zip(values, results["contiguous"]):
            assert a.dtype == b.dtype and torch.equal(a, b), name


# --- large outputs reuse their memory (csrc/cpu/output_cache.h) ---

HUGE_PAGE = 2 << 20  # outputs of at least this many bytes come from the reuse cache


def _separable_backward_call(shape):
    """A native separable backward at `shape` (float32) and its first result, grad_x, cloned."""
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(*shape, generator=gen)
    theta = make_theta(shape[0], "norot", torch.float32, seed=5)
    g = torch.randn(shape[:3], generator=gen)
    N = native()
    _, argmax = N.affine_hpool_separable(x, theta)

    def call():
        return N.affine_hpool_separable_backward(g, x, theta, argmax)[0]

    return call, call().clone()


@pytest.mark.skipif(bool(os.environ.get("SCSTN_VCN_CPU_OUTPUT_CACHE_MB")), reason="the output cache is configured")
@pytest.mark.parametrize(
    "shape", [(4, 512, 24, 16), (2, 512, 32, 16), (1, 1365, 24, 16)], ids=["3MiB", "2MiB", "2MiB-minus-512"]
)
def test_a_freed_large_output_is_reused_and_fully_rewritten(shape):
    """A large grad_x lands on whole 2 MiB pages; once freed, the next call of the same size gets the same
    memory back, and its stale contents (NaN here) never reach the result. 2 MiB exactly is the smallest
    cached size; 1365 * 24 * 16 * 4 bytes, 512 under it, comes from torch's allocator (values checked only)."""
    call, expected = _separable_backward_call(shape)
    cached = expected.numel() * expected.element_size() >= HUGE_PAGE
    first = call()
    address = first.data_ptr()
    if cached:
        assert address % HUGE_PAGE == 0
    first.fill_(float("nan"))
    del first
    second = call()
    if cached:
        assert second.data_ptr() == address
    assert torch.equal(second, expected)


def _backward_calls(shape):
    """Native backward calls whose first result (grad_x, float32, `shape`) is large: (name, call, expected)."""
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(*shape, generator=gen)
    N = native()
    calls = []
    for name in ("affine_hpool", "affine_hpool_separable"):
        theta = make_theta(shape[0], "norot" if name.endswith("separable") else "rotation", torch.float32, seed=5)
        g = torch.randn(shape[:3], generator=gen)
        _, argmax = getattr(N, name)(x, theta)
        backward = getattr(N, name + "_backward")
        calls.append((name, lambda b=backward, g=g, t=theta, a=argmax: b(g, x, t, a)[0]))
    _, _, argmax = N.channel_pool(x)
    g_mean, g_pool = torch.randn(shape[0], *shape[2:], generator=gen), torch.randn(shape[:2], generator=gen)
    calls.append(("channel_pool", lambda: N.channel_pool_backward(g_mean, g_pool, argmax, x)))
    return [(name, call, call().clone()) for name, call in calls]


@pytest.mark.skipif(bool(os.environ.get("SCSTN_VCN_CPU_OUTPUT_CACHE_MB")), reason="the output cache is configured")
def test_every_large_cpu_gradient_reuses_memory_without_stale_values():
    """channel_pool and both affine_hpool paths take grad_x from the reuse cache; a NaN-filled freed block
    never shows through."""
    for name, call, expected in _backward_calls((4, 512, 24, 16)):
        first = call()
        address = first.data_ptr()
        assert address % HUGE_PAGE == 0, name
        first.fill_(float("nan"))
        del first
        second = call()
        assert second.data_ptr() == address, name
        assert torch.equal(second, expected), name


def test_a_cached_output_can_grow_and_keeps_its_values():
    call, expected = _separable_backward_call((4, 512, 24, 16))
    grad = call()
    grad.resize_(2 * grad.numel())  # a new, larger block: the old one's values are copied over
    assert torch.equal(grad[: expected.numel()].view_as(expected), expected)


PROBE = """
import sys
import torch
from scstn_vcn import ops
ok, why = ops.load_native()
assert ok, why
x, theta, g = torch.load(sys.argv[1], weights_only=True)
N = torch.ops.scstn_vcn
for attempt in range(2):
    try:
        _, argmax = N.affine_hpool_separable(x, theta)
        grad = N.affine_hpool_separable_backward(g, x, theta, argmax)[0]
        print("aligned" if grad.data_ptr() % (2 << 20) == 0 else "unaligned")
        torch.save(grad, sys.argv[2])
    except RuntimeError as error:
        print("error:", str(error).splitlines()[0])
"""


@pytest.mark.parametrize("value", ["0", "12abc"])
def test_output_cache_setting_is_obeyed_or_named_when_bad(value, tmp_path):
    """SCSTN_VCN_CPU_OUTPUT_CACHE_MB=0: large outputs come from torch's allocator (glibc puts a header
    before a mapped block, so never on a 2 MiB boundary) with the same values; a bad value raises an
    error naming the variable, on every call. The variable is read once per process: a subprocess."""
    gen = torch.Generator().manual_seed(12)
    x = torch.randn(4, 512, 24, 16, generator=gen)  # grad_x: 3 MiB
    theta = make_theta(4, "norot", torch.float32, seed=6)
    g = torch.randn(4, 512, 24, generator=gen)
    torch.save((x, theta, g), tmp_path / "inputs.pt")
    env = dict(os.environ, SCSTN_VCN_CPU_OUTPUT_CACHE_MB=value)
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path / "inputs.pt"), str(tmp_path / "grad.pt")],
        env=env,
        cwd=tmp_path,  # not the source tree, whose scstn_vcn (no compiled extension) would shadow the install
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    if value == "0":
        assert lines == ["unaligned", "unaligned"]
        _, argmax = native().affine_hpool_separable(x, theta)
        expected = native().affine_hpool_separable_backward(g, x, theta, argmax)[0]
        assert torch.equal(torch.load(tmp_path / "grad.pt", weights_only=True), expected)
    else:
        assert len(lines) == 2
        for line in lines:
            assert line.startswith("error:") and "SCSTN_VCN_CPU_OUTPUT_CACHE_MB" in line and "'12abc'" in line, line


# --- the output cache across fork ---

FORK_PROBE = """
import os, sys, threading, time
import torch
from scstn_vcn import ops
ok, why = ops.load_native()
assert ok, why
N, C = torch.ops.scstn_vcn, torch.ops.scstn_vcn_cache
hold_ms = int(sys.argv[1])

def rss_anon():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) << 10 for line in status if line.startswith("RssAnon:"))

x = torch.randn(16, 512, 64, 32)  # grad_x: 64 MiB, from the cache
_, _, argmax = N.channel_pool(x)
g_mean, g_pool = torch.randn(16, 64, 32), torch.randn(16, 512)
grad = lambda: N.channel_pool_backward(g_mean, g_pool, argmax, x)
expected = grad()
address = grad().data_ptr()  # freed at once: its block is idle, mapped and resident
print("parent before fork", *C.cpu_output_cache_stats(), flush=True)
# Another thread holds the cache's lock (as one inside an allocation would) while this one forks.
holder = threading.Thread(target=C.cpu_output_cache_hold_lock, args=(hold_ms,))
holder.start()
time.sleep(min(0.2, hold_ms / 4000))
read, write = os.pipe()
rss = rss_anon()
pid = os.fork()
if pid == 0:
    os.close(read)
    freed = rss - rss_anon()
    torch.set_num_threads(1)  # as a DataLoader worker does: OpenMP's threads are not in the child (torch's ops hang)
    idle = C.cpu_output_cache_stats()  # takes the lock: waits forever if the child inherited it locked
    same = torch.equal(grad(), expected)
    os.write(write, f"child {idle[0]} {idle[1]} {freed >> 20} {same}".encode())
    os._exit(0)
os.close(write)
holder.join()
deadline = time.monotonic() + 60
while time.monotonic() < deadline and os.waitpid(pid, os.WNOHANG) == (0, 0):
    time.sleep(0.01)
if time.monotonic() >= deadline:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
print(os.read(read, 200).decode() or "child hung", flush=True)
print("parent after fork", *C.cpu_output_cache_stats(), grad().data_ptr() == address, flush=True)
"""


@pytest.mark.skipif(bool(os.environ.get("SCSTN_VCN_CPU_OUTPUT_CACHE_MB")), reason="the output cache is configured")
@pytest.mark.skipif(not hasattr(os, "fork") or not os.path.exists("/proc/self/status"), reason="fork and /proc")
def test_a_forked_child_neither_deadlocks_on_the_cache_nor_keeps_its_idle_blocks(tmp_path):
    """A process forked while another thread holds the cache's lock (here for 1 s, as a thread inside an
    allocation does for microseconds) gets a usable cache: fork waits for the lock, and the child's first
    large output does not wait forever. The child starts with no idle blocks: its copies of the parent's
    64 MiB are unmapped at once (RssAnon falls by that much), and the parent keeps its own and reuses them."""
    done = subprocess.run(
        [sys.executable, "-c", FORK_PROBE, "1000"],
        cwd=tmp_path,  # not the source tree (see above)
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    mib = 1 << 20
    assert lines[0] == f"parent before fork 1 {64 * mib} {256 * mib}", lines
    assert lines[1] != "child hung", lines
    _, blocks, idle_bytes, freed_mib, same = lines[1].split()
    assert (blocks, idle_bytes, same) == ("0", "0", "True"), lines
    assert int(freed_mib) >= 60, lines  # 64 MiB less what the child allocated since
    assert lines[2] == f"parent after fork 1 {64 * mib} {256 * mib} True", lines


# --- errors from C++ name the argument ---


def _error(call):
    with pytest.raises(RuntimeError) as info:
        call()
    return str(info.value)


def _check_affine_errors(forward, backward, x, theta):
    assert "x must be 4-D" in _error(lambda: forward(x[0], theta))
    assert "theta must have shape" in _error(lambda: forward(x, theta[:1]))
    assert "theta must be 3-D" in _error(lambda: forward(x, theta.flatten(1)))
    assert "theta must be Float" in _error(lambda: forward(x, theta.double()))
    assert "theta must be Double" in _error(lambda: forward(x.double(), theta))
    out, argmax = forward(x, theta)
    assert "argmax must be Int" in _error(lambda: backward(out, x, theta, argmax.long()))
    assert "grad_out must have shape" in _error(lambda: backward(out[:, :2], x, theta, argmax))
    assert "argmax must hold" in _error(lambda: backward(out, x, theta, argmax + 5))


def test_direct_calls_with_bad_inputs_name_the_argument():
    N = native()
    x = torch.randn(2, 3, 4, 5)
    theta = make_theta(2, "norot", torch.float32)
    assert "x must be 4-D" in _error(lambda: N.channel_pool(x[0]))
    assert "x must be float16, bfloat16, float32 or float64" in _error(lambda: N.channel_pool(x.to(torch.int32)))
    # what the general and the separable affine_hpool check alike
    _check_affine_errors(N.affine_hpool, N.affine_hpool_backward, x, theta)
    _check_affine_errors(N.affine_hpool_separable, N.affine_hpool_separable_backward, x, theta)

    assert "theta must have shape" in _error(lambda: N.affine_hpool(x, theta[:, :, :2].contiguous()))
    assert "x must be float16, bfloat16, float32 or float64" in _error(lambda: N.affine_hpool_separable(x.int(), theta))
    out, argmax = N.affine_hpool_separable(x, theta)
    assert "argmax must have shape" in _error(lambda: N.affine_hpool_separable_backward(out, x, theta, argmax[:1]))
    assert "grad_out must be float16" in _error(lambda: N.affine_hpool_separable_backward(out.int(), x, theta, argmax))
    assert "argmax must hold" in _error(lambda: N.affine_hpool_separable_backward(out, x, theta, argmax - 1 - argmax))

    cmean, gpool, cargmax = N.channel_pool(x)
    assert "grad_gpool must have shape" in _error(lambda: N.channel_pool_backward(cmean, gpool[:1], cargmax, x))
    assert "argmax must hold" in _error(lambda: N.channel_pool_backward(cmean, gpool, cargmax * 0 - 1, x))

    F = torch.randn(2, 3, 4)
    delta = torch.randn(3, 6, 4)
    assert "F must be 3-D" in _error(lambda: N.vertical_proj(F[0], delta))
    assert "delta must have shape (C, K, H)" in _error(lambda: N.vertical_proj(F, delta[:, :, :3]))
    assert "delta must be Float" in _error(lambda: N.vertical_proj(F, delta.double()))
    assert "grad_f must be float16" in _error(
        lambda: N.vertical_proj_backward(torch.ones(2, 3, 6, dtype=torch.int64), F, delta)
    )
