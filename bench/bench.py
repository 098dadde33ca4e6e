"""Side-by-side benchmark: zeta_hf vs transformers' Llama vs x-transformers at matched parameter counts.

Each cell (model x workload) runs in a fresh process; models are interleaved over rounds and medians reported,
with ratios to Llama (ratios hold on a shared, noisy machine better than absolute numbers). CPU utilisation of
each cell is recorded so contended cells can be discarded. Not a test: nothing here asserts.

    python bench/bench.py --size small --rounds 3 --out bench/results/small.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

SIZES = {
    "small": dict(dim=256, depth=4, heads=4, seq=256, batch=4),
    "medium": dict(dim=512, depth=8, heads=8, seq=1024, batch=2),
}
MODELS = ("llama", "zeta", "xtransformers")
WORKLOADS = ("train_step", "forward", "decode")


def build(model: str, size: dict):
    """A model with vocab 256, RMSNorm, rotary and ~equal parameters (SwiGLU at 8/3 x vs GELU at 4 x)."""
    import torch

    torch.manual_seed(0)
    dim, depth, heads = size["dim"], size["depth"], size["heads"]
    if model == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(vocab_size=256, hidden_size=dim, intermediate_size=int(dim * 8 / 3), num_hidden_layers=depth,
                          num_attention_heads=heads, max_position_embeddings=4096, attn_implementation="sdpa")
        return LlamaForCausalLM(cfg)
    if model == "zeta":
        from zeta_hf import ZetaConfig, ZetaForCausalLM

        cfg = ZetaConfig(num_tokens=256, max_seq_len=4096, dim=dim, depth=depth, heads=heads, dim_head=dim // heads,
                         position_embedding="rotary", norm="rmsnorm", attn_implementation="sdpa")
        return ZetaForCausalLM(cfg)
    import x_transformers as xt

    layers = xt.Decoder(dim=dim, depth=depth, heads=heads, attn_dim_head=dim // heads, rotary_pos_emb=True,
                        use_rmsnorm=True, attn_flash=True)
    return xt.TransformerWrapper(num_tokens=256, max_seq_len=4096, attn_layers=layers)


def logits_of(model_name: str, model, ids):
    out = model(ids)
    return out if model_name == "xtransformers" else out.logits


def run_cell(model_name: str, workload: str, size_name: str) -> dict:
    """One measurement, in this (fresh) process."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    size = SIZES[size_name]
    model = build(model_name, size)
    params = sum(p.numel() for p in model.parameters())
    ids = torch.randint(0, 256, (size["batch"], size["seq"]))
    cpu0, t0 = time.process_time(), time.perf_counter()
    if workload == "train_step":
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        steps = 3
        for i in range(steps + 1):
            if i == 1:  # first step warms up
                cpu0, t0 = time.process_time(), time.perf_counter()
            loss = torch.nn.functional.cross_entropy(logits_of(model_name, model, ids)[:, :-1].flatten(0, 1),
                                                     ids[:, 1:].flatten())
            loss.backward()
            opt.step()
            opt.zero_grad()
        tokens = steps * ids.numel()
    elif workload == "forward":
        model.eval()
        with torch.no_grad():
            logits_of(model_name, model, ids)
            cpu0, t0 = time.process_time(), time.perf_counter()
            for _ in range(3):
                logits_of(model_name, model, ids)
        tokens = 3 * ids.numel()
    else:  # cached greedy decode, batch 1, prompt 128 + 256 new
        model.eval()
        prompt = ids[:1, :128]
        new = 256
        with torch.no_grad():
            if model_name == "xtransformers":
                wrapper = xt_wrapper(model)
                wrapper.generate(prompt, 8, filter_thres=0.999)  # top-1: greedy
                cpu0, t0 = time.process_time(), time.perf_counter()
                wrapper.generate(prompt, new, filter_thres=0.999)
            else:
                model.generate(prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False)
                cpu0, t0 = time.process_time(), time.perf_counter()
                model.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False)
        tokens = new
    seconds = time.perf_counter() - t0
    cpu = (time.process_time() - cpu0) / seconds / (os.cpu_count() or 1)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return dict(model=model_name, workload=workload, size=size_name, params=params, tokens_per_s=tokens / seconds,
                cpu_utilisation=cpu, peak_rss_mb=peak_mb)


def xt_wrapper(model):
    import x_transformers as xt

    return xt.AutoregressiveWrapper(model)


def gemm_peak_gflops() -> float:
    """Measured fp32 GEMM throughput of this machine (the bound for train step and forward)."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    t0 = time.perf_counter()
    for _ in range(20):
        a @ b
    return 20 * 2 * 1024**3 / (time.perf_counter() - t0) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=SIZES, default="small")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--out", default=None, help="raw results JSON")
    parser.add_argument("--cell", nargs=3, metavar=("MODEL", "WORKLOAD", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cell:
        print(json.dumps(run_cell(*args.cell)))
        return

    results = []
    for round_ in range(args.rounds):
        for workload in args.workloads:
            for model in args.models:  # interleaved, so drift hits every model alike
                proc = subprocess.run([sys.executable, __file__, "--cell", model, workload, args.size],
                                      capture_output=True, text=True)
                if proc.returncode:
                    print(f"{model}/{workload} failed: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                    continue
                results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
                print(f"round {round_} {workload:10s} {model:14s} {results[-1]['tokens_per_s']:9.1f} tok/s "
                      f"cpu {results[-1]['cpu_utilisation']:.0%}", file=sys.stderr)
    peak = gemm_peak_gflops()
    print(f"\n{args.size}: fp32 GEMM peak {peak:.1f} GFLOP/s\n")
    print("| workload | model | params | tok/s (median) | ratio to Llama | peak RSS MB | MFU |")
    print("|---|---|---|---|---|---|---|")
    for workload in args.workloads:
        medians = {}
        for model in args.models:
            cells = [r for r in results if r["model"] == model and r["workload"] == workload]
            if cells:
                medians[model] = (statistics.median(c["tokens_per_s"] for c in cells), cells)
        base = medians.get("llama", (None,))[0]
        for model, (tps, cells) in medians.items():
            params = cells[0]["params"]
            flops_per_token = (6 if workload == "train_step" else 2) * params
            mfu = tps * flops_per_token / (peak * 1e9)
            ratio = f"{tps / base:.2f}" if base else "-"
            rss = statistics.median(c["peak_rss_mb"] for c in cells)
            print(f"| {workload} | {model} | {params / 1e6:.2f}M | {tps:.1f} | {ratio} | {rss:.0f} | {mfu:.0%} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(dict(gemm_peak_gflops=peak, size=args.size, cells=results), indent=1))


if __name__ == "__main__":
    main()
