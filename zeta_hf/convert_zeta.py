"""Import a Zeta / x-transformers checkpoint (state dict + constructor kwargs) as a `ZetaForCausalLM` folder.

    python -m zeta_hf.convert_zeta --checkpoint model.pt --kwargs kwargs.json --output-dir out/ [--source ...]

`kwargs.json` holds the `Transformer(...)` / `TransformerWrapper(...)` keyword arguments with the attention layers
under "attn_layers": `{"num_tokens": 256, "max_seq_len": 1024, "attn_layers": {"type": "Decoder", "dim": 512, ...}}`.
`--source` picks the library that wrote the checkpoint: "zeta" or "xtransformers-1" (x-transformers 1.19, what Zeta
is), "xtransformers-2" (x-transformers 2.x), or "auto" (the default): 2.x when the checkpoint shows 2.x markers,
otherwise 1.19. See docs/convert.md for the supported 2.x options.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import warnings
from pathlib import Path

import torch

from .cli_common import folder_problem, load_weights_only
from .configuration_zeta import ZetaConfig
from .modeling_zeta import ZetaForCausalLM
from .zeta_api import Decoder, Encoder, config_from_zeta_kwargs

# Zeta key (after `attn_layers.layers.{i}.`) -> our key (after `model.layers.{i}.`)
_NORM_SLOTS = {"0.0": "pre_norm", "0.1": "branch_norm", "0.2": "post_norm"}
_ATTN_KEYS = {
    "to_q.weight": "q_proj.weight",
    "to_k.weight": "k_proj.weight",
    "to_v.weight": "v_proj.weight",
    "to_out.weight": "o_proj.weight",
    "to_out.0.weight": "o_proj.weight",  # attention-on-attention: Linear then GLU
    "to_v_gate.weight": "v_gate.weight",
    "to_v_gate.bias": "v_gate.bias",
    "head_scale_params": "head_scale",
    "attend.pre_softmax_talking_heads.weight": "pre_softmax_talking_heads.weight",
    "attend.post_softmax_talking_heads.weight": "post_softmax_talking_heads.weight",
    "qk_norm_q_scale": "q_scale",
    "qk_norm_k_scale": "k_scale",
    "mem_k": "memory_k",
    "mem_v": "memory_v",
}
_RESIDUAL_KEYS = re.compile(r"residual_scale|gru\.(weight|bias)_(ih|hh)")
_TOP_KEYS = {
    "token_emb.emb.weight": "model.embed_tokens.weight",
    "pos_emb.emb.weight": "model.embed_positions.emb.weight",
    "pos_emb.scale": "model.embed_positions.scale",
    "post_emb_norm.weight": "model.post_emb_norm.weight",
    "post_emb_norm.bias": "model.post_emb_norm.bias",
    "project_emb.weight": "model.project_emb.weight",
    "project_emb.bias": "model.project_emb.bias",
    "memory_tokens": "model.memory_tokens",
    "attn_layers.final_norm.weight": "model.norm.weight",
    "attn_layers.final_norm.bias": "model.norm.bias",
    "attn_layers.final_norm.g": "model.norm.weight",
    "attn_layers.rel_pos.relative_attention_bias.weight": "model.position_bias.relative_attention_bias.weight",
    "to_logits.weight": "lm_head.weight",
    "to_logits.bias": "lm_head.bias",
}
# Buffers Zeta saves that we recompute.
_SKIP = re.compile(r"attn_layers\.rotary_pos_emb\.(inv_freq|scale)$|\.inv_freq$")


def _ff_key(rest: str, post_act_ln: bool) -> str:
    """Zeta FeedForward keys: ff.0.0 / ff.0.proj (in), ff.1 (post-act LayerNorm), last index (out)."""
    m = re.fullmatch(r"ff\.(\d+)\.(?:(?:0|proj)\.)?(weight|bias)", rest)
    if m is None:
        raise ValueError(f"Unexpected feedforward parameter `{rest}` in the Zeta checkpoint.")
    index, kind = int(m.group(1)), m.group(2)
    out_index = 3 if post_act_ln else 2
    name = {0: "up_proj", out_index: "down_proj"}.get(index, "post_act_norm" if post_act_ln and index == 1 else None)
    if name is None:
        raise ValueError(f"Unexpected feedforward parameter `{rest}` in the Zeta checkpoint.")
    return f"mlp.{name}.{kind}"


def head_permutation(config: ZetaConfig) -> torch.Tensor | None:
    """Zeta groups query heads as `h -> kv head h % kv_heads`, transformers as `h -> h // groups`: reorder heads."""
    h, kv = config.num_attention_heads, config.num_key_value_heads
    if kv in (1, h):
        return None
    groups = h // kv
    ours = torch.arange(h)
    return (ours % groups) * kv + ours // groups  # our head -> Zeta head


def convert_state_dict(zeta_state: dict[str, torch.Tensor], config: ZetaConfig) -> dict[str, torch.Tensor]:
    """Rename (and, for grouped-query attention, reorder) a Zeta 1.19 state dict into `ZetaForCausalLM` keys."""
    perm = head_permutation(config)
    if perm is not None and config.position_embedding == "alibi":
        raise ValueError(
            "Converting grouped-query attention (kv_heads < heads, > 1) combined with ALiBi is not supported: the "
            "per-head slopes would need reordering."
        )
    out: dict[str, torch.Tensor] = {}
    for key, tensor in zeta_state.items():
        if _SKIP.search(key):
            continue
        if key in _TOP_KEYS:
            new = _TOP_KEYS[key]
        elif key.startswith("attn_layers.rel_pos.mlp."):  # dynamic position bias keeps Zeta's MLP layout
            new = "model.position_bias." + key.removeprefix("attn_layers.rel_pos.")
        else:
            m = re.fullmatch(r"attn_layers\.layers\.(\d+)\.(\d)\.(.+)", key)
            if m is None:
                raise ValueError(f"Unexpected parameter `{key}` in the Zeta checkpoint: this option is not supported.")
            i, slot, rest = int(m.group(1)), m.group(2), m.group(3)
            kind = config.layer_pattern[i]
            while rest.startswith("fn."):  # ShiftTokens and macaron's Scale(0.5) wrap the block
                rest = rest.removeprefix("fn.")
            if slot == "0":
                norm_slot, _, param = rest.partition(".")
                new = f"layers.{i}.{_NORM_SLOTS['0.' + norm_slot]}.{'weight' if param == 'g' else param}"
            elif slot == "1" and kind in ("attn", "cross"):
                if rest not in _ATTN_KEYS:
                    raise ValueError(f"Unexpected attention parameter `{key}` in the Zeta checkpoint.")
                new = f"layers.{i}.{'self_attn' if kind == 'attn' else 'cross_attn'}.{_ATTN_KEYS[rest]}"
                tensor = _reorder_heads(_ATTN_KEYS[rest], tensor, perm, config)
            elif slot == "1":
                new = f"layers.{i}.{_ff_key(rest, config.ff_post_act_ln)}"
            elif slot == "2" and _RESIDUAL_KEYS.fullmatch(rest):
                new = f"layers.{i}.residual.{rest}"
            else:
                raise ValueError(f"Unexpected parameter `{key}` in the Zeta checkpoint: this option is not supported.")
            new = "model." + new
        if perm is not None and new.endswith("relative_attention_bias.weight"):
            tensor = tensor[:, perm]  # (buckets, h)
        if perm is not None and new.startswith("model.position_bias.mlp.") and tensor.shape[0] == config.num_attention_heads:
            if new.startswith(f"model.position_bias.mlp.{config.dynamic_pos_bias_mlp_depth}."):
                tensor = tensor[perm]  # last layer: one output per head
        out[new] = tensor
    return out


def _reorder_heads(name: str, tensor: torch.Tensor, perm: torch.Tensor | None, config: ZetaConfig) -> torch.Tensor:
    """Apply the query-head permutation to every per-head attention parameter."""
    if name == "head_scale":
        tensor = tensor.reshape(-1)  # Zeta stores (1, h, 1, 1)
    if perm is None:
        return tensor
    d, vd = config.head_dim, config.value_dim
    if name == "q_proj.weight":
        return tensor.view(-1, d, tensor.shape[-1])[perm].reshape_as(tensor)  # (h * d, dim) rows by head
    if name == "o_proj.weight":
        return tensor.view(tensor.shape[0], -1, vd)[:, perm].reshape_as(tensor)  # (dim, h * vd) columns by head
    if name in ("v_gate.weight", "v_gate.bias"):
        return tensor.view(-1, vd, *tensor.shape[1:])[perm].reshape_as(tensor)  # (h * vd, ...) rows by head
    if name == "head_scale":
        return tensor[perm]
    if name.endswith("talking_heads.weight"):
        return tensor[perm][:, perm]  # (h, h, 1, 1): mixes heads, both sides reordered
    return tensor


# --------------------------------------------------------------------------------------------------------------------
# x-transformers 2.x
# --------------------------------------------------------------------------------------------------------------------

SOURCES = ("auto", "zeta", "xtransformers-1", "xtransformers-2")

# 2.x options with the same meaning as in Zeta / 1.19: handed to the 1.19 translation unchanged.
_XT2_SAME_LAYER_OPTIONS = {
    "dim", "depth", "heads", "rotary_pos_emb", "rotary_emb_dim", "rotary_xpos", "rotary_xpos_scale_base",
    "rotary_interpolation_factor", "rotary_base_rescale_factor", "alibi_pos_bias", "alibi_num_heads", "rel_pos_bias",
    "rel_pos_num_buckets", "rel_pos_max_distance", "use_scalenorm", "use_rmsnorm", "use_simple_rmsnorm", "pre_norm",
    "sandwich_norm", "residual_attn", "macaron", "scale_residual_constant", "layer_dropout",
    "zero_init_branch_output", "attn_dim_head", "attn_kv_heads", "attn_one_kv_head", "attn_dropout", "attn_qk_norm",
    "attn_qk_norm_groups", "attn_qk_norm_scale", "attn_num_mem_kv", "attn_head_scale", "attn_gate_values",
    "attn_on_attn", "attn_add_zero_kv", "attn_value_dim_head", "attn_flash", "attn_onnxable", "attn_zero_init_output",
    "ff_mult", "ff_glu", "ff_swish", "ff_relu_squared", "ff_no_bias", "ff_post_act_ln", "ff_dropout",
    "ff_zero_init_output", "dynamic_pos_bias", "dynamic_pos_bias_log_distance", "dynamic_pos_bias_mlp_depth",
    "shift_tokens", "gate_residual", "custom_layers", "par_ratio", "sandwich_coef", "attn_max_attend_past",
    "attn_sparse_topk",
}
# 2.x options translated here (2.x-only names, or values that need checking).
_XT2_OWN_LAYER_OPTIONS = {
    "norm_add_unit_offset", "attn_pre_talking_heads", "attn_post_talking_heads", "scale_residual",
    "disable_abs_pos_emb", "pre_norm_has_final_norm", "verbose",
}
_XT2_SAME_TRANSFORMER_OPTIONS = {
    "num_tokens", "max_seq_len", "emb_dim", "emb_dropout", "post_emb_norm", "num_memory_tokens", "tie_embedding",
    "logits_dim", "use_abs_pos_emb", "scaled_sinu_pos_emb", "l2norm_embed", "emb_frac_gradient",
}
_XT2_OWN_TRANSFORMER_OPTIONS = {"tie_embedding_scale", "max_mem_len", "shift_mem_down", "attn_z_loss_weight"}
# Names only 2.x has: their presence in the kwargs marks a 2.x checkpoint.
_XT2_ONLY_OPTIONS = {
    "norm_add_unit_offset", "attn_pre_talking_heads", "attn_post_talking_heads", "tie_embedding_scale",
    "disable_abs_pos_emb",
}
XT2_LAYER_OPTIONS = sorted(_XT2_SAME_LAYER_OPTIONS | _XT2_OWN_LAYER_OPTIONS)
XT2_TRANSFORMER_OPTIONS = sorted(_XT2_SAME_TRANSFORMER_OPTIONS | _XT2_OWN_TRANSFORMER_OPTIONS)
# Hyperparameters of features that are off: harmless at 2.x's default value (an explicit kwargs dump carries them).
_XT2_INERT_DEFAULTS = {
    "dynamic_tanh_init_alpha": 1.0, "softclamp_output_value": 30.0, "layer_integrate_use_softmax": True,
    "num_residual_streams": 1, "hyper_conn_sinkhorn_iters": 5, "adaptive_condition_mlp_expansion": 4,
    "learned_value_residual_mix": True, "layerscale_init_value": 0.0, "attn_gumbel_softmax_temp": 1.0,
    "attn_gumbel_softmax_hard": True, "attn_logit_softclamp_value": 50.0, "attn_laser_softclamp_value": 15.0,
    "attn_low_rank_silu_gates": True, "attn_cope_max_pos": 16, "attn_rel_proj_num_distance_basis": 16,
    "attn_rel_proj_max_dist": 1024, "attn_data_dependent_alibi_per_row_dim_head": 8,
    "ff_glu_gate_softclamp_value": 4.0, "ff_glu_up_softclamp_value": 25.0, "train_max_recycle_steps": 4,
    "max_looped_steps": 4, "num_cls_tokens": 1, "num_pooled_tokens": 1, "attn_pool_depth": 1,
    "mixture_of_softmax_k": 4, "num_output_heads": 1,
}


def _is_off(key: str, value) -> bool:
    """An option zeta_hf does not implement is harmless when it is switched off (2.x features are opt-in)."""
    if key in _XT2_INERT_DEFAULTS:
        return value == _XT2_INERT_DEFAULTS[key]
    return value is None or value is False or (not isinstance(value, bool) and value in (0, 0.0, (), [], {}))


def _refuse_xt2_options(owner: str, kwargs: dict, supported: list[str]) -> None:
    refused = sorted(k for k, v in kwargs.items() if k not in supported and not _is_off(k, v))
    if refused:
        raise ValueError(
            f"x-transformers 2.x {owner} option(s) {refused} cannot be converted: zeta_hf does not implement them, "
            f"and dropping them would change the model's numbers. Supported {owner} options: {', '.join(supported)}."
        )


def _xt2_check_value(name: str, value, allowed: str, ok: bool) -> None:
    if not ok:
        raise ValueError(
            f"x-transformers 2.x option `{name}={value!r}` cannot be converted: only {allowed} is supported."
        )


def config_from_xtransformers2_kwargs(transformer_kwargs: dict, source_version: str | None = None) -> ZetaConfig:
    """Translate x-transformers 2.x `TransformerWrapper(...)` kwargs (with `attn_layers` as a dict holding
    `"type": "Decoder" | "Encoder"`) into a `ZetaConfig` that computes what 2.x computes, or raise naming the
    options that cannot be converted."""
    kw, layer_kw, kind = _split_xt2_kwargs(transformer_kwargs)
    _refuse_xt2_options("TransformerWrapper", kw, XT2_TRANSFORMER_OPTIONS)
    _refuse_xt2_options(kind, layer_kw, XT2_LAYER_OPTIONS)
    _check_xt2_values(kw, layer_kw)
    _check_xt2_combinations(layer_kw)

    zeta_layers = {k: v for k, v in layer_kw.items() if k in _XT2_SAME_LAYER_OPTIONS}
    zeta_layers["scale_residual"] = layer_kw.get("scale_residual", False)
    if layer_kw.get("attn_pre_talking_heads", False):
        zeta_layers["attn_talking_heads"] = True
    zeta_transformer = {k: v for k, v in kw.items() if k in _XT2_SAME_TRANSFORMER_OPTIONS}
    if layer_kw.get("disable_abs_pos_emb"):
        zeta_transformer["use_abs_pos_emb"] = False
    layers = _layers_from_kwargs({**zeta_layers, "type": kind})
    return config_from_zeta_kwargs(zeta_transformer, layers, **_xt2_overrides(kw, layer_kw, source_version))


def _split_xt2_kwargs(transformer_kwargs: dict) -> tuple[dict, dict, str]:
    """(TransformerWrapper kwargs, attention-layer kwargs, "Decoder" | "Encoder"), as copies."""
    kw = dict(transformer_kwargs)
    layer_kw = kw.pop("attn_layers", None)
    if not isinstance(layer_kw, dict):
        raise ValueError("`attn_layers` must be a dict of the Decoder / Encoder kwargs with a 'type' entry.")
    layer_kw = dict(layer_kw)
    kind = layer_kw.pop("type", "Decoder")
    if kind not in ("Decoder", "Encoder"):
        raise ValueError(f"`attn_layers.type` must be 'Decoder' or 'Encoder' for x-transformers 2.x, but got {kind!r}.")
    return kw, layer_kw, kind


def _check_xt2_values(kw: dict, layer_kw: dict) -> None:
    """Options whose 2.x meaning zeta_hf has for some values only."""
    for name in ("max_mem_len", "shift_mem_down"):  # 2.x's recurrence differs (empty mems at 0, normed mems)
        _xt2_check_value(name, kw.get(name, 0), "0 (no Transformer-XL recurrence)", kw.get(name, 0) == 0)
    _xt2_check_value("pre_norm_has_final_norm", layer_kw.get("pre_norm_has_final_norm", True), "True",
                     layer_kw.get("pre_norm_has_final_norm", True) is True)
    scale_residual = layer_kw.get("scale_residual", False)
    _xt2_check_value("scale_residual", scale_residual, "True or False (a float scales branches differently)",
                     isinstance(scale_residual, bool))
    pre_th, post_th = layer_kw.get("attn_pre_talking_heads", False), layer_kw.get("attn_post_talking_heads", False)
    _xt2_check_value("attn_pre_talking_heads", pre_th, "talking heads before and after the softmax together "
                     "(attn_pre_talking_heads == attn_post_talking_heads)", bool(pre_th) == bool(post_th))
    heads = layer_kw.get("heads", 8)
    # one head and no output projection in 2.x: zeta_hf always has one
    _xt2_check_value("heads", heads, "more than one head", heads != 1)
    shifts = layer_kw.get("shift_tokens", 0)
    if isinstance(shifts, (list, tuple)):
        raise ValueError(
            f"x-transformers 2.x option `shift_tokens={shifts!r}` cannot be converted: only one integer for every "
            "layer is supported (2.x reads a list as one shift per layer only when it is a tuple)."
        )


def _check_xt2_combinations(layer_kw: dict) -> None:
    """Pairs of options that 2.x combines differently from zeta_hf (each alone converts)."""
    rotary = layer_kw.get("rotary_pos_emb", False) or layer_kw.get("rotary_xpos", False)
    groups = layer_kw.get("attn_qk_norm_groups", 1)
    if layer_kw.get("attn_qk_norm") and groups != 1 and (rotary or layer_kw.get("attn_num_mem_kv", 0)):
        raise ValueError(
            f"x-transformers 2.x option `attn_qk_norm_groups={groups}` cannot be converted together with rotary "
            "positions or `attn_num_mem_kv`: only `attn_qk_norm_groups=1` is supported there."
        )
    biases = [name for name in ("alibi_pos_bias", "rel_pos_bias", "dynamic_pos_bias") if layer_kw.get(name)]
    if layer_kw.get("attn_num_mem_kv", 0) and biases:
        # 2.x gives its memory key / values no position bias; zeta_hf places them on the key axis (as 1.19 does)
        raise ValueError(
            f"x-transformers 2.x option `attn_num_mem_kv={layer_kw['attn_num_mem_kv']}` cannot be converted together "
            f"with `{biases[0]}=True`: memory key / values are supported with rotary, absolute or no positions."
        )
    if layer_kw.get("attn_num_mem_kv", 0) and layer_kw.get("attn_max_attend_past") is not None:
        # 2.x keeps memory key / values visible to every query; zeta_hf windows them by their key-axis position
        raise ValueError(
            f"x-transformers 2.x option `attn_num_mem_kv={layer_kw['attn_num_mem_kv']}` cannot be converted together "
            "with `attn_max_attend_past`: use one or the other."
        )
    if layer_kw.get("disable_abs_pos_emb") is False and (rotary or layer_kw.get("rel_pos_bias")):
        raise ValueError("x-transformers 2.x option `disable_abs_pos_emb=False` with rotary or T5 positions cannot be "
                         "converted: zeta_hf turns absolute positions off for those.")


def _xt2_overrides(kw: dict, layer_kw: dict, source_version: str | None) -> dict:
    """The ZetaConfig fields where 2.x computes differently from Zeta / 1.19 (see ZetaConfig's 2.x section)."""
    pre_th = layer_kw.get("attn_pre_talking_heads", False)
    dim, dim_head = layer_kw["dim"], layer_kw.get("attn_dim_head", 64)
    overrides = dict(
        converted_from=f"x-transformers {source_version or '2.x'}",
        norm_bias=False,  # 2.x's LayerNorm has no bias anywhere
        norm_unit_offset=bool(layer_kw.get("norm_add_unit_offset", True)),
        scalenorm_dim_scale=bool(layer_kw.get("use_scalenorm", False)),
        gate_values_bias=False,
        lm_head_bias=False,
        xl_memory=False,
        talking_heads_residual=bool(pre_th),
        sparse_topk_mode="top_k",
    )
    if kw.get("tie_embedding"):
        scale = kw.get("tie_embedding_scale")
        overrides["tie_embedding_scale"] = float(dim**-0.5 if scale is None else scale)
    if layer_kw.get("rotary_pos_emb", False) or layer_kw.get("rotary_xpos", False):
        # 2.x rotates queries and keys only, over dim_head // 2 features unless told otherwise
        overrides["rotary_rotate_values"] = False
        overrides["rotary_emb_dim"] = layer_kw.get("rotary_emb_dim") or dim_head // 2
    return overrides


def _interleaved_to_half(rot_dim: int, head_dim: int) -> torch.Tensor:
    """Feature order that turns 2.x's interleaved rotary pairs (2i, 2i + 1) into zeta_hf's halves (i, i + rot/2)."""
    return torch.cat((torch.arange(0, rot_dim, 2), torch.arange(1, rot_dim, 2), torch.arange(rot_dim, head_dim)))


def xtransformers2_to_zeta_layout(state: dict[str, torch.Tensor], config: ZetaConfig) -> dict[str, torch.Tensor]:
    """Rewrite a 2.x state dict into the Zeta 1.19 layout `convert_state_dict` reads.

    Renames `gamma` (2.x's bias-less LayerNorm) to `weight`, and reorders query / key features so that 2.x's
    interleaved rotary pairs become zeta_hf's rotate-half pairs: the same dot products, so the same attention, and
    the same model under further training (a permutation of parameters).
    """
    rot = None
    if config.position_embedding == "rotary":
        rot = _interleaved_to_half(config.rotary_emb_dim, config.head_dim)
    out = {}
    for key, tensor in state.items():
        if key.endswith(".gamma"):
            key = key.removesuffix(".gamma") + ".weight"
        if rot is not None and re.search(r"\.(to_q|to_k)\.weight$", key):
            d = config.head_dim
            tensor = tensor.view(-1, d, tensor.shape[-1])[:, rot].reshape_as(tensor)  # (heads * d, dim) rows by head
        if rot is not None and key.endswith(".mem_k"):
            tensor = tensor[..., rot]  # (kv_heads, n, d)
        out[key] = tensor
    return out


def detect_source(state: dict[str, torch.Tensor], transformer_kwargs: dict) -> str:
    """"xtransformers-2" when the checkpoint shows a 2.x marker, else "zeta" (1.19; see `convert_zeta_checkpoint`)."""
    layer_kw = transformer_kwargs.get("attn_layers")
    names = set(transformer_kwargs) | (set(layer_kw) if isinstance(layer_kw, dict) else set())
    if names & _XT2_ONLY_OPTIONS or any(k.endswith(".gamma") for k in state):
        return "xtransformers-2"
    if "to_logits.weight" in state and "to_logits.bias" not in state:  # 1.19's untied head always has a bias
        return "xtransformers-2"
    return "zeta"


def _has_1x_marker(state: dict[str, torch.Tensor]) -> bool:
    """1.19 LayerNorms carry biases and its untied head a bias; 2.x has neither."""
    return "to_logits.bias" in state or any(
        re.fullmatch(r"attn_layers\.(final_norm|layers\.\d+\.0\.\d)\.bias", k) for k in state
    )


def _layers_from_kwargs(layer_kwargs: dict):
    layer_kwargs = dict(layer_kwargs)
    kind = layer_kwargs.pop("type", "Decoder")
    classes = {"Decoder": Decoder, "Encoder": Encoder}
    if kind not in classes:
        raise ValueError(f"`attn_layers.type` must be 'Decoder' or 'Encoder', but got {kind!r}.")
    return classes[kind](**layer_kwargs)


def convert_zeta_checkpoint(
    zeta_state: dict[str, torch.Tensor],
    transformer_kwargs: dict,
    output_dir: str | Path | None = None,
    source: str = "auto",
    source_version: str | None = None,
) -> ZetaForCausalLM:
    """Build a `ZetaForCausalLM` with the weights of a Zeta / x-transformers model; save it to `output_dir` when given.

    `transformer_kwargs` are the `Transformer(...)` / `TransformerWrapper(...)` kwargs, with `attn_layers` either a
    zeta_hf `Decoder` / `Encoder` or a dict of its kwargs plus `"type": "Decoder" | "Encoder"`. `source` is "zeta" or
    "xtransformers-1" (x-transformers 1.19, what Zeta is), "xtransformers-2" (x-transformers 2.x), or "auto": 2.x
    when the checkpoint has a 2.x marker (a bias-less `gamma` LayerNorm, a bias-less untied head, a 2.x-only
    option), otherwise 1.19, with a warning when nothing tells the two apart. `source_version` (e.g. "2.31.10") is
    recorded in `config.converted_from`.
    """
    if source not in SOURCES:
        raise ValueError(f"`source` must be one of {list(SOURCES)}, but got {source!r}.")
    if source == "auto":
        source = detect_source(zeta_state, transformer_kwargs)
        if source == "zeta" and not _has_1x_marker(zeta_state):
            warnings.warn(
                "Nothing in this checkpoint tells x-transformers 1.19 (Zeta) from 2.x apart; converting it as 1.19. "
                "Pass source='xtransformers-2' (`--source xtransformers-2`) if it was trained with x-transformers 2.x.",
                stacklevel=2,
            )
    if source == "xtransformers-2":
        if not isinstance(transformer_kwargs.get("attn_layers"), dict):
            raise ValueError("For an x-transformers 2.x checkpoint, `attn_layers` must be a dict of its kwargs.")
        config = config_from_xtransformers2_kwargs(transformer_kwargs, source_version)
        zeta_state = xtransformers2_to_zeta_layout(zeta_state, config)
    else:
        kwargs = dict(transformer_kwargs)
        layers = kwargs.pop("attn_layers")
        if isinstance(layers, dict):
            layers = _layers_from_kwargs(layers)
        default_name = "Zeta (x-transformers 1.19)" if source == "zeta" else "x-transformers 1.19"
        converted_from = f"{default_name.split(' (')[0]} {source_version}" if source_version else default_name
        # Zeta 1.19's sparse top-k drops the k largest scores; a converted checkpoint keeps that behaviour.
        config = config_from_zeta_kwargs(kwargs, layers, sparse_topk_mode="zeta_inverted",
                                         converted_from=converted_from)
    model = ZetaForCausalLM(config)
    state = convert_state_dict(zeta_state, config)
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"Checkpoint does not match the configuration: missing {missing}, unexpected {unexpected}.")
    model.eval()
    if output_dir is not None:
        model.save_pretrained(output_dir)
    return model


