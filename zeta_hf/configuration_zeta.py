"""ZetaConfig: every option of Zeta's Transformer and attention layers, typed, grouped and validated."""

from __future__ import annotations

import difflib
import functools
import math
import types
import typing
from typing import Any

from huggingface_hub.dataclasses import type_validator
from transformers import GenerationConfig, PreTrainedConfig

# Names the user picks from; each maps to one class in the model files.
POSITION_EMBEDDINGS = ("absolute", "scaled_sinusoidal", "rotary", "alibi", "t5", "dynamic", "none")
ABSOLUTE_POSITION_EMBEDDINGS = ("learned", "scaled_sinusoidal", "none")
NORMS = ("layernorm", "rmsnorm", "scalenorm", "simple_rmsnorm")
NORM_PLACEMENTS = ("pre", "post", "sandwich", "resi_dual", "deepnorm")
RESIDUAL_TYPES = ("add", "gru")
SPARSE_TOPK_MODES = ("top_k", "zeta_inverted")
LAYER_KINDS = ("attn", "cross", "ff")
CLASSIFIER_POOLINGS = ("mean", "first", "last", "memory_token")
FF_ACTIVATIONS = ("gelu", "geglu", "silu", "swiglu", "relu_squared", "relu_squared_glu")

# Zeta's constructor names that are stored under a Hugging Face name (read and written through either).
ZETA_ALIASES = {
    "num_tokens": "vocab_size",
    "max_seq_len": "max_position_embeddings",
    "dim": "hidden_size",
    "depth": "num_hidden_layers",
    "heads": "num_attention_heads",
    "kv_heads": "num_key_value_heads",
    "dim_head": "head_dim",
    "emb_dim": "embedding_dim",
    "emb_dropout": "embedding_dropout",
    "tie_embedding": "tie_word_embeddings",
    "num_mem_kv": "num_memory_kv",
}

# Keyword arguments that transformers itself passes to (or stores in) every config.
_HF_CONFIG_KWARGS = {
    "auto_map",
    "num_labels",
    "torch_dtype",
    "name_or_path",
    "output_attentions",
    "attn_implementation",
    "experts_implementation",
    "per_layer_config",
    "rope_scaling",
    "rope_parameters",
    "model_type",
    "base_model_tp_plan",
    "base_model_pp_plan",
    "pretraining_tp",
    "quantization_config",
    "tokenizer_class",
    "prefix",
    "task_specific_params",
    "finetuning_task",
    "decoder_start_token_id",
    "sep_token_id",
    "add_cross_attention",
    "tf_legacy_loss",
    "use_bfloat16",
    "torchscript",
    "pruned_heads",
    "is_decoder",
    "cross_attention_hidden_size",
}


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {list(allowed)}, but got {value!r}.")


