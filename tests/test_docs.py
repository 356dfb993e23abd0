"""The README and docs/ stay true to the code.

- every subcommand, every flag of every subcommand and every manifest key (from
  ``schemas/manifest.schema.json``) is mentioned in README.md or docs/*.md;
- the manifest schema and the manifest loader accept the same keys;
- every relative link (and its #anchor) points at something that exists;
- every ``batchgen`` command written in the docs uses a real subcommand and real flags;
- the README's quick start: its test command is the one ``.ci/run`` runs, and its tour runs
  as written (in process, against the built-in simulator, in a copy of ``manifests/``).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from batchgen.cli import build_parser, main
from batchgen.manifest import loader as manifest_loader

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "schemas" / "manifest.schema.json"


# --- what the docs are -------------------------------------------------------------------


def doc_files() -> list[Path]:
    """README.md and every page under docs/."""
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def docs_text() -> str:
    return "\n".join(path.read_text(encoding="utf-8") for path in doc_files())


def fenced_blocks(markdown: str) -> Iterator[tuple[str, str]]:
    """(language, body) of every fenced code block."""
    for match in re.finditer(r"^```([\w-]*)[^\n]*\n(.*?)^```", markdown, re.M | re.S):
        yield match.group(1), match.group(2)


# --- what the code offers ----------------------------------------------------------------


def cli_surface() -> dict[str, set[str]]:
    """Each subcommand of ``batchgen`` and its option strings (``--help`` left out)."""
    surface: dict[str, set[str]] = {}
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                surface[name] = {
                    option
                    for sub_action in sub._actions
                    for option in sub_action.option_strings
                    if option not in ("-h", "--help")
                }
    return surface


def _resolve(schema: Mapping[str, Any], node: Mapping[str, Any]) -> Mapping[str, Any]:
    while "$ref" in node:
        ref: str = node["$ref"]
        assert ref.startswith("#/"), ref
        target: Any = schema
        for part in ref[2:].split("/"):
            target = target[part]
        node = target
    return node


def schema_manifest_keys() -> dict[str, set[str]]:
    """The manifest schema's keys by place: ``top``, ``limits`` and ``group`` (a job group)."""
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    top = schema["properties"]
    return {
        "top": set(top),
        "limits": set(_resolve(schema, top["limits"])["properties"]),
        "group": set(_resolve(schema, _resolve(schema, top["jobs"])["items"])["properties"]),
    }


def loader_manifest_keys() -> dict[str, set[str]]:
    """The keys the manifest loader accepts, by the same places as the schema.

    The one place that knows where the loader keeps its lists of allowed keys: when the
    loader moves or is split, change this accessor only.
    """
    return {place: set(keys) for place, keys in manifest_loader.manifest_keys().items()}


# --- the checks, as functions of the docs' text (so a test can feed them altered docs) ----


def _mentions_flag(text: str, flag: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text) is not None


def _mentions_key(text: str, place: str, key: str) -> bool:
    # `key` or `limits.key` in prose and tables, or `key:` in a YAML example
    return (
        re.search(rf"`(?:{place}\.)?{re.escape(key)}`", text) is not None
        or re.search(rf"(?m)^\s*(?:- )?{re.escape(key)}:", text) is not None
    )


