"""Compile every attention / MHSA Triton kernel for sm_90 without a GPU (front end, MLIR
passes, ptxas), at the benchmark configurations, and print registers, spills and shared
memory. Catches compile errors the interpreter cannot see (e.g. loop-carried type changes).

    python -m bench.compile_check_attention
"""

from __future__ import annotations

import inspect

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from orthoasr.kernels import gated_attention as ga
from orthoasr.kernels import gated_mhsa as gm

SHARED_LIMIT = 232448   # bytes per block on an H100 (227 KiB)


# the paper model at B32xT250 (packed qkv (B, T, H, 3, Dh) and (B, T, H, Dh) outputs: every
# stride a multiple of 16)
STRIDES = ("stride_qb", "stride_qh", "stride_qt", "stride_kb", "stride_kh", "stride_kt",
           "stride_vb", "stride_vh", "stride_vt", "stride_ob", "stride_oh", "stride_ot",
           "stride_dob", "stride_doh", "stride_dot", "stride_dkb", "stride_dkh", "stride_dkt",
           "stride_dvb", "stride_dvh", "stride_dvt", "stride_dqb", "stride_dqh", "stride_dqt")
TYPICAL = {name: 192 for name in STRIDES} | dict(H=6, T=250, M=8000, D=384)


def _cubin_tool(cubin: bytes, tool: str, *args: str) -> str | None:
    """stdout of one of the CUDA tools shipped with Triton (cuobjdump, nvdisasm) run on
    `cubin`, or None where it does not run here."""
    import os
    import subprocess
    import tempfile

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", tool)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        try:
            return subprocess.run([path, *args, f.name], capture_output=True,
                                  text=True).stdout
        except OSError:
            return None


def _resource_usage(cubin: bytes) -> str:
    """Registers / spills from cuobjdump, if it runs here."""
    out = _cubin_tool(cubin, "cuobjdump", "-res-usage")
    if out is None:
        return "?"
    line = next((x for x in out.splitlines() if "REG:" in x), "")
    fields = dict(x.split(":", 1) for x in line.split() if ":" in x)
    return f"{fields.get('REG', '?')} spill {fields.get('STACK', '?')}"


def _sass_loops(cubin: bytes) -> list[list[str]] | None:
    """The kernel's loops in SASS (a label to a branch back to it), each as its instruction
    lines, from nvdisasm, if it runs here."""
    import re

    out = _cubin_tool(cubin, "nvdisasm", "-c")
    if out is None:
        return None
    lines = out.splitlines()
    labels = {m.group(1): i for i, line in enumerate(lines)
              if (m := re.match(r"^(\.L_x_\d+):", line))}
    loops = []
    for i, line in enumerate(lines):
        m = re.search(r"BRA `\((\.L_x_\d+)\)", line)
        if m and labels.get(m.group(1), i) < i:
            loops.append([x for x in lines[labels[m.group(1)]:i + 1]
                          if re.search(r"/\*[0-9a-f]{4}\*/", x)])
    return loops


def _longest_loop(loops: list[list[str]] | None) -> str:
    """SASS instructions in the kernel's longest loop: with the loop's FMAs or MMAs, a cheap
    measure of the work an iteration issues (the sliding-window convs took ~49 a frame and
    channel where the tap loops before them took 106-134, 2026-12-02)."""
    if loops is None:
        return "?"
    longest = max(map(len, loops), default=0)
    return str(longest if longest > 1 else 0)   # 1: the end-of-kernel branch to itself


def _mma_loop(loops: list[list[str]] | None) -> str:
    """The shortest loop that issues tensor-core MMAs (a GEMM's K-loop): its SASS instructions
    and how many of them move a value into a uniform register (R2UR). Once the loads and MMAs
    are pipelined, every instruction a step shows in the time: a K-loop over the live chunks
    took 19.3 us at 142 instructions, 17.9 at 121, and a plain one 16.9 at 86 (M 8000,
    K 1536, N 384, H200, 2026-12-04). R2URs mark values the compiler could not prove
    warp-uniform (a trip count from loaded gates, say)."""
    if loops is None:
        return "?"
    mma = [body for body in loops if any("MMA" in x for x in body)]
    if not mma:
        return "none"
    best = min(mma, key=len)
    return f"{len(best)} instructions, {sum('R2UR' in x for x in best)} R2UR"


