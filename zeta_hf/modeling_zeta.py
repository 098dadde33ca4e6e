"""Zeta / x-transformers 1.19 language model as a Hugging Face `PreTrainedModel`.

Data flows top to bottom through this file: token ids -> `ZetaModel.embed` (token + absolute position, prepend,
project) -> memory tokens -> `ZetaLayer`s (layers_zeta.py: each one residual branch, `ZetaAttention` or
`ZetaFeedForward`) -> final norm -> a task head (`lm_head` for `ZetaForCausalLM`). Positions are explicit tensors along one "key axis" per sequence:

    [learned memory K/V slots | Transformer-XL mems | memory tokens | prepended embeddings | tokens]

Everything before the tokens is a prefix that is written into the KV cache at prefill and never recomputed.
"""

from __future__ import annotations

import inspect
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation.continuous_batching import PagedAttentionCache
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import can_return_tuple
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    MaskedLMOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)

from .configuration_zeta import ZetaConfig, embedding_provider_name
from .layers_zeta import (
    ZetaAttention,
    ZetaGRUResidual,
    ZetaLayer,
    ZetaResidual,
    ZetaRMSNorm,
    ZetaScaleNorm,
    ZetaUnitOffsetLayerNorm,
    eager_attention_forward,
    make_dropout,
    make_norm,
    use_growing_kv_layers,
)
from .positional_zeta import (
    ABSOLUTE_POSITION_CLASSES,
    ATTENTION_BIAS_CLASSES,
    AlibiPositionBias,
    RotaryEmbedding,
    ScaledSinusoidalEmbedding,
    l2norm,
)

# --------------------------------------------------------------------------------------------------------------------
# Output types
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class ZetaModelOutput(BaseModelOutputWithPast):
    """`BaseModelOutputWithPast` plus Transformer-XL memories (one per attention layer) and per-branch states.

    `hidden_states` (with `output_hidden_states`) follows transformers: the embedding output, then the output of each
    block (`block_starts`), the last one final-normed: `num_hidden_layers + 1` tensors. Zeta's finer states come with
    `output_branch_states`: `branch_states` is the input of every residual branch (`model.layers[i]`) plus the
    final-normed output, `attention_inputs` the residual stream entering each self-attention layer (memory tokens
    included, as Transformer-XL memories are).
    """

    mems: list[torch.Tensor] | None = None
    memory_states: torch.Tensor | None = None  # final hidden states of the memory tokens (prefill only)
    branch_states: tuple[torch.Tensor, ...] | None = None
    attention_inputs: tuple[torch.Tensor, ...] | None = None


