"""ZetaConfig's validation is declared on its fields with transformers' own helpers, and which extra keywords it
accepts is asked of transformers: every bounded field refuses a value just outside its interval with one sentence,
every named choice lists its names, and a keyword transformers does not handle is refused as a likely typo."""

from __future__ import annotations

import re
import typing

import pytest
from transformers import PreTrainedConfig

from zeta_hf import ZetaConfig
from zeta_hf.configuration_zeta import _unhandled_by_transformers

FIELDS = ZetaConfig.__dataclass_fields__
BOUNDED = sorted(name for name, field in FIELDS.items() if "bound" in field.metadata)
CHOICES = sorted(
    name for name, hint in ZetaConfig._declared_types().items()
    if any(typing.get_origin(arg) is typing.Literal for arg in (hint, *typing.get_args(hint)))
)


def test_bounded_and_named_fields_are_the_ones_expected():
    # a field added without its interval or its list of names would silently accept any value
    assert {"vocab_size", "hidden_size", "ff_mult", "layer_norm_eps", "attention_dropout", "rotary_base",
            "tie_embedding_scale", "max_attend_past", "alibi_num_heads"} <= set(BOUNDED)
    assert set(CHOICES) == {"position_embedding", "absolute_position_embedding", "norm", "norm_placement",
                            "residual_type", "sparse_topk_mode", "classifier_pooling", "ff_activation"}


def _just_outside(name: str):
    """A value of the field's own type just below its interval (at the bound when the bound is excluded)."""
    bound = FIELDS[name].metadata["bound"]  # e.g. "an integer >= 1", "a finite number > 0.0 and <= 1.0"
    op, low = re.search(r"(>=|>) (\S+)", bound).groups()
    if bound.startswith("an integer"):
        return int(low) - 1
    return float(low) if op == ">" else float(low) - 0.5


@pytest.mark.parametrize("name", BOUNDED)
def test_every_bounded_field_refuses_a_value_just_outside_its_interval(name):
    value = _just_outside(name)
    with pytest.raises(ValueError) as info:
        ZetaConfig(**{name: value})
    assert str(info.value) == f"`{name}` must be {FIELDS[name].metadata['bound']}, but got {value!r}."


@pytest.mark.parametrize("name", [n for n in BOUNDED if FIELDS[n].metadata["bound"].startswith("a finite number")])
def test_every_bounded_number_refuses_nan_and_infinity(name):
    for value in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match=f"`{name}` must be a finite number"):
            ZetaConfig(**{name: value})


@pytest.mark.parametrize("name", CHOICES)
def test_every_named_choice_lists_its_names(name):
    allowed = next(typing.get_args(arg) for arg in (ZetaConfig._declared_types()[name],
                                                    *typing.get_args(ZetaConfig._declared_types()[name]))
                   if typing.get_origin(arg) is typing.Literal)
    with pytest.raises(ValueError) as info:
        ZetaConfig(**{name: "no-such-name"})
    assert str(info.value) == f"`{name}` must be one of {list(allowed)}, but got 'no-such-name'."


def test_keywords_transformers_handles_are_accepted_and_do_what_transformers_does():
    config = ZetaConfig(
        attn_implementation="eager", experts_implementation="eager", torch_dtype="bfloat16", num_labels=3,
        name_or_path="somewhere", output_attentions=True, max_length=12,  # a generation parameter of an old config
        auto_map={"AutoConfig": "configuration_zeta.ZetaConfig"}, model_type="zeta",
    )
    assert config._attn_implementation == "eager" and config.num_labels == 3 and config.output_attentions
    assert config.name_or_path == "somewhere" and str(config.dtype) == "torch.bfloat16"
    assert config.auto_map == {"AutoConfig": "configuration_zeta.ZetaConfig"}
    assert "max_length" not in config.to_dict()


@pytest.mark.parametrize("name", ["tokenizer_class", "intermediate_size", "rms_norm_eps", "hidden_act", "to_dict"])
def test_a_keyword_transformers_would_only_store_is_refused(name):
    # transformers keeps such a keyword as an attribute no Zeta module reads; `intermediate_size` is even a read-only
    # property of ZetaConfig (derived from `ff_mult`)
    assert _unhandled_by_transformers({name: 1}) == [name]
    with pytest.raises(ValueError, match=f"unknown option\\(s\\) \\['{name}'\\]"):
        ZetaConfig(**{name: 1})


def test_the_rule_follows_what_transformers_post_init_consumes():
    # whatever transformers' own __post_init__ pops from a blank config is accepted, with no list kept here
    assert _unhandled_by_transformers({"attn_implementation": "sdpa", "torch_dtype": "float32", "num_labels": 2,
                                       "name_or_path": "x", "max_length": 3}) == []
    assert _unhandled_by_transformers({"dimm": 64}) == ["dimm"]
    assert "model_type" in PreTrainedConfig.__dataclass_fields__  # a config.json's model_type is a declared name


def test_a_config_json_round_trip_keeps_auto_map_and_refuses_a_typo(tmp_path):
    ZetaConfig.register_for_auto_class()
    try:
        config = ZetaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, head_dim=16)
        config.save_pretrained(tmp_path)
    finally:
        ZetaConfig._auto_class = None
    assert "auto_map" in (tmp_path / "config.json").read_text()
    reloaded = ZetaConfig.from_pretrained(tmp_path)
    assert reloaded.auto_map == config.auto_map
    assert {**reloaded.to_dict(), "_name_or_path": ""} == {**config.to_dict(), "_name_or_path": ""}
    with pytest.raises(ValueError, match="did you mean `hidden_size`"):
        ZetaConfig(**{**config.to_dict(), "hiden_size": 64})
