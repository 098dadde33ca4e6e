"""Every way loading, training, evaluating, sampling or converting can fail ends in one clear sentence (issue 14).

API cases assert the exception type and message; command-line cases run `zeta_hf.cli.main` in this process (a child
per case would cost seconds of imports each) and assert exit status 1, exactly one `zeta-hf <cmd>: error: ...` line
on stderr, nothing on it besides, and, where files are involved, that nothing was written and the old files are intact.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from zeta_hf import (
    ZetaConfig,
    ZetaForCausalLM,
    ZetaForMaskedLM,
    ZetaForSequenceClassification,
    ZetaModel,
)
from zeta_hf import cli, training
from zeta_hf.data import make_tokenizer

TINY = dict(vocab_size=32, max_position_embeddings=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
            head_dim=16)
# a byte-level tokenizer's vocabulary, for folders the command line loads
CLI_TINY = dict(TINY, vocab_size=384, max_position_embeddings=64)
TRAIN = ["--preset", "tiny", "--seq-len", "16", "--batch-size", "2", "--max-eval-sequences", "2", "--warmup-steps", "0",
         "--logging-steps", "1", "--eval-steps", "0", "--set", "dim=32", "--set", "depth=1", "--set", "heads=2",
         "--set", "dim_head=16"]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes (to prove nothing changed)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------------------------------------
# Item 2: missing / unexpected weights raise for every class and every way of loading
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A causal LM and a sequence classifier, saved."""
    root = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    ZetaForCausalLM(ZetaConfig(**TINY)).save_pretrained(root / "lm")
    ZetaForSequenceClassification(ZetaConfig(**TINY, num_labels=3)).save_pretrained(root / "cls")
    return {"lm": root / "lm", "cls": root / "cls"}


