"""Past one process, run end to end on CPU (gloo): FSDP2 through `accelerate launch`, DDP, two-launcher multi-node.

The launch commands and the FSDP config are the ones docs/distributed.md shows (the YAML is read from it). Runs
that several tests compare against are made once per test session, also under pytest-xdist (a file lock in the
session's shared temporary folder), so the file costs six short 2-process trainings.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
import torch
from filelock import FileLock
from safetensors.torch import load_file

from zeta_hf import ZetaForCausalLM
from zeta_hf.cli_common import CLIError
from zeta_hf.training import (
    CHECKPOINT_LAYOUTS,
    STEP_DELAY_ENV,
    check_resume_layout,
    missing_checkpoint_files,
    weights_digest,
)

pytestmark = pytest.mark.slow

DOCS = Path(__file__).resolve().parent.parent / "docs" / "distributed.md"
# One thread per process: two cores are shared by the test workers and every rank.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
ENV.pop("ZETA_HF_DEBUG", None)
STEPS = 8
# hidden 32, 1 layer pair, 32-byte sequences; a loss every step; checkpoints at steps 4 and 8
COMMON = ["--preset", "tiny", "--set", "hidden_size=32", "--set", "num_hidden_layers=1", "--set", "head_dim=8",
          "--seq-len", "32", "--batch-size", "4", "--max-eval-sequences", "4", "--warmup-steps", "2",
          "--max-steps", str(STEPS), "--save-steps", "4", "--eval-steps", "0", "--logging-steps", "1", "--seed", "3"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
# FSDP vs DDP: not bit-identical, the gradients are summed in another order (docs/distributed.md). Measured: equal
# losses, weights within 1.2e-7; the margin is for other machines, thread counts and library versions.
LOSS_RTOL, WEIGHT_ATOL = 1e-5, 1e-5


def fsdp_yaml(tmp: Path, **changes: str) -> Path:
    """docs/distributed.md's fsdp.yaml, written to `tmp`, with `key: value` lines changed."""
    block = re.search(r"```yaml\n(# fsdp\.yaml.*?)```", DOCS.read_text(), re.S).group(1)
    for key, value in changes.items():
        block, found = re.subn(rf"^(\s*{key}:) .*$", rf"\1 {value}", block, flags=re.M)
        assert found == 1, key
    path = tmp / f"fsdp-{len(changes)}-{'-'.join(changes.values()).lower()}.yaml"
    path.write_text(block)
    return path


def accelerate_launch(config: Path) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "-m", "zeta_hf.cli"]


def corpus_file(folder: Path) -> Path:
    """~50 KB of Python's documentation as a text file: tokenizing all of it would cost each rank 1.5 s."""
    from pydoc_data.topics import topics

    path = folder / "corpus.txt"
    if not path.is_file():
        scratch = folder / f".corpus-{os.getpid()}.txt"
        scratch.write_text("\n\n".join(topics[k] for k in sorted(topics)[:20]))
        os.replace(scratch, path)  # atomic: xdist workers may write it at the same time
    return path


