"""Memory bandwidth of this machine, and the bandwidth-bound decode rate it implies.

Batch-1 cached decode reads every weight and the whole KV cache once per token while doing ~2 FLOPs per weight,
so on CPU it is bound by memory bandwidth, not by the GEMM peak that bench.py's MFU uses. This script measures
bandwidth with torch over large fp32 tensors (best of N, so contention only makes it pessimistic):

  copy   b.copy_(a): counts bytes read + written
  read   a.sum():    counts bytes read (decode mostly reads, so this is the number the bound uses)

and computes, for a bench.py size, bound = read bandwidth / (weight bytes + KV bytes at context prompt + new)
tokens/s (KV at the final context, so a slight underestimate of the average-step bound). Weights of this size's
models are small enough to sit partly in cache at `small`, in which case measured rates can exceed the bound.

    python bench/bandwidth.py --size small
    python bench/bandwidth.py --compare bench/results/small.json
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import SIZES, build, make_parser, num_threads  # noqa: E402  (sibling script, not a package)

RESULTS = Path(__file__).resolve().parent / "results"
CACHED_DECODE = ("decode", "decode_static", "decode_compiled", "decode_fast")  # float32 weights, batch 1


def measure_bandwidth(mb: int = 512, repeats: int = 5) -> dict[str, float]:
    """Best-of-`repeats` copy and read bandwidth in GB/s (1e9 bytes) over `mb`-MB fp32 tensors."""
    import torch

    torch.set_num_threads(num_threads())
    n = mb * 2**20 // 4
    a = torch.rand(n)
    b = torch.empty(n)
    b.copy_(a)  # touch every page first, so page faults are not timed
    copy_s, read_s = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        b.copy_(a)
        copy_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        a.sum()
        read_s.append(time.perf_counter() - t0)
    nbytes = n * 4
    return dict(copy_gb_s=2 * nbytes / min(copy_s) / 1e9, read_gb_s=nbytes / min(read_s) / 1e9,
                copy_gb_s_median=2 * nbytes / statistics.median(copy_s) / 1e9,
                read_gb_s_median=nbytes / statistics.median(read_s) / 1e9, tensor_mb=mb, repeats=repeats)


def decode_bound(size_name: str, read_gb_s: float, models: tuple[str, ...] = ("llama", "zeta")) -> dict[str, Any]:
    """Bandwidth-bound cached decode tokens/s per model at `size_name`."""
    size = SIZES[size_name]
    context = size["prompt"] + size["new"]
    head_dim = size["dim"] // size["heads"]
    kv = 2 * size["depth"] * size["heads"] * head_dim * context * 4  # fp32 K and V, every layer
    out: dict[str, Any] = {}
    for model in models:
        params = sum(p.numel() for p in build(model, size).parameters())
        nbytes = params * 4 + kv
        out[model] = dict(params=params, weight_bytes=params * 4, kv_bytes=kv, context=context,
                          bytes_per_token=nbytes, bound_tokens_per_s=read_gb_s * 1e9 / nbytes)
    return out


def compare(bench_json: Path, bounds: dict[str, Any]) -> list[str]:
    """Markdown rows: measured cached-decode median tok/s from a bench.py JSON vs the bound."""
    data = json.loads(bench_json.read_text())
    lines = ["| workload | model | measured tok/s (median) | bound tok/s | measured / bound |", "|---|---|---|---|---|"]
    for workload in CACHED_DECODE:
        for model, bound in bounds.items():
            tps = [c["tokens_per_s"] for c in data["cells"]
                   if c["model"] == model and c["workload"] == workload and "tokens_per_s" in c]
            if tps:
                med = statistics.median(tps)
                lines.append(f"| {workload} | {model} | {med:.1f} | {bound['bound_tokens_per_s']:.1f} | "
                             f"{med / bound['bound_tokens_per_s']:.2f} |")
    return lines


def main() -> None:
    parser = make_parser(__doc__, size=None, rounds=None, out_default=RESULTS / "bandwidth.json",
                         out_help="results JSON (default: bench/results/bandwidth.json)")
    parser.add_argument("--compare", type=Path, default=None,
                        help="a bench.py results JSON whose cached-decode tok/s to compare with the bound")
    parser.add_argument("--mb", type=int, default=512, help="size of each test tensor in MB (default: 512)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats, best is reported (default: 5)")
    args = parser.parse_args()

    size_name = args.size or (json.loads(args.compare.read_text())["size"] if args.compare else "small")
    bw = measure_bandwidth(args.mb, args.repeats)
    print(f"threads {num_threads()}: copy {bw['copy_gb_s']:.1f} GB/s (read+write), read {bw['read_gb_s']:.1f} GB/s "
          f"(best of {args.repeats} over {args.mb} MB fp32)")
    bounds = decode_bound(size_name, bw["read_gb_s"])
    for model, b in bounds.items():
        print(f"{size_name} {model}: {b['weight_bytes'] / 1e6:.1f} MB weights + {b['kv_bytes'] / 1e6:.1f} MB KV "
              f"(context {b['context']}) -> bound {b['bound_tokens_per_s']:.0f} tok/s")
    result: dict[str, Any] = dict(threads=num_threads(), size=size_name, bandwidth=bw, decode_bound=bounds)
    if args.compare:
        rows = compare(args.compare, bounds)
        print(f"\nvs {args.compare}:\n" + "\n".join(rows))
        result.update(compared_with=str(args.compare), comparison_markdown="\n".join(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
