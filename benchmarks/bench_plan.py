"""Benchmark: validate and expand big manifests; refuse a huge one. Prints one JSON document.

    python benchmarks/bench_plan.py           # 100k and 1M jobs, and a 10^12 refusal
    python benchmarks/bench_plan.py --quick   # a few seconds (CI smoke run)

Each size runs in a fresh subprocess so its peak memory (max RSS) is its own.
Targets (2-core machine): 100k jobs <= 3 s, 1M jobs <= 30 s with peak RSS < 1 GiB,
a 10^12-combination manifest refused in < 1 s.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from batchgen.manifest.loader import ManifestError, load_manifest

STYLES = 10
SIZES = ["1024x1024", "1536x1024"]


def write_manifest(folder: Path, jobs: int) -> Path:
    """A manifest of exactly ``jobs`` jobs: a prompts file x styles x sizes."""
    per_prompt = STYLES * len(SIZES)
    prompts = max(1, jobs // per_prompt)
    with (folder / "objects.txt").open("w", encoding="utf-8") as f:
        for i in range(prompts):
            f.write(f"object number {i}, a small ceramic figurine of an animal\n")
    styles = ", ".join(f"style {i}" for i in range(STYLES))
    text = (
        "version: 1\nname: bench\nmodel: openai/gpt-image-1.5\n"
        "defaults: {quality: medium}\n"
        "jobs:\n"
        "  - prompts_file: objects.txt\n"
        "    prompt: '{prompt}, {style}, studio lighting'\n"
        f"    matrix:\n      style: [{styles}]\n      size: [{', '.join(SIZES)}]\n"
    )
    path = folder / "bench.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def write_huge(folder: Path) -> Path:
    """10^12 combinations: four matrix keys of 1000 values each."""
    lines = ["version: 1", "model: openai/gpt-image-1.5", "jobs:", "  - prompt: '{a} {b} {c} {d}'"]
    lines.append("    matrix:")
    for key in "abcd":
        lines.append(f"      {key}: [" + ", ".join(str(i) for i in range(1000)) + "]")
    path = folder / "huge.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def measure_one(jobs: int) -> dict[str, object]:
    """Run inside a fresh process: load (validate) then expand every job with its ID."""
    with tempfile.TemporaryDirectory() as tmp:
        path = write_manifest(Path(tmp), jobs)
        start = time.perf_counter()
        manifest = load_manifest(path, max_jobs=max(jobs, 1_000_000))
        loaded = time.perf_counter()
        count = 0
        for _job in manifest.iter_jobs():
            count += 1
        done = time.perf_counter()
    assert count == manifest.count() == jobs, (count, jobs)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "jobs": count,
        "validate_s": round(loaded - start, 3),
        "expand_s": round(done - loaded, 3),
        "total_s": round(done - start, 3),
        "peak_rss_mib": round(peak_kib / 1024, 1),
    }


def measure_refusal() -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        path = write_huge(Path(tmp))
        start = time.perf_counter()
        try:
            load_manifest(path)
        except ManifestError as exc:
            elapsed = time.perf_counter() - start
            message = exc.diagnostics[0].message
        else:  # pragma: no cover - would be a bug
            raise SystemExit("a 10^12-job manifest was accepted")
    return {"combinations": 10**12, "refused_s": round(elapsed, 3), "message": message,
            "target_s": 1.0, "ok": elapsed < 1.0}  # fmt: skip


def run_child(jobs: int) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, __file__, "--one", str(jobs)],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes for CI")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(measure_one(args.one)))
        return 0
    targets = {10_000: 3.0} if args.quick else {100_000: 3.0, 1_000_000: 30.0}
    cases = []
    for jobs, target in targets.items():
        result = run_child(jobs)
        result["target_s"] = target
        ok = float(str(result["total_s"])) <= target
        if jobs >= 1_000_000:
            result["rss_target_mib"] = 1024
            ok = ok and float(str(result["peak_rss_mib"])) < 1024
        result["ok"] = ok
        cases.append(result)
    refusal = measure_refusal()
    report = {
        "benchmark": "plan",
        "mode": "quick" if args.quick else "full",
        "validate_and_expand": cases,
        "refuse_huge": refusal,
        "ok": all(c["ok"] for c in cases) and refusal["ok"],
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
