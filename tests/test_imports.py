"""The package's modules import as a DAG: each imports alone, in a fresh interpreter, and none
imports a module above it in the house order (_native <- ane <- backends <- kernels <- model <-
generation <- trainer), at the top of the module or inside a function."""
import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "anetrain")
MODULES = sorted(f[:-3] for f in os.listdir(PKG) if f.endswith(".py") and f != "__init__.py")
# the layers of design.md; a module may import only modules of its own layer or below
ORDER = ["ane", "backends", "kernels", "model", "generation", "trainer"]


@pytest.mark.parametrize("name", [m for m in MODULES if m != "torch_reference"])
def test_each_module_imports_alone(name):
    r = subprocess.run([sys.executable, "-c", f"import anetrain.{name}"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]


def package_imports(name):
    """Every anetrain module `name` imports, wherever in the file, with whether it is at the top."""
    tree = ast.parse(open(os.path.join(PKG, name + ".py")).read())
    top = set(id(n) for n in tree.body)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            targets = [node.module] if node.module else [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("anetrain"):
            rest = node.module[len("anetrain"):].lstrip(".")
            targets = [rest] if rest else [a.name for a in node.names]
        else:
            continue
        found += [(t.split(".")[0], id(node) in top) for t in targets]
    return found


@pytest.mark.parametrize("name", MODULES)
def test_no_import_reaches_up_or_hides_in_a_function(name):
    for target, at_top in package_imports(name):
        if target not in MODULES:
            continue  # _native, subpackages
        assert at_top, f"anetrain.{name} imports anetrain.{target} inside a function"
        if name in ORDER and target in ORDER:
            assert ORDER.index(target) <= ORDER.index(name), f"anetrain.{name} imports anetrain.{target}, above it"


def test_the_import_graph_has_no_cycle():
    graph = {m: {t for t, _ in package_imports(m) if t in MODULES and t != m} for m in MODULES}
    state = {}

    def visit(m, path):
        if state.get(m) == "done":
            return
        assert state.get(m) != "active", "import cycle: " + " -> ".join(path + [m])
        state[m] = "active"
        for t in sorted(graph[m]):
            visit(t, path + [m])
        state[m] = "done"

    for m in MODULES:
        visit(m, [])
