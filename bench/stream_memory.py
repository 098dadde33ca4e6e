"""Memory over length: Transformer-XL streaming (`zeta_hf.streaming`) vs plain `generate()` with a growing KV cache.

Both modes generate 10x `max_seq_len` tokens greedily (batch 1) from the same rotary weights; each runs in a fresh
process so their resident set sizes start from the same baseline. RSS (`/proc/self/statm`) and the longest KV cache
seen are sampled once per segment of `max_seq_len` tokens. Streaming should stay flat (cache <= max_mem_len +
segment); the plain cache grows with every token. Not a test: nothing here asserts.

    python bench/stream_memory.py                   # dim 256, depth 4, max_seq_len 256, max_mem_len 256, 2560 new
    python bench/stream_memory.py --tiny --out /tmp/stream_memory_tiny.json   # seconds: smoke test only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SIZES: dict[str, dict[str, int]] = {
    "default": dict(dim=256, depth=4, heads=4, max_seq_len=256, max_mem_len=256, new=2560, prompt=16),
    "tiny": dict(dim=32, depth=2, heads=2, max_seq_len=16, max_mem_len=16, new=160, prompt=4),  # smoke test only
}
DEFAULT_OUT = Path(__file__).parent / "results" / "stream_memory.json"
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb() -> float:
    """Current resident set size; statm's second field counts resident pages (ru_maxrss only ever grows)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def build_model(size: dict[str, int], max_mem_len: int):
    """A rotary model (no position limit), identical weights for both modes: only `max_mem_len` differs."""
    import torch

    from zeta_hf import ZetaConfig, ZetaForCausalLM

    torch.manual_seed(0)
    config = ZetaConfig(
        vocab_size=256, max_position_embeddings=size["max_seq_len"], hidden_size=size["dim"],
        num_hidden_layers=size["depth"], num_attention_heads=size["heads"], head_dim=size["dim"] // size["heads"],
        position_embedding="rotary", max_mem_len=max_mem_len,
    )
    return ZetaForCausalLM(config).eval()


def run_mode(mode: str, size: dict[str, int]) -> dict[str, Any]:
    """Generate in this process and sample RSS / cache length once per `max_seq_len` tokens."""
    import torch

    from zeta_hf.streaming import stream_with_memory

    torch.set_num_threads(int(os.environ.get("STREAM_BENCH_THREADS", "1")))
    model = build_model(size, size["max_mem_len"] if mode == "stream" else 0)
    prompt = torch.randint(0, model.config.vocab_size, (1, size["prompt"]), generator=torch.Generator().manual_seed(1))
    longest_cache = [0]

    def record_cache(module, args, kwargs, output) -> None:
        if output.cache is not None:
            longest_cache[0] = max(longest_cache[0], output.cache.get_seq_length())

    model.register_forward_hook(record_cache, with_kwargs=True)
    segment, samples, produced = size["max_seq_len"], [], [0]
    baseline = rss_mb()
    start = time.perf_counter()

    def sample() -> None:
        samples.append(dict(segment=len(samples), tokens=produced[0], rss_mb=round(rss_mb(), 1),
                            cache_len=longest_cache[0], seconds=round(time.perf_counter() - start, 3)))
        longest_cache[0] = 0  # per-segment maximum

    if mode == "stream":
        for chunk in stream_with_memory(model, prompt, size["new"], do_sample=False):
            produced[0] += chunk.shape[1]
            sample()
    else:

        class Sampler:
            """A streamer: generate() hands it every token, so RSS is sampled mid-generation."""

            seen_prompt = False

            def put(self, value) -> None:
                if not self.seen_prompt:
                    self.seen_prompt = True
                    return
                produced[0] += 1
                if produced[0] % segment == 0:
                    sample()

            def end(self) -> None:
                if produced[0] % segment:
                    sample()

        with torch.no_grad():
            model.generate(prompt, max_new_tokens=size["new"], do_sample=False, streamer=Sampler(), pad_token_id=0)
    elapsed = time.perf_counter() - start
    return dict(mode=mode, baseline_rss_mb=round(baseline, 1), samples=samples, tokens=produced[0],
                seconds=round(elapsed, 2), tokens_per_s=round(produced[0] / elapsed, 1))


def print_table(results: dict[str, dict[str, Any]]) -> None:
    modes = list(results)
    print(f"{'segment':>7} " + " ".join(f"{m + ' tokens':>13} {m + ' RSS MB':>15} {m + ' cache':>13}" for m in modes))
    rows = max(len(r["samples"]) for r in results.values())
    for i in range(rows):
        cells = []
        for m in modes:
            s = results[m]["samples"][i] if i < len(results[m]["samples"]) else None
            cells.append(f"{s['tokens']:>13d} {s['rss_mb']:>15.1f} {s['cache_len']:>13d}" if s else " " * 43)
        print(f"{i:>7} " + " ".join(cells))
    for m, r in results.items():
        rss = [s["rss_mb"] for s in r["samples"]]
        print(f"{m:>7}: {r['tokens']} tokens in {r['seconds']} s = {r['tokens_per_s']} tokens/s; "
              f"RSS {rss[0]:.1f} -> {rss[-1]:.1f} MB (max {max(rss):.1f}), baseline {r['baseline_rss_mb']} MB")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="seconds-long smoke test, not a measurement")
    parser.add_argument("--out", type=Path, default=None, help=f"JSON results (default {DEFAULT_OUT})")
    parser.add_argument("--mode", choices=("stream", "plain"), help=argparse.SUPPRESS)  # child process
    args = parser.parse_args(argv)
    size = SIZES["tiny" if args.tiny else "default"]
    if args.mode:
        print(json.dumps(run_mode(args.mode, size)))
        return

    results = {}
    for mode in ("stream", "plain"):  # fresh processes: RSS of one mode must not inherit the other's allocations
        cmd = [sys.executable, __file__, "--mode", mode] + (["--tiny"] if args.tiny else [])
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    print_table(results)
    out = args.out or DEFAULT_OUT
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(size=size, results=results), indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
