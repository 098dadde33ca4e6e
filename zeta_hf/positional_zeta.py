"""Position modules: learned absolute, scaled sinusoidal, rotary (partial, xpos, NTK, interpolation), ALiBi and T5 bias.

Every module takes explicit positions, so cached decoding, left padding and Transformer-XL memories all use the same
code: nothing here keeps state between calls.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_zeta import ZetaConfig


def unit_norm(t: torch.Tensor) -> torch.Tensor:
    """`F.normalize(t, dim=-1)`, the same numbers without its Python-level dispatch (norms run on every decode step)."""
    return t / torch.linalg.vector_norm(t, dim=-1, keepdim=True).clamp_min(1e-12)


def l2norm(t: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """L2-normalise the last dimension, in `groups` equal chunks."""
    if groups == 1:
        return unit_norm(t)
    t = t.unflatten(-1, (groups, -1))  # (..., g, d / g)
    return unit_norm(t).flatten(-2)


class LearnedPositionEmbedding(nn.Module):
    """Zeta's learned absolute table, scaled by `dim ** -0.5` (or L2-normalised with `l2norm_embed`)."""

    def __init__(self, config: ZetaConfig):
        super().__init__()
        self.l2norm_embed = config.l2norm_embed
        self.scale = 1.0 if config.l2norm_embed else config.input_dim**-0.5
        self.emb = nn.Embedding(config.max_position_embeddings, config.input_dim)

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        pos_emb = self.emb(position_ids) * self.scale
        return l2norm(pos_emb) if self.l2norm_embed else pos_emb


class ScaledSinusoidalEmbedding(nn.Module):
    """Fixed sin ‖ cos positions times one learned scalar (initialised to `dim ** -0.5`)."""

    def __init__(self, config: ZetaConfig, theta: float = 10000.0):
        super().__init__()
        dim = config.input_dim
        self.scale = nn.Parameter(torch.ones(1) * dim**-0.5)
        self.theta = theta
        self.inv_freq = nn.Buffer(self.compute_inv_freq(dim, theta), persistent=False)

    @staticmethod
    def compute_inv_freq(dim: int, theta: float) -> torch.Tensor:
        half_dim = dim // 2
        return theta ** -(torch.arange(half_dim).float() / half_dim)

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        emb = position_ids.float()[..., None] * self.inv_freq  # (..., n, dim / 2)
        return (torch.cat((emb.sin(), emb.cos()), dim=-1) * self.scale).to(self.scale.dtype)


class RotaryTables(NamedTuple):
    """cos / sin (and the xpos scale) for a set of positions, in one of `apply_rotary`'s two layouts."""

    cos: torch.Tensor
    sin: torch.Tensor
    scale: torch.Tensor | None = None
    rotate_index: torch.Tensor | None = None  # set for the full-width layout


