"""The KV caches zeta_hf decodes with: the growing dynamic layer, the static cache and a compiled decode step.

Every check compares against an independent computation: `torch.cat` for the growing layer, the default dynamic
cache and a manual uncached loop for the static and compiled paths.
"""

from __future__ import annotations

import pytest
import torch
from transformers.cache_utils import DynamicLayer

from zeta_hf import ZetaConfig, ZetaForCausalLM
from zeta_hf.layers_zeta import GrowingKVLayer


def chunks(total: int, seed: int = 0) -> list[int]:
    """Chunk lengths summing to `total`: a prefill, single tokens and a few multi-token steps."""
    g = torch.Generator().manual_seed(seed)
    sizes, left = [], total
    while left:
        size = min(left, int(torch.randint(1, 40, (), generator=g)) if len(sizes) % 3 == 0 else 1)
        sizes.append(size)
        left -= size
    return sizes


def test_growing_layer_equals_concatenation_across_reallocations():
    layer, reference = GrowingKVLayer(), DynamicLayer()
    g = torch.Generator().manual_seed(1)
    for size in chunks(700):  # passes the first capacity (prefill + 256) and the next ones
        k, v = torch.randn(2, 3, size, 8, generator=g), torch.randn(2, 3, size, 5, generator=g)
        got_k, got_v = layer.update(k, v)
        want_k, want_v = reference.update(k, v)
        assert torch.equal(got_k, want_k) and torch.equal(got_v, want_v)
    assert layer.get_seq_length() == 700
    assert layer.key_buffer.shape[-2] >= 700


def test_growing_layer_appends_in_place_within_capacity():
    layer = GrowingKVLayer()
    layer.update(torch.randn(1, 2, 10, 4), torch.randn(1, 2, 10, 4))
    buffer = layer.key_buffer
    for _ in range(100):
        keys, _ = layer.update(torch.randn(1, 2, 1, 4), torch.randn(1, 2, 1, 4))
    assert layer.key_buffer is buffer, "a single-token append reallocated the buffer"
    assert keys.data_ptr() == buffer.data_ptr() and keys.shape[-2] == 110


@pytest.mark.parametrize("edit", ["crop", "reorder", "repeat", "select", "reset"])
def test_growing_layer_after_generic_cache_edits(edit):
    """crop / beam reorder / batch repeat / batch select / reset replace or shorten the keys; later appends stay exact."""
    g = torch.Generator().manual_seed(2)
    layer, reference = GrowingKVLayer(), DynamicLayer()
    for size in (12, 1, 1):
        k, v = torch.randn(2, 2, size, 4, generator=g), torch.randn(2, 2, size, 4, generator=g)
        layer.update(k, v)
        reference.update(k, v)
    for cache_layer in (layer, reference):
        if edit == "crop":
            cache_layer.crop(-5)
        elif edit == "reorder":
            cache_layer.reorder_cache(torch.tensor([1, 1]))
        elif edit == "repeat":
            cache_layer.batch_repeat_interleave(2)
        elif edit == "select":
            cache_layer.batch_select_indices(torch.tensor([1]))
        else:
            cache_layer.reset()
    batch = {"repeat": 4, "select": 1}.get(edit, 2)
    for size in (1, 3, 300):
        k, v = torch.randn(batch, 2, size, 4, generator=g), torch.randn(batch, 2, size, 4, generator=g)
        got, want = layer.update(k, v), reference.update(k, v)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def tiny(**overrides) -> ZetaForCausalLM:
    torch.manual_seed(0)
    config = ZetaConfig(**{**dict(vocab_size=64, max_position_embeddings=64, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, head_dim=16, position_embedding="rotary", norm="rmsnorm"),
                           **overrides})
    return ZetaForCausalLM(config).eval()


def test_default_generate_uses_growing_layers_and_long_decode_stays_exact():
    model = tiny(max_position_embeddings=512)
    ids = torch.randint(0, 64, (2, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=300, min_new_tokens=300, do_sample=False, return_dict_in_generate=True)
        assert all(type(layer) is GrowingKVLayer for layer in out.cache.layers[:2])
        full = model(out.sequences[:, :-1], use_cache=False).logits  # one uncached forward over everything
    assert torch.equal(out.sequences[:, 20:], full[:, 19:].argmax(-1))


def test_static_cache_refused_with_a_clear_error_where_it_cannot_serve():
    model = tiny(position_embedding="alibi")
    with pytest.raises(ValueError, match="static cache"):
        model.generate(torch.ones(1, 4, dtype=torch.long), max_new_tokens=2, cache_implementation="static")
    model = tiny()
    padded = torch.tensor([[0, 1, 1, 1]])
    with pytest.raises(ValueError, match="Padded batches"):
        model.generate(torch.ones(1, 4, dtype=torch.long), attention_mask=padded, max_new_tokens=2,
                       cache_implementation="static")


def test_compiled_static_decode_equals_eager_dynamic():
    """The documented fast path: a static cache and `torch.compile` on the forward give the eager tokens."""
    model = tiny()
    ids = torch.randint(0, 64, (1, 9), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = model.generate(ids, max_new_tokens=12, do_sample=False)
        eager_forward = model.forward
        model.forward = torch.compile(model.forward, fullgraph=True, dynamic=False)
        try:
            got = model.generate(ids, max_new_tokens=12, do_sample=False, cache_implementation="static")
        finally:
            model.forward = eager_forward
    assert torch.equal(got, expected)


@pytest.mark.parametrize("rotary_emb_dim", [8, 16])  # partial and full-head rotation (head_dim 16)
@pytest.mark.parametrize("xpos", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_single_position_rotary_layout_is_bit_identical(rotary_emb_dim, xpos, dtype):
    """A decode step's full-width rotary tables (one gather) give exactly the numbers of the sliced tables."""
    from zeta_hf.positional_zeta import RotaryEmbedding, apply_rotary

    config = ZetaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, head_dim=16,
                        position_embedding="rotary", rotary_emb_dim=rotary_emb_dim, rotary_xpos=xpos)
    rotary = RotaryEmbedding(config)
    t = torch.randn(2, 2, 1, 16, generator=torch.Generator().manual_seed(5)).to(dtype)
    for position in (0, 7, 1000):
        single = rotary(torch.tensor([[position]]), 0)
        assert single.rotate_index is not None and single.cos.shape[-1] == 16
        sliced = rotary(torch.tensor([[position, position]]), 0)  # two positions: the sliced layout
        assert sliced.rotate_index is None and sliced.cos.shape[-1] == rotary_emb_dim
        for inverse in (False, True):  # keys use the inverse xpos scale
            def scale_of(tables):
                return 1.0 if tables.scale is None else tables.scale ** (-1.0 if inverse else 1.0)

            got = apply_rotary(t, single.cos, single.sin, scale_of(single), single.rotate_index)
            want = apply_rotary(t, sliced.cos[:, :, :1], sliced.sin[:, :, :1],
                                scale_of(sliced) if sliced.scale is None else scale_of(sliced)[:, :, :1])
            assert got.dtype == dtype
            assert torch.equal(got, want)
            if position:
                assert not torch.equal(got[..., :rotary_emb_dim], t[..., :rotary_emb_dim])  # it did rotate
            assert torch.equal(got[..., rotary_emb_dim:], t[..., rotary_emb_dim:])  # and left the rest alone