@dataclass
class ZetaCausalLMOutput(CausalLMOutputWithPast):
    """`CausalLMOutputWithPast` plus Transformer-XL memories, the final hidden states and per-branch states."""

    mems: list[torch.Tensor] | None = None
    last_hidden_state: torch.Tensor | None = None
    branch_states: tuple[torch.Tensor, ...] | None = None
    attention_inputs: tuple[torch.Tensor, ...] | None = None


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

    def save_pretrained(self, save_directory, *args, is_main_process: bool = True, **kwargs):
        """`PreTrainedModel.save_pretrained`, atomically (see `_save_atomically`). `compile_for_decode`'s static cache
        is how this process generates, not the checkpoint's default: the generation config is saved as it was before
        (a static cache would refuse the padded batches a pipeline sends)."""
        before = getattr(self, "_generation_before_compile", None) or {}
        now = {name: getattr(self.generation_config, name) for name in before}
        for name, value in before.items():
            setattr(self.generation_config, name, value)
        try:
            return self._save_atomically(save_directory, *args, is_main_process=is_main_process, **kwargs)
        finally:
            for name, value in now.items():
                setattr(self.generation_config, name, value)

    def _save_atomically(self, save_directory, *args, is_main_process: bool = True, **kwargs):
        """`PreTrainedModel.save_pretrained`, atomically: a save killed midway leaves the previous model loadable.

        Everything is written into a hidden sibling folder first, then moved into place: one rename for a new folder,
        one rename per file into an existing one (it may hold other files: a tokenizer, a card, Trainer checkpoints).
        Weight files move first and a stale weights file is deleted only once the new ones are complete.
        """
        # transformers only lists the saved class in `auto_map`; list every head so all Auto classes work remotely.
        self.config.auto_map = {
            **(getattr(self.config, "auto_map", None) or {}),
            "AutoConfig": "configuration_zeta.ZetaConfig",
            **{auto: f"modeling_zeta.{model_class.__name__}" for auto, model_class in AUTO_CLASSES.items()},
        }
        fsdp = sys.modules.get("torch.distributed.fsdp")  # imported by whoever sharded the model
        if fsdp is not None and isinstance(self, getattr(fsdp, "FSDPModule", ())):
            # FSDP2's fully_shard swaps the class for one it generates (FSDPZetaForCausalLM, defined in torch), and
            # transformers would save torch's source file as this model's code and name it in auto_map. Save as the
            # defining class, swapped back the way fully_shard swapped it.
            sharded_class = type(self)
            self.__class__ = next(c for c in sharded_class.__mro__ if not issubclass(c, fsdp.FSDPModule))
            try:
                return self.save_pretrained(save_directory, *args, is_main_process=is_main_process, **kwargs)
            finally:
                self.__class__ = sharded_class
        target = os.path.abspath(os.fspath(save_directory))
        if not is_main_process or os.path.isfile(target) or getattr(self, "_tp_size", None):
            # other ranks, tensor parallelism, and the "not a folder" error: transformers' own behaviour
            return super().save_pretrained(save_directory, *args, is_main_process=is_main_process, **kwargs)
        if kwargs.get("push_to_hub"):  # the Hub repository is named after the folder asked for, not the scratch one
            kwargs.setdefault("repo_id", os.fspath(save_directory).split(os.path.sep)[-1])
        parent, name = os.path.split(target)
        os.makedirs(parent, exist_ok=True)
        for stale in os.listdir(parent):  # left by a save of this folder that was killed
            if stale.startswith(f".{name}.saving-"):
                shutil.rmtree(os.path.join(parent, stale), ignore_errors=True)
        scratch = tempfile.mkdtemp(prefix=f".{name}.saving-", dir=parent)  # same file system: renames are atomic
        try:
            result = super().save_pretrained(scratch, *args, **kwargs)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(scratch, 0o777 & ~umask)  # mkdtemp's folder is private; a saved model folder is not
            if not os.path.isdir(target) or not os.listdir(target):
                if os.path.isdir(target):
                    os.rmdir(target)
                os.replace(scratch, target)
                return result
            weights = re.compile(r"model(\.[^.-]+)?(-\d{5}-of-\d{5})?\.safetensors(\.index\.json)?")

            def order(entry: str) -> tuple[int, str]:  # shards, then the index, then the rest, config.json last
                match = weights.fullmatch(entry)
                return (1 if match.group(3) else 0) if match else (3 if entry == "config.json" else 2), entry

            new = sorted(os.listdir(scratch), key=order)
            for entry in [e for e in new if order(e)[0] < 2]:
                os.replace(os.path.join(scratch, entry), os.path.join(target, entry))
            variants = {weights.fullmatch(e).group(1) for e in new if order(e)[0] < 2}
            for entry in os.listdir(target):  # an earlier save's other shards (or single file) would shadow the new ones
                match = weights.fullmatch(entry)
                if match and match.group(1) in variants and entry not in new and os.path.isfile(os.path.join(target, entry)):
                    os.remove(os.path.join(target, entry))
            for entry in [e for e in new if order(e)[0] >= 2]:
                destination = os.path.join(target, entry)
                if os.path.isdir(destination) and not os.path.islink(destination):
                    shutil.rmtree(destination)
                os.replace(os.path.join(scratch, entry), destination)
            return result
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    # Head modules of this family's task classes (parameters outside the shared body, `base_model_prefix`).
    _head_modules: tuple[str, ...] = ("lm_head", "score")
    # Heads that may start untrained when the checkpoint has none of their weights (a classifier fine-tuned from a
    # language model); a language-model head never may: random logits are not a model.
    _heads_trained_after_loading: tuple[str, ...] = ()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args,
                        embedding_provider: EmbeddingProvider | None = None, **kwargs):
        """`PreTrainedModel.from_pretrained`, refusing to leave any weight at its random initialisation.

        transformers only warns about missing / unexpected weights and initialises the missing ones randomly. Its own
        loading report decides here, whatever `config.architectures` says: every weight of the shared body
        (`base_model_prefix`) must come from the checkpoint and every checkpoint weight must find its place, except
        (1) another head's weights (a causal LM's `lm_head` when loading `ZetaModel` or a classifier) and (2) a new
        classification head of which the checkpoint has no weight at all. `embedding_provider` is the module or
        factory a configuration saved with a provider needs (see `ZetaModel`).
        """
        want_info = kwargs.pop("output_loading_info", False)
        token = _EMBEDDING_PROVIDER.set(embedding_provider)
        try:
            model, info = super().from_pretrained(
                pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
            )
        finally:
            _EMBEDDING_PROVIDER.reset(token)
        problems = cls._loading_problems(model, info, kwargs.get("ignore_mismatched_sizes", False))
        if problems:
            raise ValueError(
                f"The checkpoint {str(pretrained_model_name_or_path)!r} does not fit {cls.__name__} "
                f"({'; '.join(problems)}), so part of the model would be randomly initialised. Is a weights file "
                "damaged or config.json edited?"
            )
        return (model, info) if want_info else model

    @classmethod
    def _loading_problems(cls, model: "ZetaPreTrainedModel", info: dict, ignore_mismatched_sizes: bool) -> list[str]:
        """Sentences naming the weights that `from_pretrained`'s report shows missing, unexpected or mismatched."""
        def head_of(key: str) -> str | None:
            first = key.split(".", 1)[0]
            return first if first in cls._head_modules else None

        own_keys = set(model.state_dict())
        own_heads = {head_of(k) for k in own_keys} - {None}
        missing = set(info.get("missing_keys") or ())
        for head in cls._heads_trained_after_loading:
            head_keys = {k for k in own_keys if head_of(k) == head}
            if head_keys and head_keys <= missing:  # the whole head is new: trained after loading
                missing -= head_keys
        # a weight of a head this class does not have (the checkpoint's class had it) is simply not this model's
        unexpected = {k for k in info.get("unexpected_keys") or () if head_of(k) is None or head_of(k) in own_heads}
        mismatched = {k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys") or ()}
        problems = []
        for kind, keys in (("missing", missing), ("unexpected", unexpected),
                           ("mismatched", set() if ignore_mismatched_sizes else mismatched)):
            if keys:
                shown = sorted(str(k) for k in keys)
                more = f" and {len(shown) - 8} more" if len(shown) > 8 else ""
                problems.append(f"{kind} keys: {', '.join(shown[:8])}{more}")
        return problems

    def _init_weights(self, module: nn.Module) -> None:
        """Zeta's initialisation: PyTorch defaults, kaiming-normal token embedding, randn memory tokens/slots.

        transformers skips modules that own no parameters, so special choices (zero-init outputs, open value gates,
        DeepNet gains, the token embedding's init) are tagged on the leaf module itself as `zeta_init`.
        """
        role = getattr(module, "zeta_init", None)
        if isinstance(module, nn.Linear):
            if role == "zeros":
                init.zeros_(module.weight)
            elif role == "open_gate":  # gates start fully open (a bias-less 2.x gate starts half open)
                init.zeros_(module.weight)
                if module.bias is not None:
                    init.ones_(module.bias)
                return
            elif isinstance(role, float):  # DeepNet: xavier-normal with a gain
                init.xavier_normal_(module.weight, gain=role)
            else:
                init.kaiming_uniform_(module.weight, a=5**0.5)
            if module.bias is not None:
                if role is None:
                    bound = module.in_features**-0.5
                    init.uniform_(module.bias, -bound, bound)
                else:
                    init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            if role == "kaiming_normal":
                init.kaiming_normal_(module.weight)
            else:
                init.normal_(module.weight, std=1e-5 if role == "small_normal" else 1.0)
        elif isinstance(module, nn.LayerNorm):
            if module.weight is not None:  # unit-offset gains (x-transformers 2.x) start at 0
                (init.zeros_ if isinstance(module, ZetaUnitOffsetLayerNorm) else init.ones_)(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (ZetaRMSNorm,)):
            (init.zeros_ if module.unit_offset else init.ones_)(module.weight)
        elif isinstance(module, ZetaScaleNorm):
            cfg = self.config
            gain = module.initial_gain(cfg.hidden_size, cfg.norm_unit_offset, cfg.scalenorm_dim_scale)
            init.constant_(module.weight, gain)
        elif isinstance(module, ScaledSinusoidalEmbedding):
            init.constant_(module.scale, self.config.input_dim**-0.5)
            init.copy_(module.inv_freq, module.compute_inv_freq(self.config.input_dim, module.theta))
        elif isinstance(module, RotaryEmbedding):
            init.copy_(module.inv_freq, module.compute_inv_freq())
            init.copy_(module.xpos_scale, module.compute_xpos_scale())
            init.copy_(module.rotate_index, module.compute_rotate_index())
        elif isinstance(module, AlibiPositionBias):
            init.copy_(module.slopes, module.compute_slopes())
        elif isinstance(module, nn.Conv2d):  # talking heads
            init.kaiming_uniform_(module.weight, a=5**0.5)
        elif isinstance(module, nn.GRUCell):
            for weight in module.parameters():
                init.uniform_(weight, -(module.hidden_size**-0.5), module.hidden_size**-0.5)
        elif isinstance(module, (ZetaResidual, ZetaGRUResidual)) and module.residual_scale is not None:
            init.ones_(module.residual_scale)
        elif isinstance(module, ZetaAttention):
            if module.q_scale is not None:
                init.ones_(module.q_scale)
                init.ones_(module.k_scale)
            if module.memory_k is not None:
                init.normal_(module.memory_k)
                init.normal_(module.memory_v)
            if module.head_scale is not None:
                init.ones_(module.head_scale)
        elif isinstance(module, ZetaModel) and module.memory_tokens is not None:
            init.normal_(module.memory_tokens)


# --------------------------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------------------------


# An embedding provider is a module, or a factory `(num_tokens, dim) -> nn.Module`, passed in code. config.json only
# records its name: nothing named in a config file or a model folder is ever imported or called.
EmbeddingProvider = nn.Module | Callable[[int, int], nn.Module]
# The provider given to `from_pretrained` reaches `ZetaModel.__init__` through this variable, because transformers
# builds the model itself and routes keyword arguments named like a config field into the config.
_EMBEDDING_PROVIDER: ContextVar[EmbeddingProvider | None] = ContextVar("zeta_embedding_provider", default=None)


def build_token_embedding(config: ZetaConfig, provider: EmbeddingProvider | None = None) -> nn.Module:
    """The token embedding: `nn.Embedding`, or the module made by the provider passed in code."""
    if provider is None:
        provider = _EMBEDDING_PROVIDER.get()
    if provider is None and not isinstance(config.embedding_provider, (str, type(None))):
        provider = config.embedding_provider  # Auto classes route `embedding_provider=obj` into the config
    if provider is None:
        if config.embedding_provider is not None:
            raise ValueError(
                f"This configuration was saved with `embedding_provider` {config.embedding_provider!r}, and "
                "zeta_hf never imports code named in a config file: pass the provider itself, e.g. "
                "`from_pretrained(path, embedding_provider=my_factory)` or "
                "`ZetaForCausalLM(config, embedding_provider=my_factory)`."
            )
        return nn.Embedding(config.vocab_size, config.input_dim)
    if isinstance(provider, str):
        raise ValueError(
            f"`embedding_provider` must be a module or a `(num_tokens, dim) -> nn.Module` factory passed in code, "
            f"not the name {provider!r}: zeta_hf never imports code by name."
        )
    if not isinstance(provider, nn.Module) and not callable(provider):
        raise TypeError(
            "`embedding_provider` must be an nn.Module or a `(num_tokens, dim) -> nn.Module` factory, but got "
            f"{type(provider).__name__}."
        )
    module = provider if isinstance(provider, nn.Module) else provider(config.vocab_size, config.input_dim)
    if not isinstance(module, nn.Module):
        raise TypeError(
            f"The embedding provider {embedding_provider_name(provider)!r} returned {type(module).__name__}, not an "
            "nn.Module."
        )
    config.embedding_provider = embedding_provider_name(provider)
    return module


def unpadded_positions(mask: torch.Tensor) -> torch.Tensor:
    """Positions (b, n) that ignore left padding: each row counts from its first kept token.

    Right padding and holes keep Zeta's index positions, so right-padded batches match Zeta exactly.
    """
    leading_pads = (mask.long().cumsum(-1) == 0).sum(-1, keepdim=True)  # (b, 1)
    return (torch.arange(mask.shape[-1], device=mask.device) - leading_pads).clamp(min=0)


def static_cache_mask(
    cache: Cache, attention_mask: torch.Tensor | None, batch: int, num_queries: int, dtype: torch.dtype, device
) -> torch.Tensor:
    """Additive causal mask (b | 1, 1, n, max_cache_len) over a static cache's fixed key axis.

    Slots past the filled part hold zeros and are masked; a 2D `attention_mask` (b, filled + n) masks padded keys.
    """
    past = cache.get_seq_length()
    total = cache.get_max_length(layer_idx=0)
    query_index = past + torch.arange(num_queries, device=device)  # (n,)
    keep = (torch.arange(total, device=device)[None, :] <= query_index[:, None])[None, None]  # (1, 1, n, total)
    if attention_mask is not None:
        padded = F.pad(attention_mask.bool(), (0, total - attention_mask.shape[-1]), value=False)  # (b, total)
        keep = keep & padded[:, None, None, :]
    return torch.where(keep, 0.0, torch.finfo(dtype).min).to(dtype)


def block_starts(layer_pattern: tuple[str, ...]) -> tuple[int, ...]:
    """Index of the first residual layer of each block, for `hidden_states`.

    A block is a self-attention layer with the layers after it up to and including the first feedforward before the
    next self-attention (`attn, ff` by default; `attn, cross, ff` with cross-attention); where that feedforward is
    missing, the block ends before the next self-attention. Layers before the first self-attention (macaron's
    leading half feedforward) open the first block, and the last block runs to the end of the stack. So the default,
    `cross_attend`, `macaron` and any `block_pattern` with self-attention have `num_hidden_layers` blocks. Without
    self-attention (`only_cross`), cross-attention layers anchor the blocks; a stack of feedforwards only is one block
    per layer.
    """
    anchor = "attn" if "attn" in layer_pattern else ("cross" if "cross" in layer_pattern else "ff")
    anchors = [i for i, kind in enumerate(layer_pattern) if kind == anchor]
    starts = [0]
    for here, after in zip(anchors, anchors[1:]):
        ends = [i for i in range(here + 1, after) if layer_pattern[i] == "ff"][:1] or [after - 1]
        starts.append(ends[0] + 1)
    return tuple(starts)


@dataclass
class ZetaCacheLayout:
    """What a cache remembers of its sequence's key axis, set at prefill (`cache.zeta_layout`): where tokens start."""

    prefix_length: int  # memory K/V slots + XL mems + memory tokens: never masked, never token positions
    prepend_length: int  # prepended embeddings: masked like tokens, but not counted as token positions
    # every layer serves `ZetaLayer.decode_step` and nothing has hooks: decided at the sequence's first decode step
    # (None until then), so a forward that is never extended (scoring, a pipeline's forward) does not pay for it
    lean_decode: bool | None = None


@dataclass
class ZetaPlan:
    """The layout of one forward call along the key axis, built once per call by `ZetaModel.plan`.

    Every position the model needs is answered here: token positions (absolute embeddings), the query and key
    positions on the key axis (rotary, relative biases, the sliding window), the length a 2-D `attention_mask` must
    have, and which rows are padding. A static cache (fixed size, for compiling) and continuous batching's paged cache
    hold tokens only: their positions and mask are the caller's (`fixed_cache`).
    """

    batch: int
    num_tokens: int  # token rows of this call
    past_length: int  # cached key slots, every prefix included (0 at prefill and with a static cache)
    layout: ZetaCacheLayout
    num_memory_kv: int  # learned memory K/V slots (enter the key axis at prefill)
    mem_length: int  # XL memories entering the key axis in this call (prefill only)
    memory_token_rows: int  # memory-token rows computed in this call (prefill only)
    mask: torch.Tensor | None  # padding mask (b, mask_length), None when nothing is padded; with `fixed_cache`, as given
    device: torch.device
    fixed_cache: Cache | PagedAttentionCache | None = None  # static or paged: see `ZetaModel.plan`
    attn_implementation: str = "sdpa"
    _query_positions: torch.Tensor | None = field(default=None, repr=False)  # (rotary and biases both ask)

    @property
    def prefill(self) -> bool:
        return self.past_length == 0

    @property
    def prepend_rows(self) -> int:
        return self.layout.prepend_length if self.prefill else 0

    @property
    def num_queries(self) -> int:
        """Rows computed in this call: memory tokens + prepended embeddings (prefill only) + tokens."""
        return self.memory_token_rows + self.prepend_rows + self.num_tokens

    @property
    def key_length(self) -> int:
        """Keys self-attention sees: the cache, then memory K/V slots and XL mems (prefill only), then the rows."""
        new_prefix = self.num_memory_kv + self.mem_length if self.prefill else 0
        return self.past_length + new_prefix + self.num_queries

    @property
    def mask_length(self) -> int:
        """What a 2-D `attention_mask` covers: the cached, prepended and new rows (prefixes excluded)."""
        past_rows = self.past_length - self.layout.prefix_length if self.past_length else 0
        return past_rows + self.prepend_rows + self.num_tokens

    def token_positions(self) -> torch.Tensor:
        """Positions (b | 1, n) of this call's tokens, counted from the sequence's first token (absolute embeddings)."""
        arange = torch.arange(self.num_tokens, device=self.device)
        if self.fixed_cache is not None:  # a static cache's length is a tensor: a compiled step does not recompile
            return (self.fixed_cache.get_seq_length() + arange)[None]
        if self.mask is not None:
            return unpadded_positions(self.mask[:, self.layout.prepend_length:])[:, -self.num_tokens:]
        past_tokens = self.past_length - self.layout.prefix_length - self.layout.prepend_length if self.past_length else 0
        return (past_tokens + arange)[None]

    def query_positions(self) -> torch.Tensor:
        """Key-axis positions (b | 1, i) of this call's rows: memory tokens (prefill), prepended rows and tokens."""
        if self._query_positions is not None:
            return self._query_positions
        rows = self.prepend_rows + self.num_tokens
        if self.mask is not None:
            positions = unpadded_positions(self.mask)[:, -rows:]  # left padding does not move a row
        else:
            past_rows = self.past_length - self.layout.prefix_length if self.past_length else 0
            positions = (past_rows + torch.arange(rows, device=self.device))[None]
        positions = self.layout.prefix_length + positions
        if self.memory_token_rows:  # right after the memory K/V slots and XL mems
            first = self.layout.prefix_length - self.memory_token_rows
            memory = (first + torch.arange(self.memory_token_rows, device=self.device))[None]
            positions = torch.cat((memory.expand(positions.shape[0], -1), positions), dim=1)
        self._query_positions = positions
        return positions

    def key_positions(self) -> torch.Tensor:
        """Key-axis positions (b | 1, j) of every key: the prefix as it lies, the rest without left padding."""
        keys = torch.arange(self.key_length, device=self.device)
        if self.mask is None:
            return keys[None]
        prefix = keys[: self.layout.prefix_length][None].expand(self.batch, -1)
        return torch.cat((prefix, self.layout.prefix_length + unpadded_positions(self.mask)), dim=1)

    def key_keep(self) -> torch.Tensor:
        """Which keys are real (b | 1, 1, 1, j): every prefix slot, and the rows the mask keeps."""
        if self.mask is None:
            return torch.ones((1, 1, 1, self.key_length), dtype=torch.bool, device=self.device)
        prefix = torch.ones(self.batch, self.layout.prefix_length, dtype=torch.bool, device=self.device)
        return torch.cat((prefix, self.mask.bool()), dim=1)[:, None, None, :]

    def query_keep(self, dtype: torch.dtype) -> torch.Tensor | None:
        """(b, i, 1) ones at real rows and zeros at padded ones (Zeta zeroes attention outputs there), or None."""
        if self.mask is None:
            return None
        rows = self.mask[:, -(self.prepend_rows + self.num_tokens):]
        if self.memory_token_rows:
            memory = torch.ones(self.batch, self.memory_token_rows, dtype=rows.dtype, device=self.device)
            rows = torch.cat((memory, rows), dim=1)
        return rows[..., None].to(dtype)


@dataclass
class _AttentionInputs:
    """What every self-attention layer of one call receives besides the hidden states."""

    rotary: tuple | None = None  # (query tables, key tables) from `RotaryEmbedding`
    bias: torch.Tensor | None = None  # additive (b | 1, h | 1, i, j): masks and position biases
    raw_bias: torch.Tensor | None = None  # the position bias alone, for sparse top-k's `zeta_inverted` mode
    query_keep: torch.Tensor | None = None  # (b, i, 1): padded query rows
    cross_mask: torch.Tensor | None = None  # additive mask over the encoder states


@dataclass
class _Collected:
    """What a forward keeps besides the last hidden state, as asked (`output_*`)."""

    skip: int  # memory-token rows, left out of hidden states and attention maps
    hidden: list | None = None  # one per block (`block_starts`)
    branch: list | None = None  # the input of every residual branch
    attentions: list | None = None
    attention_inputs: list | None = None  # the residual stream entering each self-attention layer (XL mems)
    starts: frozenset = frozenset()  # layer indices where a block starts


class ZetaModel(ZetaPreTrainedModel):
    """The Zeta Transformer without its head: token ids -> final-normed hidden states (b, n, dim).

    `embedding_provider` (also taken by every head class and `from_pretrained`) replaces the token embedding: an
    `nn.Module`, or a factory `(vocab_size, embedding width) -> nn.Module`. The config records only its name.
    """

    def __init__(self, config: ZetaConfig, embedding_provider: EmbeddingProvider | None = None):
        super().__init__(config)
        self.embed_tokens = build_token_embedding(config, embedding_provider)
        if isinstance(self.embed_tokens, nn.Embedding):
            self.embed_tokens.zeta_init = "small_normal" if config.l2norm_embed else "kaiming_normal"
        abs_cls = ABSOLUTE_POSITION_CLASSES.get(config.absolute_position_embedding)
        self.embed_positions = abs_cls(config) if abs_cls is not None else None
        if config.l2norm_embed and hasattr(self.embed_positions, "emb"):
            self.embed_positions.emb.zeta_init = "small_normal"
        # (x-transformers 2.x: a bias-less LayerNorm without the unit offset of its layer norms)
        self.post_emb_norm = (
            nn.LayerNorm(config.input_dim, bias=config.norm_bias) if config.post_emb_norm else nn.Identity()
        )
        self.embedding_dropout = make_dropout(config.embedding_dropout)
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
        # architecture facts read on every forward, derived once (config properties are slow to evaluate)
        self.supports_cache = config.supports_cache
        self.needs_attention_scores = config.needs_attention_scores
        self.has_cross_attention = "cross" in config.layer_pattern
        self._decode_step_references: list[tuple] | None = None  # `_serves_decode_step`'s reference layers
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
            # a data-dependent branch; skipped while compiling/exporting, where it would split the graph
            checkable = input_ids.numel() and not (torch.compiler.is_compiling() or torch.compiler.is_exporting())
            if checkable:
                vocab = self.config.vocab_size
                low, high = torch.aminmax(input_ids)  # one pass over the ids, one sync
                if int(low) < 0 or int(high) >= vocab:
                    bad = input_ids[(input_ids < 0) | (input_ids >= vocab)][0].item()
                    raise ValueError(f"`input_ids` contains token id {bad}, outside the vocabulary [0, {vocab}).")
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
        if pos is not None and not pos.dtype.is_floating_point and pos.shape[-1] != n:
            raise ValueError(f"`pos` as integer positions must have shape (batch | 1, {n}), but got {tuple(pos.shape)}.")
        if mems is not None:
            if cache is not None and cache.get_seq_length() > 0:
                raise ValueError("`mems` can only be passed with an empty cache: after prefill they live in the cache.")
            n_attn = self.config.num_attention_layers
            if not isinstance(mems, (list, tuple)) or len(mems) != n_attn:
                got = len(mems) if isinstance(mems, (list, tuple)) else type(mems).__name__
                raise ValueError(f"`mems` must be a list of {n_attn} tensors (one per attention layer), but got {got}.")
            for i, m in enumerate(mems):
                if not m.dtype.is_floating_point:
                    raise TypeError(f"`mems[{i}]` must be a floating-point tensor, but got dtype {m.dtype}.")
                if m.device != seq.device:
                    raise ValueError(f"`mems[{i}]` is on device {m.device}, but the inputs are on {seq.device}.")
                if m.dim() != 3 or m.shape[0] != seq.shape[0] or m.shape[2] != self.config.hidden_size:
                    raise ValueError(
                        f"`mems[{i}]` must have shape (batch={seq.shape[0]}, mem_len, dim={self.config.hidden_size}), "
                        f"but got {tuple(m.shape)}."
                    )
                if m.shape[1] != mems[0].shape[1]:
                    raise ValueError(f"All `mems` must have the same length, but `mems[{i}]` has {m.shape[1]}.")

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @can_return_tuple
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
        mems: list[torch.Tensor] | None = None,
        output_mems: bool | None = None,
        pos: torch.Tensor | None = None,
        sum_embeds: torch.Tensor | None = None,
        prepend_embeds: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        output_branch_states: bool = False,
        **kwargs,
    ) -> ZetaModelOutput:
        """Token ids -> plan -> embed -> layers -> final norm.

        `hidden_states` holds one tensor per block (`block_starts`), `branch_states` one per residual branch.
        `output_attentions=True` returns every attention layer's post-softmax maps (b, h, i, j) under any attention
        implementation: that call computes attention with the eager reference (sdpa returns no maps).
        """
        if isinstance(cache, PagedAttentionCache):  # transformers' continuous batching (`generate_batch`, serving)
            return self._paged_forward(input_ids, attention_mask, position_ids, cache, **kwargs)
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        self._check_inputs(input_ids, inputs_embeds, mems, cache, prepend_embeds, sum_embeds, pos)
        cache, use_cache = self._cache_for_call(cache, use_cache, mems, output_mems)
        seq = input_ids if input_ids is not None else inputs_embeds
        plan = self.plan(seq, attention_mask, cache, mems, prepend_embeds)

        if position_ids is None:
            position_ids = plan.token_positions()
        x = self.embed(input_ids, inputs_embeds, position_ids, pos, sum_embeds, prepend_embeds)
        if plan.memory_token_rows:
            x = torch.cat((self.memory_tokens.to(x.dtype).expand(plan.batch, -1, -1), x), dim=1)
        inputs = self.attention_inputs(plan, position_ids, x.dtype, eager=bool(output_attentions))
        inputs.cross_mask = self._cross_attention_mask(
            encoder_hidden_states, encoder_attention_mask, x.shape[1], x.dtype, plan.batch
        )
        kept = _Collected(
            skip=plan.memory_token_rows,
            hidden=[] if output_hidden_states else None,
            branch=[] if output_branch_states else None,
            attentions=[] if output_attentions else None,
            attention_inputs=[] if (output_mems or output_branch_states) else None,  # depth x (b, n, d): only if asked
            starts=frozenset(block_starts(self.config.layer_pattern)) if output_hidden_states else frozenset(),
        )
        if mems is not None and self.config.shift_mem_down:
            mems = [*mems[self.config.shift_mem_down:], *mems[: self.config.shift_mem_down]]
        x = self.run_layers(x, plan, inputs, cache, mems, encoder_hidden_states, kept)

        memory_states, x = (x[:, : plan.memory_token_rows], x[:, plan.memory_token_rows:]) if plan.memory_token_rows else (None, x)
        for states in (kept.hidden, kept.branch):
            if states is not None:
                states.append(x)
        return ZetaModelOutput(
            last_hidden_state=x,
            cache=cache if use_cache else None,
            hidden_states=tuple(kept.hidden) if output_hidden_states else None,
            attentions=tuple(kept.attentions) if output_attentions else None,
            mems=self._next_mems(kept.attention_inputs, mems) if output_mems else None,
            memory_states=memory_states,
            branch_states=tuple(kept.branch) if output_branch_states else None,
            attention_inputs=tuple(kept.attention_inputs) if output_branch_states else None,
        )

    def _cache_for_call(self, cache: Cache | None, use_cache: bool | None, mems, output_mems) -> tuple[Cache | None, bool]:
        """The cache this call reads and writes (a new `DynamicCache` when caching with none given), and `use_cache`."""
        cfg = self.config
        use_cache = use_cache if use_cache is not None else (cfg.use_cache and self.supports_cache and not self.training)
        if not cfg.xl_memory and (mems is not None or output_mems):
            raise ValueError(
                f"This model (converted from {cfg.converted_from or 'a source with other memory semantics'}) has "
                "`xl_memory=False`: Transformer-XL `mems` / `output_mems` would not reproduce the original's "
                "recurrence, so they are refused."
            )
        if use_cache and not self.supports_cache:
            raise ValueError(
                "This configuration cannot be cached exactly (an encoder, or `rotary_xpos` with "
                "`rotary_rotate_values`): pass `use_cache=False`."
            )
        if use_cache and cache is None:
            cache = DynamicCache()
        if not use_cache and cache is not None and cache.get_seq_length() == 0:
            cache = None  # an empty cache that will not be kept: nothing to read or write
        return cache, bool(use_cache)

    # ---- the call's layout ----
    def plan(
        self, seq: torch.Tensor, attention_mask: torch.Tensor | None, cache: Cache | None,
        mems: list[torch.Tensor] | None = None, prepend_embeds: torch.Tensor | None = None,
    ) -> ZetaPlan:
        """The call's `ZetaPlan`. At prefill it records the sequence's layout on the cache; later calls read it back."""
        cfg = self.config
        b, n = seq.shape[:2]
        common = dict(batch=b, num_tokens=n, device=seq.device, num_memory_kv=cfg.num_memory_kv,
                      attn_implementation=cfg._attn_implementation)
        if isinstance(cache, PagedAttentionCache) or (cache is not None and cache.is_compileable):
            self._check_fixed_cache(cache, mems, prepend_embeds, attention_mask)
            return ZetaPlan(past_length=0, layout=cache.zeta_layout, mem_length=0, memory_token_rows=0,
                            mask=attention_mask, fixed_cache=cache, **common)
        past_length = cache.get_seq_length() if cache is not None else 0
        if past_length == 0:
            mem_length = mems[0].shape[1] if mems else 0
            layout = ZetaCacheLayout(prefix_length=cfg.num_memory_kv + mem_length + cfg.num_memory_tokens,
                                     prepend_length=prepend_embeds.shape[1] if prepend_embeds is not None else 0)
            if cache is not None:
                cache.zeta_layout = layout
                if isinstance(cache, DynamicCache):
                    use_growing_kv_layers(cache, cfg.num_attention_layers)
        else:
            if prepend_embeds is not None:
                raise ValueError("`prepend_embeds` can only be passed at prefill, with an empty cache.")
            mem_length = 0
            # (a cache filled by hand, without a prefill through this model, holds only the learned prefixes)
            layout = getattr(cache, "zeta_layout", None) or ZetaCacheLayout(cfg.num_memory_kv + cfg.num_memory_tokens, 0)
        plan = ZetaPlan(past_length=past_length, layout=layout, mem_length=mem_length,
                        memory_token_rows=cfg.num_memory_tokens if past_length == 0 else 0, mask=None, **common)
        # a mask without padding is dropped, so the common case builds no bias at all
        if attention_mask is not None and not self._mask_keeps_all(attention_mask, b, plan.mask_length):
            plan.mask = attention_mask
        return plan

    @staticmethod
    def _mask_keeps_all(mask: torch.Tensor, batch: int, expected: int) -> bool:
        """Check a 2-D `attention_mask` over the cached, prepended and new positions; True when nothing is padded."""
        if mask.dim() != 2 or mask.shape[0] != batch or mask.shape[1] != expected:
            raise ValueError(
                f"`attention_mask` must have shape (batch={batch}, {expected}) covering the cached, prepended and new "
                f"positions, but got {tuple(mask.shape)}."
            )
        if mask.dtype.is_floating_point:
            raise TypeError(f"`attention_mask` must be a bool or integer 0/1 tensor, but got dtype {mask.dtype}.")
        return bool(mask.all())

    # ---- what the attention layers receive ----
    def attention_inputs(self, plan: ZetaPlan, position_ids: torch.Tensor, dtype: torch.dtype, eager: bool = False
                         ) -> _AttentionInputs:
        """Rotary tables, the additive bias over the key axis and the padded rows, from the plan.

        `eager`: attention runs eager in this call whatever the implementation (it returns maps), so causal masking
        must be an explicit bias."""
        if plan.fixed_cache is not None:  # positions are the token positions; the mask spans the fixed key axis
            rotary = None if self.rotary_emb is None else (self.rotary_emb(position_ids, 0),) * 2
            bias = plan.mask  # continuous batching: the engine's block-diagonal mask (None for flash)
            if not isinstance(plan.fixed_cache, PagedAttentionCache) and (bias is None or bias.dim() == 2):
                bias = static_cache_mask(plan.fixed_cache, bias, plan.batch, plan.num_tokens, self.dtype, plan.device)
            return _AttentionInputs(rotary, bias)
        bias, raw_bias = self._attention_bias(plan, eager)
        return _AttentionInputs(self._rotary(plan), bias, raw_bias, plan.query_keep(dtype))

    def _rotary(self, plan: ZetaPlan) -> tuple | None:
        """Rotary tables for the queries and the new keys; rotary counts positions without the memory K/V slots."""
        if self.rotary_emb is None:
            return None
        total = plan.key_length - plan.num_memory_kv
        query_positions = plan.query_positions() - plan.num_memory_kv
        query = self.rotary_emb(query_positions, total)
        if not plan.mem_length:
            return query, query  # new keys sit where the queries are, unless XL mems precede them
        mems = torch.arange(plan.mem_length, device=plan.device)[None].expand(query_positions.shape[0], -1)
        return query, self.rotary_emb(torch.cat((mems, query_positions), dim=1), total)

    def _attention_bias(self, plan: ZetaPlan, eager: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The additive bias (b | 1, h | 1, i, j) over the key axis and the raw position bias, or None where the
        attention function's own causal flag suffices."""
        cfg = self.config
        extra, num_queries, key_length = cfg.extra_key_slots, plan.num_queries, plan.key_length
        explicit_causal = cfg.is_causal and (key_length > num_queries or self._eager_like or eager)
        needs_bias = plan.mask is not None or self.position_bias is not None or cfg.max_attend_past is not None or (
            num_queries > 1 and (extra > 0 or explicit_causal)
        )
        if not needs_bias:
            return None, None
        dtype = self.dtype
        query_positions, key_positions = plan.query_positions(), plan.key_positions()
        bias = torch.zeros((), dtype=dtype, device=plan.device)
        if self.position_bias is not None:
            bias = self.position_bias(query_positions, key_positions).to(dtype)  # (b, h, i, j)
        keep = plan.key_keep()  # (b | 1, 1, 1, j)
        if cfg.is_causal:
            key_index = torch.arange(key_length, device=plan.device)
            query_index = key_length - num_queries + torch.arange(num_queries, device=plan.device)
            keep = keep & (key_index[None, :] <= query_index[:, None])[None, None]  # (b, 1, i, j)
        if cfg.max_attend_past is not None:  # sliding window
            keep = keep & ((query_positions[:, :, None] - key_positions[:, None, :]) <= cfg.max_attend_past)[:, None]
        combined = torch.where(keep, bias, torch.finfo(dtype).min)
        raw_bias = bias if (cfg.sparse_topk_mode == "zeta_inverted" and self.position_bias is not None) else None
        if extra:  # the zero key/value slot in front: always visible, no bias
            combined = F.pad(combined, (extra, 0))
            raw_bias = F.pad(raw_bias, (extra, 0)) if raw_bias is not None else None
        return combined, raw_bias

    @property
    def _eager_like(self) -> bool:
        return self.config._attn_implementation != "sdpa" or self.needs_attention_scores

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
                checkable = ids.numel() and not (torch.compiler.is_compiling() or torch.compiler.is_exporting())
                if checkable and (ids.max() >= cfg.max_position_embeddings or ids.min() < 0):
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

    # ---- the layers ----
    def run_layers(
        self, x: torch.Tensor, plan: ZetaPlan, inputs: _AttentionInputs, cache: Cache | None,
        mems: list[torch.Tensor] | None, context: torch.Tensor | None, kept: _Collected, **attn_kwargs,
    ) -> torch.Tensor:
        """The residual stack, then the final norm (resiDual: its outer residual stream, normed, added back).

        `attn_kwargs` are continuous batching's per-batch indices (for its paged cache) and packed lengths."""
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(plan.attn_implementation, eager_attention_forward)
        if self._takes_decode_step(plan, inputs, kept):
            for layer in self.layers:
                x = layer.decode_step(x, inputs.bias, inputs.query_keep, cache, inputs.rotary, attention)
            return self.norm.forward(x)  # no hooks: `_serves_decode_step`
        # (the lean step reads none of these: they are read after its exit)
        cfg = self.config
        layer_dropout, scale = (cfg.layer_dropout if self.training else 0.0), cfg.resi_dual_scale
        residual_attn, cross_residual_attn = cfg.residual_attn, cfg.cross_residual_attn
        eager = kept.attentions is not None
        prev_scores = prev_cross_scores = None
        outer_residual = x * scale if cfg.norm_placement == "resi_dual" else None
        for idx, layer in enumerate(self.layers):
            if kept.hidden is not None and idx in kept.starts:  # before stochastic depth: one state per block
                kept.hidden.append(x[:, kept.skip:])
            if layer_dropout > 0 and torch.rand(()) < layer_dropout:
                continue  # stochastic depth
            if kept.branch is not None:
                kept.branch.append(x[:, kept.skip:])
            if layer.kind == "attn":
                if kept.attention_inputs is not None:
                    kept.attention_inputs.append(x)
                mem = None if mems is None else mems[layer.self_attn.layer_idx].to(x.dtype)  # raw, as in Zeta
                x, branch, weights, scores = layer(
                    x, inputs.bias, inputs.query_keep, prev_scores, cache=cache, rotary=inputs.rotary, mem=mem,
                    prefill=plan.prefill, position_bias=inputs.raw_bias, output_attentions=eager,
                    attention_interface=attention, **attn_kwargs,
                )
                prev_scores = scores if residual_attn else None
            elif layer.kind == "cross":
                x, branch, weights, scores = layer(x, inputs.cross_mask, inputs.query_keep, prev_cross_scores, context,
                                                   cache=cache, output_attentions=eager, attention_interface=attention)
                prev_cross_scores = scores if cross_residual_attn else None
            else:
                x, branch, weights, _ = layer(x, None, inputs.query_keep, cache=cache)
            if outer_residual is not None:
                outer_residual = outer_residual + branch * scale
            if eager and layer.kind != "ff":
                kept.attentions.append(weights[:, :, kept.skip:])
        return x + self.norm(outer_residual) if outer_residual is not None else self.norm(x)

    # ---- the lean decode step ----
    def _serves_decode_step(self) -> bool:
        """Whether every layer may run `ZetaLayer.decode_step` at this sequence's decode steps: each one is built as
        the step's reference layer is (`ZetaLayer.serves_decode_step`, read off its modules), nothing reads encoder
        states, and no hook would be skipped (the lean step calls modules' `forward` directly)."""
        hooks = nn.modules.module
        if self.has_cross_attention or hooks._global_forward_hooks or hooks._global_forward_pre_hooks:
            return False
        skipped = (*self.layers.modules(), *self.norm.modules())  # what the step runs without `nn.Module.__call__`
        if any(m._forward_hooks or m._forward_pre_hooks or "forward" in m.__dict__ for m in skipped):
            return False
        if self._decode_step_references is None:  # built once: it depends on the config's sizes and kinds only
            self._decode_step_references = [
                ZetaLayer.decode_step_reference(self.config, layer.kind, getattr(layer.self_attn, "layer_idx", None))
                for layer in self.layers
            ]
        return all(layer.serves_decode_step(ref) for layer, ref in zip(self.layers, self._decode_step_references))

    def _takes_decode_step(self, plan: ZetaPlan, inputs: _AttentionInputs, kept: _Collected) -> bool:
        """One new token per row on a warm growing cache whose layers serve the lean step, in eval, with nothing asked
        for beyond the last hidden state. Padding and biases over the key axis (ALiBi, T5, dynamic, window) reach it
        as they reach `forward`, in the call's `inputs`.

        At batch 1 a decode step's matrix products take about as long as the bookkeeping around them (module calls,
        option branches; `bench/profile_decode.py`), so the lean step keeps only the operations themselves, in the
        generic path's order: the same numbers bit for bit (the common test mixin checks it over every variant)."""
        if plan.num_queries != 1 or plan.prefill or plan.fixed_cache is not None or torch.compiler.is_compiling():
            return False
        if plan.layout.lean_decode is None:  # once per sequence: walking the modules costs more than a decode step may
            plan.layout.lean_decode = self._serves_decode_step()
        return (
            plan.layout.lean_decode and not self.training
            and kept.hidden is None and kept.branch is None and kept.attentions is None and kept.attention_inputs is None
        )

    def _next_mems(self, attention_inputs: list[torch.Tensor], mems: list[torch.Tensor] | None) -> list[torch.Tensor]:
        """Transformer-XL memories for the next segment: each attention layer's input after the previous ones."""
        new_mems = []
        for i, hidden in enumerate(attention_inputs):
            if mems is not None:
                hidden = torch.cat((mems[i], hidden), dim=1)
            if self.config.max_mem_len:
                hidden = hidden[:, -self.config.max_mem_len:]
            new_mems.append(hidden.detach())
        return new_mems

    # ---- continuous batching ----
    def _paged_forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, position_ids: torch.Tensor,
        cache: PagedAttentionCache, **paged_kwargs,
    ) -> ZetaModelOutput:
        """`forward` under transformers' continuous batching, for configs that `supports_continuous_batching`.

        The requests of a batch are packed along one row (1, total tokens); `position_ids` count each request's tokens
        from its start, and the batching engine supplies the additive block-diagonal causal mask over the keys it reads
        back from its paged cache (None for flash, which takes the packed lengths in `paged_kwargs`). Nothing here
        depends on a call's layout beyond that: the key axis holds only tokens.
        """
        plan = self.plan(input_ids, attention_mask, cache)
        x = self.embed(input_ids, None, position_ids)
        x = self.run_layers(x, plan, self.attention_inputs(plan, position_ids, x.dtype), cache, None, None,
                            _Collected(skip=0), **paged_kwargs)
        return ZetaModelOutput(last_hidden_state=x)

    def _check_fixed_cache(self, cache: Cache | PagedAttentionCache, mems, prepend_embeds, attention_mask) -> None:
        """Whether this call and configuration can use a static or paged cache; the configuration checked once per
        cache, which then records its layout (tokens only)."""
        if isinstance(cache, PagedAttentionCache):
            if getattr(cache, "zeta_layout", None) is None:  # the engine keeps its cache for its lifetime
                if not self.config.supports_continuous_batching:
                    blockers = ", ".join(self.config.continuous_batching_blockers)
                    raise ValueError(f"Continuous batching cannot serve this configuration exactly ({blockers}).")
                cache.zeta_layout = ZetaCacheLayout(prefix_length=0, prepend_length=0)
            return
        if mems is not None or prepend_embeds is not None:
            raise ValueError("`mems` and `prepend_embeds` are not supported with a static cache; use the default cache.")
        compiling = torch.compiler.is_compiling() or torch.compiler.is_exporting()
        if attention_mask is not None and attention_mask.dim() == 2 and not compiling and not bool(attention_mask.all()):
            raise ValueError("Padded batches are not supported with a static cache; use the default dynamic cache.")
        if getattr(cache, "zeta_layout", None) is not None:
            return
        cfg = self.config
        if not cfg.supports_static_cache:
            raise ValueError(
                "A static cache (`cache_implementation=\"static\"`) serves causal decoders with rotary or no relative "
                "positions and no memory tokens / memory key-values / zero key-value / sliding window / token shift / "
                "cross-attention; this configuration needs the default dynamic cache."
            )
        if len(cache.layers) < cfg.num_attention_layers:
            raise ValueError(
                f"The static cache has {len(cache.layers)} layers, but this model has {cfg.num_attention_layers} "
                "attention layers; build it with `StaticCache(config=model.config, max_cache_len=...)`."
            )
        cache.zeta_layout = ZetaCacheLayout(prefix_length=0, prepend_length=0)

    def _cross_attention_mask(
        self, context: torch.Tensor | None, context_mask: torch.Tensor | None, num_queries: int, dtype, batch: int
    ) -> torch.Tensor | None:
        """Additive mask (b | 1, 1, 1 | i, j) over the encoder states (memory slots in front), or None."""
        cfg = self.config
        if not self.has_cross_attention:
            if context is not None:
                raise ValueError("`encoder_hidden_states` was passed, but this model has no cross-attention layers.")
            return None
        if context is None:
            raise ValueError("This model has cross-attention layers: pass `encoder_hidden_states` (Zeta's `context`).")
        if context.dim() != 3 or context.shape[-1] != cfg.hidden_size or context.shape[0] != batch:
            raise ValueError(
                f"`encoder_hidden_states` must have shape (batch={batch}, length, {cfg.hidden_size}), but got "
                f"{tuple(context.shape)}."
            )
        if not context.dtype.is_floating_point:
            raise TypeError(f"`encoder_hidden_states` must be a floating-point tensor, but got dtype {context.dtype}.")
        window = cfg.max_attend_past
        if context_mask is None and window is None:
            return None
        b, m = context.shape[:2]
        j = cfg.num_memory_kv + m
        keep = torch.ones(1, 1, 1, j, dtype=torch.bool, device=context.device)
        if context_mask is not None:
            if context_mask.shape != context.shape[:2]:
                raise ValueError(
                    f"`encoder_attention_mask` must have shape {tuple(context.shape[:2])}, but got "
                    f"{tuple(context_mask.shape)}."
                )
            keep = F.pad(context_mask.bool(), (cfg.num_memory_kv, 0), value=True)[:, None, None, :]  # (b, 1, 1, j)
        if window is not None:
            # Zeta windows cross-attention by index too: the i queries are taken as the last i of the j keys.
            # That depends on how many queries a call has, which is why such models are not cached.
            distance = (j - num_queries + torch.arange(num_queries, device=context.device))[:, None] - torch.arange(
                j, device=context.device
            )
            keep = keep & (distance <= window)[None, None]  # (b, 1, i, j)
        keep = F.pad(keep, (cfg.extra_key_slots, 0), value=True)
        return torch.where(keep, 0.0, torch.finfo(dtype).min).to(dtype)


