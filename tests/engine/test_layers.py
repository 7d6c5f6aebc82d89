"""The layers below the HTTP API never import it: the engine, the services, the pipeline and the DICOM node
work without FastAPI's schemas (a walk over every module's imports, function-level ones included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

BELOW_THE_API = ("app/engine", "app/services", "app/pipeline", "app/node")


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """Every module ``path`` (under ``root``) imports, relative imports resolved against its package."""
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)  # from app import api
    return names


def test_the_walk_sees_imports_of_every_kind(tmp_path):
    pkg = tmp_path / "app" / "node"
    pkg.mkdir(parents=True)
    module = pkg / "m.py"
    module.write_text("import app.api.deps\nfrom app import api\ndef f():\n    from ..api.schemas import X\n")
    assert {"app.api.deps", "app.api", "app.api.schemas"} <= imported_modules(module, tmp_path)


@pytest.mark.parametrize("layer", BELOW_THE_API)
def test_no_module_below_the_api_imports_it(layer):
    modules = sorted((ROOT / layer).rglob("*.py"))
    assert modules
    offenders = {str(m.relative_to(ROOT)): sorted(n for n in imported_modules(m) if n == "app.api"
                                                 or n.startswith("app.api."))
                 for m in modules}
    assert {m: names for m, names in offenders.items() if names} == {}
