"""The package's layering, read from its source: no import cycle, no module using
another module's private names, and a generic BO step that names no method."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "eeipu_jax"
# Methods every namedtuple has: public despite the underscore.
NAMEDTUPLE_API = {"_replace", "_asdict", "_fields", "_field_defaults", "_make"}


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in ROOT.rglob("*.py")}
TREES = {name: ast.parse(p.read_text(encoding="utf-8")) for name, p in MODULES.items()}


def _resolve(name: str, node: ast.ImportFrom | None = None) -> list[str]:
    """The eeipu_jax modules an import statement names."""
    out = []
    if node is None:
        return [name] if name in MODULES else []
    base = node.module or ""
    if not base.startswith("eeipu_jax"):
        return []
    for alias in node.names:
        full = f"{base}.{alias.name}"
        out.append(full if full in MODULES else base)
    return [m for m in out if m in MODULES]


def _imports(tree) -> list[tuple[str, ast.AST]]:
    """Every eeipu_jax import of a module (lazy ones inside functions included)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found += [(m, node) for m in _resolve(alias.name)]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found += [(m, node) for m in _resolve("", node)]
    return found


GRAPH = {name: {m for m, _ in _imports(tree) if m != name} for name, tree in TREES.items()}


def test_no_import_cycle():
    """Depth-first search for a back edge over every eeipu_jax import (lazy
    imports inside functions count: they are dependencies all the same)."""
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(GRAPH[m]):
            if state.get(n) == "open":
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = "done"

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)
    assert cycles == [], cycles


def test_the_layers_import_one_way():
    """core parts <- loop <- methods <- simulate / runtime; the core never imports the runtime."""
    core = {"eeipu_jax.space", "eeipu_jax.gp", "eeipu_jax.costs", "eeipu_jax.candidates", "eeipu_jax.acquisition",
            "eeipu_jax.design", "eeipu_jax.methods", "eeipu_jax.config", "eeipu_jax.state", "eeipu_jax.surrogates",
            "eeipu_jax.loop", "eeipu_jax.checkpoint", "eeipu_jax.simulate"}
    for m in core:
        bad = {n for n in GRAPH[m] if n.startswith("eeipu_jax.runtime")}
        assert not bad, (m, bad)
    builtins = {m for m in MODULES if m.startswith("eeipu_jax.methods.")}
    for m in {"eeipu_jax.loop", "eeipu_jax.state", "eeipu_jax.config", "eeipu_jax.surrogates", "eeipu_jax.methods"}:
        assert not GRAPH[m] & builtins, (m, GRAPH[m] & builtins)


def _defined_names(tree) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def _private(attr: str) -> bool:
    return attr.startswith("_") and not attr.startswith("__") and attr not in NAMEDTUPLE_API


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_uses_another_modules_private_names(module):
    tree = TREES[module]
    own = _defined_names(tree)
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("eeipu_jax"):
            for alias in node.names:
                assert not _private(alias.name), f"{module} imports {node.module}.{alias.name}"
                full = f"{node.module}.{alias.name}"
                if full in MODULES:
                    aliases[alias.asname or alias.name] = full
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES:
                    aliases[alias.asname or alias.name.split(".")[0]] = alias.name
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            base = node.value
            if isinstance(base, ast.Name) and base.id in aliases:
                bad.append(f"{aliases[base.id]}.{node.attr}")  # a module's private name
            elif not (isinstance(base, ast.Name) and base.id in ("self", "cls")) and node.attr not in own:
                bad.append(f"{ast.unparse(node)}")  # another module's object's private attribute
    assert bad == [], f"{module} uses private names of other modules: {sorted(set(bad))}"


def test_the_generic_step_names_no_method():
    """loop.py (and the core it is built from) hold no method's name and import
    no method module: methods are plug-ins found through the registry."""
    import eeipu_jax  # noqa: F401  (registers the built-ins)
    from eeipu_jax import methods

    names = set(methods.registered())
    for module in ("eeipu_jax.loop", "eeipu_jax.surrogates", "eeipu_jax.state"):
        tree = TREES[module]
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef)) and n.body
                      and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        strings = {n.value.lower() for n in ast.walk(tree)
                   if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings}
        identifiers = {n.id.lower() for n in ast.walk(tree) if isinstance(n, ast.Name)}
        identifiers |= {n.attr.lower() for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        assert not names & strings, (module, names & strings)
        assert not (names - {"ei"}) & identifiers, (module, (names - {"ei"}) & identifiers)
