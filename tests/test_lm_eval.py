"""lm-evaluation-harness scores a saved zeta_hf model on the project's local YAML tasks, offline, with the real CLI.

`lm_eval --model hf --include_path tests/lm_eval_tasks` runs the held-out bits-per-byte task, the tiny
multiple-choice task and a tiny generation task on a folder that lm-eval loads with `trust_remote_code=True` (it does
not import zeta_hf) and otherwise default `model_args`; the scores and answers it reports must equal the ones computed
here from plain forward passes and `model.generate`. The folder is what `zeta-hf train` writes: its tokenizer and its
`generation_config.json` sampling defaults.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zeta_hf import ZetaConfig, ZetaForCausalLM
from zeta_hf.training import _set_generation_defaults
from zeta_hf.data import make_tokenizer

pytestmark = pytest.mark.slow

TASKS = Path(__file__).parent / "lm_eval_tasks"
# next to this interpreter first: the test extra installs it into the venv, which need not be on PATH
LM_EVAL = shutil.which("lm_eval", path=os.path.dirname(sys.executable)) or shutil.which("lm_eval")
EOS = 1  # no BOS in ByT5's layout: lm-eval starts each rolling window from the EOS token
MAX_GEN_TOKS = 6  # zeta_python_gen.yaml


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
        if os.environ.get("CI"):  # under CI the test extra is installed: a missing lm_eval is a failure, not a skip
            pytest.fail("lm_eval (test extra) is missing")
        pytest.skip("needs lm-eval (test extra)")
    tmp = tmp_path_factory.mktemp("lm_eval")
    torch.manual_seed(0)
    model = ZetaForCausalLM(ZetaConfig(vocab_size=384, max_position_embeddings=128, hidden_size=32,
                                       num_hidden_layers=2, num_attention_heads=4, head_dim=8,
                                       position_embedding="rotary")).eval()
    tokenizer = make_tokenizer()
    _set_generation_defaults(model, tokenizer)  # sampling defaults, as `zeta-hf train` saves them
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
    # Default model_args (no add_bos_token=False): the tokenizer adds nothing to the texts lm-eval encodes.
    cmd = [LM_EVAL, "--model", "hf",
           "--model_args", f"pretrained={tmp / 'model'},trust_remote_code=True,dtype=float32",
           "--include_path", str(tasks), "--tasks", "zeta_pydoc_bpb,zeta_python_mc,zeta_python_gen",
           "--device", "cpu", "--batch_size", "2", "--output_path", str(tmp / "out"), "--log_samples"]
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"lm_eval failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    results = sorted((tmp / "out").rglob("results_*.json"))
    assert results, f"no results file under {tmp / 'out'}:\n{proc.stdout[-2000:]}"
    samples = sorted((tmp / "out").rglob("samples_zeta_python_gen_*.jsonl"))
    assert samples, f"no generation samples under {tmp / 'out'}"
    answers = {}
    for line in samples[-1].read_text().splitlines():
        sample = json.loads(line)
        answers[sample["doc"]["question"]] = sample["resps"][0][0]
    mc_samples = sorted((tmp / "out").rglob("samples_zeta_python_mc_*.jsonl"))
    assert mc_samples, f"no multiple-choice samples under {tmp / 'out'}"
    choice_lls = {}  # question -> lm-eval's log-likelihood of each choice
    for line in mc_samples[-1].read_text().splitlines():
        sample = json.loads(line)
        choice_lls[sample["doc"]["question"]] = [float(resp[0][0]) for resp in sample["resps"]]
    return model, tokenizer, json.loads(results[-1].read_text())["results"], answers, choice_lls


def test_lm_eval_bits_per_byte_matches_forward(lm_eval_run):
    model, tokenizer, results, _, _ = lm_eval_run
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
    model, tokenizer, results, _, choice_lls = lm_eval_run
    got = results["zeta_python_mc"]
    correct = correct_norm = 0
    docs = _docs("python_mc.jsonl")
    assert set(choice_lls) == {doc["question"] for doc in docs}
    for doc in docs:
        context = tokenizer(doc["question"], add_special_tokens=False)["input_ids"]
        lls = [_logprob(model, context, tokenizer(" " + c, add_special_tokens=False)["input_ids"])
               for c in doc["choices"]]
        # every document's every choice: lm-eval's log-likelihood is the model's own, not just the same argmax
        assert choice_lls[doc["question"]] == pytest.approx(lls, rel=1e-5, abs=1e-4), doc["question"]
        normed = [ll / len(c) for ll, c in zip(lls, doc["choices"])]
        correct += max(range(len(lls)), key=lls.__getitem__) == doc["label"]
        correct_norm += max(range(len(normed)), key=normed.__getitem__) == doc["label"]
    assert got["acc,none"] == pytest.approx(correct / len(docs))
    assert got["acc_norm,none"] == pytest.approx(correct_norm / len(docs))


def test_lm_eval_generate_until_honours_max_gen_toks(lm_eval_run):
    """Each answer equals greedy `generate` of at most `max_gen_toks` new tokens, cut at the stop sequence: the saved
    generation_config.json sets no length of its own that would override lm-eval's."""
    model, tokenizer, results, answers, _ = lm_eval_run
    docs = _docs("python_mc.jsonl")
    assert set(answers) == {doc["question"] for doc in docs}
    full_length = 0
    for doc in docs:
        ids = torch.tensor([[b + 3 for b in doc["question"].encode()]])  # the question's bytes, nothing appended
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_GEN_TOKS,
                                 do_sample=False)
        new = out[0, ids.shape[1]:].tolist()
        assert len(new) <= MAX_GEN_TOKS
        full_length += len(new) == MAX_GEN_TOKS and EOS not in new
        expected = tokenizer.decode(new, skip_special_tokens=True).split("\n\n")[0]
        assert answers[doc["question"]] == expected, doc["question"]
    assert full_length > 0  # some answers end at the limit, not at </s>: the limit is what is compared
    assert 0 <= results["zeta_python_gen"]["exact_match,none"] <= 1
