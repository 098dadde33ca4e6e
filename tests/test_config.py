"""ZetaConfig: Zeta aliases, JSON round trips, and one clear ValueError for every invalid value or combination."""

from __future__ import annotations

import json
import tempfile

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoConfig

from zeta_hf import ZetaConfig, ZetaForCausalLM
from zeta_hf.configuration_zeta import (
    ABSOLUTE_POSITION_EMBEDDINGS,
    FF_ACTIVATIONS,
    NORM_PLACEMENTS,
    NORMS,
    POSITION_EMBEDDINGS,
    RESIDUAL_TYPES,
    SPARSE_TOPK_MODES,
)

# ----------------------------------------------------------------------------------------------------------------------
# Aliases
# ----------------------------------------------------------------------------------------------------------------------

# (zeta alias, stored Hugging Face name, a valid value, another valid value, extra kwargs making both values valid)
ALIASES = [
    ("num_tokens", "vocab_size", 100, 300, {}),
    ("dim", "hidden_size", 96, 128, {}),
    ("depth", "num_hidden_layers", 3, 5, {}),
    ("heads", "num_attention_heads", 4, 2, {"num_key_value_heads": 2}),
    ("max_seq_len", "max_position_embeddings", 64, 2048, {}),
    ("kv_heads", "num_key_value_heads", 2, 4, {"num_attention_heads": 8}),
    ("dim_head", "head_dim", 32, 16, {}),
    ("emb_dim", "embedding_dim", 48, 256, {}),
    ("emb_dropout", "embedding_dropout", 0.1, 0.25, {}),
    ("tie_embedding", "tie_word_embeddings", True, False, {}),
    ("num_mem_kv", "num_memory_kv", 2, 3, {}),
]


@pytest.mark.parametrize("alias,stored,value,other,extra", ALIASES, ids=[a[0] for a in ALIASES])
def test_alias_readable_writable_and_stored_under_hf_name(alias, stored, value, other, extra, tmp_path):
    cfg = ZetaConfig(**{alias: value}, **extra)
    assert getattr(cfg, stored) == value
    assert getattr(cfg, alias) == value

    d = cfg.to_dict()
    assert d[stored] == value
    assert alias not in d, f"alias {alias!r} must not be serialised next to {stored!r}"
    assert json.loads(cfg.to_json_string())[stored] == value

    setattr(cfg, alias, other)  # writing through the alias writes the stored field
    assert getattr(cfg, stored) == other
    assert getattr(cfg, alias) == other
    setattr(cfg, stored, value)
    assert getattr(cfg, alias) == value

    cfg.save_pretrained(tmp_path)
    on_disk = json.loads((tmp_path / "config.json").read_text())
    assert on_disk[stored] == value and alias not in on_disk
    assert getattr(ZetaConfig.from_pretrained(tmp_path), alias) == value


def test_alias_and_hf_name_give_the_same_config():
    zeta = ZetaConfig(num_tokens=100, max_seq_len=64, dim=96, depth=3, heads=4, kv_heads=2, dim_head=24)
    hf = ZetaConfig(
        vocab_size=100, max_position_embeddings=64, hidden_size=96, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=24,
    )
    assert zeta.to_dict() == hf.to_dict()


def test_kv_heads_defaults_to_heads():
    assert ZetaConfig(heads=4).num_key_value_heads == 4
    assert ZetaConfig(heads=4).kv_heads == 4


# ----------------------------------------------------------------------------------------------------------------------
# JSON round trips
# ----------------------------------------------------------------------------------------------------------------------

SMALL = dict(vocab_size=64, max_position_embeddings=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, head_dim=8)

