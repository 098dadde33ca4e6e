"""Zeta / x-transformers 1.19 language model as a Hugging Face `PreTrainedModel`.

Data flows top to bottom through this file: token ids -> `ZetaEmbeddings` (token + absolute position, prepend, project)
-> memory tokens -> `ZetaLayer`s (each one residual branch: `ZetaAttention` or `ZetaFeedForward`) -> final norm ->
`lm_head`. Positions are explicit tensors along one "key axis" per sequence:

    [learned memory K/V slots | Transformer-XL mems | memory tokens | prepended embeddings | tokens]

Everything before the tokens is a prefix that is written into the KV cache at prefill and never recomputed.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .configuration_zeta import ZetaConfig
from .positional_zeta import (
    ABSOLUTE_POSITION_CLASSES,
    ATTENTION_BIAS_CLASSES,
    AlibiPositionBias,
    RotaryEmbedding,
    ScaledSinusoidalEmbedding,
    T5RelativePositionBias,
    apply_rotary,
    l2norm,
)

# --------------------------------------------------------------------------------------------------------------------
# Norms and activations, chosen by name
# --------------------------------------------------------------------------------------------------------------------


class ZetaRMSNorm(nn.Module):
    """Zeta's RMSNorm: `normalize(x) * sqrt(dim) * weight` (no epsilon)."""

    def __init__(self, dim: int, eps: float = 0.0):
        super().__init__()
        self.scale = dim**0.5
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) * self.scale * self.weight


class ZetaSimpleRMSNorm(nn.Module):
    """RMSNorm without a learned gain."""

    def __init__(self, dim: int, eps: float = 0.0):
        super().__init__()
        self.scale = dim**0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) * self.scale


class ZetaScaleNorm(nn.Module):
    """ScaleNorm: `x / max(||x||, eps) * g` with one learned scalar `g` (initialised to `dim ** -0.5`)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(1) * dim**-0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / x.norm(dim=-1, keepdim=True).clamp(min=self.eps) * self.weight


NORM_CLASSES = {"layernorm": nn.LayerNorm, "rmsnorm": ZetaRMSNorm, "scalenorm": ZetaScaleNorm, "simple_rmsnorm": ZetaSimpleRMSNorm}


def make_norm(config: ZetaConfig, dim: int | None = None) -> nn.Module:
    return NORM_CLASSES[config.norm](dim or config.hidden_size, eps=config.layer_norm_eps)


class ReluSquared(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x) ** 2


# name -> (activation class, gated linear unit)
FF_ACTIVATION_CLASSES = {
    "gelu": (nn.GELU, False),
    "geglu": (nn.GELU, True),
    "silu": (nn.SiLU, False),
    "swiglu": (nn.SiLU, True),
    "relu_squared": (ReluSquared, False),
    "relu_squared_glu": (ReluSquared, True),
}


# --------------------------------------------------------------------------------------------------------------------
# Output types
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class ZetaModelOutput(BaseModelOutputWithPast):
    """`BaseModelOutputWithPast` plus Transformer-XL memories (one per attention layer) when asked for."""

    mems: list[torch.Tensor] | None = None
    memory_states: torch.Tensor | None = None  # final hidden states of the memory tokens (prefill only)
    # with output_hidden_states: the residual stream entering each self-attention layer, memory tokens included
    attention_inputs: tuple[torch.Tensor, ...] | None = None


@dataclass
class ZetaCausalLMOutput(CausalLMOutputWithPast):
    """`CausalLMOutputWithPast` plus Transformer-XL memories and the final hidden states."""

    mems: list[torch.Tensor] | None = None
    last_hidden_state: torch.Tensor | None = None
    attention_inputs: tuple[torch.Tensor, ...] | None = None


# --------------------------------------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------------------------------------


def repeat_kv(hidden_states: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(b, kv_heads, n, d) -> (b, kv_heads * n_rep, n, d); query head h reads key/value head h // n_rep."""
    if n_rep == 1:
        return hidden_states
    b, kv_heads, n, d = hidden_states.shape
    return hidden_states[:, :, None].expand(b, kv_heads, n_rep, n, d).reshape(b, kv_heads * n_rep, n, d)


