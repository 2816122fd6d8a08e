"""The import structure of npeff (shared/spec/design.md §2), read from the source with ``ast``.

Every ``import`` / ``from ... import`` of every module counts, function-level ones included;
only imports under ``if TYPE_CHECKING:`` are left out (they never run). Checked:
no cycle between files, no cycle between npeff's subpackages, and the layer rules.
Also: every config under conf/ is package data (found through ``importlib.resources``).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from importlib import resources
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "npeff"


# design.md §2: who may not import whom (package -> packages it must not use).
FORBIDDEN = {
    "artifacts": {"*"},  # file formats know no algorithm: no other npeff part
    "decomp": {"models", "fisher", "run"},  # works on files from anywhere: artifacts only
    "report": {"fisher", "decomp", "run"},  # reads artifacts, never recomputes
    **{p: {"run"} for p in ("fisher", "coar", "groups", "tracr", "baselines", "analysis")},
    **{p: {"run"} for p in ("models", "tasks", "perturb")},  # nothing uses run/
}


def _modules(pkg_dir: Path = PKG) -> dict[str, Path]:
    out = {}
    for p in sorted(pkg_dir.rglob("*.py")):
        parts = list(p.relative_to(pkg_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            t = node.test
            name = (
                t.id if isinstance(t, ast.Name) else t.attr if isinstance(t, ast.Attribute) else ""
            )
            if name == "TYPE_CHECKING":
                for child in node.body:
                    skip.update(id(n) for n in ast.walk(child))
    return skip


def import_graph(pkg_dir: Path = PKG) -> dict[str, set[str]]:
    """module -> the npeff modules it imports (a ``from pkg import name`` of a submodule counts
    as that submodule; of anything else, as ``pkg``)."""
    mods = _modules(pkg_dir)

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = defaultdict(set)
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        skip = _type_checking_nodes(tree)
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    src = ".".join(base + ([node.module] if node.module else []))
                else:
                    src = node.module or ""
                targets = [f"{src}.{a.name}" for a in node.names]
            for t in targets:
                if t.split(".")[0] != "npeff":
                    continue
                r = resolve(t)
                if r and r != mod:
                    edges[mod].add(r)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    nodes = sorted(set(edges) | {t for ts in edges.values() for t in ts})

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in nodes:
        if v not in index:
            visit(v)
    return sorted(out)


def _package(mod: str) -> str | None:
    parts = mod.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (PKG / parts[1]).is_dir()) else None


def package_edges(edges: dict[str, set[str]]) -> dict[str, dict[str, list[str]]]:
    """subpackage -> {subpackage it imports: ["a -> b", ...]} (npeff/__init__ excluded)."""
    out: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for a, ts in edges.items():
        for b in ts:
            pa, pb = _package(a), _package(b)
            if pa and pb and pa != pb:
                out[pa][pb].append(f"{a} -> {b}")
    return out


GRAPH = import_graph()


def test_the_checker_sees_cycles_and_function_level_imports(tmp_path):
    """On a made-up package: a function-level import closes a cycle; TYPE_CHECKING does not."""
    pkg = tmp_path / "npeff"
    for sub in ("a", "b"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "x.py").write_text("from npeff.b import y\n")
    (pkg / "b" / "y.py").write_text("def f():\n    from npeff.a.x import g\n")
    (pkg / "b" / "z.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from npeff.a import x\n"
    )
    (pkg / "b" / "w.py").write_text("from . import y\nfrom .. import a\n")
    g = import_graph(pkg)
    assert cycles(g) == [["npeff.a.x", "npeff.b.y"]]
    assert "npeff.b.z" not in g
    assert g["npeff.b.w"] == {"npeff.b.y", "npeff.a"}


def test_no_file_level_import_cycle():
    found = cycles(GRAPH)
    assert not found, f"import cycles between files: {found}"


def test_no_package_level_import_cycle():
    pe = package_edges(GRAPH)
    found = cycles({a: set(bs) for a, bs in pe.items()})
    detail = {
        f"{a} -> {b}": pe[a][b][:3] for c in found for a in c for b in c if b in pe.get(a, {})
    }
    assert not found, f"import cycles between npeff's subpackages {found}: {detail}"


def test_layer_rules():
    pe = package_edges(GRAPH)
    broken = []
    for pkg, banned in FORBIDDEN.items():
        for used, why in pe.get(pkg, {}).items():
            if "*" in banned or used in banned:
                broken.extend(why)
    assert not broken, f"imports that design.md §2 forbids: {sorted(broken)}"


def private_imports() -> set[str]:
    """``mod: from npeff.x import _name`` for every private name one module takes from another."""
    found = set()
    for mod, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("npeff"):
                for a in node.names:
                    if a.name.startswith("_") and not a.name.startswith("__"):
                        found.add(f"{mod}: from {node.module} import {a.name}")
    return found


def test_no_private_name_imported_across_modules():
    found = sorted(private_imports())
    assert not found, f"private names imported from another module (make them public): {found}"


def test_every_config_is_package_data():
    """Every conf/**/*.yaml is found through importlib.resources (so a wheel ships it)."""
    on_disk = sorted(
        p.relative_to(ROOT / "conf").as_posix() for p in (ROOT / "conf").rglob("*.yaml")
    )
    assert on_disk, "no configs under conf/"
    conf = resources.files("npeff") / "conf"
    for rel in on_disk:
        node = conf.joinpath(*rel.split("/"))
        assert node.is_file(), f"conf/{rel} is not package data of npeff"
        assert node.read_bytes() == (ROOT / "conf" / rel).read_bytes()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"conf/*.yaml"' in pyproject and '"conf/**/*.yaml"' in pyproject
    import npeff

    assert Path(npeff.CONFIG_PATH) == npeff.config_dir()
    assert (npeff.config_dir() / "pipeline.yaml").is_file()


def test_the_wheel_ships_every_config(tmp_path):
    """A wheel built from the source (what ``pip install .`` installs) holds npeff/conf/**."""
    import shutil
    import subprocess
    import sys
    import zipfile

    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(PKG, src / "npeff", symlinks=True, ignore=ignore)
    shutil.copytree(ROOT / "conf", src / "conf", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    assert (src / "npeff" / "conf").is_symlink()  # the link, not a copy, is what is committed
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        + ["-w", str(tmp_path / "dist"), str(src)],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("npeff-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    want = {
        f"npeff/conf/{p.relative_to(ROOT / 'conf').as_posix()}"
        for p in (ROOT / "conf").rglob("*.yaml")
    }
    assert want and not sorted(want - names), (
        f"configs missing from the wheel: {sorted(want - names)}"
    )
