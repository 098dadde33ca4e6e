"""Side-by-side benchmark: zeta_hf vs transformers' Llama vs x-transformers at matched parameter counts.

Each cell (model x workload) runs in a fresh process; models are interleaved over rounds and medians reported,
with ratios to Llama (ratios hold on a shared, noisy machine better than absolute numbers). CPU utilisation of
each cell is recorded so contended cells can be discarded (they are flagged with `*`). Not a test: nothing here
asserts; a cell that fails records its error string instead of stopping the run.

Workloads:
  train_step       forward + backward + AdamW step, batch x seq tokens
  train_step_ckpt  HF models only: train_step with activation checkpointing (`activation_checkpointing_enable()`)
  forward          inference forward pass, batch x seq tokens
  decode           greedy decode, batch 1, prompt 128 + 256 new, KV cache (HF default DynamicCache).
                   x-transformers 1.19 has no KV cache: its decode cell is uncached and labelled so.
  decode_uncached  greedy decode, batch 1, prompt 128 + 64 new, use_cache=False (x-transformers: its only mode)
  decode_static    HF models only: as decode, with cache_implementation="static"
  decode_compiled  HF models only: as decode_static, plus generate()'s auto torch.compile (CompileConfig forced on
                   CPU); the warm-up call is identical to the timed one, so compilation happens before timing
  decode_fast      HF models only: zeta_hf's `compile_for_decode` settings (static cache, decode step compiled with
                   inductor `cpp_wrapper`), the same CompileConfig given to Llama's generate(); the inductor options
                   can be overridden for an A/B with BENCH_INDUCTOR_OPTIONS='{"cpp_wrapper": true}' (JSON)
  decode_int8      HF models only: as decode, weights int8 weight-only through transformers' TorchAoConfig
                   (torchao Int8WeightOnlyConfig), saved and loaded with from_pretrained(quantization_config=...)
  decode_int8_fast HF models only: decode_int8 with decode_fast's compiled step
  decode_b4, decode_b16            HF models only: as decode, batch 4 / 16 of equal-length prompts (tok/s counts
                                   every row's tokens), prompt 128 + `new_batched` new
  decode_b4_padded, decode_b16_padded  as decode_b4 / decode_b16 with left-padded prompts (lengths 128 down to
                                   32, attention mask)

    python bench/bench.py --size small --rounds 3 --out bench/results/small.json
    python bench/bench.py --size small --params          # parameter counts only, no timing
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
from typing import Any

# prompt / new: decode lengths; new_uncached is shorter because every uncached step re-runs the whole sequence.
SIZES: dict[str, dict[str, int]] = {
    "small": dict(dim=256, depth=4, heads=4, seq=256, batch=4, prompt=128, new=256, new_uncached=64, new_batched=128),
    "medium": dict(dim=512, depth=8, heads=8, seq=1024, batch=2, prompt=128, new=256, new_uncached=64,
                   new_batched=64),
    # smoke-test size only (not a benchmark): seconds per cell
    "tiny": dict(dim=64, depth=2, heads=2, seq=32, batch=1, prompt=16, new=8, new_uncached=4, new_batched=4),
}
MODELS = ("llama", "zeta", "xtransformers")
HF_MODELS = ("llama", "zeta")
BATCHED_WORKLOADS = {"decode_b4": (4, False), "decode_b16": (16, False), "decode_b4_padded": (4, True),
                     "decode_b16_padded": (16, True)}  # workload: (batch, left-padded)
WORKLOADS = ("train_step", "forward", "decode", "decode_uncached", "decode_static", "decode_compiled", "train_step_ckpt",
             "decode_fast", "decode_int8", "decode_int8_fast", *BATCHED_WORKLOADS)
HF_ONLY_WORKLOADS = ("decode_static", "decode_compiled", "train_step_ckpt", "decode_fast", "decode_int8",
                     "decode_int8_fast", *BATCHED_WORKLOADS)
DECODE_WORKLOADS = ("decode", "decode_uncached", "decode_static", "decode_compiled", "decode_fast", "decode_int8",
                    "decode_int8_fast", *BATCHED_WORKLOADS)
# the workloads whose warm-up call is the timed call (a static cache and compiled steps specialise on its shape)
FULL_WARMUP_WORKLOADS = ("decode_static", "decode_compiled", "decode_fast", "decode_int8_fast")
# A row whose median CPU utilisation is off by more than this fraction from its workload's median is suspect:
# on a shared machine low utilisation means another process took our cores during the measurement.
CONTENDED_REL = 0.3
XT_UNCACHED_NOTE = "x-transformers 1.19 AutoregressiveWrapper.generate has no KV cache: uncached"


def num_threads() -> int:
    """Honour OMP_NUM_THREADS (so smoke runs on a shared machine stay on one core), else use every core."""
    return int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)


def current_rss_mb() -> float:
    """Resident set size now (ru_maxrss only gives the peak)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def zeta_hf_digest() -> str:
    """Short hash of zeta_hf's sources: the package is under active edit, so cells run minutes apart may measure
    different code. Every cell records this and the table warns when they differ."""
    import hashlib

    h = hashlib.sha256()
    for path in sorted((Path(__file__).resolve().parent.parent / "zeta_hf").glob("*.py")):
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()[:12]


