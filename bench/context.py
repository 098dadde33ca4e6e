"""Per-token cached greedy decode time vs context length: zeta_hf vs transformers' Llama (batch 1).

Method: for each context L, a random L-token prompt is prefilled with one forward pass (use_cache=True, the
model's own DynamicCache), then `--steps` greedy decode steps are timed as a manual loop of single-token forwards
that feed the argmax back with the cache. Prefill is timed separately and NOT included in ms/token, so the number is
the pure per-step cost at context ~L (a generate()-based timing would mix in the O(L^2) prefill). A short warm-up
prefill + decode runs first in every process.

Each (model, L) cell runs in a fresh process, cells interleaved over rounds, medians reported. Per cell the
estimated bytes read per decode step are recorded: parameter bytes + KV-cache bytes at context L
(2 * layers * kv_heads * head_dim * L * 4 for fp32). Decode at batch 1 is memory-bound, so ms/token should grow
roughly like these bytes; growth beyond that points at per-step overhead that scales with L.

    python bench/context.py --size small --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import SIZES, build, make_parser, num_threads, zeta_hf_digest  # noqa: E402  (sibling script, not a package)

MODELS = ("llama", "zeta")
CONTEXTS = (128, 256, 512, 1024, 2048)
RESULTS = Path(__file__).resolve().parent / "results"


def kv_bytes(size: dict[str, int], context: int) -> int:
    """fp32 KV cache at `context` tokens; both models use full multi-head attention (kv_heads = heads)."""
    head_dim = size["dim"] // size["heads"]
    return 2 * size["depth"] * size["heads"] * head_dim * context * 4


def run_cell(model_name: str, size_name: str, context: int, steps: int) -> dict[str, Any]:
    """Prefill `context` tokens, then time `steps` cached single-token greedy forwards, in this process."""
    import torch

    threads = num_threads()
    torch.set_num_threads(threads)
    size = SIZES[size_name]
    model = build(model_name, size).eval()
    params = sum(p.numel() for p in model.parameters())

    def prefill(ids: torch.Tensor) -> tuple[torch.Tensor, Any]:
        out = model(input_ids=ids, use_cache=True)
        return out.logits[:, -1:].argmax(-1), out.cache

    def decode(tok: torch.Tensor, cache: Any, n: int) -> None:
        for _ in range(n):
            out = model(input_ids=tok, cache=cache, use_cache=True)
            tok = out.logits[:, -1:].argmax(-1)
            cache = out.cache

    with torch.no_grad():
        tok, cache = prefill(torch.randint(0, 256, (1, 16)))  # warm-up: first-call allocations, lazy init
        decode(tok, cache, 4)
        prompt = torch.randint(0, 256, (1, context))
        t0 = time.perf_counter()
        tok, cache = prefill(prompt)
        prefill_s = time.perf_counter() - t0
        cpu0, t0 = time.process_time(), time.perf_counter()
        decode(tok, cache, steps)
        seconds = time.perf_counter() - t0
        cpu = (time.process_time() - cpu0) / seconds / threads
        cached = cache.get_seq_length()
    if cached != context + steps:  # guards the method: the loop must really have been extending the cache
        raise RuntimeError(f"cache holds {cached} tokens, expected {context + steps}")
    param_bytes = params * 4
    kv = kv_bytes(size, context)
    return dict(model=model_name, size=size_name, context=context, steps=steps, params=params, threads=threads,
                ms_per_token=seconds / steps * 1e3, prefill_ms=prefill_s * 1e3, cpu_utilisation=cpu,
                param_bytes=param_bytes, kv_bytes=kv, bytes_per_token=param_bytes + kv, zeta_hf_digest=zeta_hf_digest())


def make_table(results: list[dict[str, Any]], models: list[str], contexts: list[int]) -> tuple[str, dict]:
    """Markdown table (one row per context) and the medians it shows, keyed model -> context."""
    medians: dict[str, dict[int, dict[str, float]]] = {}
    for model in models:
        for context in contexts:
            cells = [r for r in results if r["model"] == model and r["context"] == context and "error" not in r]
            if cells:
                medians.setdefault(model, {})[context] = dict(
                    ms_per_token=statistics.median(c["ms_per_token"] for c in cells),
                    prefill_ms=statistics.median(c["prefill_ms"] for c in cells),
                    cpu_utilisation=statistics.median(c["cpu_utilisation"] for c in cells),
                    bytes_per_token=cells[0]["bytes_per_token"], kv_bytes=cells[0]["kv_bytes"], n=len(cells))
    header = "| context | est. MB read/token (params + KV) | KV MB |"
    sep = "|---|---|---|"
    for model in models:
        header += f" {model} ms/token | {model} prefill ms | {model} cpu |"
        sep += "---|---|---|"
    if "llama" in models and len(models) > 1:
        header += " " + " | ".join(f"{m} / llama" for m in models if m != "llama") + " |"
        sep += "---|" * (len(models) - 1)
    lines = [header, sep]
    for context in contexts:
        any_cell = next((medians[m][context] for m in models if context in medians.get(m, {})), None)
        if any_cell is None:
            errs = {r["model"]: r["error"] for r in results if r["context"] == context and "error" in r}
            lines.append(f"| {context} | error: {errs} |")
            continue
        row = f"| {context} | {any_cell['bytes_per_token'] / 1e6:.1f} | {any_cell['kv_bytes'] / 1e6:.1f} |"
        for model in models:
            m = medians.get(model, {}).get(context)
            row += (f" {m['ms_per_token']:.2f} | {m['prefill_ms']:.1f} | {m['cpu_utilisation']:.0%} |" if m
                    else " error | - | - |")
        if "llama" in models and len(models) > 1:
            base = medians.get("llama", {}).get(context)
            for model in models:
                if model != "llama":
                    m = medians.get(model, {}).get(context)
                    row += f" {m['ms_per_token'] / base['ms_per_token']:.2f} |" if m and base else " - |"
        lines.append(row)
    lines += ["", "ms/token: median over rounds of (time of the cached single-token decode steps) / steps; "
              "prefill excluded. MB read/token: fp32 parameters + KV cache at that context (both models have "
              "the same layout, the row shows the first model's parameter count)."]
    return "\n".join(lines), medians


def plot(medians: dict, size_name: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for model, by_context in medians.items():
        xs = sorted(by_context)
        ax.plot(xs, [by_context[x]["ms_per_token"] for x in xs], marker="o", label=model)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("ms / token (cached greedy decode)")
    ax.set_title(f"Decode step time vs context ({size_name}, batch 1)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_subprocess_cell(model: str, size_name: str, context: int, steps: int) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--cell", model, size_name, str(context), str(steps)],
                          capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1])
    tail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
    return dict(model=model, size=size_name, context=context, error=f"rc {proc.returncode}: {tail[:300]}")


def main() -> None:
    parser = make_parser(__doc__, out_help="results JSON (default: bench/results/context_<size>.json); the plot is "
                         "written next to it with a .png suffix")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), help="models (default: both)")
    parser.add_argument("--contexts", nargs="+", type=int, default=list(CONTEXTS),
                        help="prompt lengths to prefill (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=32, help="timed decode steps per cell (default: 32)")
    parser.add_argument("--cell", nargs=4, metavar=("MODEL", "SIZE", "CONTEXT", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cell:
        model, size_name, context, steps = args.cell
        print(json.dumps(run_cell(model, size_name, int(context), int(steps))))
        return

    results = []
    for round_ in range(args.rounds):
        for context in args.contexts:
            for model in args.models:  # interleaved, so drift hits every model alike
                cell = run_subprocess_cell(model, args.size, context, args.steps)
                cell["round"] = round_
                results.append(cell)
                status = (f"error: {cell['error']}" if "error" in cell else
                          f"{cell['ms_per_token']:7.2f} ms/token cpu {cell['cpu_utilisation']:.0%}")
                print(f"round {round_} context {context:5d} {model:6s} {status}", file=sys.stderr)
    table, medians = make_table(results, args.models, args.contexts)
    print(f"\n{args.size}, {args.steps} decode steps, threads {num_threads()}\n\n{table}")
    out = Path(args.out) if args.out else RESULTS / f"context_{args.size}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(size=args.size, size_config=SIZES[args.size], steps=args.steps,
                                   threads=num_threads(), method="prefill forward, then timed manual loop of "
                                   "single-token forwards with the model's DynamicCache; prefill excluded",
                                   medians={m: {str(c): v for c, v in by.items()} for m, by in medians.items()},
                                   cells=results, table_markdown=table), indent=1))
    if medians:
        plot(medians, args.size, out.with_suffix(".png"))
    print(f"\nwrote {out} and {out.with_suffix('.png')}", file=sys.stderr)


if __name__ == "__main__":
    main()
