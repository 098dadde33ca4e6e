"""Where a train step's time goes: zeta_hf vs transformers' Llama, side by side in one process.

For each model (matched as in bench.py) and the size's batch, one train step (forward with the loss, backward,
AdamW) is timed in its three parts; the two models alternate step by step for `--rounds` rounds, so a slow spell of
the shared machine hits both, and the ratio reported is the median of the per-round ratios. `--compiled` adds a third
model, zeta_hf under `torch.compile` (inductor), to the same rounds; `--checkpointing` turns on activation
checkpointing for every model. Then two steps per model run under `torch.profiler`, and the self time of the aten
operators is split into matrix products, attention (sdpa's flash kernels), the optimizer and everything else.

Every round also measures the GEMM peak (a short burst of 1024 x 1024 products, the best of 3), so each step's
model-FLOP utilisation is taken against the peak of the same minute: this machine's speed drifts by up to 2x within
minutes, and a peak measured once, minutes away, can put MFU anywhere from 45% to 75%.

From those it derives:
- `MFU`: 6 x parameters x tokens per step over the step's time, over that round's GEMM peak (median of rounds);
- `gemm GFLOP/s`: 6 x parameters x tokens over the matrix products' own time (how close they run to the machine's
  peak, measured as in bench.py);
- `MFU cap`: 6 x parameters x tokens over the operators' time alone (no Python, no autograd engine): the model-FLOP
  utilisation an implementation made of these operators cannot exceed.

Not a test: nothing here asserts.

    python bench/profile_train.py --size medium --rounds 20 --compiled --out bench/results/profile_train_medium.json
    python bench/profile_train.py --size medium --rounds 12 --checkpointing --out bench/results/profile_train_medium_ckpt.json
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from bench import SIZES, build, gemm_peak_gflops, make_parser, num_threads, train_loss  # noqa: E402

GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def category(op: str) -> str | None:
    if op in GEMM_OPS:
        return "gemm"
    if "scaled_dot_product" in op:
        return "attention"
    if "_foreach" in op or "adam" in op.lower():
        return "optimizer"
    return "other" if op.startswith("aten::") else None


def main() -> None:
    parser = make_parser(__doc__, size="medium", rounds=6)
    parser.add_argument("--compiled", action="store_true",
                        help="also time zeta_hf under torch.compile (same rounds; no operator profile for it)")
    parser.add_argument("--checkpointing", action="store_true",
                        help="activation checkpointing on for every model (`activation_checkpointing_enable()`); "
                        "MFU still counts 6 x parameters per token, so the recomputed forward is not credited")
    args = parser.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(num_threads())
    size = SIZES[args.size]
    ids = torch.randint(0, 256, (size["batch"], size["seq"]))
    models: dict[str, Any] = {}  # name -> (model, optimizer, what the step calls)
    for name in ("llama", "zeta") + (("zeta_compiled",) if args.compiled else ()):
        model = build(name.removesuffix("_compiled"), size).train()
        if args.checkpointing:
            model.activation_checkpointing_enable()
        call = torch.compile(model) if name.endswith("_compiled") else model
        models[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4), call)

    def step(name: str) -> tuple[float, float, float]:
        _, opt, call = models[name]
        t0 = time.perf_counter()
        loss = train_loss(name.removesuffix("_compiled"), call, ids)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad()
        return t1 - t0, t2 - t1, time.perf_counter() - t2

    for name in models:
        step(name)  # warm-up: optimizer state, kernels (and compilation)
        step(name)
    parts: dict[str, list[tuple[float, float, float]]] = {name: [] for name in models}
    round_peaks: list[float] = []
    for _ in range(args.rounds):
        round_peaks.append(gemm_peak_gflops(tries=3, reps=5))
        for name in models:
            parts[name].append(step(name))

    operators: dict[str, dict[str, float]] = {}
    profile_peaks: dict[str, float] = {}
    for name in ("llama", "zeta"):  # compiled kernels are not aten operators: no split for them
        profile_peaks[name] = gemm_peak_gflops(tries=3, reps=5)  # the cap is taken against the peak of its minute
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step(name)
            step(name)
        split = {"gemm": 0.0, "attention": 0.0, "optimizer": 0.0, "other": 0.0}
        for event in prof.key_averages():
            kind = category(event.key)
            if kind is not None:
                split[kind] += event.self_cpu_time_total / 2 / 1e6  # seconds per step
        operators[name] = split

    peak = statistics.median(round_peaks)
    tokens = ids.numel()
    result: dict[str, Any] = dict(size=args.size, threads=num_threads(), rounds=args.rounds, gemm_peak_gflops=peak,
                                  checkpointing=args.checkpointing,
                                  round_gemm_peaks_gflops=round_peaks, models={})
    setting = f"{args.size}, activation checkpointing" if args.checkpointing else args.size
    print(f"\n{setting}, {num_threads()} thread(s), fp32 GEMM peak {peak:.0f} GFLOP/s (median of rounds, "
          f"{min(round_peaks):.0f}-{max(round_peaks):.0f}); ms per step, medians of {args.rounds} interleaved rounds; "
          f"operator self time from torch.profiler (2 steps)\n")
    print("| model | forward + loss | backward | AdamW | step | matrix products | attention | optimizer ops | other ops "
          "| gemm GFLOP/s | MFU | MFU cap |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, (model, _, _) in models.items():
        flops = 6 * sum(p.numel() for p in model.parameters()) * tokens
        fwd, bwd, opt = (statistics.median(p[i] for p in parts[name]) for i in range(3))
        total = fwd + bwd + opt
        mfu = statistics.median(flops / sum(p) / 1e9 / rp for p, rp in zip(parts[name], round_peaks))
        row = dict(step_parts_s=parts[name], flops_per_step=flops, median_step_s=total, mfu=mfu)
        ops_cells = "| - | - | - | - | - | "
        if name in operators:
            ops = operators[name]
            row.update(operators_s=ops, gemm_gflops=flops / ops["gemm"] / 1e9,
                       mfu_cap=flops / sum(ops.values()) / 1e9 / profile_peaks[name],
                       profile_gemm_peak_gflops=profile_peaks[name])
            ops_cells = (f"| {ops['gemm'] * 1e3:.0f} | {ops['attention'] * 1e3:.0f} | {ops['optimizer'] * 1e3:.0f} "
                         f"| {ops['other'] * 1e3:.0f} | {row['gemm_gflops']:.0f} | ")
        cap = f"{row['mfu_cap']:.0%}" if "mfu_cap" in row else "-"
        print(f"| {name} | {fwd * 1e3:.0f} | {bwd * 1e3:.0f} | {opt * 1e3:.0f} | {total * 1e3:.0f} {ops_cells}"
              f"{mfu:.0%} | {cap} |")
        result["models"][name] = row
    for name in models:
        if name == "llama":
            continue
        ratios = [sum(llama) / sum(other) for llama, other in zip(parts["llama"], parts[name])]
        key = "paired_ratio" if name == "zeta" else f"paired_ratio_{name}"
        result[key] = statistics.median(ratios)
        print(f"\n{name} steps per second / Llama's, median of per-round ratios: {result[key]:.2f}x "
              f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)})")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
