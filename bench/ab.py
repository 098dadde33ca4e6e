"""Before / after: zeta_hf from another checkout vs this one, each as a ratio to transformers' Llama, interleaved.

A change to the model core must not make it slower. Run against a checkout of the commit before the change
(`git worktree add /tmp/before <commit>`): every round runs, per workload, a Llama cell, a zeta_hf cell importing
the `--before` checkout and a zeta_hf cell importing this one (each in a fresh process, as bench.py's cells), so drift
on a shared machine hits all three alike. Reported per workload: the median ratio to Llama before and after (tokens/s,
higher is better), and the median over rounds of the per-round after / before ratio with its spread. Not a test:
nothing here asserts.

    python bench/ab.py --before /tmp/before --size small --rounds 5 --workloads train_step forward decode
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from bench import WORKLOADS, make_parser, run_subprocess_cell  # noqa: E402

HERE = Path(__file__).resolve().parent
AFTER = HERE.parent


def cell(model: str, workload: str, size: str, checkout: Path) -> dict[str, Any]:
    """One bench.py cell in a fresh interpreter, importing zeta_hf from `checkout`."""
    path = os.pathsep.join(p for p in (str(checkout), os.environ.get("PYTHONPATH", "")) if p)
    return run_subprocess_cell(model, workload, size, env={**os.environ, "PYTHONPATH": path})


def main() -> None:
    parser = make_parser(__doc__, rounds=5, out_help="raw cells as JSON")
    parser.add_argument("--before", type=Path, required=True, help="a checkout of zeta_hf to compare against")
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=["train_step", "forward", "decode"])
    args = parser.parse_args()
    before = args.before.resolve()
    if not (before / "zeta_hf" / "__init__.py").is_file():
        parser.error(f"--before {str(args.before)!r} is not a zeta_hf checkout (no zeta_hf/__init__.py in it).")
    rows: dict[str, list[dict[str, float]]] = {w: [] for w in args.workloads}
    for round_ in range(args.rounds):
        for workload in args.workloads:
            got = {"llama": cell("llama", workload, args.size, AFTER),
                   "before": cell("zeta", workload, args.size, before),
                   "after": cell("zeta", workload, args.size, AFTER)}
            errors = {k: v["error"] for k, v in got.items() if "error" in v}
            if errors:
                print(f"round {round_ + 1} {workload}: {errors}", file=sys.stderr)
                continue
            tps = {k: v["tokens_per_s"] for k, v in got.items()}
            rows[workload].append(tps)
            print(f"round {round_ + 1} {workload}: " + ", ".join(f"{k} {v:.1f} tok/s" for k, v in tps.items()),
                  file=sys.stderr)
    print(f"| workload ({args.size}) | before / Llama | after / Llama | after / before (median of rounds) | "
          "per-round range | rounds |")
    print("|---|---|---|---|---|---|")
    for workload, runs in rows.items():
        if not runs:
            print(f"| {workload} | - | - | - | - | 0 |")
            continue
        before_ratio = statistics.median(r["before"] / r["llama"] for r in runs)
        after_ratio = statistics.median(r["after"] / r["llama"] for r in runs)
        change = [r["after"] / r["before"] for r in runs]
        print(f"| {workload} | {before_ratio:.2f}x | {after_ratio:.2f}x | {statistics.median(change):.2f} | "
              f"{min(change):.2f}-{max(change):.2f} | {len(runs)} |")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
