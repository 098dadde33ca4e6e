"""Where a cached greedy decode step spends its time: zeta_hf vs transformers' Llama, side by side.

For each model (matched as in bench.py) it measures, per generated token at batch 1:

- `generate`: wall time per decode step of `model.generate` (prompt 128, greedy, default dynamic cache;
  the prefill is excluded by subtracting a one-token run), and `generate's own work`, the part of it spent outside
  the model's forward (logits processing, stopping criteria, input preparation: the same code for both models),
  timed inside the same calls;
- `forward`: one decode-step forward with a cache, in a hand-written loop (what the model itself costs);
- `step` (zeta only): the package's own step without forward's input checks and output objects (`package_step`:
  plan, embedding, `ZetaModel.run_layers`, head; checked bit for bit against the model);
- `gemv`: the same step's matrix-vector products alone (every nn.Linear once, on its own weights), the part
  bounded by memory bandwidth;
- `read bound`: the weight bytes read per token divided by this machine's measured read bandwidth;
- from `torch.profiler` over the same hand-written loop: `in-situ gemm`, the self time of the step's matrix
  products as they run inside the model (slower than `gemv`, whose weights stay hot in cache between repeats), the
  self time of every other aten op, and how many top-level aten ops one step dispatches.

`forward - gemv` is per-layer dispatch and the small ops (norms, rotary, attention, residuals). `best ratio` is what zeta_hf would reach against Llama's `generate()` if everything in its
step except the in-situ matrix products and generate()'s own work took no time at all: a target above it cannot be
met by removing overhead. `step ratio` is what zeta_hf's step reaches without forward's checks and output objects:
the package step plus generate()'s own per-step work, against Llama's `generate()` (generate()'s own work counts
as the smaller of the two models' measurements). Models are interleaved over rounds in one process; minima are
reported (the least disturbed run on a shared machine). Not a test: nothing here asserts.

    python bench/profile_decode.py --size small --rounds 7
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from bench import SIZES, build, make_parser, num_threads  # noqa: E402


def per_token_generate(model: Any, prompt: Any, new: int) -> tuple[float, float]:
    """Seconds per decode step of `generate()`, prefill excluded ((time for `new` tokens - time for 1) / (new - 1)),
    and how much of it generate() spent outside the model's forward (its own work), timed in the same calls."""
    inside = [0.0]
    forward = model.forward

    def timed_forward(*args, **kwargs):
        start = time.perf_counter()
        try:
            return forward(*args, **kwargs)
        finally:
            inside[0] += time.perf_counter() - start

    def timed(count: int) -> tuple[float, float]:
        inside[0] = 0.0
        start = time.perf_counter()
        model.generate(prompt, do_sample=False, max_new_tokens=count, min_new_tokens=count)
        total = time.perf_counter() - start
        return total, total - inside[0]

    model.forward = timed_forward  # an instance attribute: generate's `self(...)` calls it
    try:
        (total_new, own_new), (total_one, own_one) = timed(new), timed(1)
    finally:
        del model.forward
    return (total_new - total_one) / (new - 1), (own_new - own_one) / (new - 1)


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


def package_step(model: Any, token: Any, cache: Any) -> Any:
    """zeta_hf's own decode step without what `forward` does around it: the call's plan, the embedding, the layer loop
    (`ZetaModel.run_layers`, direct module calls on a hook-free model) and the head; no input checks, no `output_*`
    bookkeeping, no output objects. What the step costs inside the package; `main` checks it against `forward`."""
    from zeta_hf.modeling_zeta import _Collected

    m = model.model
    plan = m.plan(token, None, cache)
    positions = plan.token_positions()
    x = m.embed(token, None, positions)
    x = m.run_layers(x, plan, m.attention_inputs(plan, positions, x.dtype), cache, None, None, _Collected(skip=0))
    return model.lm_head(x)


def per_token_package_step(model: Any, prompt: Any, new: int, check: bool = False) -> float:
    """Seconds per step of a greedy loop over `package_step`; with `check`, first asserts it equals the model."""
    import torch

    if check:
        reference = model(prompt, use_cache=True).cache
        own = model(prompt, use_cache=True).cache
        token = torch.tensor([[1]])
        for _ in range(8):
            want = model(token, cache=reference, use_cache=True).logits
            got = package_step(model, token, own)
            assert torch.equal(got, want), "package_step no longer computes zeta_hf's forward"
            token = want[:, -1:].argmax(-1)
    cache = model(prompt, use_cache=True).cache
    token = torch.tensor([[1]])
    start = time.perf_counter()
    for _ in range(new):
        token = package_step(model, token, cache)[:, -1:].argmax(-1)
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