ROUND_TRIP_CASES = {
    "default": {},
    "small": SMALL,
    "rotary": dict(SMALL, position_embedding="rotary", rotary_emb_dim=4, rotary_base=500.0),
    "rotary-xpos": dict(SMALL, position_embedding="rotary", rotary_xpos=True, rotary_xpos_scale_base=64.0),
    "rotary-values": dict(SMALL, position_embedding="rotary", rotary_rotate_values=True, rotary_interpolation_factor=2.0),
    "alibi-learned": dict(SMALL, position_embedding="alibi", absolute_position_embedding="learned", alibi_num_heads=2),
    "alibi-none": dict(SMALL, position_embedding="alibi"),
    "t5": dict(SMALL, position_embedding="t5", rel_pos_num_buckets=8, rel_pos_max_distance=16),
    "sinusoidal": dict(SMALL, position_embedding="scaled_sinusoidal"),
    "nopos": dict(SMALL, position_embedding="none"),
    "rmsnorm-post": dict(SMALL, norm="rmsnorm", norm_placement="post"),
    "scalenorm-sandwich": dict(SMALL, norm="scalenorm", norm_placement="sandwich"),
    "simple-rmsnorm": dict(SMALL, norm="simple_rmsnorm"),
    "gqa-qknorm": dict(SMALL, num_key_value_heads=2, qk_norm=True, qk_norm_groups=2, qk_norm_dim_scale=True),
    "memory": dict(SMALL, num_memory_tokens=3, num_memory_kv=2, max_mem_len=8, shift_mem_down=1),
    "embedding": dict(SMALL, embedding_dim=16, post_emb_norm=True, l2norm_embed=True, emb_frac_gradient=0.5),
    "tied": dict(SMALL, tie_word_embeddings=True),
    "logits-dim": dict(SMALL, logits_dim=10),
    "ff": dict(SMALL, ff_activation="swiglu", ff_mult=2.0, ff_post_act_ln=True, ff_bias=False, ff_dropout=0.1),
    "macaron-residual": dict(SMALL, macaron=True, residual_attn=True),
    "encoder": dict(SMALL, is_causal=False, position_embedding="t5"),
    "tokens": dict(SMALL, pad_token_id=0, bos_token_id=1, eos_token_id=2, use_cache=False),
    "zeta-names": dict(num_tokens=50, dim=48, depth=1, heads=6, dim_head=8, kv_heads=3, emb_dim=24, emb_dropout=0.1),
}


def comparable(cfg: ZetaConfig) -> dict:
    """The serialised config without where it was loaded from."""
    d = cfg.to_dict()
    d.pop("_name_or_path", None)
    return d


@pytest.mark.parametrize("kwargs", ROUND_TRIP_CASES.values(), ids=ROUND_TRIP_CASES.keys())
def test_json_round_trip(kwargs, tmp_path):
    cfg = ZetaConfig(**kwargs)
    from_json = ZetaConfig.from_dict(json.loads(cfg.to_json_string()))
    assert from_json.to_dict() == cfg.to_dict()

    cfg.save_pretrained(tmp_path)
    reloaded = ZetaConfig.from_pretrained(tmp_path)
    assert comparable(reloaded) == comparable(cfg)
    auto = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(auto, ZetaConfig)
    assert comparable(auto) == comparable(cfg)
    for key, value in kwargs.items():
        assert getattr(reloaded, key) == value, key


# ----------------------------------------------------------------------------------------------------------------------
# Invalid values: ValueError at construction, naming the field and the value
# ----------------------------------------------------------------------------------------------------------------------

