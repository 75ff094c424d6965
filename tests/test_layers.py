"""The layers of DESIGN.md, enforced: every module of src/tensorllm imports only from its own layer or
the layers below it, and the module import graph has no cycle (imports inside functions count too).

`from pkg import name` counts as an import of `pkg.name` when that is a module, else of `pkg`; a
package's own `__init__` is not counted as a dependency of its submodules (Python runs it first,
whatever the submodule imports).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# bottom to top; a module belongs to the layer of its longest matching prefix
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("tensorllm.base",)),
    ("tensor", ("tensorllm.tensor",)),
    ("arch", ("tensorllm.arch_spec", "tensorllm.archs", "tensorllm.attention")),
    ("model I/O", ("tensorllm.models", "tensorllm.data")),
    ("methods", ("tensorllm.methods",)),
    ("recipe/api", ("tensorllm", "tensorllm.recipe", "tensorllm.report", "tensorllm.api")),
    ("eval", ("tensorllm.eval",)),
    ("search", ("tensorllm.search",)),
    ("runtime", ("tensorllm.runtime",)),
    ("package", ()),  # tensorllm/__init__.py itself: the public API re-exports (tensorllm.load is runtime's)
    ("cli", ("tensorllm.cli",)),
]
EXACT = {"tensorllm": "package"}  # modules placed by their exact name, before any prefix


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / "tensorllm").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def layer_of(module: str) -> int:
    if module in EXACT:
        return [name for name, _ in LAYERS].index(EXACT[module])
    best, index = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, index = len(p), i
    assert index is not None, f"{module} belongs to no layer: add it to LAYERS and DESIGN.md"
    return index


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "tensorllm")
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "tensorllm":
                continue
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known]
            out.update(subs if len(subs) == len(node.names) else subs + [target])
    parents = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
    return {m for m in out if m != module and m not in parents}


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: imports_of(m, p, known) for m, p in mods.items()}


def test_every_module_imports_only_from_its_layer_or_below():
    upward = []
    for module, deps in graph().items():
        mine = layer_of(module)
        for dep in sorted(deps):
            if layer_of(dep) > mine:
                upward.append(f"{module} ({LAYERS[mine][0]}) imports {dep} ({LAYERS[layer_of(dep)][0]})")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(g.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d) :] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(g):
        if m not in state:
            cycle = visit(m)
            if cycle:
                return cycle
    return None


def test_the_import_graph_has_no_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checker_sees_a_cycle():
    g = graph()
    g["tensorllm.eval.decoder"] = g["tensorllm.eval.decoder"] | {"tensorllm.eval.evaluate"}
    assert find_cycle(g) is not None


@pytest.mark.parametrize(
    "source, expect",
    [
        ("from tensorllm.cli import app\n", "upward"),
        ("import tensorllm.search.store\n", "upward"),
    ],
)
def test_the_checker_sees_an_upward_import(tmp_path, source, expect):
    """The check can fail: a base-layer module importing the CLI or the search is reported."""
    path = tmp_path / "probe.py"
    path.write_text(source)
    deps = imports_of("tensorllm.base.probe", path, set(modules()))
    assert any(layer_of(d) > layer_of("tensorllm.base.probe") for d in deps) == (expect == "upward")


def test_the_checker_sees_a_cycle_through_function_level_imports(tmp_path):
    a = tmp_path / "a.py"
    a.write_text("def f():\n    from tensorllm.eval.evaluate import evaluate\n")
    assert "tensorllm.eval.evaluate" in imports_of("tensorllm.eval.decoder", a, set(modules()))