def undocumented(text: str) -> list[str]:
    """Subcommands, flags and manifest keys that ``text`` never mentions."""
    missing: list[str] = []
    for command, options in sorted(cli_surface().items()):
        if f"batchgen {command}" not in text:
            missing.append(f"subcommand: batchgen {command}")
        missing.extend(
            f"flag: batchgen {command} {option}"
            for option in sorted(options)
            if not _mentions_flag(text, option)
        )
    for place, keys in schema_manifest_keys().items():
        missing.extend(
            f"manifest key: {key if place == 'top' else f'{place}.{key}'}"
            for key in sorted(keys)
            if not _mentions_key(text, place, key)
        )
    return missing


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(markdown: str) -> set[str]:
    outside_code = re.sub(r"^```.*?^```", "", markdown, flags=re.M | re.S)
    return {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", outside_code, re.M)}


def broken_links(files: Mapping[Path, str]) -> list[str]:
    """Relative links (and #anchors) in ``files`` (path -> text) that lead nowhere."""
    broken: list[str] = []
    for path, text in files.items():
        outside_code = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", outside_code):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.relative_to(REPO)}: ({target})"
            if not dest.exists():
                broken.append(f"{where}: no such file")
            elif anchor and dest.suffix == ".md":
                dest_text = files.get(dest) or dest.read_text(encoding="utf-8")
                if anchor not in _anchors(dest_text):
                    broken.append(f"{where}: no heading #{anchor}")
    return broken


def _command_lines(markdown: str) -> Iterator[str]:
    """Lines that show a ``batchgen`` command: shell blocks, ``$ `` prompts, synopses,
    and inline code that starts with ``batchgen``."""
    for language, body in fenced_blocks(markdown):
        for line in body.splitlines():
            stripped = line.strip()
            if language in ("sh", "bash") or stripped.startswith(("$ ", "batchgen ")):
                yield stripped.removeprefix("$ ")
    outside_code = re.sub(r"^```.*?^```", "", markdown, flags=re.M | re.S)
    yield from re.findall(r"`(batchgen [^`]+)`", outside_code)


def wrong_commands(markdown: str) -> list[str]:
    """``batchgen`` invocations in ``markdown`` with an unknown subcommand or flag."""
    surface = cli_surface()
    wrong: list[str] = []
    for line in _command_lines(markdown):
        code = re.sub(r"\s#.*$", "", line)  # a trailing comment
        code = re.sub(r"\$\([^)]*\)", "X", code)  # $(date +%F)
        for segment in re.split(r"&&|\|\||;|\s\|\s|['\"]", code):
            words = segment.split()
            starts = [i for i, w in enumerate(words) if w == "batchgen" or w.endswith("/batchgen")]
            if not starts or starts[0] + 1 >= len(words):
                continue
            rest = words[starts[0] + 1 :]
            command = rest[0]
            if command.startswith("-") or not re.fullmatch(r"[a-z][a-z0-9-]*", command):
                continue  # `batchgen --version`, `batchgen COMMAND --help`
            if command not in surface:
                wrong.append(f"unknown subcommand: {line}")
                continue
            args = " ".join(rest[1:]).split(">")[0]  # up to a redirection
            for flag in re.findall(r"(?:^|(?<=[\s\[|(]))(--?[A-Za-z][\w-]*)", args):
                if flag not in surface[command] | {"-h", "--help"}:
                    wrong.append(f"batchgen {command} has no flag {flag}: {line}")
    return wrong


# --- the tests ---------------------------------------------------------------------------


def test_every_subcommand_flag_and_manifest_key_is_documented() -> None:
    assert undocumented(docs_text()) == []


@pytest.mark.parametrize(
    ("mention", "reported"),
    [
        ("--rebuild-metadata", "flag: batchgen export --rebuild-metadata"),
        ("--samples", "flag: batchgen plan --samples"),
        ("submits_in_flight", "manifest key: limits.submits_in_flight"),
        ("prompts_file", "manifest key: group.prompts_file"),
        ("batchgen simulate", "subcommand: batchgen simulate"),
    ],
)
def test_deleting_every_line_that_mentions_an_item_makes_the_docs_check_report_it(
    mention: str, reported: str
) -> None:
    text = docs_text()
    assert reported not in undocumented(text)
    without = "\n".join(line for line in text.splitlines() if mention not in line)
    assert reported in undocumented(without)


def test_manifest_schema_and_loader_accept_the_same_keys() -> None:
    assert schema_manifest_keys() == loader_manifest_keys()


def test_relative_links_in_readme_and_docs_lead_to_files_and_headings_that_exist() -> None:
    files = {path.resolve(): path.read_text(encoding="utf-8") for path in doc_files()}
    pointer = REPO / "benchmarks" / "README.md"
    files[pointer.resolve()] = pointer.read_text(encoding="utf-8")
    assert broken_links(files) == []


def test_link_check_reports_a_missing_page_and_a_missing_heading() -> None:
    page = (REPO / "docs" / "manifest.md").resolve()
    text = "see [gone](nowhere.md), [here](running.md#no-such-part) and [ok](running.md)\n"
    assert broken_links({page: text}) == [
        "docs/manifest.md: (nowhere.md): no such file",
        "docs/manifest.md: (running.md#no-such-part): no heading #no-such-part",
    ]


def test_every_batchgen_command_in_the_docs_uses_a_real_subcommand_and_real_flags() -> None:
    wrong = [
        f"{path.relative_to(REPO)}: {problem}"
        for path in doc_files()
        for problem in wrong_commands(path.read_text(encoding="utf-8"))
    ]
    assert wrong == []


def test_command_check_reports_an_unknown_flag_and_an_unknown_subcommand() -> None:
    text = "```sh\nbatchgen run m.yaml --simulate --speed 3\nbatchgen frobnicate x\n```\n"
    assert wrong_commands(text) == [
        "batchgen run has no flag --speed: batchgen run m.yaml --simulate --speed 3",
        "unknown subcommand: batchgen frobnicate x",
    ]


def _quick_start_blocks() -> list[str]:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [body.strip() for language, body in fenced_blocks(section) if language == "bash"]


def test_readme_quick_start_installs_into_venv_and_tests_as_ci_does() -> None:
    install_and_run, install_and_test = _quick_start_blocks()
    assert install_and_run.startswith("python3 -m venv .venv && .venv/bin/pip install ")
    assert install_and_run.endswith(".venv/bin/batchgen run manifests/example.yaml --simulate")
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert install_and_test in ci, "the README's test command must be the one .ci/run runs"


def test_cron_recipe_uses_the_venv_path_and_creates_its_folders() -> None:
    cron = (REPO / "docs" / "cron.md").read_text(encoding="utf-8")
    cron_lines = [line for line in cron.splitlines() if line.startswith("0 2 * * * ")]
    assert cron_lines
    for line in cron_lines:
        assert "/.venv/bin/batchgen run manifests/nightly.yaml" in line
        assert re.search(r"(?:&&|\s)batchgen\s", line) is None, "cron has no activated venv"
    assert "mkdir -p ~/.config/batchgen $HOME/datasets/logs" in cron


def test_run_directory_names_in_the_docs_match_the_shipped_manifests() -> None:
    text = docs_text()
    for manifest in sorted((REPO / "manifests").glob("*.yaml")):
        name = re.search(r"(?m)^name: (\S+)", manifest.read_text(encoding="utf-8"))
        assert name is not None
        assert re.search(r"(?m)^output: \.\./output/\{name\}-\{date\}", manifest.read_text())
        assert f"output/{name.group(1)}-" in text
    # run directories written in the docs are named after a shipped manifest's `name`
    shipped = {
        m.group(1)
        for path in (REPO / "manifests").glob("*.yaml")
        if (m := re.search(r"(?m)^name: (\S+)", path.read_text(encoding="utf-8")))
    }
    named = set(re.findall(r"\boutput/([A-Za-z0-9._-]+?)-(?:\d{4}-\d\d-\d\d|\$\(date)", text))
    assert named <= shipped


def test_readme_tour_runs_as_written_against_the_simulator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## A tour", 1)[1].split("\n## ", 1)[0]
    tour = next(body for language, body in fenced_blocks(section) if language == "bash")
    lines = [line.strip() for line in tour.splitlines() if line.strip()]
    assert lines[0] == ". .venv/bin/activate"
    shutil.copytree(REPO / "manifests", tmp_path / "manifests")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MODELLIX_API_KEY", raising=False)
    monkeypatch.delenv("MODELLIX_BASE_URL", raising=False)
    run_date = ""  # what $(date +%F) gives: the date the run directory was made
    for written in lines[1:]:
        line = written.replace("$(date +%F)", run_date)
        assert line == written or run_date, "a run directory is named before the run made it"
        words = line.split()
        assert words[0] == "batchgen", line
        assert main(words[1:]) == 0, line
        if words[1] == "run":
            [made] = (tmp_path / "output").iterdir()
            assert re.fullmatch(r"example-\d{4}-\d\d-\d\d", made.name)
            run_date = made.name.removeprefix("example-")
    with (tmp_path / "dataset.csv").open(encoding="utf-8", newline="") as table:
        rows = list(csv.DictReader(table))
    assert len(rows) == 12
    assert all((tmp_path / row["file_name"]).is_file() for row in rows)
    capsys.readouterr()
