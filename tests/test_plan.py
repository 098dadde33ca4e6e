"""`ZetaPlan`, the one place a forward call's layout is computed, and what the cache keeps of it.

Positions are checked against the layout written out by hand: learned memory K/V slots, Transformer-XL mems, memory
tokens, prepended embeddings and tokens, in that order along the key axis.
"""

from __future__ import annotations

import torch
from conftest import make_tiny_model

from zeta_hf import ZetaForCausalLM, ZetaModel
from zeta_hf.modeling_zeta import ZetaCacheLayout


def layered_model() -> tuple[ZetaModel, dict]:
    """A model with every prefix kind (2 memory K/V slots, XL mems of 3, 1 memory token) and inputs with 2 prepended
    embeddings before 4 tokens."""
    model = make_tiny_model(ZetaModel, num_memory_kv=2, num_memory_tokens=1)
    g = torch.Generator().manual_seed(0)
    cfg = model.config
    inputs = dict(
        input_ids=torch.randint(0, cfg.vocab_size, (1, 4), generator=g),
        mems=[torch.randn(1, 3, cfg.hidden_size, generator=g) for _ in range(cfg.num_attention_layers)],
        prepend_embeds=torch.randn(1, 2, cfg.input_dim, generator=g),
    )
    return model, inputs


def test_the_plan_places_every_prefix_on_the_key_axis():
    model, inputs = layered_model()
    with torch.no_grad():
        out = model(**inputs, use_cache=True)
        cache = out.cache
        prefill = model.plan(torch.zeros(1, 4), None, None, inputs["mems"], inputs["prepend_embeds"])
        # the prefill's plan: [2 mem K/V | 3 mems | 1 memory token | 2 prepended | 4 tokens]
        assert prefill.key_length == 12 and prefill.num_queries == 7 and prefill.mask_length == 6
        assert prefill.query_positions().tolist() == [[5, 6, 7, 8, 9, 10, 11]]
        assert prefill.token_positions().tolist() == [[0, 1, 2, 3]]
        # what the cache keeps: one typed attribute, nothing else of ours
        assert cache.zeta_layout == ZetaCacheLayout(prefix_length=6, prepend_length=2, lean_decode=None)
        assert [name for name in vars(cache) if name.startswith("zeta")] == ["zeta_layout"]
        assert cache.get_seq_length() == 12
        step = model.plan(torch.zeros(1, 1), None, cache)
    # a decode step reads it back: the new token is token 4, key slot 12, and a mask covers 2 + 4 + 1 rows
    assert step.token_positions().tolist() == [[4]]
    assert step.query_positions().tolist() == [[12]]
    assert (step.key_length, step.mask_length, step.num_queries) == (13, 7, 1)


def test_left_padding_moves_no_row():
    """A left-padded row counts its positions from its first kept token, so it equals the same row unpadded."""
    model = make_tiny_model(ZetaModel)
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    plan = model.plan(torch.zeros(2, 5), mask, None)
    assert plan.token_positions().tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]
    assert plan.key_keep()[:, 0, 0].tolist() == mask.bool().tolist()  # padded keys are masked, the rest kept
    everything = model.plan(torch.zeros(2, 5), torch.ones(2, 5, dtype=torch.long), None)
    assert everything.mask is None, "a mask that pads nothing was kept, so the call builds a bias it does not need"


def test_return_dict_false_gives_tuples_from_the_base_model_and_the_head():
    model = make_tiny_model(ZetaForCausalLM)
    ids = torch.randint(0, model.config.vocab_size, (2, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(ids, use_cache=False)
        as_tuple = model(ids, use_cache=False, return_dict=False)
        base = model.model(ids, use_cache=False)
        base_tuple = model.model(ids, use_cache=False, return_dict=False)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], full.logits)
    assert isinstance(base_tuple, tuple) and torch.equal(base_tuple[0], base.last_hidden_state)
    model.config.return_dict = False  # the config's default, as transformers reads it
    with torch.no_grad():
        assert isinstance(model(ids, use_cache=False), tuple)
        assert torch.equal(model(ids, use_cache=False, return_dict=True).logits, full.logits)


def test_past_key_values_is_the_old_name_of_cache():
    model = make_tiny_model(ZetaForCausalLM)
    ids = torch.randint(0, model.config.vocab_size, (1, 6), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        cache = model(ids[:, :5], use_cache=True).cache
        old = model(ids[:, 5:], past_key_values=cache, use_cache=True)
        full = model(ids, use_cache=False)
    assert old.cache is cache and cache.get_seq_length() == 6
    torch.testing.assert_close(old.logits[:, -1], full.logits[:, -1], rtol=1e-5, atol=1e-5)
