"""Triton 3.6's interpreter with numpy 2.4 and later: make loop bounds work again.

The interpreter holds every scalar kernel argument (H, W, C H, ...) as a one-element numpy array, and a
Python loop over a runtime bound, `for p0 in range(0, HW, BLOCK_P)`, turns it into an int with
`int(array)`. numpy 2.4 made that conversion of an array with ndim > 0 a TypeError (deprecated since
1.25), so under triton 3.6 every kernel with such a loop stops at its first loop with "only 0-dimensional
arrays can be converted to Python scalars". Triton 3.7 converts `array.squeeze()` instead
(triton-lang/triton#9171). The GPU image pairs triton 3.6 with numpy 2.5, so rather than cap numpy, on
triton < 3.7 this module makes the interpreter's tensor conversion the one triton 3.7 has. It changes
nothing else, only in a process that interprets (TRITON_INTERPRET=1) and only on triton < 3.7; compiled
kernels never reach this code.
"""

import triton

from scstn_vcn.kernels import INTERPRET

FIXED_IN = (3, 7)


def _triton_version():
    parts = []
    for part in triton.__version__.split(".")[:2]:
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def needed():
    """True when this process interprets the kernels with a triton whose scalar conversion numpy 2.4
    refuses."""
    return INTERPRET and _triton_version() < FIXED_IN


def apply():
    """Wrap triton.runtime.interpreter._patch_lang_tensor (which the interpreter calls around every
    kernel run to give tl.tensor its Python conversions) so that __index__ squeezes the one-element
    array first. Idempotent; a no-op where it is not needed or where triton has no such function."""
    if not needed():
        return False
    from triton.runtime import interpreter

    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or getattr(original, "_scstn_vcn_squeezes", False):
        return False

    def patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    patch_lang_tensor._scstn_vcn_squeezes = True
    interpreter._patch_lang_tensor = patch_lang_tensor
    return True
