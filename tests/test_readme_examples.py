"""The documented examples run as written: the Hugging Face snippet, the seed (Zeta) example, and the bridge between them."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from zeta_hf import Decoder, Transformer, ZetaConfig, ZetaForCausalLM

# ----------------------------------------------------------------------------------------------------------------------
# (a) The Hugging Face snippet, at the documented size (~38M parameters: builds and decodes in well under a second).
# ----------------------------------------------------------------------------------------------------------------------


def build_snippet_config() -> ZetaConfig:
    return ZetaConfig(
        num_tokens=256, max_seq_len=1024, dim=512, depth=12, heads=8, position_embedding="rotary", num_memory_tokens=4
    )


@pytest.fixture(scope="module")
def snippet_model() -> ZetaForCausalLM:
    torch.manual_seed(0)
    cfg = build_snippet_config()
    model = ZetaForCausalLM(cfg)
    return model.eval()


def test_snippet_config_fields():
    cfg = build_snippet_config()
    # stored under the Hugging Face names, readable through Zeta's
    assert (cfg.vocab_size, cfg.num_tokens) == (256, 256)
    assert (cfg.max_position_embeddings, cfg.max_seq_len) == (1024, 1024)
    assert (cfg.hidden_size, cfg.dim) == (512, 512)
    assert (cfg.num_hidden_layers, cfg.depth) == (12, 12)
    assert (cfg.num_attention_heads, cfg.heads) == (8, 8)
    assert cfg.num_key_value_heads == 8
    assert cfg.position_embedding == "rotary"
    assert cfg.absolute_position_embedding == "none"  # rotary switches the absolute table off, as in Zeta
    assert cfg.num_memory_tokens == 4
    assert cfg.rotary_emb_dim == 32  # Zeta: max(dim_head // 2, 32)
    assert cfg.supports_cache
    d = cfg.to_dict()
    assert d["vocab_size"] == 256 and d["hidden_size"] == 512 and d["num_hidden_layers"] == 12
    assert "num_tokens" not in d and "dim" not in d


def test_snippet_model_builds(snippet_model):
    assert isinstance(snippet_model, ZetaForCausalLM)
    assert len(snippet_model.model.layers) == 24  # attention + feedforward per depth
    assert snippet_model.model.memory_tokens.shape == (4, 512)
    n_params = sum(p.numel() for p in snippet_model.parameters())
    assert 30e6 < n_params < 50e6


def test_snippet_generate_sampled_top_p(snippet_model):
    ids = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(1234)
    # 16 new tokens (the README's 64 run in test_readme_hf_quickstart_runs_as_written): uncached decoding is quadratic
    cached = snippet_model.generate(ids, max_new_tokens=16, do_sample=True, top_p=0.9)
    assert cached.shape == (1, 16 + 16)
    assert torch.equal(cached[:, :16], ids)
    assert int(cached.min()) >= 0 and int(cached.max()) < 256
    torch.manual_seed(1234)
    uncached = snippet_model.generate(ids, max_new_tokens=16, do_sample=True, top_p=0.9, use_cache=False)
    assert torch.equal(cached, uncached)


def test_snippet_generate_greedy_cached_equals_uncached(snippet_model):
    ids = torch.randint(0, 256, (2, 5), generator=torch.Generator().manual_seed(2))
    cached = snippet_model.generate(ids, max_new_tokens=12, do_sample=False)
    uncached = snippet_model.generate(ids, max_new_tokens=12, do_sample=False, use_cache=False)
    assert cached.shape == (2, 17)
    assert torch.equal(cached, uncached)


def test_snippet_save_and_auto_load(snippet_model, tmp_path):
    snippet_model.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    for name in ("model.safetensors", "config.json", "configuration_zeta.py", "modeling_zeta.py", "positional_zeta.py"):
        assert name in files, f"{name} missing from save_pretrained output: {sorted(files)}"

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(loaded, ZetaForCausalLM)
    assert not loaded.training
    assert loaded.config.to_dict()["num_memory_tokens"] == 4
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = snippet_model(ids).logits
        got = loaded(ids).logits
    assert got.shape == (2, 16, 256)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------------------------
# (b) The seed example: `Transformer(num_tokens=256, max_seq_len=1024, attn_layers=Decoder(dim=512, depth=12, heads=8))`
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seed_transformer() -> Transformer:
    torch.manual_seed(0)
    transformer = Transformer(num_tokens=256, max_seq_len=1024, attn_layers=Decoder(dim=512, depth=12, heads=8))
    return transformer


@pytest.mark.slow
def test_seed_example_verbatim(seed_transformer):
    transformer = seed_transformer
    logits = torch.randint(0, 256, (1, 1024))
    with torch.no_grad():
        logits = transformer(logits)
    assert logits.shape == (1, 1024, 256)
    assert torch.isfinite(logits).all()


def test_seed_return_embeddings(seed_transformer):
    x = torch.randint(0, 256, (1, 32), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        embeddings = seed_transformer(x, return_embeddings=True)
        hf = seed_transformer.to_hf()
        final_hidden = hf.model(x).last_hidden_state
        all_hidden = hf.model(x, output_hidden_states=True).hidden_states
        logits = seed_transformer(x)
    assert embeddings.shape == (1, 32, 512)
    torch.testing.assert_close(embeddings, final_hidden, rtol=0, atol=0)
    torch.testing.assert_close(embeddings, all_hidden[-1], rtol=0, atol=0)
    torch.testing.assert_close(hf.lm_head(embeddings), logits, rtol=1e-6, atol=1e-6)


def test_seed_return_logits_and_embeddings(seed_transformer):
    x = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        logits, embeddings = seed_transformer(x, return_logits_and_embeddings=True)
        assert torch.equal(logits, seed_transformer(x))
        assert torch.equal(embeddings, seed_transformer(x, return_embeddings=True))


def test_seed_return_attn(seed_transformer):
    n = 32
    x = torch.randint(0, 256, (1, n), generator=torch.Generator().manual_seed(6))
    implementation = seed_transformer.to_hf().config._attn_implementation
    with torch.no_grad():
        logits, attn_maps = seed_transformer(x, return_attn=True)
        plain = seed_transformer(x)
    assert logits.shape == (1, n, 256)
    torch.testing.assert_close(logits, plain, rtol=1e-5, atol=1e-5)
    assert len(attn_maps) == 12
    causal_zero = torch.ones(n, n, dtype=torch.bool).triu(1)
    for attn in attn_maps:
        assert attn.shape == (1, 8, n, n)
        torch.testing.assert_close(attn.sum(-1), torch.ones(1, 8, n), rtol=1e-5, atol=1e-5)
        assert (attn[..., causal_zero] == 0).all(), "a decoder must not attend to future positions"
    # asking for maps must not leave the model switched to another attention implementation
    assert seed_transformer.to_hf().config._attn_implementation == implementation


# ----------------------------------------------------------------------------------------------------------------------
# (c) The bridge: the seed-style Transformer *is* a ZetaForCausalLM underneath.
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_transformer() -> Transformer:
    torch.manual_seed(0)
    return Transformer(num_tokens=64, max_seq_len=64, attn_layers=Decoder(dim=64, depth=2, heads=4, rotary_pos_emb=True))


def test_bridge_is_same_module(small_transformer):
    t = small_transformer
    hf = t.to_hf()
    assert isinstance(hf, ZetaForCausalLM)
    assert ZetaForCausalLM.from_transformer(t) is hf
    assert t.to_hf() is hf
    t_params = dict(t.named_parameters())
    hf_params = dict(hf.named_parameters())
    assert len(t_params) == len(hf_params) > 0
    for name, param in hf_params.items():
        assert t_params[f"model.{name}"] is param


def test_bridge_logits_equal(small_transformer):
    t = small_transformer
    x = torch.randint(0, 64, (2, 20), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        seed_logits = t(x)
        hf_logits = ZetaForCausalLM.from_transformer(t)(x).logits
    torch.testing.assert_close(seed_logits, hf_logits, rtol=0, atol=0)


def test_bridge_generate_cached_equals_uncached(small_transformer):
    t = small_transformer.eval()
    ids = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(8))
    greedy_cached = t.generate(ids, max_new_tokens=10, do_sample=False)
    greedy_uncached = t.generate(ids, max_new_tokens=10, do_sample=False, use_cache=False)
    assert greedy_cached.shape == (2, 16)
    assert torch.equal(greedy_cached, greedy_uncached)
    torch.manual_seed(99)
    sampled_cached = t.generate(ids, max_new_tokens=10, do_sample=True, top_p=0.9)
    torch.manual_seed(99)
    sampled_uncached = t.generate(ids, max_new_tokens=10, do_sample=True, top_p=0.9, use_cache=False)
    assert torch.equal(sampled_cached, sampled_uncached)


# ----------------------------------------------------------------------------------------------------------------------
# The README's code blocks, executed verbatim
# ----------------------------------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


def readme_block(heading: str, document: str = "README.md") -> str:
    """The first ```python block after the heading `heading` of `document` (the README or a page under docs/)."""
    text = (ROOT / document).read_text()
    start = text.index(heading)
    match = re.compile(r"```python\n(.*?)```", re.S).search(text, start)
    assert match, f"no python block after {heading!r}"
    return match.group(1)


@pytest.mark.slow
def test_readme_hf_quickstart_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the snippet saves to "m" in the working directory
    namespace: dict = {}
    torch.manual_seed(0)
    exec(compile(readme_block("## Quickstart: the Hugging Face way"), "README.md", "exec"), namespace)
    assert namespace["out"].shape == (1, 16 + 64)
    assert {"model.safetensors", "config.json", "modeling_zeta.py"} <= set(os.listdir(tmp_path / "m"))
    loaded = AutoModelForCausalLM.from_pretrained("m")
    ids = namespace["ids"]
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, namespace["model"].eval()(ids).logits, rtol=0, atol=0)


@pytest.mark.slow
def test_readme_seed_quickstart_runs_as_written():
    namespace: dict = {}
    torch.manual_seed(0)
    with torch.no_grad():
        exec(compile(readme_block("## Quickstart: Zeta's own API"), "README.md", "exec"), namespace)
    assert namespace["logits"].shape == (1, 1024, 256)
    assert namespace["emb"].shape == (1, 1024, 512)
    attn_maps = namespace["attn_maps"]
    assert len(attn_maps) == 12 and all(a.shape == (1, 8, 1024, 1024) for a in attn_maps)
    mems = namespace["mems"]
    assert len(mems) == 12 and all(m.shape == (1, 1024, 512) for m in mems)
    assert namespace["hf_model"] is namespace["transformer"].to_hf()


def test_readme_long_generation_runs_as_written(capsys):
    namespace: dict = {}
    torch.manual_seed(0)
    with torch.no_grad():
        exec(compile(readme_block("## Long generation with XL memories", "docs/generation.md"), "generation.md", "exec"), namespace)
    assert namespace["ids"].shape == (1, 650)
    printed = capsys.readouterr().out.splitlines()
    # 10 prompt tokens + 200 new ones in segments of 64: chunks of 55, 64, 64 and 17 tokens
    assert printed == ["torch.Size([1, 55])", "torch.Size([1, 64])", "torch.Size([1, 64])", "torch.Size([1, 17])"]
