"""Where peak memory goes: resident set size vs the tensors alive, per model and workload, side by side.

`bench.py` reports peak RSS (`ru_maxrss`), which also counts memory the C allocator keeps after tensors are freed and
kernels a library caches per input shape. This script runs the same cells (`bench.py --cell`, fresh processes,
models interleaved over rounds) under three environments, plus one profiled run:

  rss            the default process, as `bench.py` measures it
  rss_trim       MALLOC_MMAP_THRESHOLD_=131072: glibc then serves every block >= 128 KiB with its own mapping and
                 returns it at free. By default the threshold rises to the largest block freed so far (up to 32 MiB),
                 later blocks below it come from the heap, and a heap cannot shrink below its highest live block: the
                 peak then depends on the order of allocations, not on how much is alive.
  rss_no_dnnl    ONEDNN_PRIMITIVE_CACHE_CAPACITY=0: oneDNN keeps no compiled kernel per input shape (PyTorch routes a
                 linear layer with a bias through oneDNN; uncached decoding has a new shape at every step).
  (rss also records what glibc's heap keeps free at the end of the cell: memory counted in RSS but holding no live
  block, the part of a peak that depends on the allocator rather than on the model.)
  tensors        peak bytes of live tensors (gradients, optimizer state, activations, temporaries; the model's
                 weights, built before, are not counted), from `torch.profiler`'s memory timeline.

Not a test: nothing here asserts.

    python bench/memory.py --size small --rounds 3 --out bench/results/memory_small.json
    python bench/memory.py --size medium --rounds 2 --workloads train_step --out bench/results/memory_medium.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the same builders and workloads as the speed benchmark)

ENVIRONMENTS: dict[str, dict[str, str]] = {
    "rss": {},
    "rss_trim": {"MALLOC_MMAP_THRESHOLD_": "131072"},
    "rss_no_dnnl": {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "0"},
}
MODES = (*ENVIRONMENTS, "tensors")
WORKLOADS = ("train_step", "forward", "decode", "decode_uncached", "train_step_ckpt")


def tensor_cell(model_name: str, workload: str, size_name: str) -> dict[str, Any]:
    """Peak live tensor bytes over one `bench._measure` run, from the profiler's memory timeline (CPU)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(bench.num_threads())
    size = bench.SIZES[size_name]
    model = bench.build(model_name, size)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        bench._measure(model_name, model, workload, size)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "timeline.json"
        prof.export_memory_timeline(str(path), device="cpu")
        _times, sizes = json.loads(path.read_text())  # sizes: one row per time, one column per category
    peak = max(sum(row) for row in sizes) if sizes else 0
    return dict(model=model_name, workload=workload, size=size_name, mode="tensors", peak_mb=peak / 2**20)


def run(model: str, workload: str, size_name: str, mode: str) -> dict[str, Any]:
    """One fresh process; its peak RSS (or peak tensor bytes) in MB, or the error it ended with."""
    if mode == "tensors":
        cmd = [sys.executable, __file__, "--tensor-cell", model, workload, size_name]
    else:
        cmd = [sys.executable, bench.__file__, "--cell", model, workload, size_name]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **ENVIRONMENTS.get(mode, {})})
    lines = proc.stdout.strip().splitlines()
    try:
        cell = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        return dict(model=model, workload=workload, mode=mode, error=tail[:300])
    if mode != "tensors":
        cell = dict(model=model, workload=workload, mode=mode, peak_mb=cell["peak_rss_mb"],
                    over_build_mb=cell["rss_over_baseline_mb"], error=cell.get("error"),
                    heap_free_mb=cell.get("malloc_heap_free_mb"))
    return cell


def make_table(results: list[dict[str, Any]], models: list[str], workloads: list[str]) -> str:
    """Median MB per (workload, model, mode), each with its ratio to Llama; one column per mode that was run."""
    modes = [mode for mode in MODES if any(r["mode"] == mode for r in results)]
    columns = [(mode, "peak_mb", f"{mode} MB (/ Llama)") for mode in modes]
    if any(r.get("heap_free_mb") is not None for r in results if r["mode"] == "rss"):
        columns.append(("rss", "heap_free_mb", "rss: glibc heap kept free at the end, MB (/ Llama)"))
    head = " | ".join(title for _, _, title in columns)
    lines = [f"| workload | model | {head} |", "|---|---|" + "---|" * len(columns)]
    for workload in workloads:
        med: dict[tuple[str, str], float] = {}
        for model in models:
            for mode, field, _ in columns:
                values = [r[field] for r in results if (r["model"], r["workload"], r["mode"]) == (model, workload, mode)
                          and not r.get("error") and r.get(field) is not None]
                if values:
                    med[model, mode, field] = statistics.median(values)
        for model in models:
            cells = []
            for mode, field, _ in columns:
                if (model, mode, field) not in med:
                    cells.append("-")
                    continue
                value, llama = med[model, mode, field], med.get(("llama", mode, field))
                cells.append(f"{value:.0f}" + (f" ({value / llama:.2f})" if llama else ""))
            lines.append(f"| {workload} | {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=bench.SIZES, default="small")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of interleaved cells; medians over rounds")
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=["train_step", "decode_uncached"])
    parser.add_argument("--models", nargs="+", choices=bench.MODELS, default=list(bench.MODELS))
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--out", default=None, help="raw results JSON (also holds the markdown table)")
    parser.add_argument("--tensor-cell", nargs=3, metavar=("MODEL", "WORKLOAD", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tensor_cell:
        print(json.dumps(tensor_cell(*args.tensor_cell)))
        return

    results = []
    for round_ in range(args.rounds):
        for workload in args.workloads:
            for mode in args.modes:
                for model in args.models:  # interleaved, so drift hits every model alike
                    cell = run(model, workload, args.size, mode)
                    cell["round"] = round_
                    results.append(cell)
                    status = f"error: {cell['error']}" if cell.get("error") else f"{cell['peak_mb']:8.1f} MB"
                    print(f"round {round_} {workload:15s} {mode:12s} {model:14s} {status}", file=sys.stderr)
    table = make_table(results, args.models, args.workloads)
    print(f"\n{args.size}\n\n{table}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(dict(size=args.size, threads=bench.num_threads(), cells=results,
                                                  table_markdown=table), indent=1))


if __name__ == "__main__":
    main()