# (id, kwargs, fragments that must all appear in the message)
INVALID = [
    ("bad-norm", dict(norm="batchnorm"), ["norm", "'batchnorm'", "rmsnorm"]),
    ("bad-norm-placement", dict(norm_placement="middle"), ["norm_placement", "'middle'"]),
    ("bad-position", dict(position_embedding="sinusoidal"), ["position_embedding", "'sinusoidal'", "rotary"]),
    ("bad-absolute", dict(absolute_position_embedding="rotary"), ["absolute_position_embedding", "'rotary'"]),
    ("bad-activation", dict(ff_activation="tanh"), ["ff_activation", "'tanh'", "swiglu"]),
    ("heads-not-divisible", dict(num_attention_heads=8, num_key_value_heads=3), ["num_key_value_heads", "3", "8"]),
    ("negative-depth", dict(depth=-1), ["num_hidden_layers", "-1"]),
    ("zero-vocab", dict(vocab_size=0), ["vocab_size", "0"]),
    ("float-dim", dict(hidden_size=64.5), ["hidden_size", "64.5"]),
    ("bool-heads", dict(num_attention_heads=True), ["num_attention_heads", "True"]),
    ("zero-head-dim", dict(head_dim=0), ["head_dim", "0"]),
    ("zero-max-len", dict(max_position_embeddings=0), ["max_position_embeddings", "0"]),
    ("emb-dropout-1.5", dict(embedding_dropout=1.5), ["embedding_dropout", "1.5"]),
    ("attn-dropout-neg", dict(attention_dropout=-0.1), ["attention_dropout", "-0.1"]),
    ("ff-dropout-1.5", dict(ff_dropout=1.5), ["ff_dropout", "1.5"]),
    ("zeta-emb-dropout-1.5", dict(emb_dropout=1.5), ["embedding_dropout", "1.5"]),
    ("frac-gradient-0", dict(emb_frac_gradient=0.0), ["emb_frac_gradient", "0.0"]),
    ("frac-gradient-2", dict(emb_frac_gradient=2.0), ["emb_frac_gradient", "2.0"]),
    ("ff-mult-0", dict(ff_mult=0), ["ff_mult", "0"]),
    ("norm-eps-neg", dict(layer_norm_eps=-1e-5), ["layer_norm_eps", "-1e-05"]),
    ("mem-tokens-neg", dict(num_memory_tokens=-2), ["num_memory_tokens", "-2"]),
    ("mem-kv-neg", dict(num_memory_kv=-1), ["num_memory_kv", "-1"]),
    ("max-mem-len-neg", dict(max_mem_len=-1), ["max_mem_len", "-1"]),
    ("shift-mem-down-past-depth", dict(num_hidden_layers=2, shift_mem_down=3), ["shift_mem_down", "3"]),
    ("embedding-dim-0", dict(embedding_dim=0), ["embedding_dim", "0"]),
    ("logits-dim-0", dict(logits_dim=0), ["logits_dim", "0"]),
    ("xpos-without-rotary", dict(rotary_xpos=True), ["rotary_xpos", "'absolute'"]),
    ("xpos-with-alibi", dict(rotary_xpos=True, position_embedding="alibi"), ["rotary_xpos", "'alibi'"]),
    ("xpos-encoder", dict(position_embedding="rotary", rotary_xpos=True, is_causal=False), ["rotary_xpos", "is_causal"]),
    ("rotary-dim-odd", dict(position_embedding="rotary", rotary_emb_dim=7), ["rotary_emb_dim", "7"]),
    ("rotary-dim-2-rescaled", dict(position_embedding="rotary", rotary_emb_dim=2, rotary_base_rescale_factor=2.0),
     ["rotary_base_rescale_factor", "rotary_emb_dim", ">= 4"]),
    ("rotary-dim-too-big", dict(position_embedding="rotary", head_dim=64, rotary_emb_dim=128), ["rotary_emb_dim", "128"]),
    ("rotary-interp-below-1", dict(position_embedding="rotary", rotary_interpolation_factor=0.5),
     ["rotary_interpolation_factor", "0.5"]),
    ("rotary-base-0", dict(position_embedding="rotary", rotary_base=0.0), ["rotary_base", "0.0"]),
    ("alibi-heads-gt-heads", dict(position_embedding="alibi", num_attention_heads=8, alibi_num_heads=16),
     ["alibi_num_heads", "16", "8"]),
    ("alibi-heads-0", dict(position_embedding="alibi", alibi_num_heads=0), ["alibi_num_heads", "0"]),
    ("alibi-heads-without-alibi", dict(alibi_num_heads=2), ["alibi_num_heads", "'absolute'"]),
    ("t5-buckets-gt-distance", dict(position_embedding="t5", rel_pos_num_buckets=64, rel_pos_max_distance=32),
     ["rel_pos_num_buckets", "64", "32"]),
    ("t5-buckets-1", dict(position_embedding="t5", rel_pos_num_buckets=1), ["rel_pos_num_buckets", "1"]),
    ("t5-encoder-buckets-3", dict(position_embedding="t5", is_causal=False, rel_pos_num_buckets=3),
     ["rel_pos_num_buckets", "at least 4", "3"]),
    ("tie-with-emb-dim", dict(tie_word_embeddings=True, hidden_size=512, embedding_dim=256),
     ["tie_word_embeddings", "embedding_dim", "256", "512"]),
    ("tie-with-logits-dim", dict(tie_word_embeddings=True, vocab_size=256, logits_dim=100), ["logits_dim", "100"]),
    ("qk-norm-groups-not-dividing", dict(qk_norm=True, head_dim=64, qk_norm_groups=3), ["qk_norm_groups", "3", "64"]),
    ("qk-norm-groups-too-small", dict(qk_norm=True, head_dim=8, qk_norm_groups=4), ["qk_norm_groups", "4"]),
    ("learned-with-rotary", dict(absolute_position_embedding="learned", position_embedding="rotary"),
     ["absolute_position_embedding", "'learned'", "'rotary'"]),
    ("sinusoidal-with-t5", dict(absolute_position_embedding="scaled_sinusoidal", position_embedding="t5"),
     ["absolute_position_embedding", "'scaled_sinusoidal'", "'t5'"]),
    ("sinusoidal-odd-width", dict(position_embedding="scaled_sinusoidal", embedding_dim=33), ["embedding_dim", "33"]),
    ("provider-not-a-name", dict(embedding_provider=""), ["embedding_provider", "''"]),
    ("unknown-kwarg", dict(qk_normm=True), ["qk_normm", "qk_norm"]),
    ("unknown-zeta-kwarg", dict(rotary_pos_emb=True), ["rotary_pos_emb"]),
    ("two-unknown-kwargs", dict(dimm=64, headz=4), ["dimm", "headz"]),
]