def attention_scores(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    prev_scores: torch.Tensor | None = None,
    position_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pre-softmax scores (b, h, i, j), in Zeta's order: q k^T * scale, + previous layer's scores (residual
    attention), talking heads, + additive bias/mask, sparse top-k."""
    key = repeat_kv(key, module.num_key_value_groups)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if prev_scores is not None:
        scores = scores + prev_scores
    scores = module.pre_softmax_talking_heads(scores)
    min_value = torch.finfo(scores.dtype).min
    topk = module.sparse_topk
    if topk is not None and module.sparse_topk_mode == "zeta_inverted" and topk < scores.shape[-1]:
        # Zeta 1.19 ranks every key (future ones too) and drops the top k instead of keeping them.
        ranked = scores if position_bias is None else scores + position_bias
        scores = scores.masked_fill(ranked >= ranked.topk(topk, dim=-1).values[..., -1:], min_value)
    if attention_mask is not None:
        # clamp keeps masked entries finite (no -inf), so fully masked rows and residual attention never give NaN
        scores = (scores + attention_mask).clamp(min=min_value)
    if topk is not None and module.sparse_topk_mode == "top_k" and topk < scores.shape[-1]:
        scores = scores.masked_fill(scores < scores.topk(topk, dim=-1).values[..., -1:], min_value)
    return scores


def attend(module: nn.Module, scores: torch.Tensor, value: torch.Tensor, dropout: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax (in float32) over keys, dropout, talking heads, weighted sum of values -> (b, i, h, d), weights."""
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    mixed = module.post_softmax_talking_heads(F.dropout(weights, p=dropout, training=module.training))
    out = torch.matmul(mixed, repeat_kv(value, module.num_key_value_groups))  # (b, h, i, d)
    return out.transpose(1, 2).contiguous(), weights


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference attention: every other implementation must agree with it."""
    scores = attention_scores(module, query, key, attention_mask, scaling)
    return attend(module, scores, value, dropout)


class ZetaAttention(nn.Module):
    """Multi-head attention (self or cross) with GQA, qk-norm, memory key/values, rotary, biases and Zeta's extras."""

    def __init__(self, config: ZetaConfig, layer_idx: int | None, is_cross: bool = False):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx  # index among self-attention layers: the KV cache slot
        self.is_cross = is_cross
        h, kvh, d, vd = config.num_attention_heads, config.num_key_value_heads, config.head_dim, config.value_dim
        self.num_heads, self.num_kv_heads, self.head_dim, self.value_dim = h, kvh, d, vd
        self.num_key_value_groups = h // kvh
        self.is_causal = config.is_causal and not is_cross
        self.qk_norm = config.qk_norm
        self.qk_norm_groups = config.qk_norm_groups
        self.scaling = config.qk_norm_scale if config.qk_norm else d**-0.5
        self.rotate_values = config.rotary_rotate_values
        self.attention_dropout = config.attention_dropout
        self.sparse_topk, self.sparse_topk_mode = config.sparse_topk, config.sparse_topk_mode
        self.add_zero_kv = config.add_zero_kv

        self.q_proj = nn.Linear(config.hidden_size, h * d, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, kvh * d, bias=False)
        # shared_kv: values are the (un-normalised, un-rotated) key projection
        self.v_proj = None if config.shared_kv else nn.Linear(config.hidden_size, kvh * vd, bias=False)
        # attention-on-attention: the output projection doubles and a GLU gates it
        self.o_proj = nn.Linear(h * vd, config.hidden_size * (2 if config.attn_on_attn else 1), bias=False)
        self.out_glu = nn.GLU() if config.attn_on_attn else nn.Identity()
        self.v_gate = nn.Linear(config.hidden_size, h * vd) if config.gate_values else None  # AlphaFold2 value gating
        self.head_scale = nn.Parameter(torch.ones(h)) if config.head_scale else None  # NormFormer head scaling
        talking = config.talking_heads
        self.pre_softmax_talking_heads = nn.Conv2d(h, h, 1, bias=False) if talking else nn.Identity()
        self.post_softmax_talking_heads = nn.Conv2d(h, h, 1, bias=False) if talking else nn.Identity()
        if config.qk_norm and config.qk_norm_dim_scale:
            self.q_scale = nn.Parameter(torch.ones(d))
            self.k_scale = nn.Parameter(torch.ones(d))
        else:
            self.q_scale = self.k_scale = None
        if config.num_memory_kv > 0:
            self.memory_k = nn.Parameter(torch.randn(kvh, config.num_memory_kv, d))
            self.memory_v = nn.Parameter(torch.randn(kvh, config.num_memory_kv, vd))
        else:
            self.memory_k = self.memory_v = None

    def normalize_qk(self, t: torch.Tensor, scale: torch.Tensor | None, groups: int | None = None) -> torch.Tensor:
        if not self.qk_norm:
            return t
        t = l2norm(t, groups or self.qk_norm_groups)
        return t * scale if scale is not None else t

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        rotary: tuple | None = None,
        cache: Cache | None = None,
        mem: torch.Tensor | None = None,
        prefill: bool = True,
        prev_scores: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        position_bias: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        b, n, _ = hidden_states.shape
        if context is not None:
            kv_input = context
        else:  # XL memories join keys and values only, next to the normed input
            kv_input = hidden_states if mem is None else torch.cat((mem, hidden_states), dim=1)
        m = kv_input.shape[1]

        query = self.q_proj(hidden_states).view(b, n, -1, self.head_dim).transpose(1, 2)  # (b, h, n, d)
        key = self.k_proj(kv_input).view(b, m, -1, self.head_dim).transpose(1, 2)  # (b, kvh, m, d)
        value = key if self.v_proj is None else self.v_proj(kv_input).view(b, m, -1, self.value_dim).transpose(1, 2)
        query = self.normalize_qk(query, self.q_scale)
        key = self.normalize_qk(key, self.k_scale)

        if rotary is not None and context is None:
            (q_cos, q_sin, q_scale), (k_cos, k_sin, k_scale) = rotary
            query = apply_rotary(query, q_cos, q_sin, q_scale if q_scale is not None else 1.0)
            k_scale = 1.0 if k_scale is None else k_scale**-1.0
            key = apply_rotary(key, k_cos, k_sin, k_scale)
            if self.rotate_values:  # Zeta 1.19 quirk, kept for checkpoint compatibility
                value = apply_rotary(value, k_cos, k_sin, k_scale)

        if self.memory_k is not None and (prefill or self.is_cross):
            # learned memory slots enter the key axis at prefill; afterwards they live in the cache
            # Zeta normalises the memory keys over the whole head, whatever `qk_norm_groups` is
            memory_k = self.normalize_qk(self.memory_k, self.k_scale, groups=1).expand(b, -1, -1, -1).to(key.dtype)
            key = torch.cat((memory_k, key), dim=2)
            value = torch.cat((self.memory_v.expand(b, -1, -1, -1).to(value.dtype), value), dim=2)

        if cache is not None and not self.is_cross:
            key, value = cache.update(key, value, self.layer_idx)
        if self.add_zero_kv:  # a zero key/value in front lets a query attend to nothing
            key, value = F.pad(key, (0, 0, 1, 0)), F.pad(value, (0, 0, 1, 0))

        scores = None
        dropout = self.attention_dropout if self.training else 0.0
        if self.config.needs_attention_scores:
            scores = attention_scores(self, query, key, attention_mask, self.scaling, prev_scores, position_bias)
            attn_output, attn_weights = attend(self, scores, value, dropout)
        else:
            attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
                self.config._attn_implementation, eager_attention_forward
            )
            attn_output, attn_weights = attention_interface(
                self, query, key, value, attention_mask, dropout=dropout, scaling=self.scaling,
                is_causal=self.is_causal and attention_mask is None and n > 1,
            )
        if self.head_scale is not None:
            attn_output = attn_output * self.head_scale[:, None]  # (b, n, h, d) * (h, 1)
        attn_output = attn_output.reshape(b, n, -1)  # (b, n, h * d)
        if self.v_gate is not None:
            attn_output = attn_output * self.v_gate(hidden_states).sigmoid()
        return self.out_glu(self.o_proj(attn_output)), attn_weights, scores


