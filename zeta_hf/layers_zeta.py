"""Building blocks of a Zeta layer stack: norms, attention (eager reference + registry dispatch), feedforward,
residual connections, token shifting, and `ZetaLayer`, one residual branch with its norms.

Each block is built from `(config, layer_idx)`; options that are off are `None` / `nn.Identity()`, so every
`forward` reads straight through.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import Cache, DynamicLayer
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .configuration_zeta import ZetaConfig
from .positional_zeta import apply_rotary, l2norm

# --------------------------------------------------------------------------------------------------------------------
# Norms and activations, chosen by name
# --------------------------------------------------------------------------------------------------------------------


def scale_rows(x: torch.Tensor, numerator: float | torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """`x * numerator / max(||x||, eps)` over the last dimension, in `x`'s dtype.

    The norms multiply `x` by one per-row factor instead of dividing by the norm and then scaling: one full-size
    operation fewer each way, which is ~40% of a norm's forward + backward time in training. Same function as
    x-transformers' `F.normalize(x) * scale`; in float32 the rounding differs in the last bit (~1e-7 relative). A
    bfloat16 / float16 input is normalised in float32 and rounded once, as transformers' own RMSNorms do: a factor
    rounded to bfloat16 would put one shared rounding error on the whole row.
    """
    wide = x if x.dtype in (torch.float32, torch.float64) else x.float()
    out = wide * (numerator / torch.linalg.vector_norm(wide, dim=-1, keepdim=True).clamp_min(eps))
    return out if out.dtype == x.dtype else out.to(x.dtype)  # no dispatch on the float32 decode path


class ZetaRMSNorm(nn.Module):
    """Zeta's RMSNorm: `normalize(x) * sqrt(dim) * weight` (no epsilon).

    With `unit_offset` (x-transformers 2.x) the gain is `weight + 1` and `weight` starts at 0, so weight decay pulls
    the gain towards 1 instead of 0.
    """

    def __init__(self, dim: int, eps: float = 0.0, unit_offset: bool = False):
        super().__init__()
        self.scale = dim**0.5
        self.unit_offset = unit_offset
        self.weight = nn.Parameter(torch.zeros(dim) if unit_offset else torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return scale_rows(x, self.scale) * (self.weight + 1.0 if self.unit_offset else self.weight)


class ZetaSimpleRMSNorm(nn.Module):
    """RMSNorm without a learned gain."""

    def __init__(self, dim: int, eps: float = 0.0):
        super().__init__()
        self.scale = dim**0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return scale_rows(x, self.scale)


class ZetaScaleNorm(nn.Module):
    """ScaleNorm: `x / max(||x||, eps) * g` with one learned scalar `g` (initialised to `dim ** -0.5`).

    x-transformers 2.x's variant (`dim_scale`) is `x / ||x|| * sqrt(dim) * g` with `g` starting at 1, and with
    `unit_offset` the gain is `weight + 1` (weight starting at 0).
    """

    def __init__(self, dim: int, eps: float = 1e-5, unit_offset: bool = False, dim_scale: bool = False):
        super().__init__()
        self.eps = eps
        self.unit_offset = unit_offset
        self.scale = dim**0.5 if dim_scale else 1.0
        self.weight = nn.Parameter(torch.ones(1) * self.initial_gain(dim, unit_offset, dim_scale))

    @staticmethod
    def initial_gain(dim: int, unit_offset: bool, dim_scale: bool) -> float:
        return 0.0 if unit_offset else (1.0 if dim_scale else dim**-0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gain = self.weight + 1.0 if self.unit_offset else self.weight
        return scale_rows(x, gain * self.scale if self.scale != 1.0 else gain, self.eps)


class ZetaUnitOffsetLayerNorm(nn.LayerNorm):
    """LayerNorm whose gain is `weight + 1` (weight starts at 0), as x-transformers 2.x's `norm_add_unit_offset`."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True):
        super().__init__(dim, eps=eps, bias=bias)
        nn.init.zeros_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight + 1.0, self.bias, self.eps)


