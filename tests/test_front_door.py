"""The seed-compatible front door: Zeta's Decoder/Encoder/Transformer kwargs translate into ZetaConfig fields."""

from __future__ import annotations


import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from zeta_hf import Decoder, Encoder, Transformer, ZetaForCausalLM

# Modules returned by `make_embedding`, so tests can check the model uses exactly what the factory built.
CREATED_EMBEDDINGS: list[nn.Module] = []


def make_embedding(num_tokens: int, dim: int) -> nn.Module:
    """An embedding provider factory `(num_tokens, dim) -> nn.Module`."""
    embedding = nn.Embedding(num_tokens, dim)
    CREATED_EMBEDDINGS.append(embedding)
    return embedding


def build(layers_cls=Decoder, *, num_tokens: int = 32, max_seq_len: int = 16, **layer_kwargs):
    transformer_kwargs = {k: layer_kwargs.pop(k) for k in list(layer_kwargs) if k in TRANSFORMER_KEYS}
    layer_kwargs.setdefault("dim", 32)
    layer_kwargs.setdefault("depth", 1)
    layer_kwargs.setdefault("heads", 4)
    return Transformer(num_tokens=num_tokens, max_seq_len=max_seq_len, attn_layers=layers_cls(**layer_kwargs),
                       **transformer_kwargs)


TRANSFORMER_KEYS = {
    "embedding_provider", "emb_dim", "max_mem_len", "shift_mem_down", "emb_dropout", "post_emb_norm",
    "num_memory_tokens", "tie_embedding", "logits_dim", "use_abs_pos_emb", "scaled_sinu_pos_emb", "l2norm_embed",
    "emb_frac_gradient",
}