def edited(source: Path, target: Path, *, drop: tuple[str, ...] = (), add: tuple[str, ...] = (),
           architectures="keep") -> Path:
    shutil.copytree(source, target)
    state = load_file(target / "model.safetensors")
    for key in drop:
        del state[key]
    for key in add:
        state[key] = torch.zeros(2)
    save_file(state, target / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((target / "config.json").read_text())
    if architectures == "absent":
        config.pop("architectures")
    elif architectures != "keep":
        config["architectures"] = architectures
    (target / "config.json").write_text(json.dumps(config))
    return target


BODY_KEY = "model.layers.0.self_attn.q_proj.weight"
LOADERS = {
    "ZetaForCausalLM": ZetaForCausalLM, "AutoModelForCausalLM": AutoModelForCausalLM, "ZetaModel": ZetaModel,
    "AutoModel": AutoModel, "AutoModelForSequenceClassification": AutoModelForSequenceClassification,
    "ZetaForMaskedLM": ZetaForMaskedLM, "AutoModelForTokenClassification": AutoModelForTokenClassification,
}
ARCHITECTURES = {"kept": "keep", "absent": "absent", "null": None, "wrong": ["ZetaModel"]}


@pytest.mark.parametrize("architectures", ARCHITECTURES.values(), ids=ARCHITECTURES.keys())
@pytest.mark.parametrize("loader", LOADERS.values(), ids=LOADERS.keys())
def test_missing_body_weight_raises_for_every_class(checkpoints, tmp_path, loader, architectures):
    folder = edited(checkpoints["lm"], tmp_path / "f", drop=(BODY_KEY,), architectures=architectures)
    with pytest.raises(ValueError, match=r"missing keys: .*layers\.0\.self_attn\.q_proj\.weight.*randomly initialised"):
        loader.from_pretrained(folder)


@pytest.mark.parametrize("architectures", ARCHITECTURES.values(), ids=ARCHITECTURES.keys())
@pytest.mark.parametrize("loader", LOADERS.values(), ids=LOADERS.keys())
def test_unexpected_body_weight_raises_for_every_class(checkpoints, tmp_path, loader, architectures):
    folder = edited(checkpoints["lm"], tmp_path / "f", add=("model.bogus.weight",), architectures=architectures)
    with pytest.raises(ValueError, match=r"unexpected keys: .*bogus\.weight"):
        loader.from_pretrained(folder)


@pytest.mark.parametrize("architectures", ARCHITECTURES.values(), ids=ARCHITECTURES.keys())
@pytest.mark.parametrize("loader", [ZetaForCausalLM, AutoModelForCausalLM, ZetaForMaskedLM],
                         ids=["ZetaForCausalLM", "AutoModelForCausalLM", "ZetaForMaskedLM"])
def test_missing_lm_head_raises(checkpoints, tmp_path, loader, architectures):
    folder = edited(checkpoints["lm"], tmp_path / "f", drop=("lm_head.weight",), architectures=architectures)
    with pytest.raises(ValueError, match=r"missing keys: lm_head\.weight"):
        loader.from_pretrained(folder)


def test_a_language_model_head_never_starts_untrained(checkpoints, tmp_path):
    """A causal LM from a classifier checkpoint would have a random `lm_head`: refused (the classifier's `score`
    weights are another head's and are not the problem)."""
    with pytest.raises(ValueError, match=r"missing keys: lm_head\.bias, lm_head\.weight\)"):
        AutoModelForCausalLM.from_pretrained(checkpoints["cls"])


def test_a_partly_missing_classification_head_raises(checkpoints, tmp_path):
    folder = edited(checkpoints["cls"], tmp_path / "f", drop=("score.bias",))
    with pytest.raises(ValueError, match=r"missing keys: score\.bias"):
        ZetaForSequenceClassification.from_pretrained(folder)


def test_other_heads_load_a_causal_lm_body_exactly(checkpoints):
    """The legitimate transfers: the base model drops `lm_head`; a new classification head starts untrained."""
    lm = ZetaForCausalLM.from_pretrained(checkpoints["lm"])
    body = {k.removeprefix("model."): v for k, v in lm.state_dict().items() if k.startswith("model.")}
    for loader in (AutoModel, ZetaModel):
        base = loader.from_pretrained(checkpoints["lm"])
        assert all(torch.equal(base.state_dict()[k], v) for k, v in body.items())
    classifier, info = AutoModelForSequenceClassification.from_pretrained(
        checkpoints["lm"], num_labels=3, output_loading_info=True)
    assert sorted(info["missing_keys"]) == ["score.bias", "score.weight"]
    assert all(torch.equal(classifier.model.state_dict()[k], v) for k, v in body.items())


# ----------------------------------------------------------------------------------------------------------------------
# Item 7: configuration values are type-checked and range-checked where they enter
# ----------------------------------------------------------------------------------------------------------------------

# (id, options, fragments of the ValueError message)
CONFIG_CASES = [
    ("bool-as-string", dict(l2norm_embed="false"), ["`l2norm_embed`", "bool", "'false'"]),
    ("bool-as-int", dict(qk_norm=1), ["`qk_norm`", "bool", "1"]),
    ("int-as-float", dict(num_hidden_layers=2.0), ["`num_hidden_layers`", "int", "2.0"]),
    ("int-as-string", dict(head_dim="16"), ["`head_dim`", "int", "'16'"]),
    ("float-as-string", dict(qk_norm_scale="big"), ["`qk_norm_scale`", "float", "'big'"]),
    ("qk-norm-scale-nan", dict(qk_norm_scale=float("nan")), ["`qk_norm_scale`", "finite", "nan"]),
    ("qk-norm-scale-negative", dict(qk_norm_scale=-1.0), ["`qk_norm_scale`", "> 0", "-1.0"]),
    ("ff-mult-infinite", dict(ff_mult=float("inf")), ["`ff_mult`", "finite", "inf"]),
    ("layer-norm-eps-zero", dict(layer_norm_eps=0.0), ["`layer_norm_eps`", "> 0", "0.0"]),
    ("rotary-base-nan", dict(rotary_base=float("nan")), ["`rotary_base`", "nan"]),
    ("dropout-nan", dict(attention_dropout=float("nan")), ["`attention_dropout`", "nan"]),
    ("list-of-wrong-items", dict(block_pattern=["attn", 3]), ["`block_pattern`", "list[str]"]),
    ("token-id-as-string", dict(pad_token_id="0"), ["`pad_token_id`", "int | None", "'0'"]),
    ("provider-not-a-name", dict(embedding_provider=3), ["`embedding_provider`", "3"]),
    ("too-many-layers", dict(num_hidden_layers=10**6), ["`num_hidden_layers`", "1000000", "limit"]),
    ("too-many-parameters", dict(vocab_size=10**9, hidden_size=4096), ["parameters", "vocab_size=1000000000", "limit"]),
]


@pytest.mark.parametrize("options,fragments", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_invalid_config_value_is_a_clear_error(options, fragments):
    with pytest.raises(ValueError) as info:
        ZetaConfig(**{**TINY, **options})
    for fragment in fragments:
        assert fragment in str(info.value), f"{fragment!r} not in: {info.value}"


def test_ints_are_accepted_where_a_float_is_declared():
    assert ZetaConfig(**TINY, ff_mult=2, qk_norm_scale=10, layer_norm_eps=1).ff_mult == 2


@pytest.mark.parametrize("options", [dict(l2norm_embed="false"), dict(num_hidden_layers=10**6)], ids=["bool", "huge"])
def test_bad_config_json_fails_fast_in_from_pretrained(checkpoints, tmp_path, options):
    folder = shutil.copytree(checkpoints["lm"], tmp_path / "f")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **options}))
    start = time.perf_counter()
    with pytest.raises(ValueError, match=next(iter(options))):
        AutoModelForCausalLM.from_pretrained(folder)
    assert time.perf_counter() - start < 5


