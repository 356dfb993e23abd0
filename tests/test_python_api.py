"""The public face: `import batchgen` is lazy and the docs' example runs as written."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import batchgen

REPO = Path(__file__).resolve().parent.parent


def test_every_public_name_resolves_and_derives_errors_from_the_root() -> None:
    for name in batchgen.__all__:
        assert getattr(batchgen, name) is not None
    for name in ("ManifestError", "UnknownModelError", "StateError", "RunLocked", "SessionError"):
        assert issubclass(getattr(batchgen, name), batchgen.BatchgenError)
    with pytest.raises(AttributeError):
        batchgen.no_such_name  # noqa: B018


def test_import_batchgen_and_validate_do_not_load_the_http_stack(tmp_path: Path) -> None:
    code = (
        "import sys, batchgen\n"
        "batchgen.load_manifest; batchgen.StateStore; batchgen.status_report\n"
        "from batchgen.cli import main\n"
        "rc = main(['validate', 'manifests/example.yaml'])\n"
        "loaded = [m for m in ('httpx', 'asyncio') if m in sys.modules]\n"
        "assert rc == 0 and not loaded, (rc, loaded)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr


def test_the_python_api_example_runs_against_the_in_process_simulator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (REPO / "docs" / "python-api.md").read_text()
    (example,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    shutil.copytree(REPO / "manifests", tmp_path / "manifests")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MODELLIX_API_KEY", raising=False)
    exec(compile(example, "python-api.md", "exec"), {})
    out = capsys.readouterr().out
    assert "jobs" in out
    assert (tmp_path / "output" / "example-demo" / "state.db").exists()
    assert len(list((tmp_path / "output" / "example-demo" / "images").iterdir())) >= 1