# (id, kwargs for Decoder / Transformer, expected config fields)
TRANSLATIONS = [
    ("defaults", {}, dict(norm="layernorm", norm_placement="pre", ff_activation="gelu", position_embedding="absolute",
                          absolute_position_embedding="learned", is_causal=True, num_key_value_heads=4, head_dim=64,
                          rotary_rotate_values=False)),
    ("sizes", dict(dim=48, depth=3, heads=6), dict(hidden_size=48, num_hidden_layers=3, num_attention_heads=6)),
    ("use_rmsnorm", dict(use_rmsnorm=True), dict(norm="rmsnorm")),
    ("use_scalenorm", dict(use_scalenorm=True), dict(norm="scalenorm")),
    ("use_simple_rmsnorm", dict(use_simple_rmsnorm=True), dict(norm="simple_rmsnorm")),
    ("post-norm", dict(pre_norm=False), dict(norm_placement="post")),
    ("sandwich", dict(sandwich_norm=True), dict(norm_placement="sandwich")),
    ("ff_glu", dict(ff_glu=True), dict(ff_activation="geglu")),
    ("ff_swish", dict(ff_swish=True), dict(ff_activation="silu")),
    ("swiglu", dict(ff_glu=True, ff_swish=True), dict(ff_activation="swiglu")),
    ("relu_squared", dict(ff_relu_squared=True), dict(ff_activation="relu_squared")),
    ("relu_squared_glu", dict(ff_relu_squared=True, ff_glu=True), dict(ff_activation="relu_squared_glu")),
    ("ff_no_bias", dict(ff_no_bias=True), dict(ff_bias=False)),
    ("ff-options", dict(ff_mult=2, ff_post_act_ln=True, ff_dropout=0.1), dict(ff_mult=2, ff_post_act_ln=True, ff_dropout=0.1)),
    ("attn_one_kv_head", dict(attn_one_kv_head=True), dict(num_key_value_heads=1)),
    ("attn_kv_heads", dict(attn_kv_heads=2), dict(num_key_value_heads=2)),
    ("attn_dim_head", dict(attn_dim_head=16), dict(head_dim=16)),
    ("attn_qk_norm", dict(attn_qk_norm=True, attn_qk_norm_groups=2, attn_qk_norm_scale=8, attn_qk_norm_dim_scale=True),
     dict(qk_norm=True, qk_norm_groups=2, qk_norm_scale=8, qk_norm_dim_scale=True)),
    ("attn_num_mem_kv", dict(attn_num_mem_kv=3, attn_dropout=0.1), dict(num_memory_kv=3, attention_dropout=0.1)),
    ("attn-flags-without-model-effect", dict(attn_flash=True, attn_onnxable=True), dict(norm="layernorm")),
    ("alibi-keeps-learned-abs", dict(alibi_pos_bias=True), dict(position_embedding="alibi",
                                                                absolute_position_embedding="learned")),
    ("alibi-no-abs", dict(alibi_pos_bias=True, use_abs_pos_emb=False),
     dict(position_embedding="alibi", absolute_position_embedding="none")),
    ("alibi-sinusoidal-abs", dict(alibi_pos_bias=True, scaled_sinu_pos_emb=True),
     dict(position_embedding="alibi", absolute_position_embedding="scaled_sinusoidal")),
    ("alibi_num_heads", dict(alibi_pos_bias=True, alibi_num_heads=2), dict(alibi_num_heads=2)),
    ("rotary", dict(rotary_pos_emb=True), dict(position_embedding="rotary", absolute_position_embedding="none",
                                               rotary_rotate_values=True, rotary_emb_dim=32)),
    ("rotary-options", dict(rotary_pos_emb=True, rotary_emb_dim=16, rotary_interpolation_factor=2.0,  # Zeta raises 16 to 32
                            rotary_base_rescale_factor=2.0),
     dict(rotary_emb_dim=32, rotary_interpolation_factor=2.0, rotary_base_rescale_factor=2.0)),
    ("rotary_xpos", dict(rotary_xpos=True, rotary_xpos_scale_base=256), dict(position_embedding="rotary", rotary_xpos=True,
                                                                            rotary_rotate_values=True,
                                                                            rotary_xpos_scale_base=256)),
    ("t5", dict(rel_pos_bias=True, rel_pos_num_buckets=16, rel_pos_max_distance=64),
     dict(position_embedding="t5", absolute_position_embedding="none", rel_pos_num_buckets=16, rel_pos_max_distance=64)),
    ("scaled_sinu", dict(scaled_sinu_pos_emb=True), dict(position_embedding="scaled_sinusoidal",
                                                         absolute_position_embedding="scaled_sinusoidal")),
    ("no-positions", dict(use_abs_pos_emb=False), dict(position_embedding="none", absolute_position_embedding="none")),
    ("macaron-residual", dict(macaron=True, residual_attn=True), dict(macaron=True, residual_attn=True)),
    ("transformer-options", dict(emb_dim=16, emb_dropout=0.1, post_emb_norm=True, num_memory_tokens=2, logits_dim=7,
                                 l2norm_embed=True, emb_frac_gradient=0.5),
     dict(embedding_dim=16, embedding_dropout=0.1, post_emb_norm=True, num_memory_tokens=2, logits_dim=7,
          l2norm_embed=True, emb_frac_gradient=0.5)),
    ("num_memory_tokens-None", dict(num_memory_tokens=None), dict(num_memory_tokens=0)),
    ("tie_embedding", dict(tie_embedding=True), dict(tie_word_embeddings=True)),
    ("max_mem_len-float", dict(max_mem_len=8.0, shift_mem_down=1, depth=2), dict(max_mem_len=8, shift_mem_down=1)),
]


@pytest.mark.parametrize("kwargs,expected", [r[1:] for r in TRANSLATIONS], ids=[r[0] for r in TRANSLATIONS])
def test_decoder_kwargs_translate_to_config_fields(kwargs, expected):
    t = build(**dict(kwargs))
    cfg = t.config
    assert t.to_hf().config is cfg
    for field, value in expected.items():
        assert getattr(cfg, field) == value, f"{field}: expected {value!r}, got {getattr(cfg, field)!r}"
    assert isinstance(cfg.max_mem_len, int)
    # every translated config runs
    with torch.no_grad():
        out = t(torch.randint(0, 32, (1, 5)))
    assert out.shape == (1, 5, cfg.output_dim)


