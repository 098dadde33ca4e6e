"""Why a peak RSS sits above the live tensors: glibc's heap traced operator by operator through a train step.

`memory.py` shows that in the checkpointed training cells zeta_hf's peak RSS is above Llama's while its live tensors
are below. This script shows where the difference is made. Each model (built as in bench.py) runs `--steps` train
steps (forward with the loss, backward, AdamW; `--checkpointing` turns on `activation_checkpointing_enable()`) in a
fresh process, under a dispatch mode that reads glibc's heap counters (`mallinfo2`) around every aten operator. An
operator whose output (1 MB or more) made the heap grow although the heap already held more free bytes than that
output needed is a request no free block could take: the heap grew because of where earlier blocks were placed
(fragmentation), not because more was alive.

Per model (medians over `--rounds` fresh processes, the models interleaved):
  peak RSS           the process's peak resident set size, MB
  heap               glibc's heap (all arenas) at its largest: bytes in use plus bytes free inside it, MB
  grown              the heap's total growth over the steps, MB
  grown while free   the part of it made by requests (of 1 MB or more) that, by size, the free bytes could have
                     served, MB
  free when grown    the heap's free bytes at those moments (median), MB
and the heap's size and free bytes at the end of each phase of each step (first round).

Not a test: nothing here asserts. The dispatch mode slows the steps down; the heap sees the same requests in the same
order as without it (it adds no tensor).

    python bench/heap_trace.py --size medium --checkpointing --rounds 3 --out bench/results/heap_trace_medium_ckpt.json
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the same builders and train step as the speed benchmark)


LARGE_MB = 1.0  # smaller blocks come from glibc's size-class bins, where free bytes elsewhere say nothing


def heap_mb() -> tuple[float, float]:
    """(heap size, bytes free inside it) of glibc's heap, MB."""
    info = bench.malloc_heap_mb()
    if not info:
        raise SystemExit("heap_trace.py reads glibc's mallinfo2(), which this C library does not have.")
    return info["malloc_heap_in_use_mb"] + info["malloc_heap_free_mb"], info["malloc_heap_free_mb"]