def _check_range(name: str, value: Any, low: float, high: float = math.inf, *, low_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        bound = f"> {low}" if low_open else f">= {low}"
        if high != math.inf:
            bound += f" and <= {high}"
        raise ValueError(f"`{name}` must be a finite number {bound}, but got {value!r}.")


def _accept_int_for_float(hint: Any) -> Any:
    """A declared `float` also accepts an int (JSON and people write `4` for `4.0`); a bool is never a number."""
    if hint is float:
        return float | int
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return functools.reduce(lambda a, b: a | b, [_accept_int_for_float(arg) for arg in typing.get_args(hint)])
    if typing.get_origin(hint) is list:
        return list[_accept_int_for_float(typing.get_args(hint)[0])]
    return hint


# Size limits checked before anything is allocated: a config.json asking for 10**6 layers fails at once with a
# sentence instead of allocating for minutes. Far above any model this package is meant for (the largest public
# dense models have ~4e11 parameters and ~130 layers).
MAX_PARAMETERS = 10**12
MAX_LAYERS = 10_000


def _check_int(name: str, value: Any, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"`{name}` must be an integer >= {low}, but got {value!r}.")


def embedding_provider_name(provider: Any) -> str:
    """The name config.json records for an embedding provider ("module:qualname"): a label, never imported."""
    target = provider if hasattr(provider, "__qualname__") else type(provider)  # a function or class, else an instance
    return f"{getattr(target, '__module__', None)}:{target.__qualname__}"


class ZetaConfig(PreTrainedConfig):
    r"""Configuration of a Zeta / x-transformers 1.19 style language model.

    Stored names are the Hugging Face ones (`vocab_size`, `hidden_size`, ...); Zeta's names (`num_tokens`, `dim`,
    `depth`, `heads`, `max_seq_len`, `dim_head`, `kv_heads`, `emb_dim`, `emb_dropout`, `tie_embedding`,
    `num_mem_kv`) are accepted and readable as aliases. Variants are picked by name:

    - `position_embedding`: "absolute" (learned table), "scaled_sinusoidal", "rotary", "alibi", "t5", "none".
    - `absolute_position_embedding`: the table added to token embeddings ("learned", "scaled_sinusoidal",
      "none"); derived from `position_embedding` unless set, and may be combined with "alibi" as Zeta does.
    - `norm`: "layernorm", "rmsnorm", "scalenorm", "simple_rmsnorm"; `norm_placement`: "pre", "post", "sandwich".
    - `ff_activation`: "gelu", "geglu", "silu", "swiglu", "relu_squared", "relu_squared_glu".

    Example:
    ```python
    >>> from zeta_hf import ZetaConfig, ZetaForCausalLM
    >>> config = ZetaConfig(num_tokens=256, max_seq_len=1024, dim=512, depth=12, heads=8, position_embedding="rotary")
    >>> model = ZetaForCausalLM(config)
    ```
    """

    model_type = "zeta"
    attribute_map = ZETA_ALIASES
    keys_to_ignore_at_inference = ["cache", "mems"]
    base_model_tp_plan = {
        "layers.*.self_attn.q_proj": "colwise",
        "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise",
        "layers.*.self_attn.o_proj": "rowwise",
    }

    # --- size -------------------------------------------------------------------------------------------------
    vocab_size: int = 256
    max_position_embeddings: int = 1024
    hidden_size: int = 512
    num_hidden_layers: int = 6
    num_attention_heads: int = 8
    num_key_value_heads: int | None = None
    head_dim: int = 64
    is_causal: bool = True

    # --- embedding (Zeta's Transformer arguments) -------------------------------------------------------------
    embedding_dim: int | None = None
    embedding_dropout: float = 0.0
    post_emb_norm: bool = False
    l2norm_embed: bool = False
    emb_frac_gradient: float = 1.0
    embedding_provider: str | None = None
    num_memory_tokens: int = 0
    max_mem_len: int = 0
    shift_mem_down: int = 0
    logits_dim: int | None = None
    tie_word_embeddings: bool = False

    # --- positions --------------------------------------------------------------------------------------------
    position_embedding: str = "absolute"
    absolute_position_embedding: str | None = None
    rotary_emb_dim: int | None = None
    rotary_base: float = 10000.0
    rotary_interpolation_factor: float = 1.0
    rotary_base_rescale_factor: float = 1.0
    rotary_xpos: bool = False
    rotary_xpos_scale_base: float = 512.0
    rotary_rotate_values: bool = False
    alibi_num_heads: int | None = None
    rel_pos_num_buckets: int = 32
    rel_pos_max_distance: int = 128
    dynamic_pos_bias_mlp_depth: int = 2
    dynamic_pos_bias_log_distance: bool = False
    dynamic_pos_bias_norm: bool = False

    # --- norms and residuals ----------------------------------------------------------------------------------
    norm: str = "layernorm"
    norm_placement: str = "pre"
    layer_norm_eps: float = 1e-5
    resi_dual_scale: float = 1.0
    macaron: bool = False
    residual_attn: bool = False
    cross_residual_attn: bool = False
    residual_type: str = "add"
    scale_residual: bool = False
    scale_residual_constant: float = 1.0
    layer_dropout: float = 0.0
    shift_tokens: int | list[int] = 0

    # --- layout -----------------------------------------------------------------------------------------------
    block_pattern: list[str] | None = None
    cross_attend: bool = False
    only_cross: bool = False

    # --- attention --------------------------------------------------------------------------------------------
    attention_dropout: float = 0.0
    qk_norm: bool = False
    qk_norm_groups: int = 1
    qk_norm_scale: float = 10.0
    qk_norm_dim_scale: bool = False
    num_memory_kv: int = 0
    talking_heads: bool = False
    head_scale: bool = False
    gate_values: bool = False
    attn_on_attn: bool = False
    add_zero_kv: bool = False
    value_head_dim: int | None = None
    shared_kv: bool = False
    max_attend_past: int | None = None
    sparse_topk: int | None = None
    sparse_topk_mode: str = "top_k"
    zero_init_attn_output: bool = False

    # --- feedforward ------------------------------------------------------------------------------------------
    ff_mult: float = 4.0
    ff_activation: str = "gelu"
    ff_post_act_ln: bool = False
    ff_bias: bool = True
    ff_dropout: float = 0.0
    zero_init_ff_output: bool = False

    # --- task heads -------------------------------------------------------------------------------------------
    classifier_pooling: str = "mean"
    classifier_dropout: float = 0.0

    # --- generation / tokens ----------------------------------------------------------------------------------
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    # --- x-transformers 2.x ---------------------------------------------------------------------------------
    # Where x-transformers 2.x computes differently from Zeta / 1.19; the defaults keep Zeta's behaviour, and
    # `convert_zeta_checkpoint(..., source="xtransformers-2")` sets them so a converted model keeps 2.x's numbers.
    converted_from: str | None = None  # e.g. "x-transformers 2.31.10": what a converted checkpoint was imported from
    norm_bias: bool = True  # LayerNorms have a learned bias (2.x's LayerNorm has none)
    norm_unit_offset: bool = False  # layer norm gains are stored as offsets from 1 (2.x `norm_add_unit_offset`)
    scalenorm_dim_scale: bool = False  # ScaleNorm multiplies by sqrt(hidden_size) (2.x's ScaleNorm), gain starts at 1
    talking_heads_residual: bool = False  # pre-softmax talking heads add their mix to the scores (2.x: sim + mix(sim))
    gate_values_bias: bool = True  # the value gate (`gate_values`) has a bias (2.x's has none)
    lm_head_bias: bool = True  # an untied logits head has a bias (2.x's `to_logits` has none)
    tie_embedding_scale: float = 1.0  # tied logits are multiplied by this (2.x: hidden_size ** -0.5)
    xl_memory: bool = True  # Transformer-XL `mems` are accepted; False where the source's recurrence differs (2.x)

    def __post_init__(self, **kwargs):
        # Aliases arrive as extra kwargs; apply them before anything is derived from the stored names.
        for alias, stored in ZETA_ALIASES.items():
            if alias in kwargs:
                setattr(self, stored, kwargs.pop(alias))
        self._reject_unknown_kwargs(kwargs)
        if isinstance(self.block_pattern, tuple):
            self.block_pattern = list(self.block_pattern)
        if isinstance(self.shift_tokens, tuple):
            self.shift_tokens = list(self.shift_tokens)
        self._check_types()  # before anything is derived from a value of the wrong type
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.absolute_position_embedding is None:
            self.absolute_position_embedding = {"absolute": "learned", "scaled_sinusoidal": "scaled_sinusoidal"}.get(
                self.position_embedding, "none"
            )
        if self.block_pattern is not None:
            self.block_pattern = list(self.block_pattern)
            # with an explicit pattern, the layer count that sizes the KV cache is its number of self-attention layers
            if self.block_pattern.count("attn"):
                self.num_hidden_layers = self.block_pattern.count("attn")
        if isinstance(self.shift_tokens, tuple):
            self.shift_tokens = list(self.shift_tokens)
        if self.position_embedding == "rotary" and self.rotary_emb_dim is None:
            # Zeta: max(dim_head // 2, 32); capped at the head size, where Zeta itself would crash.
            self.rotary_emb_dim = min(max(self.head_dim // 2, 32), self.head_dim)
        super().__post_init__(**kwargs)
        self.validate_architecture()

    def _reject_unknown_kwargs(self, kwargs: dict) -> None:
        known = _HF_CONFIG_KWARGS | set(GenerationConfig._get_default_generation_params())
        unknown = [k for k in kwargs if not k.startswith("_") and k not in known]
        if unknown:
            valid = sorted(self.option_names())
            hints = {k: difflib.get_close_matches(k, valid, n=1) for k in unknown}
            hint_text = "; ".join(f"did you mean `{h[0]}` for `{k}`?" for k, h in hints.items() if h)
            raise ValueError(
                f"ZetaConfig got unknown option(s) {unknown}. {hint_text + ' ' if hint_text else ''}"
                f"Valid options are: {', '.join(valid)}."
            )

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs) -> "ZetaConfig":
        """`PreTrainedConfig.from_dict`, refusing a config.json of another model type (transformers only warns)."""
        found = config_dict.get("model_type", cls.model_type)
        if found != cls.model_type:
            raise ValueError(
                f"This configuration is for a {found!r} model, not a Zeta model (`model_type` must be "
                f"{cls.model_type!r})."
            )
        return super().from_dict(config_dict, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """`PreTrainedConfig.to_dict`; a provider object passed to `from_pretrained` through an Auto class lands on
        the config for a moment, and only its name is ever serialised."""
        output = super().to_dict()
        if not isinstance(output.get("embedding_provider"), (str, type(None))):
            output["embedding_provider"] = embedding_provider_name(output["embedding_provider"])
        return output

    @classmethod
    def option_names(cls) -> set[str]:
        """Every option a user sets: the fields this class adds to `PreTrainedConfig`, plus Zeta's aliases."""
        base = set(PreTrainedConfig.__dataclass_fields__)
        return {name for name in cls.__dataclass_fields__ if name not in base and not name.startswith("_")} | set(
            ZETA_ALIASES
        )

    # ------------------------------------------------------------------------------------------------------------
    @classmethod
    @functools.cache
    def _declared_types(cls) -> dict[str, Any]:
        """Every option's declared type (this class's annotations, with ints accepted where a float is declared)."""
        own = {name: hint for name, hint in cls.__dict__["__annotations__"].items() if name in cls.__dataclass_fields__}
        # only this class's annotations: the base class's name types (torch.dtype) this module does not import
        hints = typing.get_type_hints(type("_Options", (), {"__annotations__": own, "__module__": cls.__module__}))
        return {name: _accept_int_for_float(hint) for name, hint in hints.items()}

    def _check_types(self) -> None:
        """Each option has its declared type: `"false"` is not a bool, `3.0` not an int, `"big"` not a float."""
        for name, hint in self._declared_types().items():
            value = getattr(self, name)
            try:
                type_validator(name, value, hint)
            except TypeError:
                expected = getattr(hint, "__name__", None) if isinstance(hint, type) else None
                expected = expected or str(hint).replace("float | int", "float")
                raise ValueError(
                    f"`{name}` must be of type {expected}, but got {value!r} ({type(value).__name__})."
                ) from None

    def approximate_num_parameters(self) -> int:
        """A quick upper estimate of the parameter count, from the sizes alone (nothing is allocated)."""
        h, d, vd = self.num_attention_heads, self.head_dim, self.value_dim
        kv = self.num_key_value_heads
        attention = self.hidden_size * (h * d + 2 * kv * max(d, vd) + h * vd) + h * vd * self.hidden_size
        feedforward = 3 * self.hidden_size * self.intermediate_size
        per_layer = {"attn": attention, "cross": attention, "ff": feedforward}
        body = sum(per_layer[kind] for kind in self.layer_pattern)
        embeddings = (self.vocab_size + self.max_position_embeddings) * self.input_dim
        return body + embeddings + self.hidden_size * self.output_dim

    def _check_sizes(self) -> None:
        layers = len(self.block_pattern) if self.block_pattern is not None else self.num_hidden_layers
        if layers > MAX_LAYERS:
            raise ValueError(
                f"`num_hidden_layers` ({layers}) exceeds the limit of {MAX_LAYERS} layers; is the configuration "
                "damaged?"
            )
        estimate = self.approximate_num_parameters()
        if estimate > MAX_PARAMETERS:
            raise ValueError(
                f"This configuration would have about {estimate:.2g} parameters (vocab_size={self.vocab_size}, "
                f"hidden_size={self.hidden_size}, num_hidden_layers={self.num_hidden_layers}, ff_mult={self.ff_mult}, "
                f"max_position_embeddings={self.max_position_embeddings}), above the limit of {MAX_PARAMETERS:.0e}; "
                "is the configuration damaged?"
            )

    def validate_architecture(self) -> None:
        """Raise `ValueError` naming the field, the value and what is allowed, for any invalid combination."""
        self._check_types()
        for name in ("vocab_size", "max_position_embeddings", "hidden_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim"):
            _check_int(name, getattr(self, name), 1)
        for name in ("num_memory_tokens", "max_mem_len", "shift_mem_down", "num_memory_kv"):
            _check_int(name, getattr(self, name), 0)
        for name in ("embedding_dropout", "attention_dropout", "ff_dropout"):
            _check_range(name, getattr(self, name), 0.0, 1.0)
        _check_range("emb_frac_gradient", self.emb_frac_gradient, 0.0, 1.0, low_open=True)
        _check_range("ff_mult", self.ff_mult, 0.0, low_open=True)
        _check_range("layer_norm_eps", self.layer_norm_eps, 0.0, low_open=True)  # 0 divides by zero on a constant row
        _check_range("qk_norm_scale", self.qk_norm_scale, 0.0, low_open=True)
        _check_range("rotary_base", self.rotary_base, 0.0, low_open=True)
        _check_range("rotary_interpolation_factor", self.rotary_interpolation_factor, 1.0)
        _check_range("rotary_base_rescale_factor", self.rotary_base_rescale_factor, 0.0, low_open=True)
        _check_range("rotary_xpos_scale_base", self.rotary_xpos_scale_base, 0.0, low_open=True)
        _check_int("qk_norm_groups", self.qk_norm_groups, 1)
        _check_int("rel_pos_num_buckets", self.rel_pos_num_buckets, 1)
        _check_int("rel_pos_max_distance", self.rel_pos_max_distance, 1)
        _check_int("dynamic_pos_bias_mlp_depth", self.dynamic_pos_bias_mlp_depth, 1)
        _check_choice("position_embedding", self.position_embedding, POSITION_EMBEDDINGS)
        _check_choice("absolute_position_embedding", self.absolute_position_embedding, ABSOLUTE_POSITION_EMBEDDINGS)
        _check_choice("norm", self.norm, NORMS)
        _check_choice("norm_placement", self.norm_placement, NORM_PLACEMENTS)
        _check_choice("ff_activation", self.ff_activation, FF_ACTIVATIONS)
        _check_choice("residual_type", self.residual_type, RESIDUAL_TYPES)
        _check_choice("sparse_topk_mode", self.sparse_topk_mode, SPARSE_TOPK_MODES)
        _check_choice("classifier_pooling", self.classifier_pooling, CLASSIFIER_POOLINGS)
        for name in ("layer_dropout", "classifier_dropout"):
            _check_range(name, getattr(self, name), 0.0, 1.0)
        _check_range("resi_dual_scale", self.resi_dual_scale, 0.0, 1.0, low_open=True)
        _check_range("scale_residual_constant", self.scale_residual_constant, 0.0, low_open=True)
        if self.norm_placement == "deepnorm" and self.scale_residual_constant != 1.0:
            raise ValueError(
                "`norm_placement='deepnorm'` sets the residual scale itself; leave `scale_residual_constant` at 1.0, "
                f"but got {self.scale_residual_constant}."
            )
        if self.block_pattern is not None:
            if not self.block_pattern or any(kind not in LAYER_KINDS for kind in self.block_pattern):
                raise ValueError(
                    f"`block_pattern` must be a non-empty list of {list(LAYER_KINDS)}, but got {self.block_pattern!r}."
                )
        if self.only_cross and not self.cross_attend:
            raise ValueError("`only_cross=True` needs `cross_attend=True`.")
        if "cross" in self.layer_pattern and not self.cross_attend:
            raise ValueError("`block_pattern` contains 'cross' layers: set `cross_attend=True`.")
        shifts = self.shift_tokens if isinstance(self.shift_tokens, list) else [self.shift_tokens]
        for value in shifts:
            _check_int("shift_tokens", value, 0)
        if isinstance(self.shift_tokens, list) and len(self.shift_tokens) != len(self.layer_pattern):
            raise ValueError(
                f"`shift_tokens` as a list needs one entry per layer ({len(self.layer_pattern)}), but got "
                f"{len(self.shift_tokens)}."
            )
        for name in ("value_head_dim", "max_attend_past", "sparse_topk"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1 if name != "max_attend_past" else 0)
        if self.shared_kv and self.value_head_dim not in (None, self.head_dim):
            raise ValueError(
                f"`shared_kv=True` needs `value_head_dim` equal to `head_dim` ({self.head_dim}), but got "
                f"{self.value_head_dim}."
            )
        if self.position_embedding == "dynamic":
            _check_int("dynamic_pos_bias_mlp_depth", self.dynamic_pos_bias_mlp_depth, 1)
        if self.embedding_dim is not None:
            _check_int("embedding_dim", self.embedding_dim, 1)
        if self.logits_dim is not None:
            _check_int("logits_dim", self.logits_dim, 1)
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"`num_attention_heads` ({self.num_attention_heads}) must be divisible by `num_key_value_heads` "
                f"({self.num_key_value_heads})."
            )
        if self.shift_mem_down > self.num_hidden_layers:
            raise ValueError(
                f"`shift_mem_down` ({self.shift_mem_down}) cannot exceed the number of layers ({self.num_hidden_layers})."
            )
        if self.position_embedding in ("rotary", "t5") and self.absolute_position_embedding != "none":
            raise ValueError(
                f"`absolute_position_embedding={self.absolute_position_embedding!r}` cannot be combined with "
                f"`position_embedding={self.position_embedding!r}`: Zeta turns absolute positions off for rotary and "
                "T5 relative positions. Leave `absolute_position_embedding` unset."
            )
        if self.position_embedding == "rotary":
            _check_int("rotary_emb_dim", self.rotary_emb_dim, 2)
            if self.rotary_emb_dim % 2 or self.rotary_emb_dim > self.head_dim:
                raise ValueError(
                    f"`rotary_emb_dim` must be even and at most `head_dim` ({self.head_dim}), but got {self.rotary_emb_dim}."
                )
            if self.rotary_base_rescale_factor != 1.0 and self.rotary_emb_dim < 4:
                # NTK rescaling raises the base to dim / (dim - 2): undefined for a 2-wide rotary
                raise ValueError(
                    f"`rotary_base_rescale_factor` ({self.rotary_base_rescale_factor}) needs `rotary_emb_dim` >= 4, "
                    f"but got {self.rotary_emb_dim}."
                )
            if self.rotary_rotate_values and self.value_dim < self.rotary_emb_dim:
                raise ValueError(
                    f"`rotary_rotate_values=True` rotates values, so `value_head_dim` ({self.value_dim}) must be at "
                    f"least `rotary_emb_dim` ({self.rotary_emb_dim})."
                )
            _check_range("rotary_interpolation_factor", self.rotary_interpolation_factor, 1.0)
            _check_range("rotary_base", self.rotary_base, 0.0, low_open=True)
            _check_range("rotary_base_rescale_factor", self.rotary_base_rescale_factor, 0.0, low_open=True)
            _check_range("rotary_xpos_scale_base", self.rotary_xpos_scale_base, 0.0, low_open=True)
            if self.rotary_xpos and not self.is_causal:
                raise ValueError("`rotary_xpos=True` needs a causal model (`is_causal=True`): xpos is not defined for encoders.")
        elif self.rotary_xpos:
            raise ValueError(f"`rotary_xpos=True` needs `position_embedding='rotary'`, but got {self.position_embedding!r}.")
        if self.alibi_num_heads is not None:
            if self.position_embedding != "alibi":
                raise ValueError(f"`alibi_num_heads` needs `position_embedding='alibi'`, but got {self.position_embedding!r}.")
            _check_int("alibi_num_heads", self.alibi_num_heads, 1)
            if self.alibi_num_heads > self.num_attention_heads:
                raise ValueError(
                    f"`alibi_num_heads` ({self.alibi_num_heads}) cannot exceed `num_attention_heads` ({self.num_attention_heads})."
                )
        if self.position_embedding == "t5":
            _check_int("rel_pos_num_buckets", self.rel_pos_num_buckets, 2)
            _check_int("rel_pos_max_distance", self.rel_pos_max_distance, 1)
            if self.rel_pos_num_buckets > self.rel_pos_max_distance:
                raise ValueError(
                    f"`rel_pos_num_buckets` ({self.rel_pos_num_buckets}) must not exceed `rel_pos_max_distance` "
                    f"({self.rel_pos_max_distance})."
                )
            if not self.is_causal and self.rel_pos_num_buckets < 4:
                # an encoder splits the buckets by direction and keeps half of each side exact: fewer than 4 leaves
                # no exact bucket, and the log-spaced ones divide by zero
                raise ValueError(
                    f"`rel_pos_num_buckets` must be at least 4 for an encoder (`is_causal=False`), but got "
                    f"{self.rel_pos_num_buckets}."
                )
        if self.absolute_position_embedding == "scaled_sinusoidal" and self.input_dim % 2:
            raise ValueError(
                "Scaled sinusoidal positions need an even embedding width (`embedding_dim`, or `hidden_size` when "
                f"`embedding_dim` is unset), but got {self.input_dim}."
            )
        if self.qk_norm:
            _check_int("qk_norm_groups", self.qk_norm_groups, 1)
            if self.head_dim % self.qk_norm_groups or self.head_dim // self.qk_norm_groups <= 2:
                raise ValueError(
                    f"`qk_norm_groups` ({self.qk_norm_groups}) must divide `head_dim` ({self.head_dim}) into groups of "
                    "more than 2 features."
                )
        if self.tie_word_embeddings and self.input_dim != self.hidden_size:
            raise ValueError(
                f"`tie_word_embeddings=True` needs `embedding_dim` ({self.input_dim}) equal to `hidden_size` "
                f"({self.hidden_size}): the output head reuses the token embedding matrix."
            )
        if self.tie_word_embeddings and self.logits_dim not in (None, self.vocab_size):
            raise ValueError(
                f"`tie_word_embeddings=True` produces `vocab_size` ({self.vocab_size}) logits, but `logits_dim` is "
                f"{self.logits_dim}."
            )
        _check_range("tie_embedding_scale", self.tie_embedding_scale, 0.0, low_open=True)
        if self.tie_embedding_scale != 1.0 and not self.tie_word_embeddings:
            raise ValueError(
                f"`tie_embedding_scale` ({self.tie_embedding_scale}) scales the logits of a tied head: it needs "
                "`tie_word_embeddings=True`."
            )
        if self.talking_heads_residual and not self.talking_heads:
            raise ValueError("`talking_heads_residual=True` needs `talking_heads=True`.")
        if self.scalenorm_dim_scale and self.norm != "scalenorm":
            raise ValueError(f"`scalenorm_dim_scale=True` needs `norm='scalenorm'`, but got {self.norm!r}.")
        if self.embedding_provider is not None and (
            not isinstance(self.embedding_provider, str) or not self.embedding_provider.strip()
        ):
            raise ValueError(
                "`embedding_provider` in a configuration is only the name of the provider the model was built with "
                "(the provider itself is passed in code: `ZetaForCausalLM(config, embedding_provider=...)` or "
                f"`from_pretrained(path, embedding_provider=...)`), but got {self.embedding_provider!r}."
            )

        self._check_sizes()

    # --- capabilities, derived once and read by the model and the tests ---------------------------------------
    @property
    def input_dim(self) -> int:
        """Width of token (and absolute position) embeddings, before `project_emb`."""
        return self.embedding_dim or self.hidden_size

    @property
    def output_dim(self) -> int:
        return self.logits_dim or self.vocab_size

    @property
    def intermediate_size(self) -> int:
        return int(self.hidden_size * self.ff_mult)

    @property
    def layer_pattern(self) -> tuple[str, ...]:
        """Kinds of the residual layers, in order: "attn" (self-attention), "cross" (cross-attention) or "ff"."""
        if self.block_pattern is not None:
            return tuple(self.block_pattern)
        block = ("cross", "ff") if self.only_cross else (("attn", "cross", "ff") if self.cross_attend else ("attn", "ff"))
        if self.macaron:
            block = ("ff",) + block
        return block * self.num_hidden_layers

    @property
    def layer_shift_tokens(self) -> tuple[int, ...]:
        if isinstance(self.shift_tokens, list):
            return tuple(self.shift_tokens)
        return (self.shift_tokens,) * len(self.layer_pattern)

    @property
    def num_attention_layers(self) -> int:
        return self.layer_pattern.count("attn")

    @property
    def value_dim(self) -> int:
        return self.value_head_dim or self.head_dim

    @property
    def needs_attention_scores(self) -> bool:
        """True when attention needs the score matrix itself, which only the eager attention exposes."""
        return self.residual_attn or self.cross_residual_attn or self.talking_heads or self.sparse_topk is not None

    @property
    def supports_cache(self) -> bool:
        """Whether cached decoding equals recomputing the whole sequence.

        Not for encoders (earlier tokens would attend to later ones), for xpos with Zeta's value rotation (values are
        scaled by an offset that depends on the total length), for Zeta's inverted sparse top-k (it ranks future
        keys too), for models without self-attention, or for Zeta's windowed cross-attention (it places the
        queries by how many there are in a call).
        """
        return (
            self.is_causal
            and not (self.rotary_xpos and self.rotary_rotate_values)
            and not (self.sparse_topk is not None and self.sparse_topk_mode == "zeta_inverted")
            and "attn" in self.layer_pattern
            and not ("cross" in self.layer_pattern and self.max_attend_past is not None)
        )

    @property
    def supports_static_cache(self) -> bool:
        """Whether `cache_implementation="static"` (a fixed-size key axis, what `torch.compile` needs) can serve this
        model: a cacheable decoder whose key axis holds only tokens, with no relative position bias over it."""
        return (
            self.supports_cache
            and self.is_causal
            and self.position_embedding in ("rotary", "none")
            and self.num_memory_tokens == 0
            and self.num_memory_kv == 0
            and self.extra_key_slots == 0
            and self.max_attend_past is None
            and not any(self.layer_shift_tokens)
            and "cross" not in self.layer_pattern
        )

    @property
    def padding_invariant(self) -> bool:
        """Whether a left-padded row gives exactly the unpadded result. Token shifting reads the neighbouring
        position, which is padding (or, in feedforward layers, an unmasked pad's features, as in Zeta); xpos with
        value rotation centres its scale on the padded length; Zeta's inverted top-k ranks the padded keys too."""
        # xpos with value rotation centres its scale on the padded length
        return (
            not any(self.layer_shift_tokens)
            and not (self.rotary_xpos and self.rotary_rotate_values)
            and not (self.sparse_topk is not None and self.sparse_topk_mode == "zeta_inverted")
        )

    @property
    def extra_key_slots(self) -> int:
        """Key slots every attention adds in front of the cached keys per call (the zero key/value)."""
        return int(self.add_zero_kv)

    @property
    def continuous_batching_blockers(self) -> tuple[str, ...]:
        """The options that keep transformers' continuous batching from computing exactly what `generate` does, as
        `field=value` (empty when it can serve this model).

        Continuous batching packs all requests along one row, gives each token its position, and keeps keys and values
        in a paged cache of one slot per hidden layer whose values are as wide as its keys. That is exact for a causal
        decoder whose key axis holds only tokens (what a static cache needs too) and whose attention is a plain softmax
        over that axis: no memory slots or tokens, no bias over the key axis, no score matrix of its own, and no
        position scale that depends on the total length (xpos).
        """
        blockers = {
            f"is_causal={self.is_causal}": not self.is_causal,
            # the relative biases (alibi, t5, dynamic) are an additive bias over the key axis, which the engine's
            # own mask replaces; absolute and rotary positions only need each token's position
            f"position_embedding={self.position_embedding!r}": self.position_embedding in ("alibi", "t5", "dynamic"),
            f"rotary_xpos={self.rotary_xpos}": self.rotary_xpos,
            f"num_memory_tokens={self.num_memory_tokens}": self.num_memory_tokens > 0,
            f"num_memory_kv={self.num_memory_kv}": self.num_memory_kv > 0,
            f"add_zero_kv={self.add_zero_kv}": self.add_zero_kv,
            f"max_attend_past={self.max_attend_past}": self.max_attend_past is not None,
            f"shift_tokens={self.shift_tokens}": any(self.layer_shift_tokens),
            f"residual_attn={self.residual_attn}": self.residual_attn,
            f"talking_heads={self.talking_heads}": self.talking_heads,
            f"sparse_topk={self.sparse_topk}": self.sparse_topk is not None,
            f"value_head_dim={self.value_head_dim}": self.value_dim != self.head_dim,
            "cross-attention layers": "cross" in self.layer_pattern,
            "no self-attention layer": "attn" not in self.layer_pattern,
            f"block_pattern with {self.num_attention_layers} attention layers for "
            f"num_hidden_layers={self.num_hidden_layers}": self.num_attention_layers > self.num_hidden_layers,
        }
        return tuple(name for name, blocks in blockers.items() if blocks)

    @property
    def supports_continuous_batching(self) -> bool:
        """Whether transformers' continuous batching (paged attention, `generate_batch`, `zeta-hf serve
        --continuous-batching`) gives exactly `generate`'s outputs; see `continuous_batching_blockers`."""
        return not self.continuous_batching_blockers


__all__ = ["ZetaConfig"]
