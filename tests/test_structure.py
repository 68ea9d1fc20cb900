"""The layering the code relies on: the kernels sit below the library (nothing in kernels/
imports orthoasr), and no module of the library imports one that imports it back, directly
or through others, counting imports inside functions."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "kernels":
        parts = ["orthoasr", *parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every orthoasr module `path` imports anywhere in its body (absolute names)."""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.add(module)
            found |= {f"{module}.{a.name}" for a in node.names}
    return {name for name in found if name.split(".")[0] == "orthoasr"}


def _graph() -> dict[str, set[str]]:
    files = [*ROOT.glob("orthoasr/**/*.py"), *ROOT.glob("kernels/*.py")]
    modules = {_module_name(f): f for f in files}
    return {name: {m for m in _imports(path) if m in modules and m != name}
            for name, path in modules.items()}


def test_kernels_import_nothing_from_the_library():
    for name, deps in _graph().items():
        if name.startswith("orthoasr.kernels"):
            outside = {d for d in deps if not d.startswith("orthoasr.kernels")}
            assert not outside, (name, outside)


def test_no_import_cycles():
    graph = _graph()
    packages = {name for name in graph if any(other.startswith(name + ".") for other in graph)}
    # a package's __init__ re-exports its modules: an edge into a package is not a cycle
    # through its submodules, so cycles are looked for among modules only
    graph = {n: {d for d in deps if d not in packages} for n, deps in graph.items()
             if n not in packages}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path + [node, dep]))
            if dep not in state:
                visit(dep, path + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_tests_import_nothing_from_bench():
    for path in (ROOT / "tests").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n == "bench" or n.startswith("bench.") for n in names), path.name


def test_every_kernel_awaits_its_producers_first():
    """Each `@triton.jit` kernel in kernels/ (a `_*_kernel` function) takes `PDL` and calls
    `await_producers(PDL)` as its first statement: `launch` starts such kernels with
    programmatic dependent launch on Hopper, and one that read or wrote memory before the
    wait could see the previous kernel's inputs half written."""
    kernels = []
    for path in sorted((ROOT / "kernels").glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name.endswith("_kernel") and \
                    any(ast.unparse(d) == "triton.jit" for d in node.decorator_list):
                kernels.append(node.name)
                params = [a.arg for a in node.args.args]
                body = [s for s in node.body if not (isinstance(s, ast.Expr) and
                                                     isinstance(s.value, ast.Constant))]
                assert "PDL" in params, f"{path.name}: {node.name} takes no PDL parameter"
                assert ast.unparse(body[0]) == "await_producers(PDL)", \
                    f"{path.name}: {node.name} does not start with await_producers(PDL)"
    assert len(kernels) >= 25, kernels
