"""Served throughput: `zeta-hf serve` under a fixed load, zeta_hf vs transformers' Llama at matched size.

Each model (built with bench.py's `build`, so parameters match) is saved with a byte-level tokenizer and served by
`zeta-hf serve` as a real process, once with one request at a time (`generate`) and once with `--continuous-batching`.
The load is fixed and stops by itself: REQUESTS non-streaming completions from CLIENTS concurrent client threads
(the `openai` client), fixed ASCII prompts of PROMPT_LEN tokens, MAX_TOKENS new tokens each (greedy; end-of-sequence
is off so every request generates exactly MAX_TOKENS). Reported: requests/s and generated tokens/s, with ratios to
Llama and to zeta_hf's own one-at-a-time server. Not a test: nothing asserts. On a shared machine the numbers are
noisy; the ratios of runs made one after the other hold better than the absolute numbers.

    python bench/serve_load.py --size small --out bench/results/serve_load_small.json
    python bench/serve_load.py --size tiny --requests 32 --clients 8    # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import SIZES, build  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODES = {"generate": [], "continuous_batching": ["--continuous-batching", "--cb-num-blocks", "256",
                                                 "--cb-max-batch-tokens", "512"]}


def save_model(name: str, size: dict[str, int], folder: Path) -> int:
    """Save model `name` at `size` with the byte tokenizer; end-of-sequence off. Returns its parameter count."""
    model = build(name, size).eval()
    for config in (model.config, model.generation_config):
        config.eos_token_id = None
    model.generation_config.do_sample = False
    model.save_pretrained(folder)
    from zeta_hf.data import make_tokenizer

    make_tokenizer(num_bytes=128).save_pretrained(folder)  # ASCII: fits the benchmark models' 256 ids
    return sum(p.numel() for p in model.parameters())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_load(folder: Path, mode: str, requests: int, clients: int, prompt_len: int, max_tokens: int, threads: int,
             log_path: Path) -> dict[str, Any]:
    """Serve `folder` in `mode`, send the load, stop the server; requests/s, tokens/s and failures."""
    import httpx
    import openai

    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": str(threads)}
    with open(log_path, "w") as log:
        server = subprocess.Popen([sys.executable, "-m", "zeta_hf.cli", "serve", str(folder), "--port", str(port),
                                   "--device", "cpu", *MODES[mode]], stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + 300
            while True:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not start; see {log_path}")
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0,
                                   timeout=600)
            # fixed prompts: printable ASCII, one token per character
            prompts = [("".join(chr(33 + (i * 7 + j * 13) % 90) for j in range(prompt_len))) for i in range(requests)]

            def complete(prompt: str) -> int:
                result = client.completions.create(model=str(folder), prompt=prompt, max_tokens=max_tokens,
                                                   temperature=0)
                return result.usage.completion_tokens

            for prompt in prompts[: min(clients, 4)]:  # warm-up, untimed (first-call allocations, CB worker start)
                complete(prompt)
            pending = list(prompts)
            lock = threading.Lock()
            done: list[int] = []
            failures: list[str] = []

            def client_thread() -> None:
                while True:
                    with lock:
                        if not pending:
                            return
                        prompt = pending.pop()
                    try:
                        tokens = complete(prompt)
                    except Exception as error:  # recorded, not raised: the run is bounded either way
                        with lock:
                            failures.append(f"{type(error).__name__}: {error}"[:200])
                        continue
                    with lock:
                        done.append(tokens)

            start = time.perf_counter()
            threads = [threading.Thread(target=client_thread) for _ in range(clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            seconds = time.perf_counter() - start
        finally:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    return {
        "mode": mode, "requests": len(done), "failures": len(failures), "first_failures": failures[:3],
        "seconds": round(seconds, 2), "requests_per_s": round(len(done) / seconds, 3),
        "tokens_per_s": round(sum(done) / seconds, 1), "generated_tokens": sum(done),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=list(SIZES), default="small")
    parser.add_argument("--models", nargs="+", choices=["zeta", "llama"], default=["zeta", "llama"])
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the server (OMP_NUM_THREADS; default 1: on a shared machine more "
                        "threads than free cores slow every step down)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()

    size = SIZES[args.size]
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            folder = Path(tmp) / name
            params = save_model(name, size, folder)
            for mode in args.modes:
                row = run_load(folder, mode, args.requests, args.clients, args.prompt_len, args.max_tokens,
                               args.threads, Path(tmp) / f"{name}-{mode}.log")
                row.update(model=name, params=params)
                results.append(row)
                print(json.dumps(row), flush=True)

    def cell(model: str, mode: str) -> dict[str, Any] | None:
        return next((r for r in results if r["model"] == model and r["mode"] == mode), None)

    print(f"\nsize {args.size} ({size['dim']}x{size['depth']}), {args.requests} requests, {args.clients} clients, "
          f"prompt {args.prompt_len} + {args.max_tokens} new tokens, {args.threads} torch thread(s), "
          f"{os.cpu_count()} CPUs (shared: noisy)")
    print(f"{'model':<7}{'mode':<21}{'req/s':>8}{'tok/s':>9}{'vs llama':>10}{'vs own generate':>17}")
    for row in results:
        llama, own = cell("llama", row["mode"]), cell(row["model"], "generate")
        vs_llama = row["tokens_per_s"] / llama["tokens_per_s"] if llama and llama["tokens_per_s"] else float("nan")
        vs_own = row["tokens_per_s"] / own["tokens_per_s"] if own and own["tokens_per_s"] else float("nan")
        print(f"{row['model']:<7}{row['mode']:<21}{row['requests_per_s']:>8.2f}{row['tokens_per_s']:>9.1f}"
              f"{vs_llama:>10.2f}{vs_own:>17.2f}" + (f"  ({row['failures']} failed)" if row["failures"] else ""))
    if args.out:
        args.out.write_text(json.dumps({"size": args.size, "requests": args.requests, "clients": args.clients,
                                        "threads": args.threads,
                                        "prompt_len": args.prompt_len, "max_tokens": args.max_tokens,
                                        "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