def build(model: str, size: dict[str, int]) -> Any:
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


def logits_of(model_name: str, model: Any, ids: Any) -> Any:
    out = model(ids)
    return out if model_name == "xtransformers" else out.logits


def train_loss(model_name: str, model: Any, ids: Any) -> Any:
    """Next-token cross-entropy over `ids`, the loss every train workload steps on."""
    import torch

    return torch.nn.functional.cross_entropy(logits_of(model_name, model, ids)[:, :-1].flatten(0, 1),
                                             ids[:, 1:].flatten())


def xt_wrapper(model: Any) -> Any:
    import x_transformers as xt

    return xt.AutoregressiveWrapper(model)


def hf_generate_kwargs(workload: str) -> dict[str, Any]:
    """generate() options that distinguish the HF decode workloads."""
    if workload == "decode_uncached":
        return dict(use_cache=False)
    if workload == "decode_static":
        return dict(cache_implementation="static")
    if workload == "decode_compiled":
        from transformers import CompileConfig

        # generate() only auto-compiles on CPU when the compile config says so (see
        # GenerationMixin._valid_auto_compile_criteria); otherwise this is the default CompileConfig.
        compile_config = CompileConfig()
        compile_config._compile_all_devices = True
        return dict(cache_implementation="static", compile_config=compile_config)
    if workload in ("decode_fast", "decode_int8_fast"):
        return dict(cache_implementation="static", compile_config=fast_compile_config())
    return {}


def fast_compile_config() -> Any:
    """zeta_hf's `compile_for_decode` CompileConfig, with BENCH_INDUCTOR_OPTIONS (JSON) on top for A/B runs."""
    from zeta_hf.fast_decode import decode_compile_config

    return decode_compile_config(**json.loads(os.environ.get("BENCH_INDUCTOR_OPTIONS") or "{}"))


def quantize_int8(model_name: str, model: Any) -> Any:
    """`model` saved and loaded back int8 weight-only through transformers' TorchAoConfig (both models alike), in
    the model's dtype (activations and the unquantized weights stay in it)."""
    import tempfile

    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import TorchAoConfig

    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        return type(model).from_pretrained(folder, dtype=model.dtype,
                                           quantization_config=TorchAoConfig(Int8WeightOnlyConfig()))