def test_seed_sizes_translate():
    t = build(num_tokens=300, max_seq_len=77, dim=40, depth=2, heads=5)
    cfg = t.config
    assert (cfg.vocab_size, cfg.max_position_embeddings, cfg.hidden_size, cfg.num_hidden_layers,
            cfg.num_attention_heads) == (300, 77, 40, 2, 5)
    assert (t.num_tokens, t.max_seq_len) == (300, 77)


def test_encoder_is_bidirectional():
    t = build(Encoder)
    assert t.config.is_causal is False
    with torch.no_grad():
        _, maps = t(torch.randint(0, 32, (1, 6)), return_attn=True)
    assert (maps[0][..., 0, 5] > 0).all(), "an encoder's first position attends to the last one"


def test_decoder_is_causal():
    assert build(Decoder).config.is_causal is True


def test_decoder_needs_dim_and_depth():
    with pytest.raises(ValueError, match="depth"):
        Decoder(dim=32)
    with pytest.raises(ValueError, match="dim"):
        Decoder(depth=2)


def test_transformer_needs_a_zeta_hf_attention_layers():
    with pytest.raises(TypeError, match="attn_layers"):
        Transformer(num_tokens=32, max_seq_len=16, attn_layers=nn.Linear(2, 2))


def test_decoder_cannot_be_called_directly():
    with pytest.raises(TypeError, match="Transformer"):
        Decoder(dim=32, depth=1)(torch.zeros(1, 2, 32))


# ----------------------------------------------------------------------------------------------------------------------
# Rejected kwargs
# ----------------------------------------------------------------------------------------------------------------------


def test_unknown_decoder_kwarg_suggests_the_zeta_name():
    with pytest.raises(ValueError) as info:
        Decoder(dim=64, depth=2, qk_norm=True)
    message = str(info.value)
    assert "`qk_norm`" in message
    assert "attn_qk_norm" in message
    assert "Did you mean `attn_qk_norm`?" in message


def test_unknown_encoder_kwarg():
    with pytest.raises(ValueError, match="Encoder.*`rotary_embedding`"):
        Encoder(dim=64, depth=2, rotary_embedding=True)


def test_unknown_transformer_kwarg_suggests():
    with pytest.raises(ValueError) as info:
        Transformer(num_tokens=32, max_seq_len=16, attn_layers=Decoder(dim=32, depth=1), emb_dimm=16)
    assert "`emb_dimm`" in str(info.value) and "emb_dim" in str(info.value)


def test_unknown_forward_kwarg_names_it_and_lists_flags():
    t = build()
    with pytest.raises(ValueError) as info:
        t(torch.randint(0, 32, (1, 4)), return_embedings=True)
    message = str(info.value)
    assert "return_embedings" in message
    # a helpful message names what *can* be passed
    assert "return_embeddings" in message, f"message lists no valid forward options: {message}"


NOT_SUPPORTED = ["cross_attn_tokens_dropout", "attn_tensor_product", "attn_cascading_heads", "ff_glu_mult_bias"]


@pytest.mark.parametrize("option", NOT_SUPPORTED)
def test_unsupported_zeta_options_raise_clearly(option):
    with pytest.raises(ValueError) as info:
        Decoder(dim=64, depth=2, **{option: True})
    message = str(info.value)
    assert f"`{option}`" in message
    assert "does not implement" in message


@pytest.mark.parametrize("layers_cls", [Decoder, Encoder])
@pytest.mark.parametrize("causal", [True, False])
def test_causal_kwarg_rejected(layers_cls, causal):
    with pytest.raises(ValueError) as info:
        layers_cls(dim=64, depth=2, causal=causal)
    message = str(info.value)
    assert "causal" in message and layers_cls.__name__ in message