def per_token_profile(model: Any, prompt: Any, new: int) -> dict[str, float]:
    """The hand-written decode loop under torch.profiler: in-situ GEMM ms, other aten ms, top-level ops per step."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    out = model(prompt, use_cache=True)
    cache, token = out.cache if hasattr(out, "cache") else out.past_key_values, out.logits[:, -1:].argmax(-1)
    mask = torch.ones(1, prompt.shape[1] + new, dtype=torch.long)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(new):
            out = model(token, attention_mask=mask[:, : prompt.shape[1] + i + 1], cache=cache, use_cache=True)
            token = out.logits[:, -1:].argmax(-1)
    events = [e for e in prof.events() if e.name.startswith("aten::")]
    gemm = sum(e.self_cpu_time_total for e in events if e.name in ("aten::mm", "aten::addmm", "aten::bmm"))
    other = sum(e.self_cpu_time_total for e in events) - gemm
    top = [e for e in events if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")]
    return dict(gemm_insitu=gemm / new / 1e3, other_aten=other / new / 1e3, ops_per_step=len(top) / new)


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
    parser = make_parser(__doc__, rounds=7)
    parser.add_argument("--new", type=int, default=64, help="new tokens per measurement (default: 64)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(num_threads())
    models = {name: build(name, SIZES[args.size]).eval() for name in ("llama", "zeta")}
    prompt = torch.randint(0, 256, (1, 128))
    times: dict[str, dict[str, list[float]]] = {
        n: {"generate": [], "generate_own": [], "forward": [], "gemv": [], "gemm_insitu": [], "other_aten": []}
        for n in models
    }
    times["zeta"]["step"] = []
    ops_per_step: dict[str, float] = {}
    weight_bytes = {}
    with torch.no_grad():
        for model in models.values():
            per_token_generate(model, prompt, 4)  # warm-up
        per_token_package_step(models["zeta"], prompt, 4, check=True)
        for _ in range(args.rounds):
            for name, model in models.items():
                step, own = per_token_generate(model, prompt, args.new)
                times[name]["generate"].append(step)
                times[name]["generate_own"].append(own)
                times[name]["forward"].append(per_token_forward(model, prompt, args.new))
                if name == "zeta":
                    times[name]["step"].append(per_token_package_step(model, prompt, args.new))
                gemv, weight_bytes[name] = per_token_gemv(model)
                times[name]["gemv"].append(gemv)
                profiled = per_token_profile(model, prompt, args.new)
                for key in ("gemm_insitu", "other_aten"):
                    times[name][key].append(profiled[key] / 1e3)
                ops_per_step[name] = profiled["ops_per_step"]
    bandwidth = read_bandwidth()
    with torch.no_grad():
        checks = per_step_input_checks(models["zeta"])

    print(f"\n{args.size}, {num_threads()} thread(s), read bandwidth {bandwidth / 1e9:.1f} GB/s; ms per token, "
          f"minimum of {args.rounds} rounds\n")
    print("| model | generate | forward | generate's own work | gemv | forward - gemv | in-situ gemm | other aten ops "
          "| top-level ops / step | weight MB | read bound |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    result = dict(size=args.size, threads=num_threads(), read_bandwidth=bandwidth, rounds=args.rounds, models={})
    for name in models:
        best = {k: min(v) * 1e3 for k, v in times[name].items()}
        bound = weight_bytes[name] / bandwidth * 1e3
        print(f"| {name} | {best['generate']:.2f} | {best['forward']:.2f} | {best['generate_own']:.2f} "
              f"| {best['gemv']:.2f} | {best['forward'] - best['gemv']:.2f} | {best['gemm_insitu']:.2f} "
              f"| {best['other_aten']:.2f} | {ops_per_step[name]:.0f} | {weight_bytes[name] / 1e6:.1f} | {bound:.2f} |")
        result["models"][name] = dict(ms_per_token=best, weight_bytes=weight_bytes[name], read_bound_ms=bound,
                                      ops_per_step=ops_per_step[name], raw=times[name])
    llama, zeta = result["models"]["llama"]["ms_per_token"], result["models"]["zeta"]["ms_per_token"]
    # generate()'s own per-step work (outside the model's forward, timed inside the same generate() calls) is the same
    # code for both models: the smaller of the two measurements is what any model pays at least
    own_work = min(llama["generate_own"], zeta["generate_own"])
    best_ratio = llama["generate"] / (zeta["gemm_insitu"] + own_work)
    minima = result["generate_ratio_of_minima"] = llama["generate"] / zeta["generate"]
    paired = result["generate_ratio_paired"] = statistics.median(
        l / z for l, z in zip(times["llama"]["generate"], times["zeta"]["generate"]))
    print(f"\nzeta now: Llama generate / zeta generate = {minima:.2f}x (minima), {paired:.2f}x (median of per-round "
          "ratios)")
    print(f"best ratio: Llama generate / (zeta in-situ gemm + generate's own work {own_work:.2f}) = {best_ratio:.2f}x")
    result["best_ratio_vs_llama_generate"] = best_ratio
    # the package step plus the least per-step work generate() itself did for either model
    step_ratio = llama["generate"] / (zeta["step"] + own_work)
    print(f"step ratio: Llama generate / (zeta package step {zeta['step']:.2f} + generate's own work {own_work:.2f}) = "
          f"{step_ratio:.2f}x: what zeta_hf's step reaches without forward's checks and output objects")
    result["step_ratio_vs_llama_generate"] = step_ratio
    forward_ms = min(times["zeta"]["forward"]) * 1e3
    print(f"\nzeta_hf input checks: {checks * 1e6:.1f} us per decode step ({checks * 1e3 / forward_ms:.1%} of its forward)")
    result["input_checks_us"] = checks * 1e6
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