NORM_CLASSES = {"layernorm": nn.LayerNorm, "rmsnorm": ZetaRMSNorm, "scalenorm": ZetaScaleNorm, "simple_rmsnorm": ZetaSimpleRMSNorm}


def make_norm(config: ZetaConfig, dim: int | None = None) -> nn.Module:
    """The residual-layer norm named by `config.norm`, with the x-transformers 2.x variants the config asks for."""
    dim, eps = dim or config.hidden_size, config.layer_norm_eps
    if config.norm == "layernorm":
        if config.norm_unit_offset:
            return ZetaUnitOffsetLayerNorm(dim, eps=eps, bias=config.norm_bias)
        return nn.LayerNorm(dim, eps=eps, bias=config.norm_bias)
    if config.norm == "rmsnorm":
        return ZetaRMSNorm(dim, eps=eps, unit_offset=config.norm_unit_offset)
    if config.norm == "scalenorm":
        return ZetaScaleNorm(dim, eps=eps, unit_offset=config.norm_unit_offset, dim_scale=config.scalenorm_dim_scale)
    return NORM_CLASSES[config.norm](dim, eps=eps)


def make_dropout(p: float) -> nn.Module:
    """`nn.Dropout(p)`, or `nn.Identity()` when off: an eval-mode `nn.Dropout` still costs an op per call."""
    return nn.Dropout(p) if p > 0 else nn.Identity()


class ZetaGELU(nn.Module):
    """Exact (erf) GELU, always on PyTorch's own CPU kernel.

    PyTorch hands a contiguous float32 GELU on CPU to oneDNN, which JIT-compiles and keeps a kernel for every new input
    shape: 4-8 ms and a slice of memory per new sequence length (so decoding without a cache, or prompts of many
    lengths, pays it at every length), and 14 us instead of 3 us for the one-row input of a decode step. Same function;
    the two kernels differ in the last bits (~1e-6). Under `torch.compile` the compiler generates its own kernel.
    The backend switch is process-wide: a lock keeps two threads from interleaving their switch and restore (another
    thread's operations in that window only run on PyTorch's own kernels, with the same results).
    """

    _backend_switch = threading.Lock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or torch.compiler.is_compiling():
            return F.gelu(x)
        mkldnn = torch.backends.mkldnn
        with self._backend_switch:
            enabled = mkldnn.enabled
            mkldnn.enabled = False
            try:
                return F.gelu(x)
            finally:
                mkldnn.enabled = enabled


class ReluSquared(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x) ** 2


# name -> (activation class, gated linear unit)
FF_ACTIVATION_CLASSES = {
    "gelu": (ZetaGELU, False),
    "geglu": (ZetaGELU, True),
    "silu": (nn.SiLU, False),
    "swiglu": (nn.SiLU, True),
    "relu_squared": (ReluSquared, False),
    "relu_squared_glu": (ReluSquared, True),
}


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
    min_value = torch.finfo(scores.dtype).min
    if prev_scores is not None:
        scores = scores + prev_scores
    mixed = module.pre_softmax_talking_heads(scores)
    scores = scores + mixed if module.talking_heads_residual else mixed  # x-transformers 2.x adds the mix
    if prev_scores is not None or not isinstance(module.pre_softmax_talking_heads, nn.Identity):
        # Masked scores (finfo.min) carried over by residual attention, then mixed by talking heads, can overflow to
        # +-inf, and inf - inf is NaN, which Zeta propagates into every later layer. Here they stay masked; every
        # score that is finite in Zeta is unchanged.
        scores = torch.nan_to_num(scores, nan=min_value, posinf=-min_value, neginf=min_value)
    topk = module.sparse_topk
    if topk is not None and module.sparse_topk_mode == "zeta_inverted" and topk < scores.shape[-1]:
        # Zeta 1.19 ranks every key (future ones too) and drops the top k instead of keeping them.
        ranked = scores if position_bias is None else scores + position_bias
        scores = scores.masked_fill(ranked >= ranked.topk(topk, dim=-1).values[..., -1:], min_value)
    if attention_mask is not None:
        # masked entries are set, not added (mixed heads may have pushed them to +-inf), and everything stays
        # finite, so fully masked rows and residual attention never give NaN
        scores = torch.where(attention_mask == min_value, min_value, (scores + attention_mask).clamp(min=min_value))
    if topk is not None and module.sparse_topk_mode == "top_k" and topk < scores.shape[-1]:
        scores = scores.masked_fill(scores < sparse_topk_threshold(scores, topk), min_value)
    return scores


