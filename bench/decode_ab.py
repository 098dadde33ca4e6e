"""Decode tokens/s, zeta_hf vs Llama prepared the same way, alternating call by call in one process.

bench.py runs every cell in a fresh process, minutes apart; on a shared machine whose speed drifts by 2x within
minutes that cannot resolve a 10-20% difference. Here both models are built, prepared (quantized / compiled) and
warmed up in one process, then timed alternately, `--rounds` times each; a round's ratio is zeta_hf's tokens/s over
Llama's in that round and the result is the median of those ratios (with their spread). Variants (each model
prepared the same way; all greedy, prompt 128):

  default      generate() with its default cache, batch 1
  fast         static cache + decode step compiled with `compile_for_decode`'s CompileConfig (inductor C++ wrapper);
               zeta_hf through `model.compile_for_decode()`, Llama given the same config in generate()
  int8         weights int8 weight-only through transformers' TorchAoConfig (save, from_pretrained), batch 1
  int8_fast    int8 + fast
  b4, b16      default generate(), batch 4 / 16 of equal-length prompts (tokens/s counts every row)
  b4_padded, b16_padded  the same with left-padded prompts (row lengths 128 down to 32, attention mask)
  bf16, bf16_fast, int8_bf16, int8_bf16_fast  default / fast / int8 / int8 + fast with the model in bfloat16
               (activations and unquantized weights); bfloat16 activations are what inductor's CPU int8 weight-only
               kernel (`_weight_int8pack_mm`) serves

    OMP_NUM_THREADS=1 python bench/decode_ab.py --size small --variants default fast int8 b16 --rounds 7 \
        --out bench/results/decode_ab_small.json

`--options` instead compares inductor settings for zeta_hf's fast path against each other, the same way (one
zeta_hf model per settings, compiled with `compile_for_decode(**settings)`, timed alternately; ratios to the first):

    OMP_NUM_THREADS=1 python bench/decode_ab.py --size small --options '{"freezing": false}' '{}' \
        '{"cpp_wrapper": true}' --out bench/results/decode_options_small.json
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import SIZES, build, make_parser, num_threads, quantize_int8  # noqa: E402

VARIANTS = ("default", "fast", "int8", "int8_fast", "b4", "b16", "b4_padded", "b16_padded", "bf16", "bf16_fast",
            "int8_bf16", "int8_bf16_fast")
BATCHES = {"b4": 4, "b16": 16, "b4_padded": 4, "b16_padded": 16}


def prepare(model_name: str, variant: str, size: dict[str, int]) -> tuple[Any, dict[str, Any], torch.Tensor, int]:
    """The model, its generate() kwargs, the prompt batch and the number of new tokens of `variant`."""
    from zeta_hf.fast_decode import decode_compile_config

    model = build(model_name, size).eval()
    if "bf16" in variant:
        model = model.to(torch.bfloat16)
    if variant.startswith("int8"):
        model = quantize_int8(model_name, model).eval()
    batch = BATCHES.get(variant, 1)
    torch.manual_seed(1)
    prompt = torch.randint(1, 256, (batch, size["prompt"]))
    kwargs: dict[str, Any] = dict(do_sample=False)
    if variant.endswith("padded"):  # left padding: row lengths spread evenly from the full prompt to a quarter of it
        mask = torch.ones_like(prompt)
        for row in range(batch):
            pad = round(row * 0.75 * size["prompt"] / max(batch - 1, 1))
            mask[row, :pad], prompt[row, :pad] = 0, 0
        kwargs.update(attention_mask=mask, pad_token_id=0)
    elif batch > 1:
        kwargs.update(attention_mask=torch.ones_like(prompt), pad_token_id=0)
    if variant.endswith("fast"):
        options = json.loads(os.environ.get("BENCH_INDUCTOR_OPTIONS") or "{}")
        if model_name == "zeta":
            model.compile_for_decode(**options)  # the documented entry point: sets the generation config
        else:
            kwargs.update(cache_implementation="static", compile_config=decode_compile_config(**options))
    new = size["new"] if batch == 1 else size["new_batched"]
    return model, kwargs, prompt, new


def timed(model: Any, kwargs: dict[str, Any], prompt: torch.Tensor, new: int) -> float:
    """Tokens/s of one generate() call (all rows, prefill included: it is the same for both models)."""
    t0 = time.perf_counter()
    out = model.generate(prompt, max_new_tokens=new, min_new_tokens=new, **kwargs)
    seconds = time.perf_counter() - t0
    assert out.shape[1] == prompt.shape[1] + new
    return prompt.shape[0] * new / seconds


def run_variant(variant: str, size_name: str, rounds: int) -> dict[str, Any]:
    size = SIZES[size_name]
    prepared = {name: prepare(name, variant, size) for name in ("llama", "zeta")}
    with torch.no_grad():
        for name, (model, kwargs, prompt, new) in prepared.items():  # warm-up = the timed call (compiles)
            t0 = time.perf_counter()
            timed(model, kwargs, prompt, new)
            print(f"  {variant}: {name} warm-up {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        tps: dict[str, list[float]] = {"llama": [], "zeta": []}
        for round_ in range(rounds):
            order = ("llama", "zeta") if round_ % 2 == 0 else ("zeta", "llama")
            for name in order:
                tps[name].append(timed(*prepared[name]))
    compiled = {name: hasattr(model, "_compiled_call") for name, (model, *_rest) in prepared.items()}
    ratios = [z / l for z, l in zip(tps["zeta"], tps["llama"])]
    return dict(variant=variant, size=size_name, threads=num_threads(), rounds=rounds,
                batch=prepared["zeta"][2].shape[0], new_tokens=prepared["zeta"][3],
                llama_tok_s=statistics.median(tps["llama"]), zeta_tok_s=statistics.median(tps["zeta"]),
                ratio=statistics.median(ratios), ratio_min=min(ratios), ratio_max=max(ratios), ratios=ratios,
                llama_all=tps["llama"], zeta_all=tps["zeta"], compiled=compiled,
                inductor_options=os.environ.get("BENCH_INDUCTOR_OPTIONS") or "{}")


def run_options(settings: list[str], size_name: str, rounds: int) -> list[dict[str, Any]]:
    """zeta_hf's fast path under each inductor `settings` (JSON), alternating; ratios to the first settings."""
    size = SIZES[size_name]
    torch.manual_seed(1)
    prompt = torch.randint(1, 256, (1, size["prompt"]))
    models = []
    with torch.no_grad():
        for options in settings:
            model = build("zeta", size).eval().compile_for_decode(**json.loads(options))
            t0 = time.perf_counter()
            timed(model, dict(do_sample=False), prompt, size["new"])
            print(f"  {options}: warm-up (compiles) {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
            models.append((model, time.perf_counter() - t0))
        tps: list[list[float]] = [[] for _ in settings]
        for round_ in range(rounds):
            order = range(len(settings)) if round_ % 2 == 0 else reversed(range(len(settings)))
            for i in order:
                tps[i].append(timed(models[i][0], dict(do_sample=False), prompt, size["new"]))
    rows = []
    for i, options in enumerate(settings):
        ratios = [a / b for a, b in zip(tps[i], tps[0])]
        rows.append(dict(options=options, size=size_name, threads=num_threads(), rounds=rounds,
                         compile_s=models[i][1], zeta_tok_s=statistics.median(tps[i]), all=tps[i],
                         ratio_to_first=statistics.median(ratios), ratio_min=min(ratios), ratio_max=max(ratios)))
        print(f"{size_name} {options:28s}: {rows[-1]['zeta_tok_s']:8.1f} tok/s, ratio to {settings[0]} "
              f"{rows[-1]['ratio_to_first']:.2f} ({min(ratios):.2f}-{max(ratios):.2f}); warm-up incl. compile "
              f"{models[i][1]:.0f} s", flush=True)
    return rows


def main() -> None:
    parser = make_parser(__doc__, rounds=7)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--options", nargs="+", metavar="JSON",
                        help="compare these compile_for_decode settings for zeta_hf instead of the variants")
    args = parser.parse_args()
    torch.set_num_threads(num_threads())
    if args.options:
        rows = run_options(args.options, args.size, args.rounds)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(dict(size=args.size, threads=num_threads(), rows=rows), indent=1))
        return
    rows = []
    for variant in args.variants:
        row = run_variant(variant, args.size, args.rounds)
        rows.append(row)
        print(f"{args.size} {variant:10s} batch {row['batch']:2d}: Llama {row['llama_tok_s']:8.1f} tok/s, zeta_hf "
              f"{row['zeta_tok_s']:8.1f} tok/s, ratio {row['ratio']:.2f} (rounds {row['ratio_min']:.2f}-"
              f"{row['ratio_max']:.2f}), compiled {row['compiled']}", flush=True)
        if args.out:  # after every variant, so a long run that is stopped keeps what it measured
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(dict(size=args.size, threads=num_threads(), rows=rows), indent=1))


if __name__ == "__main__":
    main()
