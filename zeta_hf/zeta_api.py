"""The seed-compatible front door: Zeta's `Transformer(num_tokens=..., max_seq_len=..., attn_layers=Decoder(...))`.

No second implementation: `Decoder` / `Encoder` validate and translate Zeta's keyword arguments into `ZetaConfig`
fields, and `Transformer` wraps a `ZetaForCausalLM` built from them (`transformer.to_hf()` returns that very model).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .configuration_zeta import ZetaConfig
from .modeling_zeta import ZetaForCausalLM, embedding_provider_name

# Zeta options zeta_hf does not implement (rarely used); they raise a clear error instead of being ignored.
NOT_SUPPORTED = {"cross_attn_tokens_dropout", "attn_tensor_product", "attn_cascading_heads", "ff_glu_mult_bias"}

# Zeta's AttentionLayers keyword -> ZetaConfig field (simple renames; the rest is translated in code below).
_LAYER_RENAMES = {
    "dim": "hidden_size",
    "depth": "num_hidden_layers",
    "heads": "num_attention_heads",
    "cross_attend": "cross_attend",
    "only_cross": "only_cross",
    "alibi_num_heads": "alibi_num_heads",
    "rel_pos_num_buckets": "rel_pos_num_buckets",
    "rel_pos_max_distance": "rel_pos_max_distance",
    "dynamic_pos_bias_log_distance": "dynamic_pos_bias_log_distance",
    "dynamic_pos_bias_mlp_depth": "dynamic_pos_bias_mlp_depth",
    "dynamic_pos_bias_norm": "dynamic_pos_bias_norm",
    "rotary_emb_dim": "rotary_emb_dim",
    "rotary_xpos": "rotary_xpos",
    "rotary_interpolation_factor": "rotary_interpolation_factor",
    "rotary_xpos_scale_base": "rotary_xpos_scale_base",
    "rotary_base_rescale_factor": "rotary_base_rescale_factor",
    "residual_attn": "residual_attn",
    "cross_residual_attn": "cross_residual_attn",
    "macaron": "macaron",
    "scale_residual": "scale_residual",
    "scale_residual_constant": "scale_residual_constant",
    "resi_dual_scale": "resi_dual_scale",
    "layer_dropout": "layer_dropout",
    "shift_tokens": "shift_tokens",
    "attn_dim_head": "head_dim",
    "attn_kv_heads": "num_key_value_heads",
    "attn_dropout": "attention_dropout",
    "attn_qk_norm": "qk_norm",
    "attn_qk_norm_groups": "qk_norm_groups",
    "attn_qk_norm_scale": "qk_norm_scale",
    "attn_qk_norm_dim_scale": "qk_norm_dim_scale",
    "attn_num_mem_kv": "num_memory_kv",
    "attn_talking_heads": "talking_heads",
    "attn_head_scale": "head_scale",
    "attn_gate_values": "gate_values",
    "attn_on_attn": "attn_on_attn",
    "attn_add_zero_kv": "add_zero_kv",
    "attn_value_dim_head": "value_head_dim",
    "attn_shared_kv": "shared_kv",
    "attn_max_attend_past": "max_attend_past",
    "attn_sparse_topk": "sparse_topk",
    "attn_sparse_topk_mode": "sparse_topk_mode",
    "attn_zero_init_output": "zero_init_attn_output",
    "ff_mult": "ff_mult",
    "ff_post_act_ln": "ff_post_act_ln",
    "ff_dropout": "ff_dropout",
    "ff_zero_init_output": "zero_init_ff_output",
}
# Translated in `_translate_layers` (booleans that become one named field, layouts, or flags with no model effect).
_LAYER_TRANSLATED = {
    "use_scalenorm", "use_rmsnorm", "use_simple_rmsnorm", "pre_norm", "sandwich_norm", "resi_dual", "deepnorm",
    "alibi_pos_bias", "rel_pos_bias", "dynamic_pos_bias", "rotary_pos_emb", "attn_one_kv_head", "attn_flash",
    "attn_onnxable", "ff_glu", "ff_swish", "ff_relu_squared", "ff_no_bias", "gate_residual",
    "zero_init_branch_output", "custom_layers", "par_ratio", "sandwich_coef", "pre_norm_has_final_norm",
}
_LAYER_CODES = {"a": "attn", "c": "cross", "f": "ff"}
LAYER_OPTIONS = sorted(set(_LAYER_RENAMES) | _LAYER_TRANSLATED)


def _reject_unknown(owner: str, kwargs: dict, valid: list[str]) -> None:
    for key in kwargs:
        if key in NOT_SUPPORTED:
            raise ValueError(
                f"{owner} option `{key}` is a Zeta option that zeta_hf does not implement; remove it or use "
                "x-transformers for this model."
            )
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" Did you mean `{close[0]}`?" if close else ""
            raise ValueError(f"{owner} got an unknown option `{key}`.{hint} Valid options: {', '.join(valid)}.")


def _translate_layers(kwargs: dict, causal: bool) -> dict:
    """Zeta `AttentionLayers` kwargs -> ZetaConfig fields (without the Transformer-level ones)."""
    owner = "Decoder" if causal else "Encoder"
    _reject_unknown(owner, kwargs, LAYER_OPTIONS)
    for required in ("dim", "depth"):
        if required not in kwargs:
            raise ValueError(f"{owner} needs `{required}`.")
    fields = {_LAYER_RENAMES[k]: v for k, v in kwargs.items() if k in _LAYER_RENAMES}
    fields["is_causal"] = causal
    fields.setdefault("num_attention_heads", 8)
    # each topic reads Zeta's boolean flags and names the one ZetaConfig field they pick (or refuses a combination)
    fields.update(_norm_fields(kwargs))
    fields.update(_residual_fields(kwargs))
    fields.update(_position_fields(kwargs))
    fields.update(_attention_fields(kwargs))
    fields.update(_feedforward_fields(kwargs))
    fields.setdefault("head_dim", 64)
    return fields


def _norm_fields(kwargs: dict) -> dict:
    """`use_scalenorm` / `use_rmsnorm` / `use_simple_rmsnorm` -> `norm`; `pre_norm`, `sandwich_norm`, `resi_dual`,
    `deepnorm` -> `norm_placement`."""
    norms = [name for name in ("use_scalenorm", "use_rmsnorm", "use_simple_rmsnorm") if kwargs.get(name)]
    if len(norms) > 1:
        raise ValueError(f"Only one of use_scalenorm, use_rmsnorm, use_simple_rmsnorm can be set, but got {norms}.")
    fields = {"norm": {"use_scalenorm": "scalenorm", "use_rmsnorm": "rmsnorm", "use_simple_rmsnorm": "simple_rmsnorm"}.get(
        norms[0] if norms else "", "layernorm"
    )}
    pre_norm, sandwich = kwargs.get("pre_norm", True), kwargs.get("sandwich_norm", False)
    resi_dual, deepnorm = kwargs.get("resi_dual", False), kwargs.get("deepnorm", False)
    if deepnorm:  # Zeta: deepnorm overrides the other placements
        fields["norm_placement"] = "deepnorm"
    elif sandwich and resi_dual:
        raise ValueError("Choose either `sandwich_norm` or `resi_dual`, not both.")
    elif resi_dual:
        fields["norm_placement"] = "resi_dual"
    elif sandwich and not pre_norm:
        raise ValueError("`sandwich_norm=True` needs `pre_norm=True`.")
    else:
        fields["norm_placement"] = "sandwich" if sandwich else ("pre" if pre_norm else "post")
    return fields


def _residual_fields(kwargs: dict) -> dict:
    """The residual branches: gating, zero-initialised outputs, token shifts, layer dropout and the layer layout."""
    fields = {}
    if kwargs.get("gate_residual"):
        fields["residual_type"] = "gru"
    if kwargs.get("zero_init_branch_output"):
        fields["zero_init_attn_output"] = fields["zero_init_ff_output"] = True
    if isinstance(kwargs.get("shift_tokens"), tuple):
        fields["shift_tokens"] = list(kwargs["shift_tokens"])
    if isinstance(kwargs.get("layer_dropout"), (tuple, list)):
        raise ValueError("`layer_dropout` must be one float for all layers; per-layer values are not supported.")
    pattern = _block_pattern(kwargs)
    if pattern is not None:
        fields["block_pattern"] = pattern
    return fields


def _position_fields(kwargs: dict) -> dict:
    """Zeta's relative position flags -> `_relative` (resolved with the Transformer's absolute options later) and the
    rotary width Zeta actually uses."""
    rotary = kwargs.get("rotary_pos_emb", False) or kwargs.get("rotary_xpos", False)
    biases = [name for name in ("alibi_pos_bias", "rel_pos_bias", "dynamic_pos_bias") if kwargs.get(name)]
    if len(biases) > 1 or (rotary and biases):
        chosen = (["rotary_pos_emb"] if rotary else []) + biases
        raise ValueError(f"Choose one relative position scheme; got {chosen} together.")
    fields = {"_relative": "rotary" if rotary else {
        "alibi_pos_bias": "alibi", "rel_pos_bias": "t5", "dynamic_pos_bias": "dynamic"
    }.get(biases[0] if biases else "", None)}
    if rotary:
        fields["rotary_rotate_values"] = True  # Zeta 1.19 rotates values too
        # Zeta: at least 32 rotated features per head, whatever was asked for
        head_dim = kwargs.get("attn_dim_head", 64)
        fields["rotary_emb_dim"] = max(kwargs.get("rotary_emb_dim") or head_dim // 2, 32)
    return fields


def _attention_fields(kwargs: dict) -> dict:
    """`attn_one_kv_head` -> one key / value head (multi-query attention)."""
    if not kwargs.get("attn_one_kv_head"):
        return {}
    if "attn_kv_heads" in kwargs:
        raise ValueError("Set either `attn_one_kv_head=True` or `attn_kv_heads`, not both.")
    return {"num_key_value_heads": 1}


def _feedforward_fields(kwargs: dict) -> dict:
    """`ff_glu`, `ff_swish`, `ff_relu_squared` -> one named `ff_activation`; `ff_no_bias` -> `ff_bias=False`."""
    glu, swish, relu_sq = kwargs.get("ff_glu", False), kwargs.get("ff_swish", False), kwargs.get("ff_relu_squared", False)
    base = "relu_squared" if relu_sq else ("silu" if swish else "gelu")
    fields = {"ff_activation": {"gelu": "geglu", "silu": "swiglu", "relu_squared": "relu_squared_glu"}[base] if glu else base}
    if kwargs.get("ff_no_bias"):
        fields["ff_bias"] = False
    return fields


def _block_pattern(kwargs: dict) -> list[str] | None:
    """Zeta's `custom_layers`, `par_ratio` and `sandwich_coef` layouts as a readable list of layer kinds."""
    custom, par_ratio, sandwich_coef = kwargs.get("custom_layers"), kwargs.get("par_ratio"), kwargs.get("sandwich_coef")
    if custom is None and par_ratio is None and sandwich_coef is None:
        return None
    depth = kwargs["depth"]
    if kwargs.get("cross_attend"):
        block = ("c", "f") if kwargs.get("only_cross") else ("a", "c", "f")
    else:
        block = ("a", "f")
    if kwargs.get("macaron"):
        block = ("f",) + block
    if custom is not None:
        codes = tuple(custom)
    elif par_ratio is not None:  # PAR transformer: attention concentrated in the first two thirds
        par_depth = depth * len(block)
        if not 1 < par_ratio <= par_depth:
            raise ValueError(f"`par_ratio` must be in (1, {par_depth}], but got {par_ratio}.")
        block = tuple(code for code in block if code != "f")
        par_attn = par_depth // par_ratio
        depth_cut = par_depth * 2 // 3
        par_width = (depth_cut + depth_cut // par_attn) // par_attn
        if len(block) > par_width:
            raise ValueError(f"`par_ratio={par_ratio}` leaves no room for the attention block; use a smaller ratio.")
        par_head = (block + ("f",) * (par_width - len(block))) * par_attn
        codes = par_head + ("f",) * (par_depth - len(par_head))
    else:
        if not 0 < sandwich_coef <= depth:
            raise ValueError(f"`sandwich_coef` must be in [1, depth={depth}], but got {sandwich_coef}.")
        codes = ("a",) * sandwich_coef + block * (depth - sandwich_coef) + ("f",) * sandwich_coef
    unknown = sorted(set(codes) - set(_LAYER_CODES))
    if unknown:
        raise ValueError(f"`custom_layers` entries must be 'a', 'c' or 'f', but got {unknown}.")
    return [_LAYER_CODES[code] for code in codes]


class AttentionLayers(nn.Module):
    """Zeta's attention-layer stack, as a validated description; `Transformer` builds its modules."""

    causal: bool = True

    def __init__(self, **kwargs: Any):
        super().__init__()
        if "causal" in kwargs:
            raise ValueError(f"Cannot set `causal` on {type(self).__name__}; use Decoder (causal) or Encoder.")
        self.kwargs = dict(kwargs)
        self.fields = _translate_layers(kwargs, self.causal)
        self.dim = kwargs["dim"]
        self.depth = kwargs["depth"]

    def forward(self, *args, **kwargs):
        raise TypeError(
            f"{type(self).__name__} is run through `Transformer(..., attn_layers=...)`; call the Transformer instead."
        )


class Decoder(AttentionLayers):
    """Causal attention layers (Zeta's `Decoder`)."""

    causal = True


class Encoder(AttentionLayers):
    """Bidirectional attention layers (Zeta's `Encoder`)."""

    causal = False


TRANSFORMER_OPTIONS = [
    "num_tokens", "max_seq_len", "attn_layers", "embedding_provider", "emb_dim", "max_mem_len", "shift_mem_down",
    "emb_dropout", "post_emb_norm", "num_memory_tokens", "tie_embedding", "logits_dim", "use_abs_pos_emb",
    "scaled_sinu_pos_emb", "l2norm_embed", "emb_frac_gradient",
]


def config_from_zeta_kwargs(transformer_kwargs: dict, layers: AttentionLayers, **config_overrides) -> ZetaConfig:
    """Translate Zeta `Transformer(...)` kwargs plus its `Decoder`/`Encoder` into a `ZetaConfig`."""
    kw = dict(transformer_kwargs)
    _reject_unknown("Transformer", kw, TRANSFORMER_OPTIONS + ["attn_z_loss_weight"])
    kw.pop("attn_z_loss_weight", None)
    for required in ("num_tokens", "max_seq_len"):
        if required not in kw:
            raise ValueError(f"Transformer needs `{required}`.")
    fields = dict(layers.fields)
    relative = fields.pop("_relative")
    use_abs, sinu = kw.get("use_abs_pos_emb", True), kw.get("scaled_sinu_pos_emb", False)
    absolute = ("scaled_sinusoidal" if sinu else "learned") if use_abs else "none"
    if relative in ("rotary", "t5"):
        absolute = "none"  # Zeta switches absolute positions off for these (not for ALiBi or dynamic bias)
    if relative is None:
        fields["position_embedding"] = {"learned": "absolute", "scaled_sinusoidal": "scaled_sinusoidal", "none": "none"}[absolute]
    else:
        fields["position_embedding"] = relative
        fields["absolute_position_embedding"] = absolute
    provider = kw.get("embedding_provider")
    if isinstance(provider, str):
        raise ValueError(
            f"`embedding_provider` must be a module or a `(num_tokens, dim) -> nn.Module` factory passed in code, not "
            f"the name {provider!r}: zeta_hf never imports code by name."
        )
    if provider is not None:
        provider = embedding_provider_name(provider)  # config.json records the name only
    max_mem_len = kw.get("max_mem_len", 0)
    if isinstance(max_mem_len, float):
        if not max_mem_len.is_integer():
            raise ValueError(f"`max_mem_len` must be a whole number of positions, but got {max_mem_len}.")
        max_mem_len = int(max_mem_len)
    fields.update(
        vocab_size=kw["num_tokens"],
        max_position_embeddings=kw["max_seq_len"],
        embedding_dim=kw.get("emb_dim"),
        max_mem_len=max_mem_len,
        shift_mem_down=kw.get("shift_mem_down", 0),
        embedding_dropout=kw.get("emb_dropout", 0.0),
        post_emb_norm=kw.get("post_emb_norm", False),
        num_memory_tokens=kw.get("num_memory_tokens") or 0,
        tie_word_embeddings=kw.get("tie_embedding", False),
        logits_dim=kw.get("logits_dim"),
        l2norm_embed=kw.get("l2norm_embed", False),
        emb_frac_gradient=kw.get("emb_frac_gradient", 1.0),
        embedding_provider=provider,
    )
    fields.update(config_overrides)
    return ZetaConfig(**fields)


FORWARD_OPTIONS = [
    "return_embeddings", "return_logits_and_embeddings", "return_intermediates", "mask", "return_mems",
    "return_attn", "mems", "pos", "prepend_embeds", "sum_embeds", "context", "context_mask",
]


@dataclass
class ZetaIntermediates:
    """What `return_intermediates=True` returns next to the output (Zeta's `LayerIntermediates`)."""

    hiddens: list[torch.Tensor]  # residual stream entering each attention layer (memory tokens included)
    attn_maps: list[torch.Tensor] | None  # post-softmax attention per attention layer (b, h, i, j)
    layer_hiddens: tuple[torch.Tensor, ...] | None  # input of every residual branch, then the final-normed output


class Transformer(nn.Module):
    """Zeta's `Transformer` constructor and forward flags over a `ZetaForCausalLM` (see `to_hf()`)."""

    def __init__(self, *, num_tokens: int, max_seq_len: int, attn_layers: AttentionLayers, **kwargs: Any):
        super().__init__()
        if not isinstance(attn_layers, AttentionLayers):
            raise TypeError(f"`attn_layers` must be a zeta_hf Decoder or Encoder, but got {type(attn_layers).__name__}.")
        self.config = config_from_zeta_kwargs(dict(num_tokens=num_tokens, max_seq_len=max_seq_len, **kwargs), attn_layers)
        # the provider object itself goes to the model; the config only records its name
        self.model = ZetaForCausalLM(self.config, embedding_provider=kwargs.get("embedding_provider"))
        self.num_tokens, self.max_seq_len, self.max_mem_len = num_tokens, max_seq_len, self.config.max_mem_len

    @property
    def attn_layers(self) -> nn.Module:
        return self.model.model

    def to_hf(self) -> ZetaForCausalLM:
        """The Hugging Face model behind this Transformer: the same modules and weights, not a copy."""
        return self.model

    def generate(self, *args, **kwargs) -> torch.Tensor:
        return self.model.generate(*args, **kwargs)

    def forward(
        self,
        x: torch.Tensor,
        return_embeddings: bool = False,
        return_logits_and_embeddings: bool = False,
        return_intermediates: bool = False,
        mask: torch.Tensor | None = None,
        return_mems: bool = False,
        return_attn: bool = False,
        mems: list[torch.Tensor] | None = None,
        pos: torch.Tensor | None = None,
        prepend_embeds: torch.Tensor | None = None,
        sum_embeds: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ):
        if kwargs:
            _reject_unknown("Transformer.forward", kwargs, FORWARD_OPTIONS)
        out = self.model(
            return_dict=True,
            input_ids=x,
            attention_mask=mask,
            use_cache=False,
            mems=mems,
            output_mems=return_mems or return_intermediates,
            output_attentions=return_attn or return_intermediates,  # maps come from eager attention, for this call
            output_branch_states=return_intermediates,  # Zeta's intermediates are per branch, not per block
            pos=pos,
            prepend_embeds=prepend_embeds,
            sum_embeds=sum_embeds,
            encoder_hidden_states=context,
            encoder_attention_mask=context_mask,
        )
        if return_logits_and_embeddings:
            result = (out.logits, out.last_hidden_state)
        elif return_embeddings:
            result = out.last_hidden_state
        else:
            result = out.logits
        if return_intermediates:
            return result, ZetaIntermediates(
                hiddens=list(out.attention_inputs), attn_maps=list(out.attentions), layer_hiddens=out.branch_states
            )
        if return_mems:
            return result, out.mems
        if return_attn:
            return result, list(out.attentions)
        return result


__all__ = ["Transformer", "Decoder", "Encoder", "AttentionLayers", "config_from_zeta_kwargs", "ZetaIntermediates"]