def sparse_topk_threshold(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The lowest score (b, h, i, 1) each query keeps: its k-th largest, less a rounding tolerance.

    Scores that are equal in exact arithmetic (a repeated token without positions) come out of matrix products of
    different shapes (a cached step, a padded batch) a few ulps apart, and a strict k-th value would keep a different
    subset of them in each path. Every score within the tolerance of the k-th is kept instead, as x-transformers'
    `scores < kth` keeps exact ties: the same keys are kept on every path, and results only differ from x-transformers
    when two distinct scores lie within 64 ulps of each other (relative to the row's largest; ~8e-6 in float32).
    """
    kth = scores.topk(k, dim=-1).values[..., -1:]
    finite = scores > torch.finfo(scores.dtype).min / 2  # masked keys do not set the scale
    scale = torch.where(finite, scores.abs(), 0).amax(dim=-1, keepdim=True)
    tolerance = 64 * torch.finfo(scores.dtype).eps * scale  # ~8e-6 in float32: a few ulps of a long dot product
    return kth - tolerance


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
        self.needs_scores = config.needs_attention_scores  # talking heads, sparse top-k, residual attention
        self.talking_heads_residual = config.talking_heads_residual

        self.q_proj = nn.Linear(config.hidden_size, h * d, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, kvh * d, bias=False)
        # shared_kv: values are the (un-normalised, un-rotated) key projection
        self.v_proj = None if config.shared_kv else nn.Linear(config.hidden_size, kvh * vd, bias=False)
        # attention-on-attention: the output projection doubles and a GLU gates it
        self.o_proj = nn.Linear(h * vd, config.hidden_size * (2 if config.attn_on_attn else 1), bias=False)
        self.out_glu = nn.GLU() if config.attn_on_attn else nn.Identity()
        # AlphaFold2 value gating (x-transformers 2.x: without a bias)
        self.v_gate = (
            nn.Linear(config.hidden_size, h * vd, bias=config.gate_values_bias) if config.gate_values else None
        )
        self.head_scale = nn.Parameter(torch.ones(h)) if config.head_scale else None  # NormFormer head scaling
        talking = config.talking_heads
        self.pre_softmax_talking_heads = nn.Conv2d(h, h, 1, bias=False) if talking else nn.Identity()
        self.post_softmax_talking_heads = nn.Conv2d(h, h, 1, bias=False) if talking else nn.Identity()
        # initialisation roles, read by ZetaPreTrainedModel._init_weights
        if config.norm_placement == "deepnorm":  # DeepNet: beta gain on values and output, 1 elsewhere
            beta = (8 * config.num_hidden_layers) ** -0.25
            for linear, gain in ((self.q_proj, 1.0), (self.k_proj, 1.0), (self.v_proj, beta), (self.o_proj, beta)):
                if linear is not None:
                    linear.zeta_init = gain
        if config.zero_init_attn_output:
            self.o_proj.zeta_init = "zeros"
        if self.v_gate is not None:
            self.v_gate.zeta_init = "open_gate"
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

    def rotate(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, rotary: tuple) -> tuple:
        """Rotary positions on queries and keys (xpos scales keys by the inverse), and on values as Zeta 1.19 does."""
        (q_cos, q_sin, q_scale, q_index), (k_cos, k_sin, k_scale, k_index) = rotary
        query = apply_rotary(query, q_cos, q_sin, q_scale if q_scale is not None else 1.0, q_index)
        k_scale = 1.0 if k_scale is None else k_scale**-1.0
        key = apply_rotary(key, k_cos, k_sin, k_scale, k_index)
        if self.rotate_values:  # Zeta 1.19 quirk, kept for checkpoint compatibility
            value = apply_rotary(value, k_cos, k_sin, k_scale, k_index)
        return query, key, value

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
        output_attentions: bool = False,
        attention_interface: Callable | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """-> (output, post-softmax weights or None, pre-softmax scores or None). With `output_attentions` the weights
        are always computed: the eager reference serves this call whatever the configured implementation."""
        kwargs.pop("is_causal", None)  # (continuous batching passes one; ours is decided below, per call)
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
            query, key, value = self.rotate(query, key, value, rotary)

        if self.memory_k is not None and (prefill or self.is_cross):
            # learned memory slots enter the key axis at prefill; afterwards they live in the cache
            # Zeta normalises the memory keys over the whole head, whatever `qk_norm_groups` is
            memory_k = self.normalize_qk(self.memory_k, self.k_scale, groups=1).expand(b, -1, -1, -1).to(key.dtype)
            key = torch.cat((memory_k, key), dim=2)
            value = torch.cat((self.memory_v.expand(b, -1, -1, -1).to(value.dtype), value), dim=2)

        if cache is not None and not self.is_cross:
            # continuous batching's paged cache reads (and rewrites) its per-batch indices in this call's kwargs
            key, value = cache.update(key, value, self.layer_idx, **({"kwargs": kwargs} if kwargs else {}))
        if self.add_zero_kv:  # a zero key/value in front lets a query attend to nothing
            key, value = F.pad(key, (0, 0, 1, 0)), F.pad(value, (0, 0, 1, 0))

        scores = None
        dropout = self.attention_dropout if self.training else 0.0
        if self.needs_scores:
            scores = attention_scores(self, query, key, attention_mask, self.scaling, prev_scores, position_bias)
            attn_output, attn_weights = attend(self, scores, value, dropout)
        else:
            # the maps come from the eager reference; the model resolves the configured function once per call
            if output_attentions or attention_interface is None:
                attention_interface = eager_attention_forward if output_attentions else (
                    ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
                )
            attn_output, attn_weights = attention_interface(
                self, query, key, value, attention_mask, dropout=dropout, scaling=self.scaling,
                is_causal=self.is_causal and attention_mask is None and n > 1,
                **kwargs,  # continuous batching's packed lengths (flash)
            )
        if self.head_scale is not None:
            attn_output = attn_output * self.head_scale[:, None]  # (b, n, h, d) * (h, 1)
        attn_output = attn_output.reshape(b, n, -1)  # (b, n, h * d)
        if self.v_gate is not None:
            attn_output = attn_output * self.v_gate(hidden_states).sigmoid()
        return self.out_glu(self.o_proj(attn_output)), attn_weights, scores

    def decode_step(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, cache: Cache, rotary: tuple | None,
        attention_interface: Callable,
    ) -> torch.Tensor:
        """`forward` for one new query per row on a warm cache, in eval, for a module built as
        `ZetaLayer.decode_step_reference` builds it (plain `nn.Linear`s, no hooks): the same operations without the
        module calls and option branches. `attention_mask` is the call's additive bias over the key axis (padding,
        ALiBi / T5 / dynamic bias, window), or None. Where transformers' sdpa function would only call PyTorch's (one
        unmasked query per row, no grouped heads), this calls it directly."""
        b = hidden_states.shape[0]
        query = F.linear(hidden_states, self.q_proj.weight).view(b, 1, -1, self.head_dim).transpose(1, 2)  # (b, h, 1, d)
        key = F.linear(hidden_states, self.k_proj.weight).view(b, 1, -1, self.head_dim).transpose(1, 2)  # (b, kvh, 1, d)
        value = F.linear(hidden_states, self.v_proj.weight).view(b, 1, -1, self.value_dim).transpose(1, 2)
        if self.qk_norm:
            query, key = self.normalize_qk(query, self.q_scale), self.normalize_qk(key, self.k_scale)
        if rotary is not None:
            query, key, value = self.rotate(query, key, value, rotary)
        key, value = cache.update(key, value, self.layer_idx)
        if attention_mask is None and attention_interface is sdpa_attention_forward and self.num_key_value_groups == 1:
            out = F.scaled_dot_product_attention(query, key, value, scale=self.scaling).transpose(1, 2)  # (b, 1, h, d)
        else:
            out, _ = attention_interface(self, query, key, value, attention_mask, dropout=0.0, scaling=self.scaling,
                                         is_causal=False)
        if self.head_scale is not None:
            out = out * self.head_scale[:, None]  # (b, 1, h, d) * (h, 1)
        out = out.reshape(b, 1, -1)  # (b, 1, h * d)
        if self.v_gate is not None:
            out = out * F.linear(hidden_states, self.v_gate.weight, self.v_gate.bias).sigmoid()
        return self.out_glu.forward(F.linear(out, self.o_proj.weight))  # (b, 1, hidden)


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
        self.post_act_norm = nn.LayerNorm(inner, bias=config.norm_bias) if config.ff_post_act_ln else nn.Identity()
        self.dropout = make_dropout(config.ff_dropout)
        self.down_proj = nn.Linear(inner, config.hidden_size, bias=config.ff_bias)
        if config.norm_placement == "deepnorm":
            self.up_proj.zeta_init = self.down_proj.zeta_init = (8 * config.num_hidden_layers) ** -0.25
        if config.zero_init_ff_output:
            self.down_proj.zeta_init = "zeros"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.glu:
            x, gate = self.up_proj(x).chunk(2, dim=-1)
            x = x * self.act(gate)
        else:
            x = self.act(self.up_proj(x))
        return self.down_proj(self.dropout(self.post_act_norm(x)))

    def decode_step(self, x: torch.Tensor) -> torch.Tensor:
        """`forward` in eval (dropout off) for a module built as `ZetaLayer.decode_step_reference` builds it (plain
        `nn.Linear`s, no hooks): the same operations without the module calls."""
        x = F.linear(x, self.up_proj.weight, self.up_proj.bias)
        if self.glu:
            x, gate = x.chunk(2, dim=-1)
            x = x * self.act.forward(gate)
        else:
            x = self.act.forward(x)
        return F.linear(self.post_act_norm.forward(x), self.down_proj.weight, self.down_proj.bias)


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
# KV cache: appending a token copies one token
# --------------------------------------------------------------------------------------------------------------------


class GrowingKVLayer(DynamicLayer):
    """A `DynamicLayer` whose keys/values are views into a buffer with headroom.

    `DynamicLayer` concatenates at every step, copying the whole cache per token and layer: at a context of a few
    thousand tokens that copy costs more than the layer's matmuls. Here a token is written into spare room and the
    buffer is reallocated only when full (with 25% / 256 tokens of headroom), so the copying per token is amortised
    O(1). The first fill of an empty layer keeps the tokens as they came, with no headroom: a forward pass that is never
    extended (scoring, a pipeline's forward) holds exactly its KV, as with `DynamicLayer`; the first append moves
    them into a buffer (one copy of one layer's KV at a time). Values are exactly those `DynamicLayer` would hold. The
    generic methods (crop, beam reorder, batch select, offload) replace `self.keys` by a new tensor; the next update
    notices and adopts it into a fresh buffer.
    """

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self.key_buffer = self.value_buffer = None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if torch.compiler.is_compiling():  # buffer bookkeeping is not traceable: concatenate as DynamicLayer does
            self.key_buffer = self.value_buffer = None
            return super().update(key_states, value_states, *args, **kwargs)
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length = self.get_seq_length()
        buffer = self.key_buffer
        if length == 0 and buffer is None:  # first fill: no headroom until something is appended
            self.keys, self.values = key_states, value_states
            return self.keys, self.values
        total = length + key_states.shape[-2]
        in_place = (
            buffer is not None
            and total <= buffer.shape[-2]
            and buffer.shape[:2] == key_states.shape[:2]
            and buffer.dtype == key_states.dtype
            and (length == 0 or (self.keys.data_ptr() == buffer.data_ptr()
                                 and self.values.data_ptr() == self.value_buffer.data_ptr()))
        )
        if not in_place:  # (re)allocate with headroom and adopt what is cached
            capacity = total + max(256, total // 4)
            b, h = key_states.shape[:2]
            self.key_buffer = key_states.new_empty(b, h, capacity, key_states.shape[-1])
            self.value_buffer = value_states.new_empty(b, h, capacity, value_states.shape[-1])
            if length:
                self.key_buffer[:, :, :length] = self.keys
                self.value_buffer[:, :, :length] = self.values
        self.key_buffer[:, :, length:total] = key_states
        self.value_buffer[:, :, length:total] = value_states
        self.keys = self.key_buffer[:, :, :total]  # (b, h, total, d) view
        self.values = self.value_buffer[:, :, :total]
        return self.keys, self.values

    def reset(self) -> None:
        self.key_buffer = self.value_buffer = None
        super().reset()


def use_growing_kv_layers(cache: Cache, num_layers: int) -> None:
    """Give the first `num_layers` slots of a fresh `DynamicCache` growing layers (others are left as they are)."""
    if getattr(cache, "offloading", False) or cache.layer_class_to_replicate not in (None, DynamicLayer):
        return
    while len(cache.layers) < num_layers:
        cache.layers.append(GrowingKVLayer())
    for i in range(num_layers):
        if type(cache.layers[i]) is DynamicLayer and not cache.layers[i].is_initialized:
            cache.layers[i] = GrowingKVLayer()


# --------------------------------------------------------------------------------------------------------------------
# One residual layer: norm placement, branch, residual
# --------------------------------------------------------------------------------------------------------------------


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
        prev_scores: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        cache: Cache | None = None,
        **attn_kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """-> (hidden states, branch output before the sandwich norm (resiDual sums it), attention weights, scores).

        Tensors that need gradients are positional and the result is a plain tuple, as reentrant activation
        checkpointing requires.
        """
        weights = scores = None
        h = self.pre_norm(hidden_states)
        if self.shift_tokens is not None:
            # Zeta masks shifted features only on the attention branches
            h = self.shift_tokens(h, query_keep if self.mlp is None else None, cache)
        if self.mlp is not None:
            h = self.mlp(h)
        else:
            attention = self.self_attn if self.self_attn is not None else self.cross_attn
            h, weights, scores = attention(h, attention_mask, cache=cache, prev_scores=prev_scores, context=context,
                                           **attn_kwargs)
            if query_keep is not None:  # Zeta zeroes attention outputs at padded queries
                h = h * query_keep
        branch = h * self.branch_scale if self.branch_scale != 1.0 else h
        x = self.residual(self.branch_norm(branch), hidden_states)
        return self.post_norm(x), branch, weights, scores

    # Config fields whose every value `decode_step` computes as `forward` does at a one-token step on a warm cache:
    # sizes, norms, activations and residuals (run through their own `forward`), qk-norm, rotary on values
    # (`ZetaAttention.rotate`), head scaling, value gating, attention-on-attention, macaron's half step, memory
    # key/values (read at prefill only), dropouts (the step runs in eval only) and initialisation roles. A layer serves
    # the step when it is built exactly as these fields alone build it (`serves_decode_step`); an option missing here
    # only costs speed, never correctness.
    DECODE_STEP_FIELDS = (
        "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim", "value_head_dim",
        "norm", "layer_norm_eps", "norm_bias", "norm_unit_offset", "scalenorm_dim_scale",
        "ff_mult", "ff_activation", "ff_bias", "ff_post_act_ln", "macaron",
        "residual_type", "scale_residual", "scale_residual_constant",
        "qk_norm", "qk_norm_groups", "qk_norm_scale", "qk_norm_dim_scale", "rotary_rotate_values",
        "head_scale", "gate_values", "gate_values_bias", "attn_on_attn", "num_memory_kv",
        "attention_dropout", "ff_dropout", "zero_init_attn_output", "zero_init_ff_output",
    )

    @classmethod
    def decode_step_reference(cls, config: ZetaConfig, kind: str, attn_idx: int | None) -> tuple:
        """The signature (`module_signature`) of the layer `decode_step` computes: one built from `config`'s
        `DECODE_STEP_FIELDS` with every other option at its default (on the meta device: no memory, no init)."""
        plain = ZetaConfig(**{name: getattr(config, name) for name in cls.DECODE_STEP_FIELDS})
        with torch.device("meta"):
            return module_signature(cls(plain, 0, kind, attn_idx))

    def serves_decode_step(self, reference: tuple) -> bool:
        """Whether `decode_step` computes exactly what `forward` does for this layer: its modules, settings and
        parameter shapes are those of the `reference` layer, read off the modules themselves. Any option that changes
        a module (a flag, a parameter, a sub-module, a PEFT or quantised replacement of a projection) makes them
        differ, so a new option is left to `forward` until `DECODE_STEP_FIELDS` names it."""
        return self.kind != "cross" and module_signature(self) == reference

    def decode_step(
        self, x: torch.Tensor, attention_mask: torch.Tensor | None, query_keep: torch.Tensor | None, cache: Cache,
        rotary: tuple | None, attention_interface: Callable,
    ) -> torch.Tensor:
        """`forward` for one new token per row on a warm cache, for a layer that `serves_decode_step`: pre-norm,
        branch (`ZetaAttention.decode_step` / `ZetaFeedForward.decode_step`), residual. The mask and the kept
        queries are the call's, as `forward` takes them (None when nothing is padded and no bias lies over the keys).

        The same operations in the same order, so the same numbers bit for bit (the common test mixin checks it over
        every variant), without the module calls and option branches that cost as much as the matrix products of a
        batch-1 decode step. The caller has checked that no module has hooks, so modules run through `forward`,
        skipping `nn.Module.__call__`.
        """
        h = self.pre_norm.forward(x)
        if self.mlp is not None:
            h = self.mlp.decode_step(h)
        else:
            h = self.self_attn.decode_step(h, attention_mask, cache, rotary, attention_interface)
            if query_keep is not None:  # Zeta zeroes attention outputs at padded queries
                h = h * query_keep
        return self.residual.forward(h * self.branch_scale if self.branch_scale != 1.0 else h, x)


# settings that act only in training, and the lean step runs in eval only
_INERT_IN_EVAL = frozenset({"training", "gradient_checkpointing"})


def module_signature(module: nn.Module | None) -> tuple | None:
    """What a module computes apart from its weights' values and dtype: its class, its settings (public attributes;
    a config or a function counts by its class or name), its parameters' and buffers' shapes and its children's
    signatures."""
    if module is None:
        return None
    # (in the order `__init__` set them: a setting added later in another order only makes two signatures differ)
    settings = tuple(
        (name, _setting(value)) for name, value in vars(module).items() if name[0] != "_" and name not in _INERT_IN_EVAL
    )
    children = tuple((name, module_signature(child)) for name, child in module._modules.items())
    return type(module), settings, _shapes(module._parameters), _shapes(module._buffers), children


def _shapes(tensors: dict[str, torch.Tensor | None]) -> tuple:
    return tuple((name, None if t is None else tuple(t.shape)) for name, t in tensors.items())


def _setting(value: object) -> object:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        return tuple(_setting(v) for v in value)
    if isinstance(value, torch.Tensor):
        return "tensor", tuple(value.shape)
    return getattr(value, "__qualname__", type(value))
