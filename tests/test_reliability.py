"""Reliability: finite numerics under padding and low precision, clear errors for damaged checkpoints, atomic saving,
no pickle / network / remote code needed, and a training run that stops cleanly on a NaN loss."""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_config, make_tiny_model
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

import zeta_hf
from zeta_hf import ZetaConfig, ZetaForCausalLM
from zeta_hf.training import NAN_AT_STEP_ENV

VOCAB, MAX_LEN, DIM = 32, 16, 32
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
ENV.pop("ZETA_HF_DEBUG", None)


SIZE = dict(vocab_size=VOCAB, max_position_embeddings=MAX_LEN, hidden_size=DIM, num_attention_heads=2, head_dim=16)


def tiny_config(**overrides) -> ZetaConfig:
    return make_tiny_config(**{**SIZE, **overrides})


def tiny_model(seed: int = 0, **overrides) -> ZetaForCausalLM:
    return make_tiny_model(seed=seed, **{**SIZE, **overrides})


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ----------------------------------------------------------------------------------------------------------------------
# 1. Numerics
# ----------------------------------------------------------------------------------------------------------------------

NUMERIC_VARIANTS = {
    "absolute": {},
    "rotary-mem": dict(position_embedding="rotary", num_memory_tokens=2),
    "alibi": dict(position_embedding="alibi"),
    "t5-memkv": dict(position_embedding="t5", num_memory_kv=2),
    # masked scores carried into the next layer (residual attention) and mixed by talking heads: Zeta gives NaN here
    "residual-talking-topk": dict(position_embedding="rotary", residual_attn=True, talking_heads=True, sparse_topk=1,
                                  num_hidden_layers=3),
}


def padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Three rows: left-padded, all padding, one real token at the end."""
    ids = torch.randint(1, VOCAB, (3, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1]])
    return ids * mask, mask


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("overrides", NUMERIC_VARIANTS.values(), ids=NUMERIC_VARIANTS.keys())
def test_padding_and_fully_masked_rows_give_finite_outputs(overrides, attn):
    model = tiny_model(**overrides)
    model.set_attn_implementation(attn)
    ids, mask = padded_batch()
    with torch.no_grad():
        out = model(ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
    assert torch.isfinite(out.logits).all(), f"non-finite logits at {(~torch.isfinite(out.logits)).nonzero()[:4]}"
    assert all(torch.isfinite(h).all() for h in out.hidden_states)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_loss_and_gradients_finite_when_one_token_is_real(attn):
    """All padding but the last token; only it is a label, predicted from a position that sees nothing but padding."""
    model = tiny_model(position_embedding="rotary").train()
    model.set_attn_implementation(attn)
    ids, mask = padded_batch()
    ids, mask = ids[2:], mask[2:]
    labels = torch.where(mask.bool(), ids, -100)
    loss = model(ids, attention_mask=mask, labels=labels).loss
    assert torch.isfinite(loss), loss
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_forward_close_to_fp32_with_padding(dtype):
    """bf16 (and fp16, which runs on CPU in torch 2.x) agree with fp32 within the dtype's precision, padding included."""
    model = tiny_model(position_embedding="rotary", num_memory_tokens=2)
    ids, mask = padded_batch()
    with torch.no_grad():
        full = model(ids, attention_mask=mask, use_cache=False).logits
        low = model.to(dtype)(ids, attention_mask=mask, use_cache=False).logits
    assert low.dtype == dtype and torch.isfinite(low).all()
    kept = mask.bool()  # padding rows' logits are finite but meaningless
    tolerance = {torch.bfloat16: 0.05, torch.float16: 0.01}[dtype] * full.abs().max().item()
    assert (low.float() - full)[kept].abs().max().item() <= tolerance


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_eval_forward_is_bit_deterministic(attn):
    model = tiny_model(position_embedding="alibi", num_memory_tokens=2, attention_dropout=0.1, ff_dropout=0.1)
    model.set_attn_implementation(attn)
    ids, mask = padded_batch()
    with torch.no_grad():
        first = model(ids, attention_mask=mask, use_cache=False).logits
        second = model(ids, attention_mask=mask, use_cache=False).logits
    assert torch.equal(first, second)


# ----------------------------------------------------------------------------------------------------------------------
# 2. Damaged checkpoints: an error at load time, never a model with silently re-initialised weights
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("saved")
    tiny_model().save_pretrained(folder)
    return folder


def damaged(saved: Path, tmp_path: Path, damage) -> Path:
    folder = tmp_path / "damaged"
    folder.mkdir()
    for item in saved.iterdir():
        (folder / item.name).write_bytes(item.read_bytes())
    damage(folder)
    return folder


def edit_config(**changes):
    def damage(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        config.update(changes)
        (folder / "config.json").write_text(json.dumps(config))
    return damage


def edit_weights(change):
    def damage(folder: Path) -> None:
        state = load_file(folder / "model.safetensors")
        change(state)
        save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    return damage


def truncate(folder: Path) -> None:
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])


