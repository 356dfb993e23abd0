"""The manifest error corpus: every mistake gets a located, specific message, never a traceback.

Each ``tests/manifest_corpus/<case>.yaml`` sits beside ``<case>.expected``: the first line is
``exit: N``, the rest is exactly what ``batchgen validate <case>.yaml`` prints (run from the
corpus folder). Files the cases refer to live in ``files/``. To add a case, write the YAML,
then run ``BATCHGEN_UPDATE_CORPUS=1 pytest tests/test_manifest_corpus.py`` and review the
new ``.expected`` file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from batchgen.cli import main

CORPUS = Path(__file__).resolve().parent / "manifest_corpus"
CASES = sorted(p.stem for p in CORPUS.glob("*.yaml"))
LOCATED = re.compile(r"^[^:]+(:\d+:\d+)?: (error|warning): ")


def run_validate(case: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["validate", f"{case}.yaml"])
    captured = capsys.readouterr()
    return code, captured.err + captured.out


def test_the_corpus_is_not_empty() -> None:
    assert len(CASES) >= 60


@pytest.mark.parametrize("case", CASES)
def test_manifest_corpus_case(
    case: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(CORPUS)
    code, output = run_validate(case, capsys)
    assert "Traceback" not in output
    assert "internal error" not in output
    expected_file = CORPUS / f"{case}.expected"
    if os.environ.get("BATCHGEN_UPDATE_CORPUS"):
        expected_file.write_text(f"exit: {code}\n{output}", encoding="utf-8")
    expected = expected_file.read_text(encoding="utf-8")
    first, _, rest = expected.partition("\n")
    assert first == f"exit: {code}", output
    assert output == rest
    diagnostics = [line for line in output.splitlines() if ": error: " in line]
    if code == 2:
        assert diagnostics, "an invalid manifest must say why"
    else:
        assert code == 0
        assert not diagnostics
    for line in output.splitlines()[:-1]:
        assert LOCATED.match(line), f"not located: {line}"
