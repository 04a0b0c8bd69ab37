"""Checks of the op contract shared by the three ops' test files: torch.library.opcheck of the registered
ops (forward and backward), tracing by torch.compile(fullgraph=True), bitwise determinism, and the affine
ops' zero result when every sample falls outside the map."""

import torch
from op_harness import call_op, kernel_inputs, lay_out

from scstn_vcn.ops._backend import op_namespace


def opcheck_forward_and_backward(op, backend, case):
    namespace = op_namespace(backend)
    args = kernel_inputs(op, case)
    forward = getattr(namespace, op).default
    torch.library.opcheck(forward, args)
    outputs = forward(*args)
    outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    backward = getattr(namespace, f"{op}_backward").default
    if op == "channel_pool":
        cmean, gpool, argmax = outputs
        backward_args = (torch.randn_like(cmean), torch.randn_like(gpool), argmax, args[0])
    elif op in ("affine_hpool", "affine_hpool_separable"):
        out, argmax = outputs
        backward_args = (torch.randn_like(out), args[0], args[1], argmax)
    else:
        backward_args = (torch.randn_like(outputs[0]), *args)
    # backward ops have no autograd formula of their own (no double backward): skip that check
    torch.library.opcheck(
        backward, backward_args, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static")
    )


def compiled_matches_eager(fn, inputs):
    """fn traced by torch.compile(fullgraph=True) (aot_eager: the fake functions and autograd formulas are
    what is traced) gives the same outputs and gradients as fn run eagerly."""
    eager_inputs = [t.detach().clone().requires_grad_() for t in inputs]
    compiled_inputs = [t.detach().clone().requires_grad_() for t in inputs]
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    expected = fn(*eager_inputs)
    actual = compiled(*compiled_inputs)
    torch.testing.assert_close(actual, expected)
    expected.sum().backward()
    actual.sum().backward()
    for a, e in zip(compiled_inputs, eager_inputs):
        torch.testing.assert_close(a.grad, e.grad)


def backward_is_bitwise_deterministic(op, backend, case):
    """Two forward+backward runs of `op` on the same case give bitwise-equal gradients."""
    grads = []
    for _ in range(2):
        inputs = {k: lay_out(v, case.dtype, case.layout).requires_grad_() for k, v in case.values.items()}
        outputs = call_op(op, inputs, backend)
        gen = torch.Generator().manual_seed(1)
        torch.autograd.backward(outputs, [torch.randn(o.shape, generator=gen).to(o.dtype) for o in outputs])
        grads.append([inputs[k].grad for k in sorted(inputs)])
    for first, second in zip(*grads):
        assert torch.equal(first, second)


def all_samples_outside_give_zero(pool, theta_rows):
    """pool(x, theta) -- an affine_hpool flavour -- on a (2, 3, 4, 5) x with every batch element's theta
    set to theta_rows (2 x 3, shifting all samples out of the map): out, dx and dtheta exactly 0."""
    x = torch.randn(2, 3, 4, 5, requires_grad=True)
    theta = torch.tensor(theta_rows).expand(2, 2, 3).contiguous().requires_grad_()
    out = pool(x, theta)
    assert torch.equal(out, torch.zeros(2, 3, 4))
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x)) and torch.equal(theta.grad, torch.zeros_like(theta))
