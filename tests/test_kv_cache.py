"""The KV caches zeta_hf decodes with: the growing dynamic layer, the static cache and a compiled decode step.

Every check compares against an independent computation: `torch.cat` for the growing layer, the default dynamic
cache and a manual uncached loop for the static and compiled paths.
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_model
from torch import nn
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
    prompt_k = torch.randn(1, 2, 10, 4)
    keys, _ = layer.update(prompt_k, torch.randn(1, 2, 10, 4))
    assert layer.key_buffer is None and keys is prompt_k, "the first fill allocated headroom"
    layer.update(torch.randn(1, 2, 1, 4), torch.randn(1, 2, 1, 4))
    buffer = layer.key_buffer
    assert buffer.shape[-2] >= 11 + 256
    for _ in range(99):
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
    return make_tiny_model(**{**dict(hidden_size=32, num_attention_heads=2, head_dim=16, position_embedding="rotary",
                                     norm="rmsnorm"), **overrides})


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


# ---------------------------------------------------------------------------------------------------------------------
# The lean decode step (`ZetaLayer.decode_step`, chosen by `ZetaModel._takes_decode_step`): the generic forward's
# numbers, bit for bit, or not taken at all
# ---------------------------------------------------------------------------------------------------------------------

LEAN_CONFIGS = {
    "rotary": dict(),
    "rotary-partial-xpos": dict(rotary_emb_dim=8, rotary_xpos=True),
    "none-layernorm-gqa": dict(position_embedding="none", norm="layernorm", num_key_value_heads=1),
    "learned-abs-geglu": dict(position_embedding="none", absolute_position_embedding="learned", ff_activation="geglu"),
    "sinusoidal-swiglu-scalenorm": dict(position_embedding="scaled_sinusoidal", ff_activation="swiglu",
                                        norm="scalenorm"),
    "memory-tokens-and-kv": dict(num_memory_tokens=2, num_memory_kv=2),
    "tied-embedding": dict(tie_word_embeddings=True),
    "projected-embedding": dict(embedding_dim=24),
    "eager": dict(attn_implementation="eager"),
    "pattern-relu2": dict(block_pattern=["attn", "attn", "ff", "attn", "ff"], ff_activation="relu_squared"),
    "alibi": dict(position_embedding="alibi"),  # a bias over the key axis reaches the step as it reaches forward
    "t5-window": dict(position_embedding="t5", max_attend_past=4),
}


def decode_both_ways(model: ZetaForCausalLM, ids: torch.Tensor, steps: int) -> tuple[list, list, bool]:
    """Logits of `steps` greedy decode steps from two caches filled by the same prefill: one through the lean step
    (if the model serves it), one forced through the generic forward. Returns both lists and whether lean served."""
    with torch.no_grad():
        lean_cache = model(ids, use_cache=True).cache
        generic_cache = model(ids, use_cache=True).cache
        assert lean_cache.zeta_layout.lean_decode is None  # decided at the first decode step, not at prefill
        generic_cache.zeta_layout.lean_decode = False
        token = model(ids).logits[:, -1:].argmax(-1)
        lean, generic = [], []
        for _ in range(steps):
            lean.append(model(token, cache=lean_cache, use_cache=True).logits)
            generic.append(model(token, cache=generic_cache, use_cache=True).logits)
            token = generic[-1].argmax(-1)
    return lean, generic, lean_cache.zeta_layout.lean_decode


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(LEAN_CONFIGS))
def test_lean_decode_step_is_bit_identical_to_the_generic_forward(name, dtype, monkeypatch):
    from zeta_hf.modeling_zeta import ZetaModel

    calls = []
    original = ZetaModel._takes_decode_step
    monkeypatch.setattr(ZetaModel, "_takes_decode_step", lambda self, *a: original(self, *a) and not calls.append(1))
    model = tiny(**LEAN_CONFIGS[name]).to(dtype)
    ids = torch.randint(0, 64, (3, 7), generator=torch.Generator().manual_seed(6))
    lean, generic, served = decode_both_ways(model, ids, steps=5)
    assert served and len(calls) == 5, "the lean step did not serve a configuration it should"
    for step, (got, want) in enumerate(zip(lean, generic)):
        assert got.dtype == dtype
        assert torch.equal(got, want), f"step {step}: max difference {(got - want).abs().max()}"


# Every field `ZetaLayer.DECODE_STEP_FIELDS` names, at a value of its own: the lean step still serves the layers, with
# the generic forward's numbers. (Adding a field to that tuple needs a case here.)
DECODE_STEP_FIELD_CASES = {
    "hidden_size": dict(hidden_size=48),
    "num_attention_heads": dict(num_attention_heads=4, head_dim=8),
    "num_key_value_heads": dict(num_key_value_heads=1),
    "head_dim": dict(head_dim=8),
    "value_head_dim": dict(value_head_dim=24),
    "norm": dict(norm="scalenorm"),
    "layer_norm_eps": dict(norm="layernorm", layer_norm_eps=1e-3),
    "norm_bias": dict(norm="layernorm", norm_bias=False),
    "norm_unit_offset": dict(norm_unit_offset=True),
    "scalenorm_dim_scale": dict(norm="scalenorm", scalenorm_dim_scale=True),
    "ff_mult": dict(ff_mult=2),
    "ff_activation": dict(ff_activation="swiglu"),
    "ff_bias": dict(ff_bias=False),
    "ff_post_act_ln": dict(ff_post_act_ln=True),
    "macaron": dict(macaron=True),
    "residual_type": dict(residual_type="gru"),
    "scale_residual": dict(scale_residual=True),
    "scale_residual_constant": dict(scale_residual_constant=0.7),
    "qk_norm": dict(qk_norm=True),
    "qk_norm_groups": dict(qk_norm=True, qk_norm_groups=2),
    "qk_norm_scale": dict(qk_norm=True, qk_norm_scale=8.0),
    "qk_norm_dim_scale": dict(qk_norm=True, qk_norm_dim_scale=True),
    "head_scale": dict(head_scale=True),
    "gate_values": dict(gate_values=True),
    "gate_values_bias": dict(gate_values=True, gate_values_bias=not ZetaConfig().gate_values_bias),
    "attn_on_attn": dict(attn_on_attn=True),
    "rotary_rotate_values": dict(rotary_rotate_values=True),
    "num_memory_kv": dict(num_memory_kv=3),
    "attention_dropout": dict(attention_dropout=0.1),
    "ff_dropout": dict(ff_dropout=0.1),
    "zero_init_attn_output": dict(zero_init_attn_output=True),
    "zero_init_ff_output": dict(zero_init_ff_output=True),
}


def test_every_decode_step_field_has_a_case():
    from zeta_hf.layers_zeta import ZetaLayer

    assert set(DECODE_STEP_FIELD_CASES) == set(ZetaLayer.DECODE_STEP_FIELDS)


@pytest.mark.parametrize("field", list(DECODE_STEP_FIELD_CASES))
def test_each_field_the_lean_step_names_is_served_bit_for_bit(field):
    model = tiny(**DECODE_STEP_FIELD_CASES[field])
    ids = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(9))
    lean, generic, served = decode_both_ways(model, ids, steps=3)
    assert served is True, f"{field}: the lean step did not serve a field it names"
    for step, (got, want) in enumerate(zip(lean, generic)):
        assert torch.equal(got, want), f"{field}, step {step}: max difference {(got - want).abs().max()}"


class _Marker(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@pytest.mark.parametrize("change", ["new-setting", "new-parameter", "new-submodule", "swapped-activation",
                                    "projection-bias", "residual-scale", "norm-dropped"])
def test_an_option_the_lean_step_does_not_name_turns_it_off(change):
    """Whether a layer serves the lean step is read off its modules, not from a list of options: any change to a
    module that the step's reference layer does not have (a setting, a parameter, a sub-module, a replaced piece)
    sends the layer through `forward`. Changes that only act in training do not."""
    model = tiny()
    base = model.model
    assert base._serves_decode_step()
    layer = base.layers[0]
    attention, mlp = layer.self_attn, base.layers[1].mlp
    if change == "new-setting":
        attention.some_new_option = True
    elif change == "new-parameter":
        mlp.register_parameter("gain", nn.Parameter(torch.ones(1)))
    elif change == "new-submodule":
        attention.extra = _Marker()
    elif change == "swapped-activation":
        mlp.act = nn.Tanh()
    elif change == "projection-bias":
        attention.o_proj = nn.Linear(attention.o_proj.in_features, attention.o_proj.out_features, bias=True)
    elif change == "residual-scale":
        layer.residual.constant = 0.5
    elif change == "norm-dropped":
        layer.pre_norm = nn.Identity()
    assert not base._serves_decode_step(), f"{change}: the lean step would skip what the change does"
    # a round through training mode and gradient checkpointing (which only acts in training) changes nothing
    fresh = tiny().train()
    fresh.activation_checkpointing_enable()
    assert fresh.eval().model._serves_decode_step()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ["rotary", "alibi", "t5-window"])
def test_lean_decode_step_serves_left_padded_batches_bit_for_bit(name, dtype, monkeypatch):
    """A left-padded batch (a pipeline's or lm-eval's batch of prompts) decodes through the lean step, its padding
    mask and position bias passed as `forward` gets them: the generic forward's numbers, bit for bit."""
    from zeta_hf.modeling_zeta import ZetaModel

    calls = []
    original = ZetaModel._takes_decode_step
    monkeypatch.setattr(ZetaModel, "_takes_decode_step", lambda self, *a: original(self, *a) and not calls.append(1))
    model = tiny(**LEAN_CONFIGS[name]).to(dtype)
    ids = torch.randint(1, 64, (3, 7), generator=torch.Generator().manual_seed(10))
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1, 1], [1] * 7])
    with torch.no_grad():
        lean_cache = model(ids, attention_mask=mask, use_cache=True).cache
        generic_cache = model(ids, attention_mask=mask, use_cache=True).cache
        generic_cache.zeta_layout.lean_decode = False
        token = model(ids, attention_mask=mask).logits[:, -1:].argmax(-1)
        for step in range(5):
            mask = torch.cat((mask, torch.ones(3, 1, dtype=mask.dtype)), dim=1)
            got = model(token, attention_mask=mask, cache=lean_cache, use_cache=True).logits
            want = model(token, attention_mask=mask, cache=generic_cache, use_cache=True).logits
            assert torch.equal(got, want), f"step {step}: max difference {(got - want).abs().max()}"
            token = want.argmax(-1)
    assert len(calls) == 5, "the padded batch did not go through the lean step"