def _loop_conversions(ttgir: str) -> int:
    """Layout conversions inside loops of a kernel's TTGIR: each one is a round trip through
    shared memory with barriers, per iteration (a conv kernel's per-tap weight row cost two
    barriers a tap that way, 2026-11-30)."""
    depth, count = 0, 0
    for line in ttgir.splitlines():
        if "scf.for" in line:
            depth += 1
        elif "scf.yield" in line and depth:
            depth -= 1
        elif depth and "ttg.convert_layout" in line:
            count += 1
    return count


def _compile(kernel, ptrs: dict, ints=None, floats=(), constexprs=None, num_warps=4,
             num_stages=3, maxnreg=None):
    """Compile as a launch would: pointers 16-byte aligned, and each int of `ints` (name ->
    a typical value; default TYPICAL, the attention kernels' sizes) specialised like
    Triton's launcher does (1 -> a constant, a multiple of 16 -> divisible by 16). Without
    these hints Triton neither vectorises nor pipelines the loads: a plain tiled GEMM then
    compiled to 1 stage of shared memory and 255 registers with spills, against 4 stages and
    118 registers with them (2026-11-30). num_stages defaults to a launch's (3 on CUDA): a
    kernel whose launcher sets none compiles with that many. A kernel with a `PDL` parameter
    compiles with it on, as `launch` does on Hopper (programmatic dependent launch)."""
    fn = kernel.fn if hasattr(kernel, "fn") else kernel
    params = inspect.signature(fn.fn if hasattr(fn, "fn") else fn).parameters
    names = list(params)
    # constexprs left out take their defaults, as a launch does (not runtime ints)
    # and PDL and GPU on where the kernel takes them, as `launch` sets them for a CUDA
    # launch on Hopper (their defaults, False, are the interpreter's)
    launched = {name: True for name in ("PDL", "GPU") if name in params}
    constexprs = {name: p.default for name, p in params.items()
                  if p.default is not p.empty and "constexpr" in str(p.annotation)} \
        | launched | dict(constexprs or {})
    ints = {name: value for name, value in (TYPICAL if ints is None else ints).items()
            if name in names}
    constexprs.update({name: 1 for name, value in ints.items() if value == 1})
    signature, attrs = {}, {}
    for index, name in enumerate(names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in ptrs and ptrs[name].startswith("tensordesc"):   # a TMA descriptor
            signature[name] = ptrs[name]
        elif name in ptrs:
            signature[name] = "*" + ptrs[name]
            attrs[(index,)] = [["tt.divisibility", 16]]
        elif name in floats:
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
            if ints.get(name, 1) % 16 == 0:
                attrs[(index,)] = [["tt.divisibility", 16]]
    src = ASTSource(kernel, signature, constexprs, attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                              options=dict(num_warps=num_warps, num_stages=num_stages,
                                           maxnreg=maxnreg,
                                           launch_pdl=bool(constexprs.get("PDL"))))
    shared = getattr(compiled.metadata, "shared", 0)
    ok = shared <= SHARED_LIMIT
    n_regs = _resource_usage(compiled.asm["cubin"])
    loops = _sass_loops(compiled.asm["cubin"])
    print(f"{kernel.fn.__name__ if hasattr(kernel, 'fn') else fn.__name__:32s} "
          f"warps {num_warps} stages {num_stages} shared {shared:7d} B "
          f"{'OK' if ok else 'TOO MUCH SHARED MEMORY'} regs {n_regs} "
          f"barriers {compiled.asm['ptx'].count('bar.sync')} "
          f"loop conversions {_loop_conversions(compiled.asm['ttgir'])} "
          f"async copies {compiled.asm['ttgir'].count('async_copy_global_to_local')} "
          f"TMA copies {compiled.asm['ttgir'].count('async_tma_copy_global_to_local')} "
          f"longest loop {_longest_loop(loops)} instructions MMA loop {_mma_loop(loops)}")
    return ok


def main() -> None:
    ok = True
    for dt, prec in (("bf16", "tf32"), ("fp16", "tf32"), ("fp32", "ieee")):
        base = dict(HEAD_DIM=64, BLOCK_D=64, DOT_PRECISION=prec)
        for cfg in (ga._config_table("fwd", T) for T in (250, 750, 2048)):
            cfg = dict(cfg)
            warps, stages = cfg.pop("num_warps"), cfg.pop("num_stages")
            ok &= _compile(ga._gated_attn_fwd_kernel,
                           dict(q_ptr=dt, k_ptr=dt, v_ptr=dt, len_ptr="i64", gate_ptr="fp32",
                                o_ptr=dt, lse_ptr="fp32"), floats=("qk_scale",),
                           constexprs=dict(base, ZERO_DEAD=False, **cfg),
                           num_warps=warps, num_stages=stages)
        ptrs = dict(q_ptr=dt, k_ptr=dt, v_ptr=dt, do_ptr=dt, lse_ptr="fp32", delta_ptr="fp32",
                    len_ptr="i64", gate_ptr="fp32")
        cfg = dict(ga._config_table("dq", 250))
        warps, stages = cfg.pop("num_warps"), cfg.pop("num_stages")
        ok &= _compile(ga._gated_attn_bwd_delta_kernel, ptrs | {"dgate_part_ptr": "fp32"},
                       floats=("qk_scale",), constexprs=dict(base, **cfg),
                       num_warps=warps, num_stages=stages)
        for kernel, kind, outs in ((ga._gated_attn_bwd_dkdv_kernel, "dkdv", ("dk_ptr", "dv_ptr")),
                                   (ga._gated_attn_bwd_dq_kernel, "dq", ("dq_ptr",))):
            cfg = dict(ga._config_table(kind, 250))
            warps, stages = cfg.pop("num_warps"), cfg.pop("num_stages")
            for zero_dead in (True, False):
                ok &= _compile(kernel, ptrs | {n: dt for n in outs},
                               floats=("sm_scale", "qk_scale"),
                               constexprs=dict(base, ZERO_DEAD=zero_dead, **cfg),
                               num_warps=warps, num_stages=stages)
        ok &= _compile(ga._gated_attn_dgate_kernel,
                       dict(part_ptr="fp32", gate_ptr="fp32", dgate_ptr="fp32"),
                       constexprs=dict(BLOCK=128))
        blk = gm._blocks_gpu(64)
        common = dict(HEAD_DIM=64, BLOCK_D=64, DOT_PRECISION=prec)
        mm = dict(num_warps=blk["opts"]["num_warps"], num_stages=blk["opts"]["num_stages"])
        dw = dict(num_warps=blk["dw_opts"]["num_warps"],
                  num_stages=blk["dw_opts"]["num_stages"])
        ok &= _compile(gm._in_proj_fwd_kernel,
                       dict(y_ptr=dt, w_ptr=dt, b_ptr="fp32", gate_ptr="fp32", qkv_ptr=dt),
                       constexprs=dict(common, BLOCK_M=blk["BLOCK_M"], BLOCK_K=blk["BLOCK_K"]),
                       **mm)
        if dt != "fp32":      # the 16-bit default: operands by TMA descriptors
            tma = dict(blk["in_proj"])
            bm, bk = tma.pop("BLOCK_M"), blk["BLOCK_K"]
            ok &= _compile(gm._in_proj_fwd_kernel,
                           dict(y_ptr=f"tensordesc<{dt}[{bm},{bk}]>",
                                w_ptr=f"tensordesc<{dt}[64,{bk}]>", b_ptr="fp32",
                                gate_ptr="fp32", qkv_ptr=dt),
                           constexprs=dict(common, BLOCK_M=bm, BLOCK_K=bk, TMA=True), **tma)
        out_proj = {**blk, **blk["out_proj"]}     # the forward's own tile
        for mode in (0, 1, 2, 3):      # 3: BIAS_IF_LIVE_AFTER (a batch of two passes)
            ok &= _compile(gm._out_proj_fwd_kernel,
                           dict(a_ptr=dt, w_ptr=dt, b_ptr="fp32", gate_ptr="fp32",
                                scale_ptr="fp32", out_ptr=dt),
                           constexprs=dict(common, BLOCK_M=out_proj["BLOCK_M"],
                                           BLOCK_N=out_proj["wide"], BIAS_MODE=mode, BLOCK_H=8),
                           **out_proj["opts"])
            ok &= _compile(gm._out_proj_dw_kernel,
                           dict(dout_ptr=dt, a_ptr=dt, b_ptr="fp32", gate_ptr="fp32",
                                scale_ptr="fp32", dw_ptr="fp32", db_ptr="fp32",
                                dscale_ptr="fp32"),
                           constexprs=dict(common, BLOCK_M=blk["BLOCK_M"],
                                           BLOCK_N=blk["BLOCK_N"], BIAS_MODE=mode, BLOCK_H=8),
                           **dw)
        ok &= _compile(gm._out_proj_da_kernel,
                       dict(dout_ptr=dt, w_ptr=dt, gate_ptr="fp32", da_ptr=dt),
                       constexprs=dict(common, BLOCK_M=blk["BLOCK_M"], BLOCK_K=blk["BLOCK_K"]),
                       **mm)
    print("all kernels compiled" if ok else "SOME KERNELS FAILED THE SHARED-MEMORY CHECK")


if __name__ == "__main__":
    main()