def run_cell(model_name: str, workload: str, size_name: str) -> dict[str, Any]:
    """One measurement, in this (fresh) process. Errors inside the workload are returned, not raised."""
    import torch

    threads = num_threads()
    torch.set_num_threads(threads)
    size = SIZES[size_name]
    model = build(model_name, size)
    params = sum(p.numel() for p in model.parameters())
    if workload.startswith("decode_int8"):
        model = quantize_int8(model_name, model)
    baseline_mb = current_rss_mb()
    cell: dict[str, Any] = dict(model=model_name, workload=workload, size=size_name, params=params, threads=threads,
                                baseline_rss_mb=baseline_mb, zeta_hf_digest=zeta_hf_digest())
    try:
        cell.update(_measure(model_name, model, workload, size))
    except Exception as exc:  # a failing cell is a result too (e.g. a cache type the model does not support)
        cell["error"] = f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:300]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cell.update(peak_rss_mb=peak_mb, rss_over_baseline_mb=peak_mb - baseline_mb, **malloc_heap_mb())
    return cell


def malloc_heap_mb() -> dict[str, float]:
    """glibc's heap now (all arenas): bytes in use by live blocks and bytes free inside it (kept, counted in RSS once
    touched).

    What a peak RSS above the live tensors is made of: `memory.py` reports the free part. Empty off glibc."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                     "keepcost")]

    try:
        mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return {}
    mallinfo2.restype = MallInfo2
    info = mallinfo2()
    return dict(malloc_heap_in_use_mb=info.uordblks / 2**20, malloc_heap_free_mb=info.fordblks / 2**20,
                malloc_mmapped_mb=info.hblkhd / 2**20)


def _measure(model_name: str, model: Any, workload: str, size: dict[str, int]) -> dict[str, Any]:
    import torch

    extra: dict[str, Any] = {}
    ids = torch.randint(0, 256, (size["batch"], size["seq"]))
    cpu0, t0 = time.process_time(), time.perf_counter()
    if workload in ("train_step", "train_step_ckpt"):
        if workload == "train_step_ckpt":
            if model_name not in HF_MODELS:
                raise ValueError(f"{workload} uses the HF activation_checkpointing_enable() API")
            model.activation_checkpointing_enable()
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        steps = 3
        for i in range(steps + 1):
            if i == 1:  # first step warms up
                cpu0, t0 = time.process_time(), time.perf_counter()
            loss = train_loss(model_name, model, ids)
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
    elif workload in BATCHED_WORKLOADS:  # greedy decode of a batch, default cache
        model.eval()
        batch, padded = BATCHED_WORKLOADS[workload]
        prompt = torch.randint(1, 256, (batch, size["prompt"]))
        mask = torch.ones_like(prompt)
        if padded:  # left padding: row lengths spread evenly from the full prompt down to a quarter of it
            for row in range(batch):
                pad = round(row * 0.75 * size["prompt"] / max(batch - 1, 1))
                mask[row, :pad] = 0
                prompt[row, :pad] = 0
        new = size["new_batched"]
        kwargs = dict(do_sample=False, attention_mask=mask, pad_token_id=0)
        with torch.no_grad():
            model.generate(prompt, max_new_tokens=4, min_new_tokens=4, **kwargs)
            cpu0, t0 = time.process_time(), time.perf_counter()
            model.generate(prompt, max_new_tokens=new, min_new_tokens=new, **kwargs)
        tokens = batch * new
    else:  # greedy decode, batch 1
        model.eval()
        prompt = torch.randint(0, 256, (1, size["prompt"]))
        new = size["new_uncached"] if workload == "decode_uncached" else size["new"]
        with torch.no_grad():
            if model_name == "xtransformers":
                if workload in HF_ONLY_WORKLOADS:
                    raise ValueError(f"{workload} is an HF generate() feature")
                extra["note"] = XT_UNCACHED_NOTE
                wrapper = xt_wrapper(model)
                wrapper.generate(prompt, 8, filter_thres=0.999)  # top-1 (k = ceil(0.001 * 256) = 1): greedy
                cpu0, t0 = time.process_time(), time.perf_counter()
                wrapper.generate(prompt, new, filter_thres=0.999)
            else:
                kwargs = dict(do_sample=False, **hf_generate_kwargs(workload))
                if workload in ("decode_fast", "decode_int8_fast") and model_name == "zeta":
                    from zeta_hf.fast_decode import compile_for_decode

                    # the documented entry point; the same CompileConfig goes to both models' generate()
                    compile_for_decode(model, **json.loads(os.environ.get("BENCH_INDUCTOR_OPTIONS") or "{}"))
                if workload == "decode_compiled" and model_name == "zeta":
                    # zeta_hf's documented fast path (README, "Performance"): compile the whole forward, prefill
                    # and decode step alike, over a static cache; Llama keeps generate()'s own decode-step compile
                    model.forward = torch.compile(model.forward, fullgraph=True, dynamic=False)
                    kwargs = dict(do_sample=False, cache_implementation="static")
                # static/compiled: warm up with the exact timed call, so cache allocation and torch.compile
                # (which specialises on the static cache shape) happen before the clock starts
                warm = new if workload in FULL_WARMUP_WORKLOADS else 8
                model.generate(prompt, max_new_tokens=warm, min_new_tokens=warm, **kwargs)
                cpu0, t0 = time.process_time(), time.perf_counter()
                model.generate(prompt, max_new_tokens=new, min_new_tokens=new, **kwargs)
                if workload in ("decode_compiled", "decode_fast", "decode_int8_fast"):
                    # generate() silently falls back to eager when its compile criteria fail: record which happened
                    extra["compiled"] = ((model_name == "zeta" and workload == "decode_compiled")
                                         or hasattr(model, "_compiled_call"))
                if workload.endswith("_fast"):
                    extra["inductor_options"] = kwargs["compile_config"].options
        tokens = new
    seconds = time.perf_counter() - t0
    cpu = (time.process_time() - cpu0) / seconds / num_threads()
    return dict(tokens_per_s=tokens / seconds, cpu_utilisation=cpu, **extra)


def gemm_peak_gflops(tries: int = 5, reps: int = 20) -> float:
    """Measured fp32 GEMM throughput of this machine (the bound for train step and forward)."""
    import torch

    torch.set_num_threads(num_threads())
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    best = float("inf")
    for _ in range(tries):  # the best of a few tries: a shared machine only ever makes a try slower
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = min(best, time.perf_counter() - t0)
    return reps * 2 * 1024**3 / best / 1e9


def flops_per_token(workload: str, model: str, params: int, size: dict[str, int]) -> float:
    """Matmul FLOPs per timed token, 2N forward / 6N train (N = all params, attention score FLOPs ignored).

    Uncached decode re-runs the whole sequence for every new token, so it does prompt + new/2 tokens of work
    on average per generated token; counting only 2N would make it look far less efficient than it is.
    """
    if workload.startswith("train_step"):  # model FLOPs: checkpointing's recomputed forward is not counted
        return 6 * params
    uncached = workload == "decode_uncached" or (workload == "decode" and model == "xtransformers")
    if uncached:
        new = size["new_uncached"] if workload == "decode_uncached" else size["new"]
        return 2 * params * (size["prompt"] + new / 2)
    return 2 * params


def param_counts(size_name: str, models: list[str]) -> dict[str, int]:
    return {m: sum(p.numel() for p in build(m, SIZES[size_name]).parameters()) for m in models}


def report_params(counts: dict[str, int]) -> str:
    base = counts.get("llama")
    lines = []
    for model, n in counts.items():
        diff = f" ({(n - base) / base:+.2%} vs llama)" if base and model != "llama" else ""
        lines.append(f"{model}: {n:,} params{diff}")
    return "\n".join(lines)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def make_table(results: list[dict[str, Any]], models: list[str], workloads: list[str], size_name: str,
               peak_gflops: float) -> str:
    """Markdown table: one row per (workload, model), medians over rounds, ratios to Llama.

    The speed ratio is the median over rounds of each round's ratio: the two cells of a round run minutes apart at
    most, so a slow spell of the shared machine that lasts a round moves both (a ratio of medians mixes rounds).
    """
    size = SIZES[size_name]
    lines = ["| workload | model | params | tok/s (median) | ratio to Llama (paired) | peak RSS MB | RSS ratio | "
             "RSS over build MB | MFU | cpu | n |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    notes: set[str] = set()
    for workload in workloads:
        rows = {}
        for model in models:
            cells = [r for r in results if r["model"] == model and r["workload"] == workload]
            if cells:
                rows[model] = cells
        ok = {m: [c for c in cells if "error" not in c] for m, cells in rows.items()}
        tps = {m: _median([c["tokens_per_s"] for c in cs]) for m, cs in ok.items() if cs}
        rss = {m: _median([c["peak_rss_mb"] for c in cs]) for m, cs in rows.items()}
        cpu = {m: _median([c["cpu_utilisation"] for c in cs]) for m, cs in ok.items() if cs}
        group_cpu = _median(list(cpu.values()))
        for model, cells in rows.items():
            params = cells[0]["params"]
            label = model
            if model == "xtransformers" and workload == "decode":
                label = "xtransformers (uncached)"
                notes.add(f"xtransformers (uncached): {XT_UNCACHED_NOTE}; its decode row is not a cached decode.")
            if any(c.get("compiled") is False for c in cells):
                label += " (NOT compiled: fell back to eager)"
            rss_ratio = f"{rss[model] / rss['llama']:.2f}" if "llama" in rss else "-"
            rss_over = _median([c["rss_over_baseline_mb"] for c in cells])
            if model not in tps:
                error = next(c["error"] for c in cells).replace("|", "/")
                lines.append(f"| {workload} | {label} | {params / 1e6:.2f}M | error: {error} | - | {rss[model]:.0f} | "
                             f"{rss_ratio} | {rss_over:.0f} | - | - | {len(cells)} |")
                continue
            ratio = f"{paired_ratio(ok[model], ok.get('llama', [])):.2f}" if "llama" in tps else "-"
            mfu = tps[model] * flops_per_token(workload, model, params, size) / (peak_gflops * 1e9)
            contended = abs(cpu[model] - group_cpu) > CONTENDED_REL * group_cpu
            cpu_txt = f"{cpu[model]:.0%}" + ("*" if contended else "")
            failed = [c["error"] for c in cells if "error" in c]
            n = f"{len(ok[model])}" + (f" (+{len(failed)} failed)" if failed else "")
            if failed:
                notes.add(f"{workload}/{model}: {len(failed)} of {len(cells)} runs failed, e.g. {failed[0]}")
            lines.append(f"| {workload} | {label} | {params / 1e6:.2f}M | {tps[model]:.1f} | {ratio} | "
                         f"{rss[model]:.0f} | {rss_ratio} | {rss_over:.0f} | {mfu:.1%} | {cpu_txt} | {n} |")
    lines += ["", f"fp32 GEMM peak {peak_gflops:.1f} GFLOP/s. MFU counts 2N FLOPs/token (6N train; uncached decode "
              "2N x average sequence length), N = all parameters. `cpu`: process CPU time / wall / threads; "
              f"`*` = more than {CONTENDED_REL:.0%} off the workload's median (likely contended, rerun). "
              "RSS ratio is to Llama; RSS over build = peak RSS - RSS right after the model was built."]
    digests = {r.get("zeta_hf_digest") for r in results if r.get("zeta_hf_digest")}
    if len(digests) > 1:
        notes.add(f"WARNING: zeta_hf sources changed during the run ({len(digests)} versions: "
                  f"{', '.join(sorted(digests))}); see zeta_hf_digest per cell in the JSON.")
    for note in sorted(notes):
        lines += ["", note]
    return "\n".join(lines)


def paired_ratio(cells: list[dict[str, Any]], llama_cells: list[dict[str, Any]]) -> float:
    """Median over rounds of tok/s over Llama's tok/s in the same round (rounds where both cells succeeded)."""
    llama_by_round = {c.get("round"): c["tokens_per_s"] for c in llama_cells}
    return _median([c["tokens_per_s"] / llama_by_round[c.get("round")] for c in cells
                    if c.get("round") in llama_by_round])


