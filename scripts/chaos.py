"""Crash-and-resume chaos run: SIGKILL ``batchgen run`` at seeded random instants, resume,
check that nothing was lost; print the figures as JSON.

    python scripts/chaos.py [--jobs 3000] [--kills 24] [--seed 11]
                            [--server simulator|independent|both] [--fault-rate 0.04]

Exits 1 when a problem was found (jobs lost, torn files, unreported duplicate tasks...).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.chaoshelpers import ChaosConfig, run_chaos


def main(argv: list[str] | None = None) -> int:
    """Run the chaos test(s) and print one JSON document."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--kills", type=int, default=24)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--fault-rate", type=float, default=0.04)
    parser.add_argument("--max-life", type=float, default=5.0)
    parser.add_argument("--server", choices=("simulator", "independent", "both"), default="both")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    args = parser.parse_args(argv)
    servers = ["simulator", "independent"] if args.server == "both" else [args.server]
    out: dict[str, object] = {}
    ok = True
    for server in servers:
        cfg = ChaosConfig(
            jobs=args.jobs,
            kills=args.kills,
            seed=args.seed,
            server=server,
            fault_rate=args.fault_rate,
            max_life=args.max_life,
        )
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="batchgen-chaos-") as tmp:
            workdir = (args.keep / server) if args.keep else Path(tmp)
            result = run_chaos(cfg, workdir)
        figures = result.as_dict()
        figures["seconds"] = round(time.monotonic() - started, 1)
        out[server] = figures
        ok = ok and not result.problems
    print(json.dumps(out, indent=2, sort_keys=True))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