# ----------------------------------------------------------------------------------------------------------------------
# Items 3-6: the command line
# ----------------------------------------------------------------------------------------------------------------------


def run_cli(capfd, *argv: str) -> tuple[int, str, str]:
    """`zeta-hf ARGV` in this process: (exit status, stdout, stderr)."""
    try:
        cli.main(list(argv))
        code = 0
    except SystemExit as exit:
        code = exit.code
    out, err = capfd.readouterr()
    return code, out, err


def assert_one_line_error(result: tuple[int, str, str], command: str, *fragments: str, progress: bool = False) -> None:
    """Exit status 1 and one `zeta-hf <command>: error:` line; stderr holds nothing else (with `progress`, a failure
    during training: only the progress bar's lines besides, the error on a line of its own)."""
    code, _, err = result
    assert code == 1, err
    lines = [line for line in err.splitlines() if line.strip()]
    if progress:
        lines = [line for line in lines if "it/s]" not in line and "?it/s" not in line]
    assert len(lines) == 1 and lines[0].startswith(f"zeta-hf {command}: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in: {lines[0]}"


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    """A folder as `zeta-hf train` leaves it: weights, config, generation config and the byte-level tokenizer."""
    folder = tmp_path_factory.mktemp("cli") / "model"
    torch.manual_seed(0)
    model = ZetaForCausalLM(ZetaConfig(**CLI_TINY))
    training._set_generation_defaults(model, make_tokenizer())
    model.save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return folder


class _Evil:
    """Unpickling this runs `os.system`; `weights_only=True` must refuse it without running it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _damage(folder: Path, case: str, tmp_path: Path) -> None:
    if case == "truncated":
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif case == "config-mismatch":
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "hidden_size": 64, "head_dim": 32}))
    elif case == "broken-generation-config":
        (folder / "generation_config.json").write_text('{"do_sample": true, "temperature": ')
    elif case == "provider":
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "embedding_provider": "os:system"}))


# (id, damage to a copy of the model folder, command-line arguments, fragments of the error line)
MODEL_CASES = [
    ("generate-truncated-weights", "truncated", ["generate"], ["weights file is damaged or truncated"]),
    ("eval-truncated-weights", "truncated", ["eval"], ["weights file is damaged or truncated"]),
    ("generate-config-not-matching-weights", "config-mismatch", ["generate"],
     ["config.json does not match its weights", "size mismatch"]),
    ("eval-config-not-matching-weights", "config-mismatch", ["eval"], ["config.json does not match its weights"]),
    ("generate-broken-generation-config", "broken-generation-config", ["generate"], ["generation_config.json"]),
    ("generate-embedding-provider", "provider", ["generate"], ["embedding_provider", "'os:system'", "never imports"]),
    ("generate-top-p-5", None, ["generate", "--top-p", "5"], ["--top-p", "(0, 1]", "5.0"]),
    ("generate-temperature-nan", None, ["generate", "--temperature", "nan"], ["--temperature", "finite", "nan"]),
    ("eval-seq-len-1", None, ["eval", "--seq-len", "1"], ["--seq-len", "at least 2", "1"]),
    ("eval-seq-len-negative", None, ["eval", "--seq-len", "-1"], ["--seq-len", "at least 2", "-1"]),
    ("eval-max-eval-sequences-0", None, ["eval", "--max-eval-sequences", "0"], ["--max-eval-sequences", "> 0", "0"]),
]


@pytest.mark.parametrize("damage,argv,fragments", [c[1:] for c in MODEL_CASES], ids=[c[0] for c in MODEL_CASES])
def test_model_folder_failures_are_one_line(model_folder, tmp_path, capfd, damage, argv, fragments):
    folder = shutil.copytree(model_folder, tmp_path / "model")
    _damage(folder, damage, tmp_path)
    before = snapshot(folder)
    result = run_cli(capfd, *argv, "--model", str(folder), "--max-new-tokens", "2") if argv[0] == "generate" else \
        run_cli(capfd, *argv, "--model", str(folder))
    assert_one_line_error(result, argv[0], *fragments)
    assert snapshot(folder) == before


def _write_jsonl(path: Path, values: list) -> Path:
    path.write_text("".join(json.dumps({"text": v}) + "\n" for v in values))
    return path


# (id, extra train arguments ({tmp} is the test's folder), fragments of the error line)
TRAIN_CASES = [
    ("jsonl-int-text", ["--corpus", "{tmp}/ints.jsonl"], ["'text' values must all be strings", "int64"]),
    ("jsonl-mixed-text", ["--corpus", "{tmp}/mixed.jsonl"], ["'text' values must all be strings", "mixed types"]),
    ("lr-nan", ["--lr", "nan"], ["--lr", "finite", "nan"]),
    ("time-budget-nan", ["--time-budget", "nan"], ["--time-budget", "finite", "nan"]),
    ("logits-dim-below-vocab", ["--set", "logits_dim=10"], ["logits_dim", "384", "10"]),
    ("embedding-provider", ["--set", "embedding_provider=os:system"], ["embedding_provider", "'os:system'"]),
    ("bool-as-string", ["--set", "l2norm_embed=\"false\""], ["l2norm_embed", "bool", "'false'"]),
    ("config-is-a-folder", ["--config", "{tmp}"], ["--config", "is a folder"]),
    ("output-dir-under-a-file", ["--output-dir", "{tmp}/a-file/out"], ["--output-dir", "a-file", "is a file"]),
]


@pytest.mark.parametrize("argv,fragments", [c[1:] for c in TRAIN_CASES], ids=[c[0] for c in TRAIN_CASES])
def test_train_failures_are_one_line(tmp_path, capfd, argv, fragments):
    _write_jsonl(tmp_path / "ints.jsonl", [1, 2, 3] * 50)
    _write_jsonl(tmp_path / "mixed.jsonl", ["some text " * 20, 2] * 50)
    (tmp_path / "a-file").write_text("not a folder")
    before = snapshot(tmp_path)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    output = [] if "--output-dir" in argv else ["--output-dir", str(tmp_path / "out")]
    assert_one_line_error(run_cli(capfd, "train", *TRAIN, "--max-steps", "1", *output, *argv), "train", *fragments)
    assert snapshot(tmp_path) == before and not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, list[str]]:
    """A finished 4-step run with checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("run") / "out"
    argv = ["train", *TRAIN, "--max-steps", "4", "--save-steps", "2", "--seed", "3", "--output-dir", str(out)]
    cli.main(argv)
    return out, argv


def test_resume_of_a_finished_run_trains_nothing_and_keeps_its_weights(finished_run, tmp_path, capfd):
    out, argv = finished_run
    copy = shutil.copytree(out, tmp_path / "out")
    argv = [a if a != str(out) else str(copy) for a in argv]
    capfd.readouterr()
    code, _, err = run_cli(capfd, *argv, "--resume")
    assert code == 0, err
    assert "checkpoint-4 already reached --max-steps" in err
    assert sorted(p.name for p in copy.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert (copy / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()
    assert json.loads((copy / "training_summary.json").read_text())["steps"] == 4


@pytest.mark.parametrize("content", ["garbage", "malicious"])
def test_resume_with_a_damaged_or_malicious_optimizer_file(finished_run, tmp_path, capfd, content):
    out, _ = finished_run
    copy = shutil.copytree(out, tmp_path / "out")
    marker = tmp_path / "pwned"
    optimizer = copy / "checkpoint-4" / "optimizer.pt"
    if content == "garbage":
        optimizer.write_bytes(b"\x80\x04not a torch file at all")
    else:
        torch.save({"state": _Evil(marker)}, optimizer)
    argv = ["train", *TRAIN, "--max-steps", "6", "--save-steps", "2", "--seed", "3", "--output-dir", str(copy)]
    before = snapshot(copy)
    result = run_cli(capfd, *argv, "--resume")
    assert_one_line_error(result, "train", "optimizer.pt", "not a checkpoint written by torch.save of a state dict")
    assert not marker.exists(), "the pickle in optimizer.pt was run"
    assert snapshot(copy) == before


def test_disk_full_while_checkpointing(tmp_path, capfd, monkeypatch):
    """torch's zip writer reports a full disk as an enforce failure that never says so; the line does."""
    def full_disk(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 2432 vs 2320")

    monkeypatch.setattr(torch, "save", full_disk)
    result = run_cli(capfd, "train", *TRAIN, "--max-steps", "2", "--save-steps", "1", "--output-dir",
                     str(tmp_path / "out"))
    assert_one_line_error(result, "train", "no space left on device", "--resume", progress=True)
    assert not (tmp_path / "out" / "model.safetensors").exists()


@pytest.fixture(scope="module")
def zeta_checkpoint(tmp_path_factory) -> tuple[Path, Path]:
    """An x-transformers 1.19 (= Zeta) state dict of a depth-1 decoder, saved with torch.save, and its kwargs."""
    import x_transformers

    root = tmp_path_factory.mktemp("zeta")
    layers = {"dim": 32, "depth": 1, "heads": 2}
    kwargs = {"num_tokens": 32, "max_seq_len": 16, "attn_layers": {"type": "Decoder", **layers}}
    torch.manual_seed(0)
    model = x_transformers.TransformerWrapper(num_tokens=32, max_seq_len=16,
                                              attn_layers=x_transformers.Decoder(**layers))
    torch.save(model.state_dict(), root / "model.pt")
    (root / "kwargs.json").write_text(json.dumps(kwargs))
    return root / "model.pt", root / "kwargs.json"


@pytest.mark.parametrize("where,fragment", [("out", "is not a folder"), ("out/model", "is a file")],
                         ids=["is-a-file", "under-a-file"])
def test_convert_refuses_an_output_dir_that_is_or_lies_under_a_file(zeta_checkpoint, tmp_path, capfd, where, fragment):
    checkpoint, kwargs = zeta_checkpoint
    (tmp_path / "out").write_text("my notes")
    result = run_cli(capfd, "convert", "--checkpoint", str(checkpoint), "--kwargs", str(kwargs), "--output-dir",
                     str(tmp_path / where))
    assert_one_line_error(result, "convert", "--output-dir", fragment)
    assert (tmp_path / "out").read_text() == "my notes" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_convert_never_overwrites_a_model_folder_without_overwrite(zeta_checkpoint, tmp_path, capfd):
    checkpoint, kwargs = zeta_checkpoint
    target = tmp_path / "out"
    argv = ["convert", "--checkpoint", str(checkpoint), "--kwargs", str(kwargs), "--output-dir", str(target)]
    assert run_cli(capfd, *argv)[0] == 0
    (target / "notes.txt").write_text("mine")
    config = json.loads((target / "config.json").read_text())
    (target / "config.json").write_text(json.dumps({**config, "note": 1}))
    before = snapshot(target)
    assert_one_line_error(run_cli(capfd, *argv), "convert", "--output-dir", "not empty", "--overwrite")
    assert snapshot(target) == before
    assert run_cli(capfd, *argv, "--overwrite")[0] == 0
    assert "note" not in json.loads((target / "config.json").read_text())
    assert (target / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("content", ["garbage", "malicious", "not-a-dict"])
def test_convert_refuses_a_checkpoint_that_is_not_a_state_dict(zeta_checkpoint, tmp_path, capfd, content):
    _, kwargs = zeta_checkpoint
    checkpoint, marker = tmp_path / "model.pt", tmp_path / "pwned"
    if content == "garbage":
        checkpoint.write_bytes(pickle.dumps("x")[:3])
    elif content == "malicious":
        torch.save({"weight": _Evil(marker)}, checkpoint)
    else:
        torch.save([torch.zeros(2)], checkpoint)
    result = run_cli(capfd, "convert", "--checkpoint", str(checkpoint), "--kwargs", str(kwargs), "--output-dir",
                     str(tmp_path / "out"))
    assert_one_line_error(result, "convert", "file is not a checkpoint written by torch.save of a state dict")
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_convert_refuses_an_embedding_provider_by_name(zeta_checkpoint, tmp_path, capfd):
    checkpoint, kwargs = zeta_checkpoint
    named = tmp_path / "kwargs.json"
    named.write_text(json.dumps({**json.loads(kwargs.read_text()), "embedding_provider": "os:system"}))
    result = run_cli(capfd, "convert", "--checkpoint", str(checkpoint), "--kwargs", str(named), "--output-dir",
                     str(tmp_path / "out"))
    assert_one_line_error(result, "convert", "embedding_provider", "never imports code by name")
    assert not (tmp_path / "out").exists()
