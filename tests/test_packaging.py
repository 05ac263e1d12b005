"""What is installed and how modules depend on each other: the wheel holds eeipu_jax only,
its console script points into it, it requires exactly what eeipu_jax imports (no package of
the pipelines), and imports run one way
(eeipu_jax <- eeipu_jax.runtime <- pipelines <- experiments <- paper_figures)."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

# One worker runs this file's tests: its module fixture is built once (pytest -n 2 --dist loadgroup).
pytestmark = pytest.mark.xdist_group("packaging")


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Who may import whom: a package may not import any package ranked after it.
ORDER = ["eeipu_jax", "pipelines", "experiments", "paper_figures"]


def _modules(package):
    for root, dirs, files in os.walk(os.path.join(ROOT, package)):
        dirs[:] = [d for d in dirs if d not in ("__pycache__", "output", "results")]
        for f in files:
            if f.endswith(".py"):
                yield os.path.join(root, f)


def _imported_packages(path):
    """Top-level names a module imports (any import statement, module level or inside functions),
    plus the targets of importlib.import_module("...") calls with a literal name."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            names.add(node.args[0].value.split(".")[0])
    return names


def test_imports_run_one_way():
    bad = []
    for rank, package in enumerate(ORDER):
        later = set(ORDER[rank + 1:])
        for path in _modules(package):
            for name in _imported_packages(path) & later:
                bad.append(f"{os.path.relpath(path, ROOT)} imports {name}")
    assert not bad, "imports against the direction eeipu_jax <- pipelines <- experiments <- paper_figures:\n" + "\n".join(bad)
    # The checker sees what it must: experiments does use pipelines and eeipu_jax.
    assert {"pipelines", "eeipu_jax"} <= _imported_packages(os.path.join(ROOT, "experiments", "synthetic.py"))


def test_the_pure_core_does_no_io():
    """The algorithm modules import no file, process or engine modules (the engine is eeipu_jax.runtime)."""
    io = {"os", "shutil", "subprocess", "fcntl", "socket", "tempfile", "pathlib", "orbax"}
    core = ["space", "gp", "costs", "acquisition", "candidates", "design", "checks", "config", "state", "surrogates",
            "loop", "methods/__init__", "methods/ei_family", "methods/pbgi", "methods/lambo", "methods/msbo"]
    for name in core:
        imported = _imported_packages(os.path.join(ROOT, "eeipu_jax", f"{name}.py"))
        assert not imported & io, f"eeipu_jax/{name}.py imports {imported & io}"
        with open(os.path.join(ROOT, "eeipu_jax", f"{name}.py"), encoding="utf-8") as f:
            assert "eeipu_jax.runtime" not in f.read(), name


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel `pip wheel .` builds (offline) from a copy of the repository."""
    tmp_path = tmp_path_factory.mktemp("wheel")
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "output", "results", ".venv*", "*.egg-info", "build")
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), src / name)
    # The repository's other top-level folders are copied too: the build must leave them out.
    for name in ("eeipu_jax", "pipelines", "experiments", "paper_figures", "benchmarks", "tests"):
        shutil.copytree(os.path.join(ROOT, name), src / name, ignore=ignore)
    out = tmp_path / "dist"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(out)],
        cwd=src, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (path,) = out.glob("eeipu_jax-*.whl")
    return path


def test_the_wheel_holds_eeipu_jax_only(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        entry_points = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    top = {n.split("/")[0] for n in names}
    assert top == {"eeipu_jax", next(t for t in top if t.endswith(".dist-info"))}, sorted(top)
    assert "eeipu_jax/runtime/cache/store.py" in names and "eeipu_jax/runtime/study.py" in names
    assert "eeipu = eeipu_jax.runtime.cli:main" in entry_points


# The distribution that provides each third-party name eeipu_jax imports, where the two differ.
_DISTRIBUTION = {"orbax": "orbax-checkpoint"}
# Imported by eeipu_jax for optional features only: not requirements of the library.
_OPTIONAL = {"ray", "pandas"}
# What only this repository's pipelines, experiments and figures use.
_PIPELINES_ONLY = {"flax", "tensorflow-datasets", "array-record", "importlib-resources", "scikit-learn", "ml-collections"}


def _requirements(wheel):
    """{distribution name: set of extras that require it ("" for the library itself)} from METADATA."""
    with zipfile.ZipFile(wheel) as z:
        metadata = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    found = {}
    for line in metadata.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        spec, _, marker = line.split(":", 1)[1].partition(";")
        name = re.match(r"\s*([A-Za-z0-9._-]+)", spec).group(1).lower().replace("_", "-")
        extra = re.search(r"extra\s*==\s*[\"']([^\"']+)[\"']", marker)
        found.setdefault(name, set()).add(extra.group(1) if extra else "")
    return found


def test_the_library_requires_what_it_imports_and_no_pipeline_packages(wheel):
    requires = _requirements(wheel)
    library = {name for name, extras in requires.items() if "" in extras}
    assert not library & _PIPELINES_ONLY, sorted(library & _PIPELINES_ONLY)
    assert _PIPELINES_ONLY <= {name for name, extras in requires.items() if "pipelines" in extras}
    imported = set().union(*(_imported_packages(path) for path in _modules("eeipu_jax")))
    third_party = imported - set(sys.stdlib_module_names) - {"eeipu_jax", "__future__"} - _OPTIONAL
    assert library - {"jaxlib"} == {_DISTRIBUTION.get(name, name) for name in third_party}


def test_console_script_runs_from_the_installed_modules(tmp_path):
    """`eeipu` resolves to the library's CLI, which imports nothing from the repository folders."""
    code = ("import sys; sys.path = [p for p in sys.path if p not in ('', '.', %r)]; "
            "import eeipu_jax.runtime.cli as c; code = c.main(['--help']); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'pipelines', 'experiments', 'paper_figures'})); "
            "sys.exit(code)") % ROOT
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert proc.returncode == 0, proc.stderr
    assert "tune" in proc.stdout and "summary" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "[]"