# --------------------------------------------------------------------------------------------------------------------
# Feedforward
# --------------------------------------------------------------------------------------------------------------------


class ZetaFeedForward(nn.Module):
    """Linear -> activation (optionally gated: one fused projection chunked as value, gate) -> [LayerNorm] -> Linear."""

    def __init__(self, config: ZetaConfig, layer_idx: int):
        super().__init__()
        inner = config.intermediate_size
        activation, self.glu = FF_ACTIVATION_CLASSES[config.ff_activation]
        # Zeta's GLU projection always has a bias; `ff_bias=False` (ff_no_bias) only reaches the plain path.
        self.up_proj = nn.Linear(config.hidden_size, inner * 2 if self.glu else inner, bias=config.ff_bias or self.glu)
        self.act = activation()
        self.post_act_norm = nn.LayerNorm(inner) if config.ff_post_act_ln else nn.Identity()
        self.dropout = nn.Dropout(config.ff_dropout)
        self.down_proj = nn.Linear(inner, config.hidden_size, bias=config.ff_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.glu:
            x, gate = self.up_proj(x).chunk(2, dim=-1)
            x = x * self.act(gate)
        else:
            x = self.act(self.up_proj(x))
        return self.down_proj(self.dropout(self.post_act_norm(x)))


# --------------------------------------------------------------------------------------------------------------------
# Residual connections and token shifting
# --------------------------------------------------------------------------------------------------------------------


class ZetaResidual(nn.Module):
    """`branch + residual * scale` (learned per-feature and/or constant scale; deepnorm sets both)."""

    def __init__(self, config: ZetaConfig):
        super().__init__()
        deepnorm = config.norm_placement == "deepnorm"
        self.residual_scale = nn.Parameter(torch.ones(config.hidden_size)) if (config.scale_residual or deepnorm) else None
        self.constant = (2 * config.num_hidden_layers) ** 0.25 if deepnorm else config.scale_residual_constant

    def forward(self, branch: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        if self.residual_scale is not None:
            residual = residual * self.residual_scale
        if self.constant != 1:
            residual = residual * self.constant
        return branch + residual


class ZetaGRUResidual(nn.Module):
    """Gated residual: a GRU cell whose input is the branch output and whose state is the residual stream."""

    def __init__(self, config: ZetaConfig):
        super().__init__()
        self.gru = nn.GRUCell(config.hidden_size, config.hidden_size)
        self.residual_scale = nn.Parameter(torch.ones(config.hidden_size)) if config.scale_residual else None

    def forward(self, branch: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        if self.residual_scale is not None:
            residual = residual * self.residual_scale
        out = self.gru(branch.reshape(-1, branch.shape[-1]), residual.reshape(-1, residual.shape[-1]))  # (b * n, d)
        return out.reshape_as(branch)


RESIDUAL_CLASSES = {"add": ZetaResidual, "gru": ZetaGRUResidual}


class ZetaTokenShift(nn.Module):
    """Shift feature chunks along the sequence: chunk s of token t takes chunk s of token t - shifts[s].

    With a cache, the last inputs of the previous call are kept in the cache (an extra cache layer per shifting
    layer), so cached decoding equals the full forward.
    """

    def __init__(self, config: ZetaConfig, amount: int, cache_slot: int | None):
        super().__init__()
        low = 0 if config.is_causal else -amount
        self.shifts = tuple(range(low, amount + 1))
        self.max_shift = amount
        self.cache_slot = cache_slot

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None, cache: Cache | None) -> torch.Tensor:
        n = x.shape[1]
        if keep is not None:
            x = x * keep  # padded positions pass on zeros, as at the start of a sequence
        if cache is not None:
            while len(cache.layers) <= self.cache_slot:
                cache.layers.append(DynamicLayer())
            layer = cache.layers[self.cache_slot]
            past = layer.keys[:, 0, -self.max_shift:] if layer.is_initialized and layer.keys.numel() else None
            cache.update(x[:, None], x[:, None, :, :0], self.cache_slot)  # keys (b, 1, n, d); no values
            if past is not None:
                x = torch.cat((past, x), dim=1)
        chunks = x.split(x.shape[-1] // len(self.shifts), dim=-1)
        shifted = [self.shift(chunk, amount) for chunk, amount in zip(chunks, self.shifts)]
        return torch.cat((*shifted, *chunks[len(self.shifts):]), dim=-1)[:, -n:]

    @staticmethod
    def shift(t: torch.Tensor, amount: int) -> torch.Tensor:
        if amount == 0:
            return t
        amount = max(min(amount, t.shape[1]), -t.shape[1])
        return F.pad(t, (0, 0, amount, -amount))  # positive: from the past, negative: from the future


# --------------------------------------------------------------------------------------------------------------------
# One residual layer: norm placement, branch, residual
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class ZetaLayerOutput:
    hidden_states: torch.Tensor
    branch: torch.Tensor  # the branch output before the sandwich norm (resiDual accumulates it)
    attn_weights: torch.Tensor | None = None
    scores: torch.Tensor | None = None


class ZetaLayer(GradientCheckpointingLayer):
    """One residual branch (self-attention, cross-attention or feedforward) with its norms and residual."""

    def __init__(self, config: ZetaConfig, layer_idx: int, kind: str, attn_idx: int | None = None,
                 shift_slot: int | None = None):
        super().__init__()
        self.kind = kind
        placement = config.norm_placement
        self.pre_norm = make_norm(config) if placement in ("pre", "sandwich") else nn.Identity()
        self.branch_norm = make_norm(config) if placement == "sandwich" else nn.Identity()
        self.post_norm = make_norm(config) if placement in ("post", "resi_dual", "deepnorm") else nn.Identity()
        amount = config.layer_shift_tokens[layer_idx]
        self.shift_tokens = ZetaTokenShift(config, amount, shift_slot) if amount > 0 else None
        self.self_attn = ZetaAttention(config, attn_idx) if kind == "attn" else None
        self.cross_attn = ZetaAttention(config, None, is_cross=True) if kind == "cross" else None
        self.mlp = ZetaFeedForward(config, layer_idx) if kind == "ff" else None
        self.residual = RESIDUAL_CLASSES[config.residual_type](config)
        # macaron: two half-weighted feedforwards around the attention
        self.branch_scale = 0.5 if (config.macaron and kind == "ff") else 1.0

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        query_keep: torch.Tensor | None = None,
        cache: Cache | None = None,
        **attn_kwargs,
    ) -> ZetaLayerOutput:
        weights = scores = None
        h = self.pre_norm(hidden_states)
        if self.shift_tokens is not None:
            # Zeta masks shifted features only on the attention branches
            h = self.shift_tokens(h, query_keep if self.mlp is None else None, cache)
        if self.mlp is not None:
            h = self.mlp(h)
        else:
            attention = self.self_attn if self.self_attn is not None else self.cross_attn
            h, weights, scores = attention(h, attention_mask, cache=cache, **attn_kwargs)
            if query_keep is not None:  # Zeta zeroes attention outputs at padded queries
                h = h * query_keep
        branch = h * self.branch_scale
        x = self.residual(self.branch_norm(branch), hidden_states)
        return ZetaLayerOutput(self.post_norm(x), branch, weights, scores)


# --------------------------------------------------------------------------------------------------------------------
# Pretrained base
# --------------------------------------------------------------------------------------------------------------------


class ZetaPreTrainedModel(PreTrainedModel):
    config: ZetaConfig
    config_class = ZetaConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["ZetaLayer"]
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_attention_backend = False
    _can_compile_fullgraph = False

    def save_pretrained(self, save_directory, *args, **kwargs):
        # transformers only lists the saved class in `auto_map`; list all three so `AutoModel` works remotely too.
        self.config.auto_map = {
            **(getattr(self.config, "auto_map", None) or {}),
            "AutoConfig": "configuration_zeta.ZetaConfig",
            "AutoModel": "modeling_zeta.ZetaModel",
            "AutoModelForCausalLM": "modeling_zeta.ZetaForCausalLM",
        }
        return super().save_pretrained(save_directory, *args, **kwargs)

    def _init_weights(self, module: nn.Module) -> None:
        """Zeta's initialisation: PyTorch defaults, kaiming-normal token embedding, randn memory tokens/slots."""
        if isinstance(module, nn.Linear):
            init.kaiming_uniform_(module.weight, a=5**0.5)
            if module.bias is not None:
                bound = module.in_features**-0.5
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, (ZetaRMSNorm,)):
            init.ones_(module.weight)
        elif isinstance(module, ZetaScaleNorm):
            init.constant_(module.weight, module.weight.shape[0] and self.config.hidden_size**-0.5)
        elif isinstance(module, ScaledSinusoidalEmbedding):
            init.constant_(module.scale, self.config.input_dim**-0.5)
            init.copy_(module.inv_freq, module.compute_inv_freq(self.config.input_dim, module.theta))
        elif isinstance(module, RotaryEmbedding):
            init.copy_(module.inv_freq, module.compute_inv_freq())
            init.copy_(module.xpos_scale, module.compute_xpos_scale())
        elif isinstance(module, AlibiPositionBias):
            init.copy_(module.slopes, module.compute_slopes())
        elif isinstance(module, T5RelativePositionBias):
            init.normal_(module.relative_attention_bias.weight)
        elif isinstance(module, nn.Conv2d):  # talking heads
            init.kaiming_uniform_(module.weight, a=5**0.5)
        elif isinstance(module, nn.GRUCell):
            for weight in module.parameters():
                init.uniform_(weight, -(module.hidden_size**-0.5), module.hidden_size**-0.5)
        elif isinstance(module, (ZetaResidual, ZetaGRUResidual)) and module.residual_scale is not None:
            init.ones_(module.residual_scale)
        elif isinstance(module, ZetaAttention):
            self._init_attention(module)
        elif isinstance(module, ZetaFeedForward):
            if self.config.norm_placement == "deepnorm":
                for linear in (module.up_proj, module.down_proj):
                    self._init_deepnorm(linear, gain=self._deepnorm_beta)
            if self.config.zero_init_ff_output:
                init.zeros_(module.down_proj.weight)
                if module.down_proj.bias is not None:
                    init.zeros_(module.down_proj.bias)
        elif isinstance(module, ZetaModel):
            if module.memory_tokens is not None:
                init.normal_(module.memory_tokens)
            std_small = 1e-5 if self.config.l2norm_embed else None
            if isinstance(module.embed_tokens, nn.Embedding):
                if std_small:
                    init.normal_(module.embed_tokens.weight, std=std_small)
                else:
                    init.kaiming_normal_(module.embed_tokens.weight)
            if module.embed_positions is not None and hasattr(module.embed_positions, "emb"):
                init.normal_(module.embed_positions.emb.weight, std=std_small or 1.0)

    @property
    def _deepnorm_beta(self) -> float:
        return (8 * self.config.num_hidden_layers) ** -0.25

    @staticmethod
    def _init_deepnorm(linear: nn.Linear, gain: float) -> None:
        init.xavier_normal_(linear.weight, gain=gain)
        if linear.bias is not None:
            init.zeros_(linear.bias)

    def _init_attention(self, module: "ZetaAttention") -> None:
        """Runs after the module's own Linear children, so the choices here win."""
        if module.q_scale is not None:
            init.ones_(module.q_scale)
            init.ones_(module.k_scale)
        if module.memory_k is not None:
            init.normal_(module.memory_k)
            init.normal_(module.memory_v)
        if module.head_scale is not None:
            init.ones_(module.head_scale)
        if self.config.norm_placement == "deepnorm":  # DeepNet: beta gain on values and output, 1 elsewhere
            for linear, gain in ((module.q_proj, 1.0), (module.k_proj, 1.0), (module.v_proj, self._deepnorm_beta),
                                 (module.o_proj, self._deepnorm_beta)):
                if linear is not None:
                    self._init_deepnorm(linear, gain)
        if module.v_gate is not None:  # gates start fully open
            init.zeros_(module.v_gate.weight)
            init.ones_(module.v_gate.bias)
        if self.config.zero_init_attn_output:
            init.zeros_(module.o_proj.weight)


# --------------------------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------------------------


def _load_embedding_provider(path: str) -> Callable[[int, int], nn.Module]:
    module_name, _, attr = path.partition(":")
    try:
        factory = importlib.import_module(module_name)
        for part in attr.split("."):
            factory = getattr(factory, part)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"`embedding_provider` {path!r} could not be imported: {err}.") from err
    return factory


