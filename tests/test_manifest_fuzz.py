"""Fuzz ``batchgen validate`` with random YAML text and random manifest-like structures.

Whatever the input, ``validate`` ends with exit 0, or exit 2 with every error located
(``file:line:col: error: ...``); never a traceback, never an "internal error", and never
unbounded memory (alias bombs and huge expansions are refused before they are built).
"""

from __future__ import annotations

import contextlib
import io
import re
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchgen.cli import main

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = (REPO / "manifests" / "example.yaml").read_text(encoding="utf-8")
FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
_LOCATED = re.compile(r"^(?P<file>.+?):(?P<line>\d+):(?P<col>\d+): (?P<sev>error|warning): .+")


def validate_text(text: str | bytes, *, max_jobs: int | None = None) -> tuple[int, str]:
    """Write ``text`` to a manifest file, run ``batchgen validate`` on it in process and
    check the promise; returns (exit code, stderr)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.yaml"
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8", errors="surrogatepass")
        out, err = io.StringIO(), io.StringIO()
        argv = ["validate", str(path)]
        if max_jobs is not None:
            argv += ["--max-jobs", str(max_jobs)]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
        stderr = err.getvalue()
        assert "Traceback" not in stderr + out.getvalue()
        assert "internal error" not in stderr, stderr
        assert code in (0, 2), (code, stderr)
        if code == 2:
            errors = [line for line in stderr.splitlines() if ": error: " in line]
            assert errors, stderr
            for line in errors:
                match = _LOCATED.match(line)
                assert match, line
                assert match["file"] == str(path), line
                assert int(match["line"]) >= 1, line
        return code, stderr


# ------------------------------------------------------------------------- random text
YAML_PIECES = st.sampled_from(
    [*"abcxyz019 :-[]{},&*!|>'\"#%@`?\t\n\r", "\n  ", "\n- ", ": ", "{x}", "\\u0000"]
)


@FUZZ
@given(st.text(min_size=0, max_size=300))
def test_random_unicode_text_is_valid_or_a_located_error(text: str) -> None:
    validate_text(text)


@FUZZ
@given(st.lists(YAML_PIECES, max_size=120).map("".join))
def test_random_yaml_punctuation_is_valid_or_a_located_error(text: str) -> None:
    validate_text(text)


@FUZZ
@given(st.binary(max_size=200))
def test_random_bytes_are_valid_or_a_located_error(data: bytes) -> None:
    validate_text(data)


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=len(EXAMPLE)),
            st.integers(min_value=0, max_value=8),
            st.lists(YAML_PIECES, max_size=4).map("".join),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_mutated_example_manifest_is_valid_or_a_located_error(
    edits: list[tuple[int, int, str]],
) -> None:
    text = EXAMPLE
    for where, cut, insert in edits:
        at = min(where, len(text))
        text = text[:at] + insert + text[at + cut :]
    validate_text(text)


# ---------------------------------------------------------------- random structures
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(
        ["1024x1024", "1536x1024", "7x7", "low", "medium", "transparent", "{subject}", "4/s"]
    ),
    st.sampled_from(["30m", "2h", "-1s", "0", "1e309", "999999999999/s", "{date}", "../x"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.text(max_size=8) | st.sampled_from(["prompt", "size"]), inner, max_size=4
        ),
    ),
    max_leaves=20,
)
GROUP_KEYS = [
    "prompt",
    "prompts_file",
    "matrix",
    "exclude",
    "repeat",
    "size",
    "quality",
    "background",
    "model",
    "qualty",
]
group = st.dictionaries(st.sampled_from(GROUP_KEYS), values, max_size=6)
manifest_like = st.fixed_dictionaries(
    {},
    optional={
        "version": st.one_of(st.just(1), values),
        "name": st.one_of(st.just("fuzz"), values),
        "model": st.one_of(st.just("openai/gpt-image-1.5"), st.just("openai/gpt-image-9"), values),
        "output": st.one_of(st.just("out/{name}-{date}"), values),
        "limits": st.one_of(
            st.dictionaries(
                st.sampled_from(["concurrency", "rate", "retries", "timeout", "resubmit_unknown"]),
                values,
                max_size=5,
            ),
            values,
        ),
        "defaults": st.one_of(st.dictionaries(st.sampled_from(GROUP_KEYS), values), values),
        "jobs": st.one_of(st.lists(group, max_size=4), values),
        "extra": values,
    },
)


@FUZZ
@given(manifest_like)
def test_random_manifest_structures_are_valid_or_a_located_error(doc: dict[str, Any]) -> None:
    validate_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False))


@FUZZ
@given(
    st.lists(
        st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=6, unique=True),
        min_size=1,
        max_size=4,
    ),
    st.integers(min_value=1, max_value=5),
)
def test_random_matrices_count_exactly_or_refuse(columns: list[list[str]], repeat: int) -> None:
    doc = {
        "version": 1,
        "name": "fuzz",
        "model": "openai/gpt-image-1.5",
        "jobs": [
            {
                "prompt": " ".join(f"{{v{i}}}" for i in range(len(columns))),
                "matrix": {f"v{i}": column for i, column in enumerate(columns)},
                "repeat": repeat,
            }
        ],
    }
    code, stderr = validate_text(yaml.safe_dump(doc, allow_unicode=True), max_jobs=500)
    expected = repeat
    for column in columns:
        expected *= len(column)
    if expected > 500:
        assert code == 2
        assert str(expected) in stderr.replace(",", "").replace("_", "")


# --------------------------------------------------------------------- memory bombs
def _billion_laughs(levels: int, width: int) -> str:
    lines = ["version: 1", "name: bomb", "model: openai/gpt-image-1.5", 'l0: &l0 ["lol"]']
    for i in range(1, levels):
        refs = ", ".join([f"*l{i - 1}"] * width)
        lines.append(f"l{i}: &l{i} [{refs}]")
    lines.append(f"jobs: [{{prompt: x, matrix: {{v: *l{levels - 1}}}}}]")
    return "\n".join(lines) + "\n"


def _matrix_bomb(axes: int, width: int) -> str:
    values = "[" + ", ".join(f"v{i}" for i in range(width)) + "]"
    matrix = ", ".join(f"a{i}: {values}" for i in range(axes))
    prompt = " ".join(f"{{a{i}}}" for i in range(axes))
    return (
        "version: 1\nname: bomb\nmodel: openai/gpt-image-1.5\n"
        f'jobs: [{{prompt: "{prompt}", matrix: {{{matrix}}}}}]\n'
    )


@settings(max_examples=12, deadline=None, derandomize=True)
@given(
    st.sampled_from(["laughs", "matrix", "deep"]),
    st.integers(min_value=2, max_value=12),
    st.integers(min_value=2, max_value=40),
)
def test_alias_bombs_and_huge_expansions_are_refused_in_bounded_memory(
    kind: str, depth: int, width: int
) -> None:
    if kind == "laughs":
        text = _billion_laughs(depth, width)
    elif kind == "matrix":
        text = _matrix_bomb(depth, width)
    else:
        text = "version: 1\njobs: " + "[" * (depth * 2000) + "]" * (depth * 2000) + "\n"
    tracemalloc.start()
    try:
        code, _ = validate_text(text)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert code in (0, 2)
    assert peak < 64 * 2**20, peak  # a few dozen MB at most, whatever the would-be size
