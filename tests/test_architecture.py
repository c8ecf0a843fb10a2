"""The house's rules, read from the code: arrows one way, no cycles, a numpy-only data floor, short functions.

`launch -> oceansar.apps -> oceansar (library) -> curation -> jax/numpy`: nothing in the library or in
`curation` imports an application, `curation` imports nothing of `oceansar`, the modules form no import cycle,
`oceansar/data` never imports jax (Grain worker processes import it) and imports TFDS only when a TFDS source is
built, and no function is longer than about 80 lines unless a comment above it says why.
"""
import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("oceansar", "curation")
MAX_FUNCTION_LINES = 80
# The TFDS builders and reader: the only data modules that import tensorflow_datasets (when a TFDS source is built).
TFDS_MODULES = ("oceansar.data.tfds_wv", "oceansar.data.tfds_safe")


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(path: pathlib.Path, name: str, known: set[str]) -> set[str]:
    """The project modules `path` imports anywhere in its body (function-level imports are arrows too)."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        out.update(t for t in targets if t.split(".")[0] in PACKAGES)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(path, name, known) - {name} for name, path in modules.items()}


def test_arrows_point_one_way():
    graph = _graph()
    for module, targets in graph.items():
        if not module.startswith("oceansar.apps"):
            apps = sorted(t for t in targets if t.startswith("oceansar.apps"))
            assert not apps, f"{module} (library) imports the application floor: {apps}"
        if module.startswith("curation"):
            ours = sorted(t for t in targets if t.startswith("oceansar"))
            assert not ours, f"{module} (curation) imports oceansar: {ours}"


def test_no_import_cycle():
    graph = _graph()
    # A package's __init__ re-exporting its submodules is the package's own face, not an arrow back.
    edges = {m: {t for t in ts if not (m.startswith(t + ".") and t in graph)} for m, ts in graph.items()}
    done, stack = set(), []

    def visit(module):
        if module in stack:
            cycle = stack[stack.index(module):] + [module]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        stack.append(module)
        for target in edges.get(module, ()):
            if target in edges:
                visit(target)
        stack.pop()
        done.add(module)

    for module in sorted(edges):
        visit(module)


def test_data_floor_is_numpy_and_grain_only():
    modules = _modules()
    for name, path in modules.items():
        if not name.startswith("oceansar.data"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not [n for n in names if n.split(".")[0] in ("jax", "jaxlib", "flax", "optax")], \
                f"{name} imports {names}: oceansar/data must stay numpy-only"
            if name not in TFDS_MODULES:
                assert not [n for n in names if n.startswith("tensorflow")], \
                    f"{name} imports {names}: TFDS is imported only when a TFDS source is built"
    data_modules = [n for n in modules if n.startswith("oceansar.data") and n not in TFDS_MODULES]
    code = ("import sys\n" + "".join(f"import {m}\n" for m in data_modules)
            + "bad = [m for m in ('tensorflow_datasets', 'tensorflow', 'oceansar.apps', 'flax', 'optax') "
              "if m in sys.modules]\nassert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def _body_lines(node) -> int:
    """Lines of a function without its docstring."""
    lines = node.end_lineno - node.lineno + 1
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant) \
            and isinstance(first.value.value, str):
        lines -= first.end_lineno - first.lineno + 1
    return lines


def test_functions_are_short_or_say_why():
    long = []
    for name, path in _modules().items():
        source = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(source))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _body_lines(node) > MAX_FUNCTION_LINES:
                above = source[(node.decorator_list[0].lineno if node.decorator_list else node.lineno) - 2].strip()
                if not above.startswith("#"):
                    long.append(f"{name}.{node.name} ({_body_lines(node)} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines without a comment saying why: {long}"
