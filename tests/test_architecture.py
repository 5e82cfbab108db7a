"""The import graph, read statically (ast over every twist_lightning/**/*.py): arrows point one way.

- Library modules never import a command-line module (``run``, ``evaluate``, ``export``, ``generate``); nothing
  outside ``twist_lightning.bench`` imports it; the benchmarks import library modules only; no command line
  imports another.
- Hydra and OmegaConf are imported by ``config.py`` and the command lines only.
- The pure-torch modules (``model``, the partition modules, ``prune``, ``core``, ``options``, ``workers``, ``registry``) import neither
  Lightning nor Hydra nor OmegaConf, directly; the light ones (those, ``sources`` and ``checkpoint``) not through
  their module-level twist_lightning imports either (the package ``__init__`` imports no Lightning:
  ``registry.py`` registers the strategy names lazily; ``tests/test_core.py`` and ``tests/test_registry.py`` check
  that at run time).

The checker itself is tested on synthetic sources below, so a broken checker cannot pass silently.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "twist_lightning"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE
CLI_MODULES = frozenset(f"{PACKAGE}.{m}" for m in ("run", "evaluate", "export", "generate"))
BENCH = f"{PACKAGE}.bench"
CONFIG_MODULES = frozenset({f"{PACKAGE}.config"})
PURE = frozenset(f"{PACKAGE}.{m}" for m in ("model", "blueprints", "selection", "subnets", "partition", "prune",
                                            "core", "options", "workers", "registry"))
LIGHT = PURE | {f"{PACKAGE}.sources", f"{PACKAGE}.checkpoint"}
FRAMEWORKS = ("lightning", "pytorch_lightning", "hydra", "omegaconf")
CONFIG_FRAMEWORKS = ("hydra", "omegaconf")


@dataclass(frozen=True)
class Import:
    """One name an import statement brings in: ``target`` (a dotted module, or ``module.name`` for a from-import,
    which may be a submodule), the line, and whether it runs at import time (not inside a function or class)."""

    target: str
    line: int
    top_level: bool


def imports_of(source: str, module: str, is_package: bool = False) -> list[Import]:
    """Every import in ``source`` (the text of ``module``), relative ones resolved against its package."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend(Import(a.name, child.lineno, top) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")
                    anchor = ".".join(parts[: len(parts) - child.level + 1])
                    base = f"{anchor}.{base}" if base else anchor
                found.append(Import(base, child.lineno, top))
                found.extend(Import(f"{base}.{a.name}", child.lineno, top) for a in child.names if a.name != "*")
            visit(child, top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda,
                                                        ast.ClassDef)))

    visit(ast.parse(source), True)
    return found


def within(name: str, prefixes: Iterable[str]) -> bool:
    """Whether the dotted ``name`` is one of ``prefixes`` or inside one of them."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def package_sources(root: Path = ROOT) -> dict[str, tuple[str, bool]]:
    """``{module: (source, is_package)}`` for every ``.py`` file under ``root``."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = (PACKAGE, *path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (path.read_text(encoding="utf-8"), is_package)
    return out


def graph(sources: Mapping[str, tuple[str, bool]]) -> dict[str, list[Import]]:
    return {m: imports_of(src, m, pkg) for m, (src, pkg) in sources.items()}


def forbidden_imports(imports: Mapping[str, list[Import]], modules: Iterable[str], banned: Iterable[str],
                      allow: Iterable[str] = ()) -> list[str]:
    """``"module:line imports target"`` for every import (anywhere in the file) of ``modules`` within ``banned``,
    except those within ``allow``."""
    banned, allow = tuple(banned), tuple(allow)
    return [f"{m}:{i.line} imports {i.target}" for m in modules for i in imports.get(m, [])
            if within(i.target, banned) and not within(i.target, allow)]


def reaches(imports: Mapping[str, list[Import]], start: str, banned: Iterable[str]) -> list[str] | None:
    """A chain of module-level imports from ``start`` to a module within ``banned`` (``None`` if there is none).

    Only ``twist_lightning`` modules are followed, and only their import-time imports; package ``__init__``
    modules are not entered.
    """
    banned = tuple(banned)
    todo, seen = [[start]], {start}
    while todo:
        chain = todo.pop(0)
        for imp in imports.get(chain[-1], []):
            if not imp.top_level:
                continue
            if within(imp.target, banned):
                return [*chain, imp.target]
            nxt = imp.target if imp.target in imports else imp.target.rpartition(".")[0]
            if nxt in imports and nxt not in seen and nxt != PACKAGE and not _is_package(imports, nxt):
                seen.add(nxt)
                todo.append([*chain, nxt])
    return None


def _is_package(imports: Mapping[str, list[Import]], module: str) -> bool:
    return any(m.startswith(module + ".") for m in imports)