def load_zeta_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A Zeta state dict saved with `torch.save`, read without running any code in it (`weights_only=True`)."""
    try:
        state = load_weights_only(path)
    except OSError:
        raise  # a missing or unreadable file says so itself
    except Exception as err:  # refused by weights_only (UnpicklingError), or not a torch file at all
        raise ValueError(
            f"--checkpoint {str(path)!r}: file is not a checkpoint written by torch.save of a state dict, so it was "
            f"not loaded (nothing in it was run): {str(err).splitlines()[0] if str(err) else type(err).__name__}"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # the common {"state_dict": ...} wrapper
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            f"--checkpoint {str(path)!r}: file is not a checkpoint written by torch.save of a state dict (it holds a "
            f"{type(state).__name__}, not a mapping of names to tensors)."
        )
    return state


def check_output_dir(path: Path, overwrite: bool) -> None:
    """Refuse, before anything is read or written, an --output-dir that is a file, lies under a file, or holds files."""
    if problem := folder_problem("--output-dir", path):
        raise ValueError(problem)
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise ValueError(f"--output-dir {str(path)!r} is not empty; pass --overwrite to replace the model in it, or "
                         "choose another folder.")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="torch.save'd state dict of the Zeta Transformer")
    parser.add_argument("--kwargs", required=True, help="JSON file with the Transformer constructor kwargs")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--source", choices=SOURCES, default="auto",
                        help="library that wrote the checkpoint (default: auto, 2.x when it shows 2.x markers)")
    parser.add_argument("--source-version", default=None,
                        help="version of that library (e.g. 2.31.10), recorded in config.json `converted_from`")
    parser.add_argument("--overwrite", action="store_true",
                        help="allow replacing the model in a non-empty --output-dir")
    args = parser.parse_args(argv)
    check_output_dir(Path(args.output_dir), args.overwrite)
    state = load_zeta_state_dict(args.checkpoint)
    kwargs = json.loads(Path(args.kwargs).read_text())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = convert_zeta_checkpoint(state, kwargs, args.output_dir, source=args.source,
                                        source_version=args.source_version)
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    print(f"Saved ZetaForCausalLM ({model.config.converted_from}) to {args.output_dir}")


if __name__ == "__main__":
    main()