def train(output_dir: Path, launcher: list[str], *extra: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`zeta-hf train` under `launcher` with the tiny options; every rank writes a weights digest."""
    cmd = [*launcher, "train", *COMMON, "--corpus", str(corpus_file(output_dir.parent)),
           "--output-dir", str(output_dir), "--weights-digest-file", f"{output_dir}.digest", *extra]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed with {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def digests(output_dir: Path, ranks: int = 2) -> list[str]:
    return [Path(f"{output_dir}.digest.rank{r}").read_text().strip() for r in range(ranks)]


def step_losses(output_dir: Path) -> list[float]:
    """The training loss of every step, from the last checkpoint's trainer state."""
    history = json.loads((output_dir / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())["log_history"]
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) == STEPS
    return losses


def max_abs_diff(a: Path, b: Path) -> float:
    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert x.keys() == y.keys()
    return max((x[k] - y[k]).abs().max().item() for k in x)


def _session_folder(tmp_path_factory) -> Path:
    """A folder of this test session that every pytest-xdist worker sees (the pytest-xdist recipe)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def shared_run(tmp_path_factory, name: str, make) -> Path:
    """`make(folder)` once per test session, however many xdist workers ask for it."""
    shared = _session_folder(tmp_path_factory)
    folder = shared / name
    with FileLock(str(shared / f"{name}.lock")):
        if not (folder / "training_summary.json").is_file():
            shutil.rmtree(folder, ignore_errors=True)
            make(folder)
    return folder


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> Path:
    """The reference: two processes of plain DDP on one launcher."""
    return shared_run(tmp_path_factory, "ddp", lambda out: train(
        out, [*TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "zeta_hf.cli"]))


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory) -> Path:
    """The same run under FSDP2, launched as docs/distributed.md shows (sharded checkpoints)."""
    def make(out: Path) -> None:
        out.parent.joinpath("configs").mkdir(exist_ok=True)
        train(out, accelerate_launch(fsdp_yaml(out.parent / "configs")))
    return shared_run(tmp_path_factory, "fsdp", make)


# --------------------------------------------------------------------------------------------------------------------
# FSDP2: a real sharded run, one consolidated folder, the same numbers as DDP, resume after SIGKILL
# --------------------------------------------------------------------------------------------------------------------


def test_fsdp_run_shards_and_saves_one_consolidated_folder(fsdp_run):
    # Sharded checkpoints prove FSDP ran (accelerate alone falls back to DDP on CPU and writes optimizer.pt).
    checkpoint = fsdp_run / f"checkpoint-{STEPS}"
    assert sorted(p.name for p in (checkpoint / "pytorch_model_fsdp_0").glob("*.distcp")) == ["__0_0.distcp",
                                                                                              "__1_0.distcp"]
    assert missing_checkpoint_files(checkpoint, world_size=2) == [] and not (checkpoint / "optimizer.pt").exists()
    # The model folder: one full safetensors file, the Zeta code files (not torch's generated FSDP class).
    config = json.loads((fsdp_run / "config.json").read_text())
    assert config["architectures"] == ["ZetaForCausalLM"]
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_zeta.ZetaForCausalLM"
    assert not list(fsdp_run.glob("_fsdp*.py")) and (fsdp_run / "modeling_zeta.py").is_file()
    model = ZetaForCausalLM.from_pretrained(fsdp_run).eval()
    assert sum(t.numel() for t in load_file(str(fsdp_run / "model.safetensors")).values()) == model.num_parameters()
    # Bit for bit the weights both ranks held at the end (gathered from their shards).
    assert digests(fsdp_run) == [weights_digest(model)] * 2
    from transformers import AutoModelForCausalLM

    remote = AutoModelForCausalLM.from_pretrained(fsdp_run, trust_remote_code=True).eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 16))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, remote(ids).logits)


def test_fsdp_matches_ddp_step_by_step(fsdp_run, ddp_run):
    fsdp, ddp = step_losses(fsdp_run), step_losses(ddp_run)
    assert fsdp == pytest.approx(ddp, rel=LOSS_RTOL, abs=0)
    assert fsdp[-1] < fsdp[0] - 0.5  # it trains
    assert max_abs_diff(fsdp_run, ddp_run) < WEIGHT_ATOL
    summary = json.loads((fsdp_run / "training_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["tokens_seen"] == STEPS * 2 * 4 * 32
    # the model card's command names the launcher that ran it, with FSDP (a torchrun line would train without it)
    assert summary["command"].startswith("accelerate launch --num_machines 1 --num_processes 2 --use_fsdp -m zeta_hf.cli train ")
    assert json.loads((ddp_run / "training_summary.json").read_text())["command"].startswith(
        "torchrun --nproc_per_node 2 -m zeta_hf.cli train ")


def _kill_run(proc: subprocess.Popen) -> None:
    """SIGKILL to the launcher and every process it started, as when the machine goes away."""
    launcher = psutil.Process(proc.pid)
    family = [*launcher.children(recursive=True), launcher]  # workers first: a launcher would stop them gently
    for member in family:
        try:
            member.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=30)
    _, alive = psutil.wait_procs(family, timeout=30)
    assert not [p for p in alive if _running(p)], alive


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE  # a zombie is dead, only not yet reaped
    except psutil.NoSuchProcess:
        return False


def test_fsdp_resume_after_sigkill_matches_the_uninterrupted_run(fsdp_run, tmp_path):
    config = fsdp_yaml(tmp_path)
    killed = tmp_path / "killed"
    # A pause after every step leaves room to kill the run between its two checkpoints (steps 4 and 8).
    cmd = [*accelerate_launch(config), "train", *COMMON, "--corpus", str(corpus_file(tmp_path)),
           "--output-dir", str(killed)]
    proc = subprocess.Popen(cmd, env={**ENV, STEP_DELAY_ENV: "0.4"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while missing_checkpoint_files(killed / "checkpoint-4", world_size=2):
            assert proc.poll() is None, f"training ended (exit {proc.returncode}) before it could be killed"
            assert time.time() < deadline, "timed out waiting for checkpoint-4"
            time.sleep(0.05)
        time.sleep(0.6)  # into step 6
    finally:
        _kill_run(proc)
    assert not (killed / "model.safetensors").exists() and not (killed / "checkpoint-8").exists()
    # A sharded checkpoint cut short while saving: shard files, but no .metadata (written once all are complete).
    partial = killed / "checkpoint-7"
    shutil.copytree(killed / "checkpoint-4", partial)
    (partial / "pytorch_model_fsdp_0" / ".metadata").unlink()

    resumed = train(killed, accelerate_launch(config), "--resume")
    assert "skipping incomplete checkpoint" in resumed.stderr and "pytorch_model_fsdp_0/.metadata" in resumed.stderr
    assert max_abs_diff(killed, fsdp_run) < 1e-6
    assert digests(killed) == digests(fsdp_run)
    assert step_losses(killed)[4:] == step_losses(fsdp_run)[4:]
    summary = json.loads((killed / "training_summary.json").read_text())
    assert Path(summary["resumed_from"]).name == "checkpoint-4"


def test_fsdp_bf16_with_activation_checkpointing_and_full_state_dict(fsdp_run, tmp_path):
    """bf16 autocast + activation checkpointing under FSDP2, checkpoints gathered into full files."""
    out = tmp_path / "bf16"
    train(out, accelerate_launch(fsdp_yaml(tmp_path, fsdp_state_dict_type="FULL_STATE_DICT")),
          "--bf16", "--gradient-checkpointing")
    assert missing_checkpoint_files(out / "checkpoint-4", world_size=2) == []
    assert (out / "checkpoint-4" / "pytorch_model_fsdp.bin").is_file()
    losses, fp32 = step_losses(out), step_losses(fsdp_run)
    assert all(map(torch.isfinite, torch.tensor(losses))) and losses[-1] < losses[0] - 0.5
    # bf16 is really in use (not the fp32 numbers), and stays within its precision of them.
    assert losses != fp32 and losses == pytest.approx(fp32, rel=1e-2)
    model = ZetaForCausalLM.from_pretrained(out)
    assert digests(out) == [weights_digest(model)] * 2
    assert all(p.dtype == torch.float32 for p in model.parameters())  # bf16 computes; the weights stay fp32


def test_resume_refuses_a_checkpoint_of_another_layout(fsdp_run):
    """An FSDP checkpoint resumed without FSDP (or the other way round): one line naming both layouts.

    The Trainer only finds out while loading, with a traceback; a stand-in trainer is enough for the check.
    """
    def trainer(state_dict_type: str | None) -> SimpleNamespace:
        plugin = SimpleNamespace(state_dict_type=f"StateDictType.{state_dict_type}") if state_dict_type else None
        return SimpleNamespace(is_fsdp_enabled=plugin is not None,
                               accelerator=SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin)))

    sharded = fsdp_run / f"checkpoint-{STEPS}"
    check_resume_layout(sharded, trainer("SHARDED_STATE_DICT"))
    with pytest.raises(CLIError, match="is an FSDP SHARDED_STATE_DICT checkpoint, but this run would save a "
                                       "checkpoint without FSDP; resume it with the launcher and FSDP settings"):
        check_resume_layout(sharded, trainer(None))
    with pytest.raises(CLIError, match="but this run would save an FSDP FULL_STATE_DICT checkpoint"):
        check_resume_layout(sharded, trainer("FULL_STATE_DICT"))


def test_checkpoint_layouts_are_complete_only_with_every_file(tmp_path):
    for layout, (weights, optimizer) in CHECKPOINT_LAYOUTS.items():
        checkpoint = tmp_path / layout / "checkpoint-5"
        for name in (weights, optimizer, "scheduler.pt", "rng_state_0.pth", "rng_state_1.pth"):
            (checkpoint / name).parent.mkdir(parents=True, exist_ok=True)
            (checkpoint / name).write_bytes(b"x")
        (checkpoint / "trainer_state.json").write_text("{}")
        assert missing_checkpoint_files(checkpoint, world_size=2) == [], layout
        (checkpoint / weights).unlink()
        (checkpoint / "rng_state_1.pth").unlink()
        assert missing_checkpoint_files(checkpoint, world_size=2) == [weights, "rng_state_1.pth"], layout


# --------------------------------------------------------------------------------------------------------------------
# Multi-node: two torchrun launchers meeting at a c10d rendezvous on 127.0.0.1
# --------------------------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_launchers_as_two_nodes_match_one_launcher(ddp_run, tmp_path):
    out = tmp_path / "two-nodes"
    port = _free_port()
    launchers = []
    for node_rank in (0, 1):  # docs/distributed.md's command, one process per "machine"
        cmd = [*TORCHRUN, "--nnodes", "2", "--node_rank", str(node_rank), "--nproc_per_node", "1",
               "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "-m", "zeta_hf.cli", "train",
               *COMMON, "--corpus", str(corpus_file(tmp_path)), "--output-dir", str(out),
               "--weights-digest-file", f"{out}.digest"]
        launchers.append(subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        logs = [p.communicate(timeout=300)[0] for p in launchers]
    finally:
        for p in launchers:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in launchers] == [0, 0], "\n".join(logs)
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["world_size"] == 2
    # Bit for bit: the same computation, only the rendezvous differs (with two processes the gradient reduction is
    # one addition, the same whichever process the rendezvous makes rank 0).
    assert step_losses(out) == step_losses(ddp_run)
    assert digests(out) == digests(ddp_run) == [weights_digest(ZetaForCausalLM.from_pretrained(out))] * 2
