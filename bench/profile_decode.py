"""Where a cached greedy decode step spends its time: zeta_hf vs transformers' Llama, side by side.

For each model (matched as in bench.py) it measures, per generated token at batch 1:

- `generate`: wall time per new token of `model.generate` (prompt 128, greedy, default dynamic cache);
- `forward`: one decode-step forward with a cache, in a hand-written loop (what the model itself costs);
- `gemv`: the same step's matrix-vector products alone (every nn.Linear once, on its own weights), the part
  bounded by memory bandwidth;
- `read bound`: the weight bytes read per token divided by this machine's measured read bandwidth.

So `generate - forward` is generate()'s own per-step work (logits processing, stopping criteria, input
preparation, shared by both models), `forward - gemv` is per-layer dispatch and the small ops (norms, rotary,
attention, residuals). Models are interleaved over rounds in one process; minima are reported (the least disturbed
run on a shared machine). Not a test: nothing here asserts.

    python bench/profile_decode.py --size small --rounds 7
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from bench import SIZES, build, num_threads  # noqa: E402


def per_token_generate(model: Any, prompt: Any, new: int) -> float:
    kwargs = dict(do_sample=False, max_new_tokens=new, min_new_tokens=new)
    start = time.perf_counter()
    model.generate(prompt, **kwargs)
    return (time.perf_counter() - start) / new


def per_token_forward(model: Any, prompt: Any, new: int) -> float:
    """A decode loop by hand: prefill, then one-token forwards with a growing cache and an all-ones mask."""
    import torch

    out = model(prompt, use_cache=True)
    cache, token = out.cache if hasattr(out, "cache") else out.past_key_values, out.logits[:, -1:].argmax(-1)
    mask = torch.ones(1, prompt.shape[1] + new, dtype=torch.long)
    start = time.perf_counter()
    for i in range(new):
        out = model(token, attention_mask=mask[:, : prompt.shape[1] + i + 1], cache=cache, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
    return (time.perf_counter() - start) / new


def per_token_gemv(model: Any) -> tuple[float, int]:
    """Every nn.Linear of the model applied once to a single row: the step's weight-bound work, and its bytes."""
    import torch

    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    rows = [torch.randn(1, 1, m.in_features) for m in linears]
    for _ in range(5):
        for m, x in zip(linears, rows):
            m(x)
    start, reps = time.perf_counter(), 50
    for _ in range(reps):
        for m, x in zip(linears, rows):
            m(x)
    weight_bytes = sum(p.numel() * p.element_size() for m in linears for p in m.parameters())
    return (time.perf_counter() - start) / reps, weight_bytes


def per_step_input_checks(model: Any) -> float:
    """Seconds zeta_hf's input validation (`ZetaModel._check_inputs`, issue: reliability) costs per decode step."""
    import torch

    ids = torch.randint(0, model.config.vocab_size, (1, 1))
    check = model.model._check_inputs
    for _ in range(100):
        check(ids, None, None, None, None, None, None)
    start, reps = time.perf_counter(), 5000
    for _ in range(reps):
        check(ids, None, None, None, None, None, None)
    return (time.perf_counter() - start) / reps


def read_bandwidth() -> float:
    import torch

    big = torch.randn(128 * 1024 * 1024 // 4)
    big.sum()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        big.sum()
        best = min(best, time.perf_counter() - start)
    return big.numel() * 4 / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=SIZES, default="small", metavar="{small,medium}")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--new", type=int, default=64, help="new tokens per measurement (default: 64)")
    parser.add_argument("--out", default=None, help="JSON file for the raw numbers")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(num_threads())
    models = {name: build(name, SIZES[args.size]).eval() for name in ("llama", "zeta")}
    prompt = torch.randint(0, 256, (1, 128))
    times: dict[str, dict[str, list[float]]] = {n: {"generate": [], "forward": [], "gemv": []} for n in models}
    weight_bytes = {}
    with torch.no_grad():
        for model in models.values():
            per_token_generate(model, prompt, 4)  # warm-up
        for _ in range(args.rounds):
            for name, model in models.items():
                times[name]["generate"].append(per_token_generate(model, prompt, args.new))
                times[name]["forward"].append(per_token_forward(model, prompt, args.new))
                gemv, weight_bytes[name] = per_token_gemv(model)
                times[name]["gemv"].append(gemv)
    bandwidth = read_bandwidth()
    with torch.no_grad():
        checks = per_step_input_checks(models["zeta"])

    print(f"\n{args.size}, {num_threads()} thread(s), read bandwidth {bandwidth / 1e9:.1f} GB/s; ms per token, "
          f"minimum of {args.rounds} rounds\n")
    print("| model | generate | forward | generate overhead | gemv | forward - gemv | weight MB | read bound |")
    print("|---|---|---|---|---|---|---|---|")
    result = dict(size=args.size, threads=num_threads(), read_bandwidth=bandwidth, rounds=args.rounds, models={})
    for name in models:
        best = {k: min(v) * 1e3 for k, v in times[name].items()}
        bound = weight_bytes[name] / bandwidth * 1e3
        print(f"| {name} | {best['generate']:.2f} | {best['forward']:.2f} | {best['generate'] - best['forward']:.2f} "
              f"| {best['gemv']:.2f} | {best['forward'] - best['gemv']:.2f} | {weight_bytes[name] / 1e6:.1f} "
              f"| {bound:.2f} |")
        result["models"][name] = dict(ms_per_token=best, weight_bytes=weight_bytes[name], read_bound_ms=bound,
                                      raw=times[name])
    forward_ms = min(times["zeta"]["forward"]) * 1e3
    print(f"\nzeta_hf input checks: {checks * 1e6:.1f} us per decode step ({checks * 1e3 / forward_ms:.1%} of its forward)")
    result["input_checks_us"] = checks * 1e6
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