class ZetaScaledLMHead(nn.Linear):
    """A logits head that multiplies its output by a constant: x-transformers 2.x scales tied logits by `dim ** -0.5`.

    The scale lives in the head, so `lm_head(hidden)` is the logits as everywhere else; the head stays an `nn.Linear`
    whose weight ties to the token embedding.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, scale: float):
        super().__init__(in_features, out_features, bias=bias)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.scale


def make_lm_head(config: ZetaConfig) -> nn.Linear:
    """Zeta's `to_logits`: a bias unless tied (x-transformers 2.x: never), scaled when `tie_embedding_scale` says so."""
    bias = config.lm_head_bias and not config.tie_word_embeddings
    if config.tie_embedding_scale != 1.0:
        return ZetaScaledLMHead(config.hidden_size, config.output_dim, bias, config.tie_embedding_scale)
    return nn.Linear(config.hidden_size, config.output_dim, bias=bias)


class ZetaLMHead:
    """What both language-model heads share: `lm_head`, the output embedding transformers ties and resizes (unless
    `logits_dim` makes it something other than a vocabulary)."""

    def get_output_embeddings(self) -> nn.Module | None:
        return self.lm_head if self.config.logits_dim in (None, self.config.vocab_size) else None

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.lm_head = new_embeddings


class ZetaForCausalLM(ZetaLMHead, ZetaPreTrainedModel, GenerationMixin):
    """Zeta Transformer with its logits head (`to_logits`), for `generate()`, `Trainer` and `pipeline`."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: ZetaConfig, embedding_provider: EmbeddingProvider | None = None):
        super().__init__(config)
        self.model = ZetaModel(config, embedding_provider)
        # Zeta's `to_logits` has a bias unless the head reuses the embedding matrix.
        self.lm_head = make_lm_head(config)
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
                max_length = kwargs.get("max_length", gen.max_length)
                if max_new is None and max_length is not None:
                    max_new = max_length - prompt.shape[1]
                # the last new token is sampled, never embedded: the highest embedded position is longest + max_new - 2
                # (no length at all: transformers' default stops within `max_position_embeddings` by itself)
                if max_new is not None and longest + max_new - 1 > self.config.max_position_embeddings:
                    raise ValueError(
                        f"Generating {max_new} new tokens after a prompt of {longest} would embed position "
                        f"{longest + max_new - 2}, past the learned absolute position table "
                        f"(`max_position_embeddings`={self.config.max_position_embeddings})."
                    )
        return super().generate(inputs, generation_config=generation_config, **kwargs)

    @classmethod
    def from_transformer(cls, transformer: nn.Module) -> "ZetaForCausalLM":
        """The Hugging Face model behind a seed-compatible `zeta_hf.Transformer` (same modules, same weights)."""
        return transformer.to_hf()

    def create_masks_for_generate(
        self, config: ZetaConfig, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None, cache: Cache,
        position_ids: torch.Tensor | None = None, **kwargs,
    ) -> torch.Tensor:
        """The mask `generate` builds ahead of each step with a static cache (outside a compiled forward)."""
        self.model._check_fixed_cache(cache, None, None, attention_mask)
        b, n = inputs_embeds.shape[:2]
        return static_cache_mask(cache, attention_mask, b, n, inputs_embeds.dtype, inputs_embeds.device)

    def prepare_inputs_for_generation(self, input_ids, cache=None, mems=None, **kwargs):
        model_inputs = super().prepare_inputs_for_generation(input_ids, cache=cache, **kwargs)
        # XL memories enter at prefill only; afterwards they are part of the cache
        if mems is not None and (cache is None or cache.get_seq_length() == 0):
            model_inputs["mems"] = mems
        return model_inputs

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @can_return_tuple
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
        logits_to_keep: int | torch.Tensor = 0,
        mems: list[torch.Tensor] | None = None,
        output_mems: bool | None = None,
        pos: torch.Tensor | None = None,
        sum_embeds: torch.Tensor | None = None,
        prepend_embeds: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        output_branch_states: bool = False,
        **kwargs,
    ) -> ZetaCausalLMOutput | tuple:
        outputs = self.model(
            return_dict=True,
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
            output_branch_states=output_branch_states,
            # continuous batching's per-batch indices, for the paged cache (the rest of `kwargs` is the loss's)
            **(kwargs if isinstance(cache, PagedAttentionCache) else {}),
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
            branch_states=outputs.branch_states,
            attention_inputs=outputs.attention_inputs,
        )
        return output

    def compile_for_decode(self, **inductor_options: bool) -> "ZetaForCausalLM":
        """Later `generate()` calls decode over a static cache with a compiled step (see
        `zeta_hf.fast_decode.compile_for_decode`, docs/decode_speed.md); returns the model."""
        from .fast_decode import compile_for_decode

        return compile_for_decode(self, **inductor_options)


class ZetaEncoderHead(ZetaPreTrainedModel):
    """What the encoder heads share: `ZetaModel` (uncached) -> `logits_from` -> `loss_from` (with labels) -> output."""

    output_class: type = MaskedLMOutput

    def logits_from(self, outputs: ZetaModelOutput, attention_mask: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def loss_from(self, logits: torch.Tensor, labels: torch.Tensor, **kwargs) -> torch.Tensor:
        raise NotImplementedError

    @can_return_tuple
    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, return_dict=True,
                             **_model_kwargs(kwargs))
        logits = self.logits_from(outputs, attention_mask)
        loss = self.loss_from(logits, labels, **kwargs) if labels is not None else None
        output = self.output_class(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                   attentions=outputs.attentions)
        return output


class ZetaForMaskedLM(ZetaLMHead, ZetaEncoderHead):
    """An `Encoder` with its logits head, trained to fill in masked tokens (labels -100 are ignored)."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    output_class = MaskedLMOutput

    def __init__(self, config: ZetaConfig, embedding_provider: EmbeddingProvider | None = None):
        super().__init__(config)
        self.model = ZetaModel(config, embedding_provider)
        self.lm_head = make_lm_head(config)
        self.post_init()

    def logits_from(self, outputs: ZetaModelOutput, attention_mask: torch.Tensor | None) -> torch.Tensor:
        return self.lm_head(outputs.last_hidden_state)

    def loss_from(self, logits: torch.Tensor, labels: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.loss_function(logits=logits, labels=labels, vocab_size=self.config.output_dim, **kwargs)


class ZetaClassifierHead(ZetaEncoderHead):
    """What the classifiers share: `ZetaModel` -> dropout (`classifier_dropout`) -> `score` over `num_labels`."""

    _heads_trained_after_loading = ("score",)

    def __init__(self, config: ZetaConfig, embedding_provider: EmbeddingProvider | None = None):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = ZetaModel(config, embedding_provider)
        self.dropout = make_dropout(config.classifier_dropout)
        self.score = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()


class ZetaForSequenceClassification(ZetaClassifierHead):
    """Pooled hidden states (`classifier_pooling`: mean / first / last token or the first memory token) -> labels."""

    output_class = SequenceClassifierOutput

    def pool(self, outputs: ZetaModelOutput, attention_mask: torch.Tensor | None) -> torch.Tensor:
        hidden = outputs.last_hidden_state  # (b, n, d)
        pooling = self.config.classifier_pooling
        if pooling == "memory_token":
            if outputs.memory_states is None:
                raise ValueError("`classifier_pooling='memory_token'` needs `num_memory_tokens` > 0.")
            return outputs.memory_states[:, 0]
        # in the hidden states' dtype: a float32 mask would promote a bfloat16 model's pooled states past its `score`
        keep = (torch.ones(hidden.shape[:2], device=hidden.device) if attention_mask is None
                else attention_mask).to(hidden.dtype)
        if pooling == "mean":
            return (hidden * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp(min=1)
        index = torch.arange(hidden.shape[1], device=hidden.device)
        # the first / last kept position of each row, so padding on either side is skipped
        pick = torch.where(keep.bool(), index, hidden.shape[1] if pooling == "first" else -1)
        position = pick.min(-1).values if pooling == "first" else pick.max(-1).values
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), position.clamp(0, hidden.shape[1] - 1)]

    def logits_from(self, outputs: ZetaModelOutput, attention_mask: torch.Tensor | None) -> torch.Tensor:
        return self.score(self.dropout(self.pool(outputs, attention_mask)))

    def loss_from(self, logits: torch.Tensor, labels: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.loss_function(labels=labels, pooled_logits=logits, config=self.config, **kwargs)


class ZetaForTokenClassification(ZetaClassifierHead):
    """One label per token (labels -100 are ignored)."""

    output_class = TokenClassifierOutput

    def logits_from(self, outputs: ZetaModelOutput, attention_mask: torch.Tensor | None) -> torch.Tensor:
        return self.score(self.dropout(outputs.last_hidden_state))

    def loss_from(self, logits: torch.Tensor, labels: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.loss_function(logits=logits, labels=labels, config=self.config, **kwargs)


_MODEL_KWARGS = ("inputs_embeds", "position_ids", "output_attentions", "output_hidden_states", "mems", "output_mems",
                 "pos", "sum_embeds", "prepend_embeds", "encoder_hidden_states", "encoder_attention_mask")


def _model_kwargs(kwargs: dict) -> dict:
    """The `ZetaModel` inputs among a head's kwargs; the rest (e.g. `num_items_in_batch`) is for the loss."""
    return {key: kwargs.pop(key) for key in _MODEL_KWARGS if key in kwargs}


# The one table of which Auto class loads which model: registration (`__init__.py`) and the `auto_map` of saved folders
# (remote code) are both built from it.
AUTO_CLASSES: dict[str, type[ZetaPreTrainedModel]] = {
    "AutoModel": ZetaModel,
    "AutoModelForCausalLM": ZetaForCausalLM,
    "AutoModelForMaskedLM": ZetaForMaskedLM,
    "AutoModelForSequenceClassification": ZetaForSequenceClassification,
    "AutoModelForTokenClassification": ZetaForTokenClassification,
}

# Registered Auto classes count as remote code, for which `generate` inspects `forward`'s signature at every step
# (looking for a legacy `cache_position`); a precomputed signature makes that lookup free.
ZetaForCausalLM.forward.__signature__ = inspect.signature(ZetaForCausalLM.forward)


__all__ = [
    "ZetaPreTrainedModel",
    "ZetaModel",
    "ZetaForCausalLM",
    "ZetaForMaskedLM",
    "ZetaForSequenceClassification",
    "ZetaForTokenClassification",
    "ZetaModelOutput",
    "ZetaCausalLMOutput",
]
