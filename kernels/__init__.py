"""Triton kernels of orthoasr, one file per op, each with its PyTorch reference beside it.

Installed as `orthoasr.kernels` (setup.py maps this folder there).

Under TRITON_INTERPRET=1 every kernel module is imported with the package and each
`@triton.jit` function's source is read at once. Triton's compiler reads a kernel's source
when it is defined, but its interpreter reads it from the file at the kernel's first launch,
minutes later in a test run, and finds the function at the line where it was at import: an
edit of the file in between (an editor, a checkout) gave it the lines of another function
(`KeyError: '_masked_relu_pool_bwd_kernel'` in a test run on a working tree being edited,
2026-12-06, most likely so; tests/test_kernel_sources.py makes it happen).
"""

import importlib
import pkgutil

from .common import interpreting


def _read_kernel_sources() -> None:
    """Each module of the package imported, and its `@triton.jit` functions' sources read
    now: the interpreter keeps the function it builds from them for the process."""
    from triton.runtime.interpreter import InterpretedFunction
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for value in list(vars(module).values()):    # rewriting adds globals
            if isinstance(value, InterpretedFunction) and hasattr(value, "rewrite") and \
                    value.fn.__module__ == module.__name__:
                value.rewrite()


if interpreting():
    _read_kernel_sources()
