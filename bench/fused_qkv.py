"""Would one q/k/v product pay at decode time? Three `F.linear`s vs one over the concatenated weight, at batch 1 and 16.

zeta_hf's decode step projects the normed hidden state with three separate weights (q_proj, k_proj, v_proj). At
batch 1 these are matrix-vector products, bound by reading the weights; one product over the concatenated
(3 x dim, dim) weight reads the same bytes in one kernel call instead of three. This measures both over every layer
of a bench.py size (each layer its own weights, as in the model, so they are not all hot in cache), interleaved
over rounds, eager and under torch.compile (inductor with the C++ wrapper, as `compile_for_decode`). The GLU feedforward
needs no such measurement: zeta_hf's GLU variants already project with one (dim, 2 x inner) weight.

    OMP_NUM_THREADS=1 python bench/fused_qkv.py --size small --rounds 15 --out bench/results/fused_qkv_small.json
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import SIZES, make_parser, num_threads  # noqa: E402


def make_weights(dim: int, depth: int) -> tuple[list[tuple[torch.Tensor, ...]], list[torch.Tensor]]:
    torch.manual_seed(0)
    separate = [tuple(torch.randn(dim, dim) / dim**0.5 for _ in range(3)) for _ in range(depth)]
    fused = [torch.cat(w, 0).contiguous() for w in separate]
    return separate, fused


def three(x: torch.Tensor, separate: list[tuple[torch.Tensor, ...]]) -> torch.Tensor:
    out = x
    for wq, wk, wv in separate:
        q, k, v = F.linear(out, wq), F.linear(out, wk), F.linear(out, wv)
        out = q + k + v  # a cheap dependency, so each layer's products wait for the previous ones
    return out


def one(x: torch.Tensor, fused: list[torch.Tensor]) -> torch.Tensor:
    out = x
    for w in fused:
        q, k, v = F.linear(out, w).chunk(3, -1)
        out = q + k + v
    return out


def time_it(fn, x, weights, reps: int) -> float:
    """Median microseconds per call (one call = every layer's q/k/v products)."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(x, weights)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def main() -> None:
    parser = make_parser(__doc__, rounds=15)
    parser.add_argument("--reps", type=int, default=200, help="calls per measurement (default: 200)")
    args = parser.parse_args()
    torch.set_num_threads(num_threads())
    size = SIZES[args.size]
    dim, depth = size["dim"], size["depth"]
    separate, fused = make_weights(dim, depth)
    variants = {"eager": (three, one)}
    options = dict(fullgraph=True, dynamic=False, options={"cpp_wrapper": True})
    variants["compiled"] = (torch.compile(three, **options), torch.compile(one, **options))
    rows = []
    with torch.no_grad():
        for batch in (1, 16):
            x = torch.randn(batch, 1, dim)
            for name, (f3, f1) in variants.items():
                torch.testing.assert_close(f1(x, fused), f3(x, separate), rtol=1e-4, atol=1e-4)
                for _ in range(20):  # warm-up (compilation, allocator)
                    f3(x, separate), f1(x, fused)
                per_round = []
                for _ in range(args.rounds):
                    t3 = time_it(f3, x, separate, args.reps)
                    t1 = time_it(f1, x, fused, args.reps)
                    per_round.append((t3, t1))
                t3s, t1s = [r[0] for r in per_round], [r[1] for r in per_round]
                ratios = [a / b for a, b in per_round]
                row = dict(batch=batch, mode=name, three_us=statistics.median(t3s), one_us=statistics.median(t1s),
                           speedup=statistics.median(ratios), speedup_min=min(ratios), speedup_max=max(ratios))
                rows.append(row)
                print(f"batch {batch:2d} {name:8s} three products {row['three_us']:8.1f} us  one {row['one_us']:8.1f} us"
                      f"  speed-up {row['speedup']:.3f} (rounds {row['speedup_min']:.2f}-{row['speedup_max']:.2f})",
                      flush=True)
    bytes_read = depth * 3 * dim * dim * 4
    print(f"\n{args.size}: dim {dim}, {depth} layers, q/k/v weights {bytes_read / 2**20:.1f} MB per call, "
          f"{num_threads()} thread(s), medians of {args.rounds} rounds x {args.reps} calls")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(dict(size=args.size, threads=num_threads(), rows=rows), indent=1))


if __name__ == "__main__":
    main()