# ---- the rules, on the real package --------------------------------------------------------------------------------
SOURCES = package_sources()
IMPORTS = graph(SOURCES)
LIBRARY = [m for m in IMPORTS if m not in CLI_MODULES and not within(m, [BENCH])]


def test_the_package_was_read() -> None:
    assert {f"{PACKAGE}.model", f"{PACKAGE}.evaluation", f"{PACKAGE}.bench.common", *CLI_MODULES} <= set(IMPORTS)
    assert sum(len(v) for v in IMPORTS.values()) > 100


def test_library_modules_import_no_command_line_and_no_bench() -> None:
    assert forbidden_imports(IMPORTS, LIBRARY, [*CLI_MODULES, BENCH]) == []


def test_nothing_outside_bench_imports_bench() -> None:
    outside = [m for m in IMPORTS if not within(m, [BENCH])]
    assert forbidden_imports(IMPORTS, outside, [BENCH]) == []


def test_benchmarks_import_no_command_line() -> None:
    bench = [m for m in IMPORTS if within(m, [BENCH])]
    assert bench and forbidden_imports(IMPORTS, bench, CLI_MODULES) == []


def test_command_lines_import_each_other_not() -> None:
    assert [bad for m in CLI_MODULES for bad in forbidden_imports(IMPORTS, [m], CLI_MODULES - {m})] == []


def test_only_config_and_command_lines_import_hydra_or_omegaconf() -> None:
    others = [m for m in IMPORTS if m not in CLI_MODULES | CONFIG_MODULES]
    assert forbidden_imports(IMPORTS, others, CONFIG_FRAMEWORKS) == []


@pytest.mark.parametrize("module", sorted(PURE))
def test_pure_modules_import_no_framework_directly(module: str) -> None:
    if module not in IMPORTS:
        pytest.skip(f"{module} does not exist (yet)")
    assert forbidden_imports(IMPORTS, [module], FRAMEWORKS) == []


@pytest.mark.parametrize("module", sorted(LIGHT - {f"{PACKAGE}.core"}))
def test_light_modules_reach_no_framework_through_the_package(module: str) -> None:
    assert module in IMPORTS
    assert reaches(IMPORTS, module, FRAMEWORKS) is None


# ---- the checker can fail ------------------------------------------------------------------------------------------
def test_checker_sees_every_import_form() -> None:
    src = ("import twist_lightning.evaluate\n"
           "from twist_lightning import export as cli\n"
           "from . import run\n"
           "from .bench.common import format_table\n"
           "def f():\n    import hydra\n")
    found = {i.target: i for i in imports_of(src, "twist_lightning.evil")}
    assert {"twist_lightning.evaluate", "twist_lightning.export", "twist_lightning.run",
            "twist_lightning.bench.common.format_table", "hydra"} <= set(found)
    assert found["twist_lightning.evaluate"].top_level and not found["hydra"].top_level
    imports = {"twist_lightning.evil": list(found.values())}
    bad = forbidden_imports(imports, ["twist_lightning.evil"], [*CLI_MODULES, BENCH])
    assert [b.split(" imports ")[1] for b in bad] == ["twist_lightning.evaluate", "twist_lightning.export",
                                                      "twist_lightning.run", "twist_lightning.bench.common",
                                                      "twist_lightning.bench.common.format_table"]
    assert forbidden_imports(imports, ["twist_lightning.evil"], FRAMEWORKS) == ["twist_lightning.evil:6 imports hydra"]
    # a relative import inside a sub-package resolves against that package
    assert imports_of("from ..evaluate import x\n", "twist_lightning.bench.y")[0].target == "twist_lightning.evaluate"
    assert imports_of("from . import common\n", "twist_lightning.bench", is_package=True)[1].target == (
        "twist_lightning.bench.common")


def test_checker_follows_module_level_chains_only() -> None:
    sources = {
        "twist_lightning": ("import lightning\n", True),
        "twist_lightning.model": ("import torch\nfrom twist_lightning.helper import x\n", False),
        "twist_lightning.helper": ("from twist_lightning.io import y\n", False),
        "twist_lightning.io": ("from lightning.fabric import z\n", False),
        "twist_lightning.lazy": ("def f():\n    import lightning\n", False),
    }
    imports = graph(sources)
    assert reaches(imports, "twist_lightning.model", FRAMEWORKS) == [
        "twist_lightning.model", "twist_lightning.helper", "twist_lightning.io", "lightning.fabric"]
    assert reaches(imports, "twist_lightning.lazy", FRAMEWORKS) is None  # deferred to call time
    assert forbidden_imports(imports, ["twist_lightning.lazy"], FRAMEWORKS) == [
        "twist_lightning.lazy:2 imports lightning"]  # yet a direct import all the same
    assert reaches(graph({"twist_lightning.a": ("from twist_lightning import b\n", False),
                          "twist_lightning.b": ("import hydra\n", False)}), "twist_lightning.a", FRAMEWORKS) == [
        "twist_lightning.a", "twist_lightning.b", "hydra"]