def mark_contended(results: list[dict[str, Any]]) -> None:
    """Per-cell flag in the JSON, against the median CPU utilisation of the cell's workload."""
    for workload in {r["workload"] for r in results}:
        cells = [r for r in results if r["workload"] == workload and "cpu_utilisation" in r]
        med = _median([c["cpu_utilisation"] for c in cells])
        for c in cells:
            c["contended"] = abs(c["cpu_utilisation"] - med) > CONTENDED_REL * med


def run_subprocess_cell(model: str, workload: str, size_name: str, env: dict[str, str] | None = None
                        ) -> dict[str, Any]:
    """Run one cell in a fresh interpreter (with `env`, e.g. another checkout first on PYTHONPATH); a crash
    (segfault, OOM kill, import error) becomes an error cell."""
    proc = subprocess.run([sys.executable, __file__, "--cell", model, workload, size_name],
                          capture_output=True, text=True, env=env)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == 0 and lines:
        try:
            return json.loads(lines[-1])
        except json.JSONDecodeError:
            pass
    tail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
    return dict(model=model, workload=workload, size=size_name, params=0, peak_rss_mb=float("nan"),
                rss_over_baseline_mb=float("nan"), error=f"process failed (rc {proc.returncode}): {tail[:300]}")


def make_parser(doc: str | None, *, size: str | None = "small", rounds: int | None = 3,
                out_help: str = "results JSON (raw numbers)", out_default: Any = None) -> argparse.ArgumentParser:
    """The options every bench script shares: `--size` (bench.py's sizes), `--rounds` and `--out`."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=SIZES, default=size, metavar="{small,medium}",
                        help=f"model/workload size from bench.py (default: {size})")
    if rounds is not None:
        parser.add_argument("--rounds", type=int, default=rounds,
                            help=f"interleaved rounds; medians over rounds (default: {rounds})")
    parser.add_argument("--out", default=out_default, type=type(out_default) if out_default is not None else str,
                        help=out_help)
    return parser


def main() -> None:
    parser = make_parser(__doc__, out_help="raw results JSON (also holds the markdown table)")
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS),
                        help="workloads to run (default: all); static/compiled are skipped for x-transformers")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS),
                        help="models to compare (default: all); ratios need llama")
    parser.add_argument("--params", action="store_true", help="only print parameter counts and exit")
    parser.add_argument("--report", metavar="JSON", help="print the table of an earlier run's --out file and exit")
    parser.add_argument("--cell", nargs=3, metavar=("MODEL", "WORKLOAD", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cell:
        print(json.dumps(run_cell(*args.cell)))
        return
    if args.report:
        saved = json.loads(Path(args.report).read_text())
        cells = saved["cells"]
        present = [w for w in WORKLOADS if any(c["workload"] == w for c in cells)]
        models = [m for m in MODELS if any(c["model"] == m for c in cells)]
        print(make_table(cells, models, present, saved["size"], saved["gemm_peak_gflops"]))
        return

    counts = param_counts(args.size, args.models)
    print(f"{args.size}: {report_params(counts)}\n", file=sys.stderr)
    if args.params:
        return

    results = []
    for round_ in range(args.rounds):
        for workload in args.workloads:
            for model in args.models:  # interleaved, so drift hits every model alike
                if model not in HF_MODELS and workload in HF_ONLY_WORKLOADS:
                    continue
                cell = run_subprocess_cell(model, workload, args.size)
                cell["round"] = round_
                results.append(cell)
                status = (f"error: {cell['error']}" if "error" in cell else
                          f"{cell['tokens_per_s']:9.1f} tok/s cpu {cell['cpu_utilisation']:.0%}")
                print(f"round {round_} {workload:15s} {model:14s} {status}", file=sys.stderr)
    mark_contended(results)
    peak = gemm_peak_gflops()
    table = make_table(results, args.models, args.workloads, args.size, peak)
    print(f"\n{args.size}\n\n{table}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(dict(gemm_peak_gflops=peak, size=args.size, size_config=SIZES[args.size],
                                                  threads=num_threads(), params=counts, cells=results,
                                                  table_markdown=table), indent=1))


if __name__ == "__main__":
    main()
