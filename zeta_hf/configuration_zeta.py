"""ZetaConfig: every option of Zeta's Transformer and attention layers, typed, grouped and validated."""

from __future__ import annotations

import difflib
import functools
import math
import types
import typing
from typing import Any, Literal

from huggingface_hub.dataclasses import type_validator, validated_field
from transformers import PreTrainedConfig
from transformers.utils.type_validators import interval

# Names the user picks from; each maps to one class in the model files. The `Literal` types are the fields' declared
# types (checked like every other type); the tuples list the same names.
PositionEmbedding = Literal["absolute", "scaled_sinusoidal", "rotary", "alibi", "t5", "dynamic", "none"]
AbsolutePositionEmbedding = Literal["learned", "scaled_sinusoidal", "none"]
Norm = Literal["layernorm", "rmsnorm", "scalenorm", "simple_rmsnorm"]
NormPlacement = Literal["pre", "post", "sandwich", "resi_dual", "deepnorm"]
ResidualType = Literal["add", "gru"]
SparseTopkMode = Literal["top_k", "zeta_inverted"]
ClassifierPooling = Literal["mean", "first", "last", "memory_token"]
FFActivation = Literal["gelu", "geglu", "silu", "swiglu", "relu_squared", "relu_squared_glu"]
POSITION_EMBEDDINGS = typing.get_args(PositionEmbedding)
ABSOLUTE_POSITION_EMBEDDINGS = typing.get_args(AbsolutePositionEmbedding)
NORMS = typing.get_args(Norm)
NORM_PLACEMENTS = typing.get_args(NormPlacement)
RESIDUAL_TYPES = typing.get_args(ResidualType)
SPARSE_TOPK_MODES = typing.get_args(SparseTopkMode)
CLASSIFIER_POOLINGS = typing.get_args(ClassifierPooling)
FF_ACTIVATIONS = typing.get_args(FFActivation)
LAYER_KINDS = ("attn", "cross", "ff")

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

# Attributes transformers sets on a built config and writes into config.json, so they come back as keyword arguments:
# `auto_map` (`dynamic_module_utils.custom_object_save`, for remote code) and `quantization_config` (the quantizers).
# Every other keyword transformers handles is asked of transformers itself (`_unhandled_by_transformers`).
_SET_BY_TRANSFORMERS_AFTER_INIT = ("auto_map", "quantization_config")


def _unhandled_by_transformers(kwargs: dict[str, Any]) -> list[str]:
    """The keywords transformers' own `PreTrainedConfig.__post_init__` does not handle.

    It consumes the ones it knows (dtype, attention implementation, generation parameters, `num_labels`, the name or
    path, ...) and stores any other verbatim as a new attribute. Asking a blank config, instead of keeping a copy of
    its list, follows transformers from release to release. Keys transformers 4.x wrote (`torchscript`,
    `use_bfloat16`, `is_decoder`, `tokenizer_class`, ...) are among those it now only stores, and no Zeta module
    reads them, so they are refused like a typo.
    """
    declared = PreTrainedConfig.__dataclass_fields__  # its fields and class variables (`model_type`, plans, ...)
    candidates = {
        k: v for k, v in kwargs.items()
        if not k.startswith("_") and k not in declared and k not in _SET_BY_TRANSFORMERS_AFTER_INIT
    }
    if not candidates:
        return []
    # a blank instance (fields at their class defaults, nothing derived yet): only transformers' __post_init__ runs,
    # as it does first for a new config, so it warns about nothing the real construction will not warn about
    probe = PreTrainedConfig.__new__(PreTrainedConfig)
    PreTrainedConfig.__post_init__(probe, **candidates)
    return [k for k in candidates if k in vars(probe)]


def _check_int(name: str, value: Any, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"`{name}` must be an integer >= {low}, but got {value!r}.")


def _interval(default: int | float | None, low: int | float, high: float | None = None, *, low_open: bool = False):
    """A numeric field kept within [low, high] ((low, high] with `low_open`; finite when `high` is None) by
    transformers' `interval` validator, the one its own configs declare. The bound in words goes with it, for the
    error sentence; an int `low` makes it an integer option. None (an unset optional size) is not checked."""
    bound = (f"> {low}" if low_open else f">= {low}") + ("" if high is None else f" and <= {high}")
    kind = "an integer" if isinstance(low, int) else "a finite number"
    return interval(min=low, max=math.inf if high is None else high, exclude_min=low_open, exclude_max=high is None)(
        default=default, metadata={"bound": f"{kind} {bound}"}
    )