def trace_cell(model_name: str, size_name: str, steps: int, checkpointing: bool) -> dict[str, Any]:
    """One model's train steps under the heap-tracing dispatch mode, in this (fresh) process."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    torch.set_num_threads(bench.num_threads())
    size = bench.SIZES[size_name]
    model = bench.build(model_name, size)
    if checkpointing:
        model.activation_checkpointing_enable()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, 256, (size["batch"], size["seq"]))

    class HeapTrace(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.phase = "build"
            self.peak_heap = heap_mb()[0]
            self.growths: list[dict[str, Any]] = []  # one per operator that made the heap grow

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            heap_before, free_before = heap_mb()
            out = func(*args, **(kwargs or {}))
            heap_after, _ = heap_mb()
            self.peak_heap = max(self.peak_heap, heap_after)
            if heap_after > heap_before:
                outs = out if isinstance(out, (tuple, list)) else (out,)
                out_mb = sum(t.untyped_storage().nbytes() for t in outs if isinstance(t, torch.Tensor)) / 2**20
                self.growths.append(dict(phase=self.phase, op=str(func), out_mb=out_mb,
                                         grown_mb=heap_after - heap_before, free_before_mb=free_before))
            return out

    phases = []
    with HeapTrace() as trace:
        for step in range(steps):
            for name in ("forward", "backward", "optimizer"):
                trace.phase = f"step {step} {name}"
                if name == "forward":
                    loss = bench.train_loss(model_name, model, ids)
                elif name == "backward":
                    loss.backward()
                else:
                    opt.step()
                    opt.zero_grad()
                heap, free = heap_mb()
                phases.append(dict(phase=trace.phase, heap_mb=heap, free_mb=free))
    growths = trace.growths
    fragmenting = [g for g in growths if g["free_before_mb"] >= g["out_mb"] >= LARGE_MB]
    return dict(
        model=model_name, size=size_name, checkpointing=checkpointing, steps=steps,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        peak_heap_mb=trace.peak_heap,
        grown_mb=sum(g["grown_mb"] for g in growths),
        grown_while_free_mb=sum(g["grown_mb"] for g in fragmenting),
        free_when_grown_mb=statistics.median(g["free_before_mb"] for g in fragmenting) if fragmenting else 0.0,
        phases=phases,
        growths=growths,
    )


def run(model: str, size_name: str, steps: int, checkpointing: bool) -> dict[str, Any]:
    """One fresh process; its trace, or the error it ended with."""
    cmd = [sys.executable, __file__, "--cell", model, size_name, str(steps)] + (["--checkpointing"] * checkpointing)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        return dict(model=model, error=tail[:300])


COLUMNS = (("peak_rss_mb", "peak RSS"), ("peak_heap_mb", "heap"), ("grown_mb", "grown"),
           ("grown_while_free_mb", "grown while free"), ("free_when_grown_mb", "free when grown"))


def make_table(results: list[dict[str, Any]], models: list[str]) -> str:
    """Medians over rounds, MB, each with its ratio to Llama; then the first round's heap at the end of each phase."""
    ok = [r for r in results if not r.get("error")]
    if not ok:
        return "every cell failed: " + "; ".join(sorted({r["error"] for r in results}))
    med = {(m, key): statistics.median(r[key] for r in ok if r["model"] == m)
           for m in models if any(r["model"] == m for r in ok) for key, _ in COLUMNS}
    lines = ["| MB | " + " | ".join(title for _, title in COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    for m in models:
        if (m, "grown_mb") not in med:
            continue
        cells = []
        for key, _ in COLUMNS:
            value, llama = med[m, key], med.get(("llama", key))
            cells.append(f"{value:.0f}" + (f" ({value / llama:.2f})" if llama and key != "free_when_grown_mb" else ""))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    firsts: dict[str, dict[str, Any]] = {}  # each model's first round
    for r in ok:
        firsts.setdefault(r["model"], r)
    lines += ["", "| heap / free inside it at the end of, MB | " + " | ".join(firsts) + " |",
              "|---|" + "---|" * len(firsts)]
    for i, p in enumerate(next(iter(firsts.values()))["phases"]):
        row = [f"{r['phases'][i]['heap_mb']:.0f} / {r['phases'][i]['free_mb']:.0f}" for r in firsts.values()]
        lines.append(f"| {p['phase']} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=bench.SIZES, default="small")
    parser.add_argument("--rounds", type=int, default=3, help="fresh processes per model, interleaved")
    parser.add_argument("--steps", type=int, default=3, help="train steps per process")
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing on")
    parser.add_argument("--models", nargs="+", choices=bench.HF_MODELS, default=list(bench.HF_MODELS))
    parser.add_argument("--out", default=None, help="raw results JSON (also holds the markdown table)")
    parser.add_argument("--cell", nargs=3, metavar=("MODEL", "SIZE", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cell:
        model, size_name, steps = args.cell
        print(json.dumps(trace_cell(model, size_name, int(steps), args.checkpointing)))
        return

    results = []
    for round_ in range(args.rounds):
        for model in args.models:
            cell = run(model, args.size, args.steps, args.checkpointing)
            cell["round"] = round_
            results.append(cell)
            status = cell["error"] if cell.get("error") else (
                f"peak RSS {cell['peak_rss_mb']:.0f} MB, heap grew {cell['grown_mb']:.0f} MB, "
                f"{cell['grown_while_free_mb']:.0f} MB of it while enough was free")
            print(f"round {round_} {model:6s} {status}", file=sys.stderr)
    table = make_table(results, args.models)
    print(f"\n{args.size}{', activation checkpointing' if args.checkpointing else ''}\n\n{table}")
    if args.out:
        for r in results:  # the per-operator events make the file large; keep only the biggest of each cell
            r["growths"] = sorted(r.get("growths", []), key=lambda g: -g["grown_mb"])[:20]
        Path(args.out).write_text(json.dumps(dict(size=args.size, checkpointing=args.checkpointing, steps=args.steps,
                                                  cells=results, table_markdown=table), indent=1))


if __name__ == "__main__":
    main()