@pytest.mark.parametrize("kwargs,fragments", [row[1:] for row in INVALID], ids=[row[0] for row in INVALID])
def test_invalid_value_raises_naming_field_and_value(kwargs, fragments):
    with pytest.raises(ValueError) as info:
        ZetaConfig(**kwargs)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in error message: {message}"


def test_unknown_kwarg_lists_the_valid_options():
    with pytest.raises(ValueError) as info:
        ZetaConfig(qk_normm=True)
    message = str(info.value)
    assert "did you mean `qk_norm`" in message.lower()
    listed = message.split("Valid options are:")[1]
    for name in ("vocab_size", "hidden_size", "position_embedding", "num_tokens", "dim", "qk_norm_groups"):
        assert name in listed
    # private / class-level names are not options a user can pass
    assert "_auto_class" not in listed


def test_invalid_values_set_after_construction_are_caught_by_validate_architecture():
    cfg = ZetaConfig()
    cfg.norm = "batchnorm"
    with pytest.raises(ValueError, match="batchnorm"):
        cfg.validate_architecture()


def test_invalid_config_json_is_rejected_on_load(tmp_path):
    cfg = ZetaConfig(**SMALL)
    cfg.save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    data = json.loads(path.read_text())
    data["position_embedding"] = "sinusoidal"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="'sinusoidal'"):
        ZetaConfig.from_pretrained(tmp_path)


# ----------------------------------------------------------------------------------------------------------------------
# Property tests over the option space
# ----------------------------------------------------------------------------------------------------------------------


