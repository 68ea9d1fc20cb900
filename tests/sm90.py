"""Compiling kernels for an H100/H200 (sm_90) on the CPU. The interpreter runs code that the
compiler rejects (a jit helper with two return types did, 2026-11-30), and under
TRITON_INTERPRET the kernels are interpreted functions: so a script compiles them in a
process of its own without it."""

import os
import subprocess
import sys

PRELUDE = '''
import inspect
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

def compile_sm90(kernel, constexprs, types, num_warps):
    """kernel compiled for sm_90; types: name -> Triton type of an argument (pointers
    default to *bf16, other arguments to i32)."""
    signature = {name: "constexpr" if name in constexprs else
                 types.get(name, "*bf16" if name.endswith("_ptr") else "i32")
                 for name in inspect.signature(kernel.fn).parameters}
    compiled = triton.compile(ASTSource(kernel, signature, constexprs),
                              target=GPUTarget("cuda", 90, 32),
                              options=dict(num_warps=num_warps))
    assert compiled.asm["cubin"]
    return compiled
'''


def assert_compiles_for_sm90(script: str) -> None:
    """Run PRELUDE + script (which calls compile_sm90) without TRITON_INTERPRET."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", PRELUDE + script], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
