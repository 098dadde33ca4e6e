"""zeta_hf's growing KV cache layer vs transformers' concatenating `DynamicLayer`, in one process, interleaved.

The same zeta_hf model decodes after a prefill of `--context` tokens, once with its default cache layers
(`GrowingKVLayer`: one token written in place) and once with plain `DynamicLayer`s (the whole cache concatenated
at every step), alternating over rounds so both see the same machine state. Not a test: nothing here asserts.

    OMP_NUM_THREADS=1 python bench/kv_cache_ab.py --contexts 512 2048 --rounds 6
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench import SIZES, build, num_threads  # noqa: E402


def decode_ms(model, prompt, growing: bool, steps: int) -> float:
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache()
    if not growing:  # already-initialised-looking plain layers are left alone by zeta_hf; give it fresh subclasses
        cache.layers = [type("PlainLayer", (DynamicLayer,), {})() for _ in range(model.config.num_attention_layers)]
    out = model(prompt, cache=cache, use_cache=True)
    token = out.logits[:, -1:].argmax(-1)
    start = time.perf_counter()
    for _ in range(steps):
        out = model(token, cache=cache, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
    return (time.perf_counter() - start) / steps * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=SIZES, default="small", metavar="{small,medium}")
    parser.add_argument("--contexts", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--out", default=None, help="JSON file for the raw numbers")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(num_threads())
    model = build("zeta", SIZES[args.size]).eval()
    rows = {}
    print(f"| context | growing (zeta_hf default) ms/token | concatenating DynamicLayer ms/token | ratio |")
    print("|---|---|---|---|")
    with torch.no_grad():
        for context in args.contexts:
            prompt = torch.randint(0, 256, (1, context))
            times = {True: [], False: []}
            for _ in range(args.rounds):
                for growing in (True, False):
                    times[growing].append(decode_ms(model, prompt, growing, args.steps))
            grow, plain = statistics.median(times[True]), statistics.median(times[False])
            rows[context] = dict(growing_ms=times[True], dynamic_ms=times[False])
            print(f"| {context} | {grow:.2f} | {plain:.2f} | {plain / grow:.2f}x |")
    if args.out:
        Path(args.out).write_text(json.dumps(dict(size=args.size, threads=num_threads(), rows=rows), indent=1))


if __name__ == "__main__":
    main()