class RotaryEmbedding(nn.Module):
    """Rotary positions over the first `rotary_emb_dim` features of each head, with optional xpos scaling."""

    def __init__(self, config: ZetaConfig):
        super().__init__()
        self.dim = config.rotary_emb_dim
        self.base = config.rotary_base
        if config.rotary_base_rescale_factor != 1.0:  # NTK-aware rescale; validation keeps dim >= 4 here
            self.base = self.base * config.rotary_base_rescale_factor ** (self.dim / (self.dim - 2))
        self.interpolation_factor = config.rotary_interpolation_factor
        self.use_xpos = config.rotary_xpos
        self.xpos_scale_base = config.rotary_xpos_scale_base
        # Zeta also rotates values, which makes xpos depend on the total length: the centre is only fixed (0) when
        # values are left alone.
        self.xpos_centered = config.rotary_rotate_values
        self.inv_freq = nn.Buffer(self.compute_inv_freq(), persistent=False)
        self.xpos_scale = nn.Buffer(self.compute_xpos_scale(), persistent=False)
        # Single-position tables (a decode step) span the whole head, so that applying them is one gather and two
        # multiply-adds instead of slicing, negating and concatenating; `apply_rotary` explains the layout. Values of
        # another width than the keys (rotated with `value_head_dim`) need the sliced form.
        self.head_dim = config.head_dim
        self.full_width_single = not config.rotary_rotate_values or config.value_dim == config.head_dim
        self.rotate_index = nn.Buffer(self.compute_rotate_index(), persistent=False)

    def compute_inv_freq(self) -> torch.Tensor:
        return 1.0 / (self.base ** (torch.arange(0, self.dim, 2).float() / self.dim))

    def compute_rotate_index(self) -> torch.Tensor:
        """Feature order of rotate_half over the whole head: second half of the rotation, first half, the rest."""
        half = self.dim // 2
        return torch.cat((torch.arange(half, self.dim), torch.arange(half), torch.arange(self.dim, self.head_dim)))

    def compute_xpos_scale(self) -> torch.Tensor:
        return (torch.arange(0, self.dim, 2) + 0.4 * self.dim) / (1.4 * self.dim)

    def forward(self, positions: torch.Tensor, total_length: int) -> RotaryTables:
        """`positions` (b | 1, n) -> cos, sin (b | 1, 1, n, rot_dim) and the xpos scale (same shape) or None.

        For a single position the tables are in `apply_rotary`'s full-width form (head_dim wide, `rotate_index` set).
        """
        t = positions.float()
        if self.interpolation_factor != 1.0:
            t = t / self.interpolation_factor
        freqs = t[..., None] * self.inv_freq  # (b, n, rot_dim / 2)
        cos, sin = freqs.cos(), freqs.sin()
        scale = None
        if self.use_xpos:
            center = total_length // 2 if self.xpos_centered else 0
            power = (positions.float() - center) / self.xpos_scale_base
            scale = self.xpos_scale ** power[..., None]  # (b, n, rot_dim / 2)
        if positions.shape[-1] == 1 and self.full_width_single:
            # rotate_half(x) = cat(-x2, x1) = x[rotate_index] * (-1 | +1): the sign moves into sin, and the features
            # past rot_dim get cos 1, sin 0 (and scale 1), which leaves them exactly as they are
            rest = self.head_dim - self.dim
            cos = F.pad(torch.cat((cos, cos), dim=-1), (0, rest), value=1.0)[:, None]  # (b, 1, 1, head_dim)
            sin = F.pad(torch.cat((-sin, sin), dim=-1), (0, rest), value=0.0)[:, None]
            scale = None if scale is None else F.pad(torch.cat((scale, scale), dim=-1), (0, rest), value=1.0)[:, None]
            return RotaryTables(cos, sin, scale, self.rotate_index)
        scale = None if scale is None else torch.cat((scale, scale), dim=-1)[:, None]
        return RotaryTables(torch.cat((cos, cos), dim=-1)[:, None], torch.cat((sin, sin), dim=-1)[:, None], scale)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(
    t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, scale: torch.Tensor | float = 1.0,
    rotate_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rotate the first rot_dim features of `t` (b, h, n, d); the rest pass through unchanged.

    Two layouts of the same numbers: sliced tables (rot_dim wide; `t * cos + rotate_half(t) * sin` on the first
    rot_dim features, as Zeta does), or full-width tables with `rotate_index` (`t * cos + t[..., rotate_index] * sin`,
    sin carrying rotate_half's sign; bit-identical, and three times cheaper for the one-token tensors of a decode step,
    where the per-operation cost dominates; a gather is slower than slicing for long sequences).
    """
    if rotate_index is not None:
        rotated = t.index_select(-1, rotate_index)  # t[..., rotate_index], without Python-level indexing
        if isinstance(scale, float) and scale == 1.0:
            out = t * cos + rotated * sin
        else:
            out = t * cos * scale + rotated * sin * scale
        return out if out.dtype == t.dtype else out.to(t.dtype)
    rot_dim = cos.shape[-1]
    t_rot = t[..., :rot_dim]
    if isinstance(scale, float) and scale == 1.0:  # no xpos: skip two multiplications by one
        t_rot = t_rot * cos + rotate_half(t_rot) * sin
    else:
        t_rot = t_rot * cos * scale + rotate_half(t_rot) * sin * scale
    if rot_dim < t.shape[-1]:
        t_rot = torch.cat((t_rot, t[..., rot_dim:]), dim=-1)
    return t_rot.to(t.dtype)


class AlibiPositionBias(nn.Module):
    """ALiBi: `-|i - j| * slope` per head; heads beyond `alibi_num_heads` get no bias."""

    def __init__(self, config: ZetaConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.alibi_heads = config.alibi_num_heads or config.num_attention_heads
        self.slopes = nn.Buffer(self.compute_slopes(), persistent=False)

    def compute_slopes(self) -> torch.Tensor:
        def power_of_2_slopes(n: int) -> list[float]:
            start = 2 ** (-(2 ** -(math.log2(n) - 3)))
            return [start * start**i for i in range(n)]

        n = self.alibi_heads
        if math.log2(n).is_integer():
            slopes = power_of_2_slopes(n)
        else:
            closest = 2 ** math.floor(math.log2(n))
            slopes = power_of_2_slopes(closest) + power_of_2_slopes(2 * closest)[0::2][: n - closest]
        return F.pad(torch.tensor(slopes), (0, self.num_heads - n))

    def forward(self, query_positions: torch.Tensor, key_positions: torch.Tensor) -> torch.Tensor:
        """(b | 1, i) and (b | 1, j) positions -> additive bias (b | 1, h, i, j)."""
        distance = (key_positions[:, None, :] - query_positions[:, :, None]).abs().float()  # (b, i, j)
        return -distance[:, None] * self.slopes[:, None, None]


class T5RelativePositionBias(nn.Module):
    """T5 bucketed relative positions: a learned bias per head and bucket, scaled by `head_dim ** 0.5`."""

    def __init__(self, config: ZetaConfig):
        super().__init__()
        self.scale = config.head_dim**0.5
        self.causal = config.is_causal
        self.num_buckets = config.rel_pos_num_buckets
        self.max_distance = config.rel_pos_max_distance
        self.relative_attention_bias = nn.Embedding(config.rel_pos_num_buckets, config.num_attention_heads)

    def bucket(self, relative_position: torch.Tensor) -> torch.Tensor:
        num_buckets, ret = self.num_buckets, 0
        n = -relative_position
        if not self.causal:
            num_buckets //= 2
            ret = (n < 0).long() * num_buckets
            n = n.abs()
        else:
            n = n.clamp(min=0)
        max_exact = num_buckets // 2
        is_small = n < max_exact
        # clamp(min=1) only keeps log() finite for the small distances, which take the exact bucket anyway.
        val_if_large = max_exact + (
            torch.log(n.float().clamp(min=1) / max_exact) / math.log(self.max_distance / max_exact) * (num_buckets - max_exact)
        ).long()
        val_if_large = val_if_large.clamp(max=num_buckets - 1)
        return ret + torch.where(is_small, n, val_if_large)

    def forward(self, query_positions: torch.Tensor, key_positions: torch.Tensor) -> torch.Tensor:
        relative = key_positions[:, None, :] - query_positions[:, :, None]  # (b, i, j)
        values = self.relative_attention_bias(self.bucket(relative))  # (b, i, j, h)
        return values.permute(0, 3, 1, 2) * self.scale  # (b, h, i, j)


class DynamicPositionBias(nn.Module):
    """A small MLP from relative distance (optionally log-scaled) to one bias per head."""

    def __init__(self, config: ZetaConfig):
        super().__init__()
        dim, heads = config.hidden_size // 4, config.num_attention_heads
        self.log_distance = config.dynamic_pos_bias_log_distance

        def block(dim_in: int) -> nn.Sequential:
            norm = [nn.LayerNorm(dim)] if config.dynamic_pos_bias_norm else []
            return nn.Sequential(nn.Linear(dim_in, dim), *norm, nn.SiLU())

        depth = config.dynamic_pos_bias_mlp_depth
        self.mlp = nn.ModuleList([block(1), *(block(dim) for _ in range(depth - 1)), nn.Linear(dim, heads)])

    def forward(self, query_positions: torch.Tensor, key_positions: torch.Tensor) -> torch.Tensor:
        relative = query_positions[:, :, None] - key_positions[:, None, :]  # (b, i, j)
        low, high = int(relative.min()), int(relative.max())
        # run the MLP once per distinct distance, then gather
        distances = torch.arange(low, high + 1, device=relative.device, dtype=torch.float32)[:, None]
        if self.log_distance:
            distances = torch.sign(distances) * torch.log(distances.abs() + 1)
        table = distances.to(self.mlp[-1].weight.dtype)
        for layer in self.mlp:
            table = layer(table)  # (distances, h)
        return table[relative - low].permute(0, 3, 1, 2)  # (b, h, i, j)


ABSOLUTE_POSITION_CLASSES = {"learned": LearnedPositionEmbedding, "scaled_sinusoidal": ScaledSinusoidalEmbedding}
ATTENTION_BIAS_CLASSES = {"alibi": AlibiPositionBias, "t5": T5RelativePositionBias, "dynamic": DynamicPositionBias}