def scramble(folder: Path) -> None:
    size = (folder / "model.safetensors").stat().st_size
    noise = torch.randint(0, 256, (size,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    (folder / "model.safetensors").write_bytes(noise.numpy().tobytes())


def drop_key(state: dict) -> None:
    del state["model.layers.0.pre_norm.weight"]


def add_key(state: dict) -> None:
    state["model.bogus.weight"] = torch.zeros(2)


def print_provider(folder: Path) -> None:  # harmless stand-in for e.g. "os:kill", which would run kill(32, 32)
    edit_config(embedding_provider="builtins:print")(folder)


# damage, exception type, fragments that must all appear in the message
FAULTS = [
    pytest.param(truncate, SafetensorError, ["deserializing header"], id="truncated-weights"),
    pytest.param(scramble, SafetensorError, ["deserializing header"], id="random-bytes"),
    pytest.param(edit_config(position_embedding="bogus"), ValueError, ["position_embedding", "bogus", "rotary"],
                 id="invalid-option"),
    pytest.param(edit_config(num_attention_heads=3, num_key_value_heads=2), ValueError, ["num_key_value_heads"],
                 id="invalid-combination"),
    pytest.param(edit_config(hidden_size=64), RuntimeError, ["ignore_mismatched_sizes"], id="hidden-size-changed"),
    pytest.param(edit_config(vocab_size=40), RuntimeError, ["ignore_mismatched_sizes"], id="vocab-size-changed"),
    pytest.param(edit_config(model_type="llama"), ValueError, ["model_type", "llama"],
                 id="wrong-model-type"),
    pytest.param(edit_weights(drop_key), ValueError, ["model.layers.0.pre_norm.weight", "missing"],
                 id="missing-weight"),
    pytest.param(edit_weights(add_key), ValueError, ["model.bogus.weight", "unexpected"],
                 id="unexpected-weight"),
    pytest.param(print_provider, ValueError, ["embedding_provider", "builtins:print", "never imports"],
                 id="embedding-provider-from-stdlib"),
    # a stdlib callable reached through a non-stdlib module: named, never imported, never called
    pytest.param(edit_config(embedding_provider="zeta_hf.modeling_zeta:sys.exit"), ValueError,
                 ["embedding_provider", "zeta_hf.modeling_zeta:sys.exit", "never imports"],
                 id="embedding-provider-re-exported"),
]


@pytest.mark.parametrize("damage,exc_type,fragments", FAULTS)
def test_damaged_checkpoint_raises_clear_error(saved, tmp_path, damage, exc_type, fragments, capsys):
    folder = damaged(saved, tmp_path, damage)
    with pytest.raises(Exception) as info:
        ZetaForCausalLM.from_pretrained(folder)
    assert info.type is exc_type, f"expected {exc_type.__name__}, got {info.type.__name__}: {info.value}"
    for fragment in fragments:
        assert fragment in str(info.value), f"{fragment!r} not in error message: {info.value}"
    assert "32 32" not in capsys.readouterr().out, "the embedding provider named in config.json was called"


def test_missing_shard_raises_naming_the_file(tmp_path):
    tiny_model().save_pretrained(tmp_path, max_shard_size="20KB")
    shards = sorted(tmp_path.glob("model-*-of-*.safetensors"))
    assert len(shards) > 2 and (tmp_path / "model.safetensors.index.json").is_file()
    shards[1].unlink()
    with pytest.raises(OSError, match=shards[1].name):
        ZetaForCausalLM.from_pretrained(tmp_path)


def test_intact_checkpoint_still_loads_under_the_same_checks(saved):
    assert same_weights(ZetaForCausalLM.from_pretrained(saved), tiny_model())


# ----------------------------------------------------------------------------------------------------------------------
# 3. Atomic saving
# ----------------------------------------------------------------------------------------------------------------------

# Runs in a child: save model B over model A's folder, with the weights writer stalled halfway through its file.
STALLED_SAVE = textwrap.dedent(
    """
    import sys, time
    import torch
    import transformers.modeling_utils as mu
    from zeta_hf import ZetaConfig, ZetaForCausalLM

    def stalled_writer(tensors, filename, metadata=None):
        mu_save(tensors, filename, metadata=metadata)
        data = open(filename, "rb").read()
        open(filename, "wb").write(data[: len(data) // 2])  # half a file on disk, then the kill
        print("WRITING", flush=True)
        time.sleep(120)

    mu_save, mu.safe_save_file = mu.safe_save_file, stalled_writer
    torch.manual_seed(1)
    config = ZetaConfig(vocab_size=32, max_position_embeddings=16, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, head_dim=16)
    ZetaForCausalLM(config).save_pretrained(sys.argv[1], **({"max_shard_size": "20KB"} if sys.argv[2] == "sharded" else {}))
    """
)


def kill_during_save(folder: Path, layout: str) -> None:
    proc = subprocess.Popen([sys.executable, "-c", STALLED_SAVE, str(folder), layout], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "WRITING", f"the child never reached the weights writer: {line}{proc.stderr.read()}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_save_killed_midway_leaves_previous_checkpoint_loadable(tmp_path, layout):
    folder = tmp_path / "model"
    previous = tiny_model(seed=0)
    previous.save_pretrained(folder)
    (folder / "tokenizer.json").write_text("{}")  # files of others in the folder are kept
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    kill_during_save(folder, layout)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert same_weights(ZetaForCausalLM.from_pretrained(folder), previous)


def test_save_killed_midway_into_a_new_folder_leaves_no_folder(tmp_path):
    kill_during_save(tmp_path / "model", "single")
    assert not (tmp_path / "model").exists()
    assert [p.name for p in tmp_path.iterdir()][0].startswith(".model.saving-")  # hidden scratch; safe to delete
    tiny_model().save_pretrained(tmp_path / "model")  # the next save of that folder removes it
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_resave_replaces_weights_and_removes_stale_shards(tmp_path):
    first, second = tiny_model(seed=0), tiny_model(seed=1)
    first.save_pretrained(tmp_path, max_shard_size="20KB")
    (tmp_path / "README.md").write_text("card")
    second.save_pretrained(tmp_path)
    assert not list(tmp_path.glob("model-*")) and not (tmp_path / "model.safetensors.index.json").exists()
    assert (tmp_path / "README.md").read_text() == "card"
    assert same_weights(ZetaForCausalLM.from_pretrained(tmp_path), second)
    first.save_pretrained(tmp_path, max_shard_size="20KB")  # and back: the single file must not shadow the shards
    assert not (tmp_path / "model.safetensors").exists()
    assert same_weights(ZetaForCausalLM.from_pretrained(tmp_path), first)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert oct(tmp_path.stat().st_mode & 0o777) == oct(0o777 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_new_folder_has_normal_permissions(tmp_path):
    tiny_model().save_pretrained(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b" / "model.safetensors").is_file()
    assert oct((tmp_path / "a" / "b").stat().st_mode & 0o777) == oct(0o777 & ~_umask())


def test_push_to_hub_names_the_repo_after_the_folder(tmp_path, monkeypatch):
    import transformers.modeling_utils as mu

    created, uploaded = [], []

    class FakeApi:
        def create_repo(self, repo_id, exist_ok=True, **kwargs):
            created.append(repo_id)
            return type("Repo", (), {"repo_id": f"me/{repo_id}"})()

    def fake_upload(self, working_dir, repo_id, files_timestamps, **kwargs):
        uploaded.append((repo_id, sorted(os.listdir(working_dir))))

    monkeypatch.setattr(mu, "hf_api", lambda: FakeApi())
    monkeypatch.setattr(mu, "create_and_tag_model_card", lambda *a, **k: type("Card", (), {
        "save": lambda self, path: Path(path).write_text("card")})())
    monkeypatch.setattr(ZetaForCausalLM, "_upload_modified_files", fake_upload)
    tiny_model().save_pretrained(tmp_path / "my-model", push_to_hub=True, commit_message="hi")
    assert created == ["my-model"]
    assert uploaded[0][0] == "me/my-model" and {"config.json", "model.safetensors"} <= set(uploaded[0][1])
    assert (tmp_path / "my-model" / "model.safetensors").is_file()


# ----------------------------------------------------------------------------------------------------------------------
# 4. Security: safetensors only, no remote code needed, no network or GPU at import
# ----------------------------------------------------------------------------------------------------------------------

PACKAGE = Path(zeta_hf.__file__).parent


def test_no_pickle_loading_in_the_package():
    """Weights load through safetensors; the converter's `torch.load` of a Zeta `.pt` file is `weights_only=True`."""
    for path in PACKAGE.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not {"pickle", "dill", "cloudpickle", "joblib"} & set(names), (path.name, ast.unparse(node))
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                weights_only = [k for k in node.keywords if k.arg == "weights_only"]
                assert weights_only and ast.unparse(weights_only[0].value) == "True", (path.name, ast.unparse(node))


def test_checkpoint_loads_without_trust_remote_code(saved):
    model = AutoModelForCausalLM.from_pretrained(saved, trust_remote_code=False)
    assert type(model) is ZetaForCausalLM  # the installed class, not code from the folder
    assert same_weights(model, tiny_model())


def test_saved_code_imports_only_torch_transformers_stdlib_and_siblings(saved):
    code = sorted(saved.glob("*.py"))
    assert code, "no code files were saved"
    siblings = {p.stem for p in code}
    for path in code:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                assert node.level == 1 and node.module in siblings, (path.name, ast.unparse(node))
                continue
            if isinstance(node, ast.Import):
                roots = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = {(node.module or "").split(".")[0]}
            else:
                continue
            # huggingface_hub is a dependency of transformers itself, so every loading side has it
            outside = roots - {"torch", "transformers", "huggingface_hub"} - set(sys.stdlib_module_names)
            assert not outside, f"{path.name}: `{ast.unparse(node)}` needs a package the loading side may lack"


NO_NETWORK_CHILD = textwrap.dedent(
    """
    import socket, json
    attempts = []

    class NoSocket(socket.socket):
        def __init__(self, *args, **kwargs):
            attempts.append("socket" + repr(args))
            raise OSError("network access during import")

    def refuse(name):
        def call(*args, **kwargs):
            attempts.append(name + repr(args))
            raise OSError("network access during import")
        return call

    socket.socket = NoSocket
    socket.create_connection = refuse("create_connection")
    socket.getaddrinfo = refuse("getaddrinfo")
    import zeta_hf, torch
    print(json.dumps({"attempts": attempts, "cuda_initialized": torch.cuda.is_initialized()}))
    """
)


def test_import_touches_no_network_and_no_gpu():
    env = {**ENV, "CUDA_VISIBLE_DEVICES": ""}
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        env.pop(key, None)  # online mode: an import that phones home would show here
    proc = subprocess.run([sys.executable, "-c", NO_NETWORK_CHILD], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"attempts": [], "cuda_initialized": False}


# ----------------------------------------------------------------------------------------------------------------------
# 5. Training faults
# ----------------------------------------------------------------------------------------------------------------------

TINY_RUN = ["--preset", "tiny", "--seq-len", "32", "--batch-size", "4", "--max-eval-sequences", "8",
            "--logging-steps", "5", "--eval-steps", "0"]


def train(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zeta_hf.cli", "train", *TINY_RUN, *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=300)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("zeta-hf train: error:"), proc.stderr
    return errors[0]


@pytest.mark.slow
def test_nan_loss_stops_the_run_naming_the_step(tmp_path, monkeypatch):
    monkeypatch.setitem(ENV, NAN_AT_STEP_ENV, "8")  # the test aid: the loss of step 8 reads as NaN
    proc = train("--max-steps", "12", "--save-steps", "5", "--warmup-steps", "2", "--output-dir", "run", cwd=tmp_path)
    line = one_error_line(proc)
    assert "loss became nan at step 8 of 12" in line and "checkpoint-5" in line, line
    assert not (tmp_path / "run" / "model.safetensors").exists()  # no final model from diverged weights


@pytest.mark.slow
def test_diverging_learning_rate_stops_the_run(tmp_path):
    proc = train("--max-steps", "30", "--warmup-steps", "0", "--lr", "1e6", "--output-dir", "run", cwd=tmp_path)
    line = one_error_line(proc)
    assert "loss became" in line and "at step" in line and "--lr" in line, line


# Runs the CLI in a child whose weights writer stalls on one checkpoint, so the test can kill it mid-write.
STALL_CHECKPOINT = textwrap.dedent(
    """
    import sys, time
    import transformers.modeling_utils as mu
    from zeta_hf.cli import main

    def stalled_writer(tensors, filename, metadata=None):
        writer(tensors, filename, metadata=metadata)
        if "checkpoint-10" in filename:
            print("WRITING", flush=True)
            time.sleep(120)

    writer, mu.safe_save_file = mu.safe_save_file, stalled_writer
    main(sys.argv[1:])
    """
)


@pytest.mark.slow
def test_kill_while_writing_a_checkpoint_resumes_from_the_previous_one(tmp_path):
    args = ["train", *TINY_RUN, "--max-steps", "14", "--save-steps", "5", "--warmup-steps", "2", "--output-dir", "run"]
    proc = subprocess.Popen([sys.executable, "-c", STALL_CHECKPOINT, *args], cwd=tmp_path, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        deadline = time.time() + 240
        while (line := proc.stdout.readline()) and line.strip() != "WRITING" and time.time() < deadline:
            pass
        assert line.strip() == "WRITING", "the run never reached checkpoint-10"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    run = tmp_path / "run"
    assert (run / "checkpoint-5" / "trainer_state.json").is_file()
    assert not (run / "checkpoint-10" / "model.safetensors").exists()  # the Trainer made the folder; it stays empty
    resumed = train("--max-steps", "14", "--save-steps", "5", "--warmup-steps", "2", "--output-dir", "run", "--resume",
                    cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads((run / "training_summary.json").read_text())
    assert summary["resumed_from"].endswith("checkpoint-5") and summary["steps"] == 14
    assert not list(run.glob(".*.saving-*")), "the killed save's scratch folder was not cleaned up by the next save"
