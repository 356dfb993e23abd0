"""The package's stages import only downward, so a newcomer can read it bottom-up.

The order, lowest first: ``errors`` < ``manifest`` < ``api`` < ``simulator`` < ``store`` <
``reports`` < ``run`` < ``cli`` (docs/development.md). A module may import its own stage and
the stages below it, at module level or inside a function alike.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "batchgen"
STAGES = ("errors", "manifest", "api", "simulator", "store", "reports", "run", "cli")
RANK = {stage: i for i, stage in enumerate(STAGES)}


def stage_of(path: Path) -> str | None:
    """The stage a module of the package belongs to (None: the package's own face)."""
    first = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    return first if first in RANK else None


def upward_imports(stage: str, source: str) -> list[str]:
    """Every module named by an import in ``source`` (a module of ``stage``) that belongs to a
    higher stage."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            inside = parts[0] == "batchgen" and len(parts) > 1 and parts[1] in RANK
            if inside and RANK[parts[1]] > RANK[stage]:
                found.append(name)
    return found


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_module_belongs_to_a_stage_or_is_the_public_face() -> None:
    strays = [
        str(p.relative_to(PACKAGE))
        for p in modules()
        if stage_of(p) is None and p.name not in ("__init__.py", "__main__.py")
    ]
    assert strays == []


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_a_higher_stage(path: Path) -> None:
    stage = stage_of(path)
    if stage is not None:
        assert upward_imports(stage, path.read_text(encoding="utf-8")) == []


def test_the_check_reports_an_upward_import() -> None:
    source = "import batchgen.errors\n\ndef f():\n    from batchgen.run.runner import run_jobs\n"
    assert upward_imports("store", source) == ["batchgen.run.runner"]
    assert upward_imports("run", source) == []