# (id, decoder kwargs, transformer kwargs, fragment)
CONFLICTS = [
    ("two-norms", dict(use_rmsnorm=True, use_scalenorm=True), {}, "use_rmsnorm"),
    ("sandwich-post", dict(sandwich_norm=True, pre_norm=False), {}, "sandwich_norm"),
    ("rotary-alibi", dict(rotary_pos_emb=True, alibi_pos_bias=True), {}, "alibi_pos_bias"),
    ("alibi-t5", dict(alibi_pos_bias=True, rel_pos_bias=True), {}, "rel_pos_bias"),
    ("one-kv-and-kv-heads", dict(attn_one_kv_head=True, attn_kv_heads=2), {}, "attn_kv_heads"),
    ("fractional-max-mem-len", {}, dict(max_mem_len=2.5), "2.5"),
    ("heads-not-divisible", dict(heads=4, attn_kv_heads=3), {}, "num_key_value_heads"),
    ("xpos-encoder", dict(rotary_xpos=True), {"encoder": True}, "rotary_xpos"),
    ("tie-with-emb-dim", {}, dict(tie_embedding=True, emb_dim=16), "tie_word_embeddings"),
]


@pytest.mark.parametrize("layer_kwargs,transformer_kwargs,fragment", [r[1:] for r in CONFLICTS],
                         ids=[r[0] for r in CONFLICTS])
def test_invalid_option_combinations_raise(layer_kwargs, transformer_kwargs, fragment):
    transformer_kwargs = dict(transformer_kwargs)
    layers_cls = Encoder if transformer_kwargs.pop("encoder", False) else Decoder
    with pytest.raises(ValueError) as info:
        Transformer(num_tokens=32, max_seq_len=16, attn_layers=layers_cls(dim=32, depth=1, **layer_kwargs),
                    **transformer_kwargs)
    assert fragment in str(info.value)


# ----------------------------------------------------------------------------------------------------------------------
# Embedding provider
# ----------------------------------------------------------------------------------------------------------------------


def test_embedding_provider_callable_factory_is_used(tmp_path):
    before = len(CREATED_EMBEDDINGS)
    t = build(embedding_provider=make_embedding, num_tokens=40, dim=32)
    assert len(CREATED_EMBEDDINGS) == before + 1
    hf = t.to_hf()
    assert hf.model.embed_tokens is CREATED_EMBEDDINGS[-1]
    assert hf.get_input_embeddings() is CREATED_EMBEDDINGS[-1]
    assert CREATED_EMBEDDINGS[-1].weight.shape == (40, 32)
    # the config records the provider's name only, as a label: it is never imported
    assert t.config.embedding_provider == f"{make_embedding.__module__}:make_embedding"

    # the weights are saved with the model; loading needs the provider passed in code, and reproduces the logits
    hf.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="never imports code named in a config file"):
        AutoModelForCausalLM.from_pretrained(tmp_path)
    for loader in (AutoModelForCausalLM, ZetaForCausalLM):
        loaded = loader.from_pretrained(tmp_path, embedding_provider=make_embedding)
        assert loaded.model.embed_tokens is CREATED_EMBEDDINGS[-1]
        assert loaded.config.embedding_provider == t.config.embedding_provider
        ids = torch.randint(0, 40, (1, 6))
        with torch.no_grad():
            torch.testing.assert_close(loaded(ids).logits, t(ids), rtol=0, atol=0)


def test_embedding_provider_as_a_module_instance():
    embedding = nn.Embedding(32, 32)
    t = build(embedding_provider=embedding)
    assert t.to_hf().model.embed_tokens is embedding
    assert t.config.embedding_provider == "torch.nn.modules.sparse:Embedding"


def test_embedding_provider_as_import_path_string_is_refused():
    path = f"{make_embedding.__module__}:make_embedding"
    before = len(CREATED_EMBEDDINGS)
    with pytest.raises(ValueError, match="never imports code by name"):
        build(embedding_provider=path)
    assert len(CREATED_EMBEDDINGS) == before


def test_hf_model_is_a_zeta_for_causal_lm():
    assert isinstance(build().to_hf(), ZetaForCausalLM)
