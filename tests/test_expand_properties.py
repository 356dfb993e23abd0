"""Laws of the expander, checked with hypothesis: counting, exclusion, repeats, stable IDs."""

from __future__ import annotations

import itertools
import json
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from batchgen.manifest.expand import Rule, count_combos, iter_combos
from batchgen.manifest.loader import load_manifest
from batchgen.manifest.types import job_id_for

SIZES = ["1024x1024", "1536x1024", "1024x1536"]
QUALITIES = ["low", "medium", "high"]


@st.composite
def matrices(draw: st.DrawFn) -> tuple[list[int], list[Rule]]:
    sizes = draw(st.lists(st.integers(1, 4), min_size=1, max_size=4))
    rules: list[Rule] = []
    for _ in range(draw(st.integers(0, 4))):
        positions = draw(
            st.lists(st.integers(0, len(sizes) - 1), min_size=1, max_size=len(sizes), unique=True)
        )
        rule = []
        for pos in sorted(positions):
            allowed = draw(
                st.frozensets(st.integers(0, sizes[pos] - 1), min_size=1, max_size=sizes[pos])
            )
            rule.append((pos, allowed))
        rules.append(tuple(rule))
    return sizes, rules


def matches(combo: tuple[int, ...], rule: Rule) -> bool:
    return all(combo[pos] in allowed for pos, allowed in rule)


@given(matrices())
def test_count_before_expansion_equals_expanded_count(matrix: tuple[list[int], list[Rule]]) -> None:
    sizes, rules = matrix
    expanded = list(iter_combos(sizes, rules))
    assert count_combos(sizes, rules) == len(expanded)
    # The inclusion-exclusion path (used when rules span huge matrices) agrees too.
    assert count_combos(sizes, rules, enumerate_limit=0) == len(expanded)


@given(matrices())
def test_exclude_removes_exactly_the_matching_combinations(
    matrix: tuple[list[int], list[Rule]],
) -> None:
    sizes, rules = matrix
    everything = list(itertools.product(*(range(n) for n in sizes)))
    kept = list(iter_combos(sizes, rules))
    assert kept == [c for c in everything if not any(matches(c, r) for r in rules)]
    assert len(set(kept)) == len(kept)


def write_manifest(folder: Path, matrix: dict[str, list[str]], repeat: int, excl: list) -> Path:
    placeholders = " ".join("{" + k + "}" for k in sorted(matrix) if k.startswith("v"))
    group = {"prompt": f"a photo {placeholders}".strip(), "matrix": matrix, "repeat": repeat}
    if excl:
        group["exclude"] = excl
    doc = {"version": 1, "model": "openai/gpt-image-1.5", "jobs": [group]}
    path = folder / "m.yaml"
    path.write_text(json.dumps(doc), encoding="utf-8")  # JSON is YAML
    return path


@st.composite
def manifests(draw: st.DrawFn) -> tuple[dict[str, list[str]], int, list]:
    matrix: dict[str, list[str]] = {}
    for i in range(draw(st.integers(0, 2))):
        words = draw(st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=3, unique=True))
        matrix[f"v{i}"] = words
    if draw(st.booleans()):
        matrix["size"] = draw(st.lists(st.sampled_from(SIZES), min_size=1, max_size=3, unique=True))
    if draw(st.booleans()):
        matrix["quality"] = draw(
            st.lists(st.sampled_from(QUALITIES), min_size=1, max_size=3, unique=True)
        )
    if not matrix:
        matrix["v9"] = ["x"]
    excl = []
    if draw(st.booleans()):
        key = draw(st.sampled_from(sorted(matrix)))
        excl.append({key: draw(st.sampled_from(matrix[key]))})
    return matrix, draw(st.integers(1, 3)), excl


@settings(max_examples=40, deadline=None)
@given(manifests())
def test_manifest_count_repeat_and_id_laws(spec: tuple[dict[str, list[str]], int, list]) -> None:
    matrix, repeat, excl = spec
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        once = load_manifest(write_manifest(folder, matrix, 1, excl))
        jobs_once = list(once.iter_jobs())
        many = load_manifest(write_manifest(folder, matrix, repeat, excl))
        jobs = list(many.iter_jobs())
        # count before expansion == expanded count
        assert once.count() == len(jobs_once)
        assert many.count() == len(jobs)
        # repeat law: N distinct jobs per body, indices 0..N-1, same bodies
        assert len(jobs) == repeat * len(jobs_once)
        assert len({j.job_id for j in jobs}) == len(jobs)
        for start in range(0, len(jobs), repeat):
            chunk = jobs[start : start + repeat]
            assert [j.repeat_index for j in chunk] == list(range(repeat))
            assert len({canon(j.body) for j in chunk}) == 1
        assert {canon(j.body) for j in jobs} == {canon(j.body) for j in jobs_once}
        # exclude law: no job carries an excluded value combination
        for rule in excl:
            for job in jobs_once:
                for key, value in rule.items():
                    if key in job.body:
                        assert job.body[key] != value or len(rule) > 1
        # IDs are stable when the matrix keys are listed in another order
        reordered = dict(reversed(list(matrix.items())))
        again = load_manifest(write_manifest(folder, reordered, repeat, excl))
        assert {j.job_id for j in again.iter_jobs()} == {j.job_id for j in jobs}


def canon(body: dict) -> str:
    return json.dumps(body, sort_keys=True)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=8,
)


@given(st.dictionaries(st.text(max_size=6), json_values, max_size=5), st.integers(0, 3))
def test_job_id_is_stable_under_key_reordering(body: dict, repeat_index: int) -> None:
    reordered = dict(reversed(list(body.items())))
    model = "openai/gpt-image-1.5"
    assert job_id_for(model, body, repeat_index) == job_id_for(model, reordered, repeat_index)


@given(
    st.lists(
        st.dictionaries(st.sampled_from(["prompt", "size", "quality"]), st.text(max_size=5)),
        min_size=2,
        max_size=20,
    )
)
def test_job_ids_are_unique_across_different_bodies(bodies: list[dict]) -> None:
    distinct = {canon(b): b for b in bodies}
    ids = {job_id_for("openai/gpt-image-1.5", b, 0) for b in distinct.values()}
    assert len(ids) == len(distinct)
    assert job_id_for("a/b", bodies[0], 0) != job_id_for("a/b", bodies[0], 1)
    assert job_id_for("a/b", bodies[0], 0) != job_id_for("a/c", bodies[0], 0)