@st.composite
def valid_config_kwargs(draw) -> dict:
    heads = draw(st.sampled_from([1, 2, 4]))
    head_dim = draw(st.sampled_from([8, 16]))
    depth = draw(st.integers(1, 2))
    kw: dict = dict(
        vocab_size=draw(st.integers(8, 48)),
        max_position_embeddings=draw(st.sampled_from([16, 32])),
        hidden_size=draw(st.sampled_from([16, 24, 32])),
        num_hidden_layers=depth,
        num_attention_heads=heads,
        num_key_value_heads=draw(st.sampled_from([h for h in (1, 2, 4) if heads % h == 0])),
        head_dim=head_dim,
        is_causal=draw(st.booleans()),
        norm=draw(st.sampled_from(NORMS)),
        norm_placement=draw(st.sampled_from(NORM_PLACEMENTS)),
        ff_activation=draw(st.sampled_from(FF_ACTIVATIONS)),
        ff_mult=draw(st.sampled_from([1.0, 2.0, 4.0])),
        ff_post_act_ln=draw(st.booleans()),
        ff_bias=draw(st.booleans()),
        macaron=draw(st.booleans()),
        residual_attn=draw(st.booleans()),
        num_memory_tokens=draw(st.integers(0, 2)),
        num_memory_kv=draw(st.integers(0, 2)),
        post_emb_norm=draw(st.booleans()),
        l2norm_embed=draw(st.booleans()),
        emb_frac_gradient=draw(st.sampled_from([1.0, 0.5])),
        max_mem_len=draw(st.integers(0, 4)),
        shift_mem_down=draw(st.integers(0, depth)),
    )
    position = draw(st.sampled_from(POSITION_EMBEDDINGS))
    kw["position_embedding"] = position
    if position == "rotary":
        kw["rotary_emb_dim"] = draw(st.sampled_from([None, 2, 4, head_dim]))
        kw["rotary_rotate_values"] = draw(st.booleans())
        kw["rotary_interpolation_factor"] = draw(st.sampled_from([1.0, 2.0]))
        if kw["rotary_emb_dim"] != 2:  # NTK rescaling needs a rotary width of 4 or more
            kw["rotary_base_rescale_factor"] = draw(st.sampled_from([1.0, 2.0]))
        if kw["is_causal"]:
            kw["rotary_xpos"] = draw(st.booleans())
    elif position == "alibi":
        kw["alibi_num_heads"] = draw(st.sampled_from([None] + list(range(1, heads + 1))))
        kw["absolute_position_embedding"] = draw(st.sampled_from(ABSOLUTE_POSITION_EMBEDDINGS))
    elif position == "t5":
        distance = draw(st.sampled_from([8, 16, 128]))
        kw["rel_pos_max_distance"] = distance
        kw["rel_pos_num_buckets"] = draw(st.integers(2 if kw["is_causal"] else 4, min(distance, 32)))
    elif position == "none":
        kw["absolute_position_embedding"] = draw(st.sampled_from(["none", "learned", "scaled_sinusoidal"]))
    elif position == "dynamic":
        kw["dynamic_pos_bias_mlp_depth"] = draw(st.integers(1, 3))
        kw["dynamic_pos_bias_log_distance"] = draw(st.booleans())
        kw["dynamic_pos_bias_norm"] = draw(st.booleans())
    if draw(st.booleans()):
        kw["qk_norm"] = True
        kw["qk_norm_groups"] = draw(st.sampled_from([g for g in (1, 2, 4) if head_dim // g > 2]))
        kw["qk_norm_dim_scale"] = draw(st.booleans())
    tied = draw(st.booleans())
    if tied:
        kw["tie_word_embeddings"] = True
    else:
        kw["embedding_dim"] = draw(st.sampled_from([None, 12, 20]))
        kw["logits_dim"] = draw(st.sampled_from([None, 5]))
    # the attention, residual and layout extras (issue 7's options)
    for flag in ("talking_heads", "head_scale", "gate_values", "attn_on_attn", "add_zero_kv", "zero_init_attn_output",
                 "zero_init_ff_output", "scale_residual", "cross_attend"):
        kw[flag] = draw(st.booleans())
    kw["residual_type"] = draw(st.sampled_from(RESIDUAL_TYPES))
    if kw["norm_placement"] != "deepnorm":  # deepnorm sets the residual scale itself
        kw["scale_residual_constant"] = draw(st.sampled_from([1.0, 0.5]))
    kw["layer_dropout"] = draw(st.sampled_from([0.0, 0.3]))
    kw["shift_tokens"] = draw(st.integers(0, 2))
    for rate in ("embedding_dropout", "attention_dropout", "ff_dropout"):
        kw[rate] = draw(st.sampled_from([0.0, 0.1]))
    if draw(st.booleans()):
        kw["shared_kv"] = True
    elif not kw.get("rotary_rotate_values"):  # rotated values must be at least as wide as the rotation
        kw["value_head_dim"] = draw(st.sampled_from([None, 8, 24]))
    if draw(st.booleans()):
        kw["max_attend_past"] = draw(st.integers(1, 8))
    if draw(st.booleans()):
        kw["sparse_topk"] = draw(st.integers(1, 4))
        kw["sparse_topk_mode"] = draw(st.sampled_from(SPARSE_TOPK_MODES))
    return kw


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kwargs=valid_config_kwargs(), seed=st.integers(0, 2**16))
def test_every_valid_config_builds_trains_and_round_trips(kwargs, seed):
    cfg = ZetaConfig(**kwargs)
    restored = ZetaConfig.from_dict(json.loads(cfg.to_json_string()))
    assert restored.to_dict() == cfg.to_dict()

    torch.manual_seed(seed)
    model = ZetaForCausalLM(cfg)
    model.train()
    n = min(6, cfg.max_position_embeddings)
    ids = torch.randint(0, cfg.vocab_size, (2, n))
    labels = ids % cfg.output_dim
    # cross-attending models read encoder states (Zeta's `context`)
    context = {"encoder_hidden_states": torch.randn(2, 3, cfg.hidden_size)} if cfg.cross_attend else {}
    out = model(ids, labels=labels, use_cache=False, **context)
    assert out.logits.shape == (2, n, cfg.output_dim)
    assert torch.isfinite(out.loss), kwargs
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads, "no parameter received a gradient"
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), f"non-finite gradient in {name} for {kwargs}"

    model.eval()
    with torch.no_grad(), tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        again = ZetaForCausalLM.from_pretrained(folder).eval()
        assert again.config.to_dict() == {**cfg.to_dict(), "architectures": ["ZetaForCausalLM"],
                                          "auto_map": again.config.auto_map, "_name_or_path": folder}
        torch.testing.assert_close(again(ids, use_cache=False, **context).logits,
                                   model(ids, use_cache=False, **context).logits, rtol=0, atol=0)


# Each corruption turns a valid kwargs dict into an invalid one, given a drawn value.
CORRUPTIONS = {
    "norm": lambda kw, draw: kw.update(norm=draw(st.text(min_size=1, max_size=8).filter(lambda s: s not in NORMS))),
    "norm_placement": lambda kw, draw: kw.update(
        norm_placement=draw(st.text(min_size=1, max_size=8).filter(lambda s: s not in NORM_PLACEMENTS))
    ),
    "position": lambda kw, draw: kw.update(
        position_embedding=draw(st.text(min_size=1, max_size=8).filter(lambda s: s not in POSITION_EMBEDDINGS))
    ),
    "activation": lambda kw, draw: kw.update(
        ff_activation=draw(st.text(min_size=1, max_size=8).filter(lambda s: s not in FF_ACTIVATIONS))
    ),
    "size": lambda kw, draw: kw.update(
        {draw(st.sampled_from(["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "head_dim",
                               "max_position_embeddings"])): draw(st.integers(-5, 0))}
    ),
    "negative-count": lambda kw, draw: kw.update(
        {draw(st.sampled_from(["num_memory_tokens", "num_memory_kv", "max_mem_len"])): draw(st.integers(-5, -1))}
    ),
    "dropout": lambda kw, draw: kw.update(
        {draw(st.sampled_from(["embedding_dropout", "attention_dropout", "ff_dropout"])): draw(
            st.one_of(st.floats(1.01, 10.0), st.floats(-10.0, -0.01))
        )}
    ),
    "kv-heads": lambda kw, draw: kw.update(num_attention_heads=4, num_key_value_heads=draw(st.sampled_from([3, 5, 8]))),
    "xpos": lambda kw, draw: kw.update(
        rotary_xpos=True, position_embedding=draw(st.sampled_from([p for p in POSITION_EMBEDDINGS if p != "rotary"])),
        absolute_position_embedding=None, alibi_num_heads=None,
    ),
    "xpos-encoder": lambda kw, draw: kw.update(
        rotary_xpos=True, position_embedding="rotary", is_causal=False, absolute_position_embedding=None
    ),
    "alibi-heads": lambda kw, draw: kw.update(
        position_embedding="alibi", alibi_num_heads=kw["num_attention_heads"] + draw(st.integers(1, 4))
    ),
    "t5-buckets": lambda kw, draw: kw.update(
        position_embedding="t5", absolute_position_embedding=None, rel_pos_max_distance=8,
        rel_pos_num_buckets=draw(st.integers(9, 64)),
    ),
    "t5-encoder-buckets": lambda kw, draw: kw.update(
        position_embedding="t5", absolute_position_embedding=None, is_causal=False, rotary_xpos=False,
        rel_pos_max_distance=128, rel_pos_num_buckets=draw(st.integers(2, 3)),
    ),
    "tie-emb-dim": lambda kw, draw: kw.update(tie_word_embeddings=True, embedding_dim=kw["hidden_size"] + 4),
    "qk-groups": lambda kw, draw: kw.update(qk_norm=True, head_dim=16, qk_norm_groups=draw(st.sampled_from([3, 5, 8, 16]))),
    "abs-with-rotary": lambda kw, draw: kw.update(
        position_embedding=draw(st.sampled_from(["rotary", "t5"])),
        absolute_position_embedding=draw(st.sampled_from(["learned", "scaled_sinusoidal"])),
        rotary_xpos=False,
    ),
    "unknown-kwarg": lambda kw, draw: kw.update(
        {draw(st.sampled_from(["qk_normm", "rotary_pos_emb", "use_rmsnorm", "ff_glu", "dim_heads", "causal"])): True}
    ),
}


@settings(max_examples=100, deadline=None)
@given(data=st.data(), kwargs=valid_config_kwargs(), corruption=st.sampled_from(sorted(CORRUPTIONS)))
def test_every_invalid_config_raises_value_error(data, kwargs, corruption):
    CORRUPTIONS[corruption](kwargs, data.draw)
    with pytest.raises(ValueError):
        ZetaConfig(**kwargs)
