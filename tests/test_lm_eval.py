"""lm-evaluation-harness scores a saved zeta_hf model on the project's local YAML tasks, offline, with the real CLI.

`lm_eval --model hf --include_path tests/lm_eval_tasks` runs the held-out bits-per-byte task and the tiny
multiple-choice task on a folder that lm-eval loads with `trust_remote_code=True` (it does not import zeta_hf); the
numbers it reports must equal the ones computed here from plain forward passes.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from transformers import ByT5Tokenizer

from zeta_hf import ZetaConfig, ZetaForCausalLM

pytestmark = pytest.mark.slow

TASKS = Path(__file__).parent / "lm_eval_tasks"
LM_EVAL = shutil.which("lm_eval")
EOS = 1  # ByT5 has no BOS: lm-eval starts each rolling window from the EOS token


def _docs(name: str) -> list[dict]:
    return [json.loads(line) for line in (TASKS / name).read_text().splitlines() if line.strip()]


def _logprob(model, context: list[int], continuation: list[int]) -> float:
    ids = torch.tensor([context + continuation])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1].double(), dim=-1)
    targets = ids[0, len(context):]
    return logp[len(context) - 1:].gather(-1, targets[:, None]).sum().item()


@pytest.fixture(scope="module")
def lm_eval_run(tmp_path_factory):
    if LM_EVAL is None:
        pytest.skip("needs lm-eval (test extra)")
    tmp = tmp_path_factory.mktemp("lm_eval")
    torch.manual_seed(0)
    model = ZetaForCausalLM(ZetaConfig(vocab_size=384, max_position_embeddings=128, hidden_size=32,
                                       num_hidden_layers=2, num_attention_heads=4, head_dim=8,
                                       position_embedding="rotary")).eval()
    tokenizer = ByT5Tokenizer()
    model.save_pretrained(tmp / "model")
    tokenizer.save_pretrained(tmp / "model")
    # The task files name their data with DATA_DIR: lm-eval's json loader needs absolute paths.
    tasks = tmp / "tasks"
    shutil.copytree(TASKS, tasks)
    for yaml in tasks.glob("*.yaml"):
        yaml.write_text(yaml.read_text().replace("DATA_DIR", str(tasks)))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_HOME=str(tmp / "hf_home"), HF_DATASETS_CACHE=str(tmp / "datasets"), TOKENIZERS_PARALLELISM="false")
    # add_bos_token=False: lm-eval otherwise leaves add_special_tokens to the tokenizer, and ByT5 then appends </s> to
    # every context and continuation it scores.
    cmd = [LM_EVAL, "--model", "hf",
           "--model_args", f"pretrained={tmp / 'model'},trust_remote_code=True,dtype=float32,add_bos_token=False",
           "--include_path", str(tasks), "--tasks", "zeta_pydoc_bpb,zeta_python_mc",
           "--device", "cpu", "--batch_size", "2", "--output_path", str(tmp / "out")]
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"lm_eval failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    results = sorted((tmp / "out").rglob("results_*.json"))
    assert results, f"no results file under {tmp / 'out'}:\n{proc.stdout[-2000:]}"
    return model, tokenizer, json.loads(results[-1].read_text())["results"]


def test_lm_eval_bits_per_byte_matches_forward(lm_eval_run):
    model, tokenizer, results = lm_eval_run
    got = results["zeta_pydoc_bpb"]
    total_ll = total_bytes = total_words = 0
    for doc in _docs("pydoc_heldout.jsonl"):
        ids = tokenizer(doc["text"], add_special_tokens=False)["input_ids"]
        assert len(ids) < model.config.max_position_embeddings  # one rolling window per document
        total_ll += _logprob(model, [EOS], ids)
        total_bytes += len(doc["text"].encode())
        total_words += len(re.split(r"\s+", doc["text"]))
    assert got["bits_per_byte,none"] == pytest.approx(-total_ll / total_bytes / math.log(2), rel=1e-4)
    assert got["byte_perplexity,none"] == pytest.approx(math.exp(-total_ll / total_bytes), rel=1e-4)
    assert got["word_perplexity,none"] == pytest.approx(math.exp(-total_ll / total_words), rel=1e-3)
    assert 7 < got["bits_per_byte,none"] < 10  # untrained: about log2(384) = 8.6 bits per byte


def test_lm_eval_multiple_choice_matches_forward(lm_eval_run):
    model, tokenizer, results = lm_eval_run
    got = results["zeta_python_mc"]
    correct = correct_norm = 0
    docs = _docs("python_mc.jsonl")
    for doc in docs:
        context = tokenizer(doc["question"], add_special_tokens=False)["input_ids"]
        lls = [_logprob(model, context, tokenizer(" " + c, add_special_tokens=False)["input_ids"])
               for c in doc["choices"]]
        normed = [ll / len(c) for ll, c in zip(lls, doc["choices"])]
        correct += max(range(len(lls)), key=lls.__getitem__) == doc["label"]
        correct_norm += max(range(len(normed)), key=normed.__getitem__) == doc["label"]
    assert got["acc,none"] == pytest.approx(correct / len(docs))
    assert got["acc_norm,none"] == pytest.approx(correct_norm / len(docs))