def unpadded_positions(mask: torch.Tensor) -> torch.Tensor:
    """Positions (b, n) that ignore left padding: each row counts from its first kept token.

    Right padding and holes keep Zeta's index positions, so right-padded batches match Zeta exactly.
    """
    leading_pads = (mask.long().cumsum(-1) == 0).sum(-1, keepdim=True)  # (b, 1)
    return (torch.arange(mask.shape[-1], device=mask.device) - leading_pads).clamp(min=0)


@dataclass
class _Layout:
    """Where everything sits on the key axis for one forward call."""

    past_length: int  # cached key/values (all prefixes included)
    prefix_length: int  # memory K/V slots + XL mems + memory tokens (never masked)
    prepend_length: int  # prepended embeddings (part of the masked sequence, not of the tokens)
    new_prefix: int  # key slots entering before the queries in this call (mem-kv slots + XL mems, prefill only)
    num_queries: int  # rows computed in this call (memory tokens + prepend + tokens)


class ZetaModel(ZetaPreTrainedModel):
    """The Zeta Transformer without its head: token ids -> final-normed hidden states (b, n, dim)."""

    def __init__(self, config: ZetaConfig):
        super().__init__(config)
        if config.embedding_provider is not None:
            self.embed_tokens = _load_embedding_provider(config.embedding_provider)(config.vocab_size, config.input_dim)
        else:
            self.embed_tokens = nn.Embedding(config.vocab_size, config.input_dim)
        abs_cls = ABSOLUTE_POSITION_CLASSES.get(config.absolute_position_embedding)
        self.embed_positions = abs_cls(config) if abs_cls is not None else None
        self.post_emb_norm = nn.LayerNorm(config.input_dim) if config.post_emb_norm else nn.Identity()
        self.embedding_dropout = nn.Dropout(config.embedding_dropout)
        self.project_emb = (
            nn.Linear(config.input_dim, config.hidden_size) if config.input_dim != config.hidden_size else nn.Identity()
        )
        self.memory_tokens = (
            nn.Parameter(torch.randn(config.num_memory_tokens, config.hidden_size)) if config.num_memory_tokens else None
        )
        self.rotary_emb = RotaryEmbedding(config) if config.position_embedding == "rotary" else None
        bias_cls = ATTENTION_BIAS_CLASSES.get(config.position_embedding)
        self.position_bias = bias_cls(config) if bias_cls is not None else None

        # KV cache slots: one per self-attention layer, then one per token-shifting layer (its previous inputs)
        layers, attn_idx, shift_slot = [], 0, config.num_attention_layers
        for layer_idx, kind in enumerate(config.layer_pattern):
            shifts = config.layer_shift_tokens[layer_idx] > 0
            layers.append(ZetaLayer(config, layer_idx, kind, attn_idx if kind == "attn" else None,
                                    shift_slot if shifts else None))
            attn_idx += kind == "attn"
            shift_slot += shifts
        self.layers = nn.ModuleList(layers)
        has_final_norm = config.norm_placement in ("pre", "sandwich", "resi_dual")
        self.norm = make_norm(config) if has_final_norm else nn.Identity()
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.embed_tokens = value

    # ---- input checks: one clear sentence instead of an IndexError deep in torch ----
    def _check_inputs(self, input_ids, inputs_embeds, mems, cache, prepend_embeds, sum_embeds, pos) -> None:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` or `inputs_embeds`.")
        if input_ids is not None:
            if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
                raise TypeError(f"`input_ids` must be an integer tensor, but got dtype {input_ids.dtype}.")
            if input_ids.dim() != 2:
                raise ValueError(f"`input_ids` must have shape (batch, seq_len), but got {tuple(input_ids.shape)}.")
            if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= self.config.vocab_size):
                bad = input_ids[(input_ids < 0) | (input_ids >= self.config.vocab_size)][0].item()
                raise ValueError(
                    f"`input_ids` contains token id {bad}, outside the vocabulary [0, {self.config.vocab_size})."
                )
        seq = input_ids if input_ids is not None else inputs_embeds
        if seq.shape[1] == 0:
            raise ValueError("`input_ids` is an empty sequence: at least one token is needed.")
        b, n = seq.shape[:2]
        width = self.config.input_dim
        for name, tensor, length in (("prepend_embeds", prepend_embeds, None), ("sum_embeds", sum_embeds, n)):
            if tensor is None:
                continue
            if tensor.dim() != 3 or tensor.shape[0] != b or tensor.shape[2] != width or (
                length is not None and tensor.shape[1] != length
            ):
                expected = f"(batch={b}, {'m' if length is None else length}, embedding width={width})"
                raise ValueError(f"`{name}` must have shape {expected}, but got {tuple(tensor.shape)}.")
        if pos is not None and pos.dtype.is_floating_point and pos.shape[-2:] != (n, width):
            raise ValueError(f"`pos` as a float tensor must have shape (.., {n}, {width}), but got {tuple(pos.shape)}.")
        if mems is not None:
            if cache is not None and cache.get_seq_length() > 0:
                raise ValueError("`mems` can only be passed with an empty cache: after prefill they live in the cache.")
            n_attn = self.config.num_attention_layers
            if not isinstance(mems, (list, tuple)) or len(mems) != n_attn:
                got = len(mems) if isinstance(mems, (list, tuple)) else type(mems).__name__
                raise ValueError(f"`mems` must be a list of {n_attn} tensors (one per attention layer), but got {got}.")
            for i, m in enumerate(mems):
                if m.dim() != 3 or m.shape[0] != seq.shape[0] or m.shape[2] != self.config.hidden_size:
                    raise ValueError(
                        f"`mems[{i}]` must have shape (batch={seq.shape[0]}, mem_len, dim={self.config.hidden_size}), "
                        f"but got {tuple(m.shape)}."
                    )
                if m.shape[1] != mems[0].shape[1]:
                    raise ValueError(f"All `mems` must have the same length, but `mems[{i}]` has {m.shape[1]}.")

    # ---- positions along the key axis ----
    def _sequence_positions(self, layout: _Layout, mask: torch.Tensor | None, device) -> torch.Tensor:
        """Positions (b | 1, s) of the sequence rows of this call (prepend + tokens), counted from the first one."""
        s = layout.num_queries - (self.config.num_memory_tokens if layout.past_length == 0 else 0)
        if mask is not None:
            return unpadded_positions(mask)[:, -s:]
        past_seq = layout.past_length - layout.prefix_length if layout.past_length else 0
        return (past_seq + torch.arange(s, device=device))[None]

    def _relative_inputs(self, layout: _Layout, mask: torch.Tensor | None, mem_len: int, device):
        """Rotary cos/sin for queries and new keys, and the additive attention bias (b | 1, h | 1, i, j) or None."""
        cfg, prefill = self.config, layout.past_length == 0
        n_kv_slots = cfg.num_memory_kv
        seq_pos = layout.prefix_length + self._sequence_positions(layout, mask, device)  # key-axis positions
        if prefill and cfg.num_memory_tokens:
            mem_tok_pos = (n_kv_slots + mem_len + torch.arange(cfg.num_memory_tokens, device=device))[None]
            seq_pos = torch.cat((mem_tok_pos.expand(seq_pos.shape[0], -1), seq_pos), dim=1)
        query_pos = seq_pos
        kv_len = layout.past_length + layout.new_prefix + layout.num_queries

        rotary = None
        if self.rotary_emb is not None:
            # rotary counts positions without the memory K/V slots, which are never rotated
            q_rot = query_pos - n_kv_slots
            total = kv_len - n_kv_slots
            q_rotary = self.rotary_emb(q_rot, total)
            k_rotary = q_rotary  # new keys sit where the queries are, unless XL mems precede them
            if prefill and mem_len:
                k_rot = torch.cat((torch.arange(mem_len, device=device)[None].expand(q_rot.shape[0], -1), q_rot), dim=1)
                k_rotary = self.rotary_emb(k_rot, total)
            rotary = (q_rotary, k_rotary)

        padded = mask is not None
        extra = cfg.extra_key_slots
        needs_mask = padded or self.position_bias is not None or cfg.max_attend_past is not None or (
            layout.num_queries > 1
            and (extra > 0 or (cfg.is_causal and (kv_len > layout.num_queries or self._eager_like)))
        )
        if not needs_mask:
            return rotary, None, None

        key_index = torch.arange(kv_len, device=device)
        if padded:
            key_pos = torch.cat(
                (key_index[: layout.prefix_length][None].expand(mask.shape[0], -1),
                 layout.prefix_length + unpadded_positions(mask)), dim=1
            )
        else:
            key_pos = key_index[None]
        dtype = self.dtype
        bias = torch.zeros((), dtype=dtype, device=device)
        if self.position_bias is not None:
            bias = self.position_bias(query_pos, key_pos).to(dtype)  # (b, h, i, j)
        keep = torch.ones((1, 1, 1, kv_len), dtype=torch.bool, device=device)
        if padded:
            prefix = torch.ones(mask.shape[0], layout.prefix_length, dtype=torch.bool, device=device)
            keep = torch.cat((prefix, mask.bool()), dim=1)[:, None, None, :]  # (b, 1, 1, j)
        if cfg.is_causal:
            query_index = kv_len - layout.num_queries + torch.arange(layout.num_queries, device=device)
            keep = keep & (key_index[None, :] <= query_index[:, None])[None, None]  # (b, 1, i, j)
        if cfg.max_attend_past is not None:  # sliding window
            keep = keep & ((query_pos[:, :, None] - key_pos[:, None, :]) <= cfg.max_attend_past)[:, None]
        combined = torch.where(keep, bias, torch.finfo(dtype).min)
        raw_bias = bias if (cfg.sparse_topk_mode == "zeta_inverted" and self.position_bias is not None) else None
        if extra:  # the zero key/value slot in front: always visible, no bias
            combined = F.pad(combined, (extra, 0))
            raw_bias = F.pad(raw_bias, (extra, 0)) if raw_bias is not None else None
        return rotary, combined, raw_bias

    @property
    def _eager_like(self) -> bool:
        return self.config._attn_implementation != "sdpa" or self.config.needs_attention_scores

    # ---- embeddings ----
    def embed(
        self,
        input_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        pos: torch.Tensor | None = None,
        sum_embeds: torch.Tensor | None = None,
        prepend_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token + absolute position (+ sum_embeds) -> post-emb norm -> prepend -> frac-gradient -> dropout -> project."""
        cfg = self.config
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        if cfg.l2norm_embed and inputs_embeds is None:
            x = l2norm(x)
        if pos is not None and pos.dtype.is_floating_point:
            x = x + pos  # an external positional embedding
        elif self.embed_positions is not None:
            ids = pos if pos is not None else position_ids
            if isinstance(self.embed_positions, nn.Module) and hasattr(self.embed_positions, "emb"):
                if ids.numel() and (ids.max() >= cfg.max_position_embeddings or ids.min() < 0):
                    raise ValueError(
                        f"Position {int(ids.max())} is outside the learned absolute position table of size "
                        f"`max_position_embeddings`={cfg.max_position_embeddings}; sequences (and generation) can be at "
                        "most that long with absolute positions."
                    )
            x = x + self.embed_positions(ids)
        if sum_embeds is not None:
            x = x + sum_embeds
        x = self.post_emb_norm(x)
        if prepend_embeds is not None:
            x = torch.cat((prepend_embeds.to(x.dtype), x), dim=1)
        if cfg.emb_frac_gradient < 1:
            x = x * cfg.emb_frac_gradient + x.detach() * (1 - cfg.emb_frac_gradient)
        return self.project_emb(self.embedding_dropout(x))

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        mems: list[torch.Tensor] | None = None,
        output_mems: bool | None = None,
        pos: torch.Tensor | None = None,
        sum_embeds: torch.Tensor | None = None,
        prepend_embeds: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> ZetaModelOutput:
        cfg = self.config
        if "past_key_values" in kwargs and cache is None:
            cache = kwargs.pop("past_key_values")
        output_attentions = output_attentions if output_attentions is not None else cfg.output_attentions
        output_hidden_states = output_hidden_states if output_hidden_states is not None else cfg.output_hidden_states
        use_cache = use_cache if use_cache is not None else (cfg.use_cache and cfg.supports_cache and not self.training)
        self._check_inputs(input_ids, inputs_embeds, mems, cache, prepend_embeds, sum_embeds, pos)
        if use_cache and not cfg.supports_cache:
            raise ValueError(
                "This configuration cannot be cached exactly (an encoder, or `rotary_xpos` with "
                "`rotary_rotate_values`): pass `use_cache=False`."
            )
        if use_cache and cache is None:
            cache = DynamicCache()
        if not use_cache:
            cache = None if cache is None or cache.get_seq_length() == 0 else cache

        seq = input_ids if input_ids is not None else inputs_embeds
        b, n = seq.shape[:2]
        device = seq.device
        past_length = cache.get_seq_length() if cache is not None else 0
        prefill = past_length == 0
        if not prefill and prepend_embeds is not None:
            raise ValueError("`prepend_embeds` can only be passed at prefill, with an empty cache.")
        mem_len = mems[0].shape[1] if mems is not None else 0
        m = prepend_embeds.shape[1] if prepend_embeds is not None else 0
        if prefill:
            prefix_length = cfg.num_memory_kv + mem_len + cfg.num_memory_tokens
            if cache is not None:
                cache.zeta_prefix = (prefix_length, m)  # the cache remembers its own layout
        else:
            prefix_length, m = getattr(cache, "zeta_prefix", (cfg.num_memory_kv + cfg.num_memory_tokens, 0))
        layout = _Layout(
            past_length=past_length,
            prefix_length=prefix_length,
            prepend_length=m,
            new_prefix=(cfg.num_memory_kv + mem_len) if prefill else 0,
            num_queries=(cfg.num_memory_tokens if prefill else 0) + (m if prefill else 0) + n,
        )

        # A mask without padding is dropped, so the common case takes the lean path.
        mask = attention_mask
        if mask is not None:
            expected = past_length - (prefix_length if past_length else 0) + (m if prefill else 0) + n
            if mask.dim() != 2 or mask.shape[0] != b or mask.shape[1] != expected:
                raise ValueError(
                    f"`attention_mask` must have shape (batch={b}, {expected}) covering the cached, prepended and new "
                    f"positions, but got {tuple(mask.shape)}."
                )
            if mask.dtype.is_floating_point:
                raise TypeError(f"`attention_mask` must be a bool or integer 0/1 tensor, but got dtype {mask.dtype}.")
            mask = None if bool(mask.all()) else mask

        if position_ids is None:
            if mask is not None:
                position_ids = unpadded_positions(mask[:, m:])[:, -n:]
            else:
                past_tokens = past_length - prefix_length - m if past_length else 0
                position_ids = (past_tokens + torch.arange(n, device=device))[None]

        x = self.embed(input_ids, inputs_embeds, position_ids, pos, sum_embeds, prepend_embeds)
        if prefill and self.memory_tokens is not None:
            x = torch.cat((self.memory_tokens.to(x.dtype).expand(b, -1, -1), x), dim=1)
        if mems is not None and cfg.shift_mem_down:
            mems = [*mems[cfg.shift_mem_down:], *mems[: cfg.shift_mem_down]]

        rotary, attn_bias, raw_bias = self._relative_inputs(layout, mask, mem_len, device)
        query_keep = None
        if mask is not None:
            rows = mask[:, -(layout.num_queries - (cfg.num_memory_tokens if prefill else 0)):]
            if prefill and cfg.num_memory_tokens:
                rows = torch.cat((torch.ones(b, cfg.num_memory_tokens, dtype=rows.dtype, device=device), rows), dim=1)
            query_keep = rows[..., None].to(x.dtype)  # (b, i, 1)
        cross_mask = self._cross_attention_mask(encoder_hidden_states, encoder_attention_mask, x.dtype)

        n_mem_tok = cfg.num_memory_tokens if prefill else 0
        all_hidden, all_attn, layer_inputs = [], [], []
        prev_scores = prev_cross_scores = None
        outer_residual = x * cfg.resi_dual_scale if cfg.norm_placement == "resi_dual" else None
        for layer in self.layers:
            if self.training and cfg.layer_dropout > 0 and torch.rand(()) < cfg.layer_dropout:
                continue  # stochastic depth
            if output_hidden_states:
                all_hidden.append(x[:, n_mem_tok:])
            if layer.kind == "attn":
                layer_inputs.append(x)
                mem = None if mems is None else mems[layer.self_attn.layer_idx].to(x.dtype)  # raw, as in Zeta
                out = layer(x, attn_bias, query_keep, cache, rotary=rotary, mem=mem, prefill=prefill,
                            prev_scores=prev_scores, position_bias=raw_bias)
                prev_scores = out.scores if cfg.residual_attn else None
            elif layer.kind == "cross":
                out = layer(x, cross_mask, query_keep, cache, context=encoder_hidden_states,
                            prev_scores=prev_cross_scores)
                prev_cross_scores = out.scores if cfg.cross_residual_attn else None
            else:
                out = layer(x, None, query_keep, cache)
            x = out.hidden_states
            if outer_residual is not None:
                outer_residual = outer_residual + out.branch * cfg.resi_dual_scale
            if output_attentions and layer.kind != "ff":
                all_attn.append(None if out.attn_weights is None else out.attn_weights[:, :, n_mem_tok:])
        x = x + self.norm(outer_residual) if outer_residual is not None else self.norm(x)

        new_mems = None
        if output_mems:
            new_mems = []
            for i, hidden in enumerate(layer_inputs):
                if mems is not None:
                    hidden = torch.cat((mems[i], hidden), dim=1)
                if cfg.max_mem_len:
                    hidden = hidden[:, -cfg.max_mem_len:]
                new_mems.append(hidden.detach())

        memory_states, x = x[:, :n_mem_tok], x[:, n_mem_tok:]
        if output_hidden_states:
            all_hidden.append(x)
        return ZetaModelOutput(
            last_hidden_state=x,
            cache=cache if use_cache else None,
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
            attentions=tuple(all_attn) if output_attentions else None,
            mems=new_mems,
            memory_states=memory_states if n_mem_tok else None,
            attention_inputs=tuple(layer_inputs) if output_hidden_states else None,
        )

    def _cross_attention_mask(self, context: torch.Tensor | None, context_mask: torch.Tensor | None, dtype) -> torch.Tensor | None:
        """Additive mask (b, 1, 1, m) over the encoder states (plus memory slots in front), or None."""
        cfg = self.config
        if "cross" not in cfg.layer_pattern:
            if context is not None:
                raise ValueError("`encoder_hidden_states` was passed, but this model has no cross-attention layers.")
            return None
        if context is None:
            raise ValueError("This model has cross-attention layers: pass `encoder_hidden_states` (Zeta's `context`).")
        if context.dim() != 3 or context.shape[-1] != cfg.hidden_size:
            raise ValueError(
                f"`encoder_hidden_states` must have shape (batch, length, {cfg.hidden_size}), but got {tuple(context.shape)}."
            )
        if context_mask is None:
            return None
        if context_mask.shape != context.shape[:2]:
            raise ValueError(
                f"`encoder_attention_mask` must have shape {tuple(context.shape[:2])}, but got {tuple(context_mask.shape)}."
            )
        keep = F.pad(context_mask.bool(), (cfg.num_memory_kv + cfg.extra_key_slots, 0), value=True)
        return torch.where(keep, 0.0, torch.finfo(dtype).min).to(dtype)[:, None, None, :]


class ZetaForCausalLM(ZetaPreTrainedModel, GenerationMixin):
    """Zeta Transformer with its logits head (`to_logits`), for `generate()`, `Trainer` and `pipeline`."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: ZetaConfig):
        super().__init__(config)
        self.model = ZetaModel(config)
        # Zeta's `to_logits` has a bias unless the head reuses the embedding matrix.
        self.lm_head = nn.Linear(config.hidden_size, config.output_dim, bias=not config.tie_word_embeddings)
        self.post_init()
        if not config.supports_cache:
            self.generation_config.use_cache = False

    def generate(self, inputs: torch.Tensor | None = None, generation_config=None, **kwargs):
        """`GenerationMixin.generate`, refusing up front a request that would run past the absolute position table."""
        if self.config.absolute_position_embedding == "learned":
            prompt = inputs if inputs is not None else kwargs.get("input_ids")
            gen = generation_config or self.generation_config
            max_new = kwargs.get("max_new_tokens", gen.max_new_tokens)
            if prompt is not None and prompt.dim() == 2:
                mask = kwargs.get("attention_mask")
                longest = int(mask.sum(-1).max()) if mask is not None else prompt.shape[1]
                if max_new is None:
                    max_new = kwargs.get("max_length", gen.max_length) - prompt.shape[1]
                if longest + max_new > self.config.max_position_embeddings:
                    raise ValueError(
                        f"Generating {max_new} new tokens after a prompt of {longest} would reach position "
                        f"{longest + max_new - 1}, past the learned absolute position table "
                        f"(`max_position_embeddings`={self.config.max_position_embeddings})."
                    )
        return super().generate(inputs, generation_config=generation_config, **kwargs)

    def get_output_embeddings(self) -> nn.Module | None:
        return self.lm_head if self.config.logits_dim in (None, self.config.vocab_size) else None

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.lm_head = new_embeddings

    @classmethod
    def from_transformer(cls, transformer: nn.Module) -> "ZetaForCausalLM":
        """The Hugging Face model behind a seed-compatible `zeta_hf.Transformer` (same modules, same weights)."""
        return transformer.to_hf()

    def prepare_inputs_for_generation(self, input_ids, cache=None, mems=None, **kwargs):
        model_inputs = super().prepare_inputs_for_generation(input_ids, cache=cache, **kwargs)
        # XL memories enter at prefill only; afterwards they are part of the cache
        if mems is not None and (cache is None or cache.get_seq_length() == 0):
            model_inputs["mems"] = mems
        return model_inputs

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        mems: list[torch.Tensor] | None = None,
        output_mems: bool | None = None,
        pos: torch.Tensor | None = None,
        sum_embeds: torch.Tensor | None = None,
        prepend_embeds: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> ZetaCausalLMOutput | tuple:
        if "past_key_values" in kwargs and cache is None:
            cache = kwargs.pop("past_key_values")
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            mems=mems,
            output_mems=output_mems,
            pos=pos,
            sum_embeds=sum_embeds,
            prepend_embeds=prepend_embeds,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
        )
        hidden = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.output_dim, **kwargs)
        output = ZetaCausalLMOutput(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            mems=outputs.mems,
            last_hidden_state=hidden,
            attention_inputs=outputs.attention_inputs,
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if return_dict else output.to_tuple()


__all__ = ["ZetaPreTrainedModel", "ZetaModel", "ZetaForCausalLM", "ZetaModelOutput", "ZetaCausalLMOutput"]
