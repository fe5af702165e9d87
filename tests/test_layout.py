"""The packages' layering, read from their source: `sandbox` imports nothing of ours, `rlm`
nothing from `environments`, and `environments` only rlm's public modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: The packages of ours each package may import.
LAYERS = {"sandbox": {"sandbox"}, "rlm": {"rlm", "sandbox"}, "environments": {"environments", "rlm"}}
OURS = ("rlm", "sandbox", "environments", "tests", "benchmarks")


def imports_of(path: Path) -> set[str]:
    """Modules of ours `path` imports, as "rlm.Name" for `from rlm import Name`."""
    package = path.relative_to(ROOT).parts[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                found.add(package)
            elif node.module == "rlm":
                found.update(f"rlm.{alias.name}" for alias in node.names)
            elif node.module:
                found.add(node.module)
    return {name for name in found if name.split(".")[0] in OURS}


def rlm_public() -> set[str]:
    """What `rlm` exports, plus the modules open to plug-ins: its testing kit and CLI helpers."""
    import rlm

    return {*rlm.__all__, "testing", "cli"}


def allowed(package: str, name: str) -> bool:
    parts = name.split(".")
    if parts[0] not in LAYERS[package]:
        return False
    return package != "environments" or parts[0] != "rlm" or len(parts) == 1 or parts[1] in rlm_public()


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_each_package_imports_only_what_its_layer_allows(package):
    wrong = {str(path.relative_to(ROOT)): sorted(name for name in imports_of(path) if not allowed(package, name))
             for path in sorted((ROOT / package).rglob("*.py"))}
    assert {path: names for path, names in wrong.items() if names} == {}


def test_the_layer_check_sees_a_private_import():
    assert not allowed("environments", "rlm.models") and not allowed("environments", "rlm.Broker")
    assert not allowed("rlm", "environments") and not allowed("sandbox", "rlm")
    assert allowed("environments", "rlm.RLMConfig") and allowed("environments", "rlm.testing")