def test_generate_through_the_lean_step_equals_uncached_generation():
    model = tiny(num_memory_tokens=1)
    ids = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        cached = model.generate(ids, max_new_tokens=20, min_new_tokens=20, do_sample=False)
        uncached = model.generate(ids, max_new_tokens=20, min_new_tokens=20, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("case", ["sandwich-norm", "talking-heads", "shift-tokens", "forward-hook", "lora",
                                  "output-attentions"])
def test_lean_decode_step_steps_aside_where_it_would_differ(case, monkeypatch):
    """Options the lean step leaves out, hooks it would skip, PEFT layers it would bypass and extras asked for at a
    step all take the generic forward, whose results are the reference."""
    from zeta_hf.modeling_zeta import ZetaModel

    calls = []
    original = ZetaModel._takes_decode_step
    monkeypatch.setattr(ZetaModel, "_takes_decode_step", lambda self, *a: original(self, *a) and not calls.append(1))
    overrides = {"sandwich-norm": dict(norm_placement="sandwich"), "talking-heads": dict(talking_heads=True),
                 "shift-tokens": dict(shift_tokens=1)}.get(case, {})
    model = tiny(**overrides)
    ids = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(8))
    if case == "forward-hook":
        model.model.layers[1].mlp.down_proj.register_forward_hook(lambda module, args, out: out * 2)
    if case == "lora":
        peft = pytest.importorskip("peft")
        model = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    with torch.no_grad():
        cache = model(ids, use_cache=True).cache
        assert cache.zeta_layout.lean_decode is None  # decided at the first decode step
    step_kwargs = dict(output_attentions=True) if case == "output-attentions" else {}
    with torch.no_grad():
        token = torch.ones(2, 1, dtype=torch.long)
        fresh = model(ids, use_cache=True).cache
        fresh.zeta_layout.lean_decode = False
        got = model(token, cache=cache, use_cache=True, **step_kwargs).logits
        assert not calls, f"{case}: the step went through the lean decode step"
    if case == "output-attentions":
        assert cache.zeta_layout.lean_decode is True  # served in general, but not for this call
    else:
        assert cache.zeta_layout.lean_decode is False
    with torch.no_grad():
        want = model(token, cache=fresh, use_cache=True, **step_kwargs).logits
        # the same step without the reason to step aside does take the lean step (so the check above can fail)
        plain = tiny()
        with torch.no_grad():
            warm = plain(ids, use_cache=True).cache
            plain(token, cache=warm, use_cache=True)
        assert calls == [1], "the lean decode step is never taken, so stepping aside proves nothing"
    assert torch.equal(got, want)


def test_gelu_runs_on_the_native_kernel_and_restores_the_backend_flag():
    """ZetaGELU is F.gelu's exact function, and leaves `torch.backends.mkldnn.enabled` as it found it (also when the
    input is bad and GELU raises)."""
    from zeta_hf.layers_zeta import ZetaGELU

    gelu, x = ZetaGELU(), torch.randn(3, 5, 64, generator=torch.Generator().manual_seed(9))
    with torch.backends.mkldnn.flags(enabled=False):
        reference = torch.nn.functional.gelu(x)  # PyTorch's native kernel
    assert torch.equal(gelu(x), reference)
    assert (gelu(x) - torch.nn.functional.gelu(x)).abs().max() < 1e-5  # whichever kernel F.gelu picks
    for state in (True, False):
        with torch.backends.mkldnn.flags(enabled=state):
            gelu(x)
            with pytest.raises(NotImplementedError):  # GELU of integers
                gelu(torch.ones(2, dtype=torch.long))
            assert torch.backends.mkldnn.enabled is state