def _checked(check, default: Any):
    """A field with a validator of its own (huggingface_hub's `validated_field`) that raises a full sentence."""
    return validated_field(check, default=default)


def _block_pattern_kinds(value: list[str]) -> None:
    if not value or any(kind not in LAYER_KINDS for kind in value):
        raise ValueError(f"`block_pattern` must be a non-empty list of {list(LAYER_KINDS)}, but got {value!r}.")


def _shift_counts(value: int | list[int]) -> None:
    for shift in value if isinstance(value, list) else [value]:
        _check_int("shift_tokens", shift, 0)


def _provider_name(value: str) -> None:
    if not value.strip():
        raise ValueError(
            "`embedding_provider` in a configuration is only the name of the provider the model was built with "
            "(the provider itself is passed in code: `ZetaForCausalLM(config, embedding_provider=...)` or "
            f"`from_pretrained(path, embedding_provider=...)`), but got {value!r}."
        )


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

    # Each field's type is checked (`_check_types`), and a bounded one carries its interval (`_interval`, on
    # transformers' `interval` validator) or a check of its own (`_checked`); `validate_architecture` runs them all,
    # then the rules that tie fields together, by topic.

    # --- size -------------------------------------------------------------------------------------------------
    vocab_size: int = _interval(256, 1)
    max_position_embeddings: int = _interval(1024, 1)
    hidden_size: int = _interval(512, 1)
    num_hidden_layers: int = _interval(6, 1)
    num_attention_heads: int = _interval(8, 1)
    num_key_value_heads: int | None = _interval(None, 1)  # None: as many as `num_attention_heads`
    head_dim: int = _interval(64, 1)
    is_causal: bool = True

    # --- embedding (Zeta's Transformer arguments) -------------------------------------------------------------
    embedding_dim: int | None = _interval(None, 1)
    embedding_dropout: float = _interval(0.0, 0.0, 1.0)
    post_emb_norm: bool = False
    l2norm_embed: bool = False
    emb_frac_gradient: float = _interval(1.0, 0.0, 1.0, low_open=True)
    embedding_provider: str | None = _checked(_provider_name, None)
    num_memory_tokens: int = _interval(0, 0)
    max_mem_len: int = _interval(0, 0)
    shift_mem_down: int = _interval(0, 0)
    logits_dim: int | None = _interval(None, 1)
    tie_word_embeddings: bool = False

    # --- positions --------------------------------------------------------------------------------------------
    position_embedding: PositionEmbedding = "absolute"
    absolute_position_embedding: AbsolutePositionEmbedding | None = None
    rotary_emb_dim: int | None = None
    rotary_base: float = _interval(10000.0, 0.0, low_open=True)
    rotary_interpolation_factor: float = _interval(1.0, 1.0)
    rotary_base_rescale_factor: float = _interval(1.0, 0.0, low_open=True)
    rotary_xpos: bool = False
    rotary_xpos_scale_base: float = _interval(512.0, 0.0, low_open=True)
    rotary_rotate_values: bool = False
    alibi_num_heads: int | None = _interval(None, 1)
    rel_pos_num_buckets: int = _interval(32, 1)
    rel_pos_max_distance: int = _interval(128, 1)
    dynamic_pos_bias_mlp_depth: int = _interval(2, 1)
    dynamic_pos_bias_log_distance: bool = False
    dynamic_pos_bias_norm: bool = False

    # --- norms and residuals ----------------------------------------------------------------------------------
    norm: Norm = "layernorm"
    norm_placement: NormPlacement = "pre"
    layer_norm_eps: float = _interval(1e-5, 0.0, low_open=True)  # 0 divides by zero on a constant row
    resi_dual_scale: float = _interval(1.0, 0.0, 1.0, low_open=True)
    macaron: bool = False
    residual_attn: bool = False
    cross_residual_attn: bool = False
    residual_type: ResidualType = "add"
    scale_residual: bool = False
    scale_residual_constant: float = _interval(1.0, 0.0, low_open=True)
    layer_dropout: float = _interval(0.0, 0.0, 1.0)
    shift_tokens: int | list[int] = _checked(_shift_counts, 0)

    # --- layout -----------------------------------------------------------------------------------------------
    block_pattern: list[str] | None = _checked(_block_pattern_kinds, None)
    cross_attend: bool = False
    only_cross: bool = False

    # --- attention --------------------------------------------------------------------------------------------
    attention_dropout: float = _interval(0.0, 0.0, 1.0)
    qk_norm: bool = False
    qk_norm_groups: int = _interval(1, 1)
    qk_norm_scale: float = _interval(10.0, 0.0, low_open=True)
    qk_norm_dim_scale: bool = False
    num_memory_kv: int = _interval(0, 0)
    talking_heads: bool = False
    head_scale: bool = False
    gate_values: bool = False
    attn_on_attn: bool = False
    add_zero_kv: bool = False
    value_head_dim: int | None = _interval(None, 1)
    shared_kv: bool = False
    max_attend_past: int | None = _interval(None, 0)
    sparse_topk: int | None = _interval(None, 1)
    sparse_topk_mode: SparseTopkMode = "top_k"
    zero_init_attn_output: bool = False

    # --- feedforward ------------------------------------------------------------------------------------------
    ff_mult: float = _interval(4.0, 0.0, low_open=True)
    ff_activation: FFActivation = "gelu"
    ff_post_act_ln: bool = False
    ff_bias: bool = True
    ff_dropout: float = _interval(0.0, 0.0, 1.0)
    zero_init_ff_output: bool = False

    # --- task heads -------------------------------------------------------------------------------------------
    classifier_pooling: ClassifierPooling = "mean"
    classifier_dropout: float = _interval(0.0, 0.0, 1.0)

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
    # tied logits are multiplied by this (2.x: hidden_size ** -0.5)
    tie_embedding_scale: float = _interval(1.0, 0.0, low_open=True)
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
            # with an explicit pattern, the layer count that sizes the KV cache is its number of self-attention layers
            if self.block_pattern.count("attn"):
                self.num_hidden_layers = self.block_pattern.count("attn")
        if self.position_embedding == "rotary" and self.rotary_emb_dim is None:
            # Zeta: max(dim_head // 2, 32); capped at the head size, where Zeta itself would crash.
            self.rotary_emb_dim = min(max(self.head_dim // 2, 32), self.head_dim)
        super().__post_init__(**kwargs)
        self.validate_architecture()

    def _reject_unknown_kwargs(self, kwargs: dict) -> None:
        """A keyword that is neither an option nor one transformers handles would be stored and silently ignored
        (a typo): refuse it, naming the closest option."""
        unknown = _unhandled_by_transformers(kwargs)
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
                choices = [arg for arg in (hint, *typing.get_args(hint)) if typing.get_origin(arg) is Literal]
                if choices:  # a name picked from a list
                    raise ValueError(
                        f"`{name}` must be one of {list(typing.get_args(choices[0]))}, but got {value!r}."
                    ) from None
                expected = getattr(hint, "__name__", None) if isinstance(hint, type) else None
                expected = expected or str(hint).replace("float | int", "float")
                raise ValueError(
                    f"`{name}` must be of type {expected}, but got {value!r} ({type(value).__name__})."
                ) from None

    def _check_fields(self) -> None:
        """Each field's own validators (the metadata `@strict` dataclasses read): an `_interval` field lies in its
        interval, a `_checked` one passes its check. None, the unset value of an optional size, is not checked."""
        for field in type(self).__dataclass_fields__.values():
            value = getattr(self, field.name)
            if value is None or not field.metadata.get("validator"):
                continue
            try:
                for validator in field.metadata["validator"]:
                    validator(value)
            except (ValueError, TypeError) as error:
                if "bound" not in field.metadata:
                    raise ValueError(str(error)) from None  # a `_checked` field's own sentence
                raise ValueError(f"`{field.name}` must be {field.metadata['bound']}, but got {value!r}.") from None

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
        """Raise `ValueError` naming the field, the value and what is allowed, for any invalid value or combination:
        each field's type and own validators first, then the rules that tie fields together, by topic."""
        self._check_types()
        self._check_fields()
        self._validate_layout()
        self._validate_attention()
        self._validate_positions()
        self._validate_embeddings()
        self._check_sizes()

    def _validate_layout(self) -> None:
        """The stack of layers: its kinds, its residuals and its norms."""
        if self.only_cross and not self.cross_attend:
            raise ValueError("`only_cross=True` needs `cross_attend=True`.")
        if "cross" in self.layer_pattern and not self.cross_attend:
            raise ValueError("`block_pattern` contains 'cross' layers: set `cross_attend=True`.")
        if isinstance(self.shift_tokens, list) and len(self.shift_tokens) != len(self.layer_pattern):
            raise ValueError(
                f"`shift_tokens` as a list needs one entry per layer ({len(self.layer_pattern)}), but got "
                f"{len(self.shift_tokens)}."
            )
        if self.shift_mem_down > self.num_hidden_layers:
            raise ValueError(
                f"`shift_mem_down` ({self.shift_mem_down}) cannot exceed the number of layers ({self.num_hidden_layers})."
            )
        if self.norm_placement == "deepnorm" and self.scale_residual_constant != 1.0:
            raise ValueError(
                "`norm_placement='deepnorm'` sets the residual scale itself; leave `scale_residual_constant` at 1.0, "
                f"but got {self.scale_residual_constant}."
            )
        if self.scalenorm_dim_scale and self.norm != "scalenorm":
            raise ValueError(f"`scalenorm_dim_scale=True` needs `norm='scalenorm'`, but got {self.norm!r}.")

    def _validate_attention(self) -> None:
        """Heads, key / value widths and the options that change how scores are formed."""
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"`num_attention_heads` ({self.num_attention_heads}) must be divisible by `num_key_value_heads` "
                f"({self.num_key_value_heads})."
            )
        if self.shared_kv and self.value_head_dim not in (None, self.head_dim):
            raise ValueError(
                f"`shared_kv=True` needs `value_head_dim` equal to `head_dim` ({self.head_dim}), but got "
                f"{self.value_head_dim}."
            )
        if self.qk_norm and (self.head_dim % self.qk_norm_groups or self.head_dim // self.qk_norm_groups <= 2):
            raise ValueError(
                f"`qk_norm_groups` ({self.qk_norm_groups}) must divide `head_dim` ({self.head_dim}) into groups of "
                "more than 2 features."
            )
        if self.talking_heads_residual and not self.talking_heads:
            raise ValueError("`talking_heads_residual=True` needs `talking_heads=True`.")

    def _validate_positions(self) -> None:
        """The position scheme and the options of the one chosen (another scheme's options must stay unset)."""
        if self.position_embedding in ("rotary", "t5") and self.absolute_position_embedding != "none":
            raise ValueError(
                f"`absolute_position_embedding={self.absolute_position_embedding!r}` cannot be combined with "
                f"`position_embedding={self.position_embedding!r}`: Zeta turns absolute positions off for rotary and "
                "T5 relative positions. Leave `absolute_position_embedding` unset."
            )
        if self.position_embedding == "rotary":
            self._validate_rotary()
        elif self.rotary_xpos:
            raise ValueError(f"`rotary_xpos=True` needs `position_embedding='rotary'`, but got {self.position_embedding!r}.")
        if self.alibi_num_heads is not None and self.position_embedding != "alibi":
            raise ValueError(f"`alibi_num_heads` needs `position_embedding='alibi'`, but got {self.position_embedding!r}.")
        if self.alibi_num_heads is not None and self.alibi_num_heads > self.num_attention_heads:
            raise ValueError(
                f"`alibi_num_heads` ({self.alibi_num_heads}) cannot exceed `num_attention_heads` ({self.num_attention_heads})."
            )
        if self.position_embedding == "t5":
            self._validate_t5_buckets()
        if self.absolute_position_embedding == "scaled_sinusoidal" and self.input_dim % 2:
            raise ValueError(
                "Scaled sinusoidal positions need an even embedding width (`embedding_dim`, or `hidden_size` when "
                f"`embedding_dim` is unset), but got {self.input_dim}."
            )

    def _validate_rotary(self) -> None:
        _check_int("rotary_emb_dim", self.rotary_emb_dim, 2)  # __post_init__ derives it when unset
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
        if self.rotary_xpos and not self.is_causal:
            raise ValueError("`rotary_xpos=True` needs a causal model (`is_causal=True`): xpos is not defined for encoders.")

    def _validate_t5_buckets(self) -> None:
        _check_int("rel_pos_num_buckets", self.rel_pos_num_buckets, 2)
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

    def _validate_embeddings(self) -> None:
        """Token embeddings and the output head that may share their matrix."""
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
        if self.tie_embedding_scale != 1.0 and not self.tie_word_embeddings:
            raise ValueError(
                f"`tie_embedding_scale` ({self.tie_embedding_scale}) scales the logits of a tied head: it needs "
                "`tie_word_embeddings=True`."
            )

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
