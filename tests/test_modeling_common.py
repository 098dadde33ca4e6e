"""Generic model checks (`ModelCheckMixin`) run over a matrix of tiny `ZetaForCausalLM` variants.

Every check compares numbers or tokens against an independent computation (a full forward, a manual loop, a fresh
load), so each one can fail. Checks that do not apply to a variant are skipped through a capability of its config
(`is_causal`, `supports_cache`, `padding_invariant`), never through per-test lists; inputs a variant needs (encoder
states for cross-attention layers, mems for XL variants) come from helpers that read the config.
"""

from __future__ import annotations

import inspect
import json

import pytest
import torch
import torch.nn.functional as F
import transformers
from transformers import DynamicCache, StaticCache
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

import zeta_hf  # noqa: F401  (registers the "zeta" model type with the Auto classes)
from zeta_hf import (
    ZetaConfig,
    ZetaForCausalLM,
    ZetaForMaskedLM,
    ZetaForSequenceClassification,
    ZetaForTokenClassification,
    ZetaModel,
)
from zeta_hf.modeling_zeta import AUTO_CLASSES, ZetaEncoderHead
from zeta_hf.modeling_zeta import block_starts

# ---------------------------------------------------------------------------------------------------------------------
# The variant matrix: every option appears at least once with memory tokens (mem2) and once with XL mems (xl).
# ---------------------------------------------------------------------------------------------------------------------

MEM = dict(num_memory_tokens=2)
XL = dict(max_mem_len=6)

VARIANTS = [
    {},
    dict(norm="rmsnorm", norm_placement="post", ff_activation="geglu", num_key_value_heads=2, tie_word_embeddings=True, **MEM),
    dict(norm="scalenorm", ff_activation="relu_squared", ff_post_act_ln=True, macaron=True, num_memory_kv=2, **XL),
    dict(position_embedding="scaled_sinusoidal", norm="scalenorm", norm_placement="sandwich", ff_activation="swiglu",
         num_key_value_heads=1, embedding_dim=32, **MEM),
    dict(position_embedding="scaled_sinusoidal", norm="rmsnorm", norm_placement="post", residual_attn=True,
         tie_word_embeddings=True, **XL),
    dict(position_embedding="rotary", norm="simple_rmsnorm", ff_activation="relu_squared", ff_post_act_ln=True,
         qk_norm=True, qk_norm_groups=2, qk_norm_dim_scale=True, macaron=True, **MEM),
    dict(position_embedding="rotary", norm_placement="sandwich", ff_activation="geglu", num_key_value_heads=1,
         embedding_dim=48, **XL),
    dict(position_embedding="rotary", rotary_rotate_values=True, residual_attn=True, num_memory_kv=2, **MEM),
    dict(position_embedding="rotary", rotary_rotate_values=True, norm="simple_rmsnorm", norm_placement="post",
         ff_activation="swiglu", num_key_value_heads=2, qk_norm=True, qk_norm_dim_scale=True, **XL),
    dict(position_embedding="rotary", rotary_xpos=True, norm="rmsnorm", norm_placement="sandwich", ff_activation="geglu",
         num_key_value_heads=2, tie_word_embeddings=True, **MEM),
    dict(position_embedding="rotary", rotary_xpos=True, ff_activation="relu_squared", macaron=True, residual_attn=True, **XL),
    dict(position_embedding="rotary", rotary_xpos=True, rotary_rotate_values=True),  # supports_cache is False
    dict(position_embedding="alibi", alibi_num_heads=2, absolute_position_embedding="learned", norm_placement="post",
         is_causal=False, **MEM),
    dict(position_embedding="alibi", alibi_num_heads=2, absolute_position_embedding="learned", norm="rmsnorm",
         norm_placement="sandwich", ff_activation="swiglu", num_memory_kv=2, is_causal=False, **XL),
    dict(position_embedding="alibi", num_key_value_heads=2, num_memory_kv=1, **MEM, **XL),
    dict(position_embedding="t5", norm="scalenorm", ff_activation="swiglu", num_key_value_heads=1, qk_norm=True,
         num_memory_kv=2, **MEM),
    dict(position_embedding="t5", norm="simple_rmsnorm", qk_norm=True, qk_norm_groups=4, num_key_value_heads=2,
         tie_word_embeddings=True, **MEM, **XL),
    dict(position_embedding="none", norm="simple_rmsnorm", norm_placement="sandwich", ff_activation="relu_squared",
         residual_attn=True, macaron=True, embedding_dim=32, **MEM),
    dict(position_embedding="none", norm="scalenorm", norm_placement="sandwich", ff_activation="geglu",
         num_key_value_heads=1, embedding_dim=48, **XL),
    dict(position_embedding="rotary", is_causal=False),
    # Zeta's remaining options: each one at least once with memory tokens and once with XL mems
    dict(position_embedding="dynamic", dynamic_pos_bias_log_distance=True, dynamic_pos_bias_norm=True,
         dynamic_pos_bias_mlp_depth=3, talking_heads=True, head_scale=True, scale_residual=True, **MEM),
    dict(position_embedding="dynamic", dynamic_pos_bias_mlp_depth=1, gate_values=True, attn_on_attn=True,
         num_key_value_heads=2, num_memory_kv=1, **XL),
    dict(position_embedding="alibi", talking_heads=True, head_scale=True, sparse_topk=3, add_zero_kv=True, **XL),
    dict(position_embedding="rotary", head_scale=True, gate_values=True, attn_on_attn=True, value_head_dim=16,
         num_key_value_heads=2, max_attend_past=3, **MEM),
    dict(position_embedding="t5", add_zero_kv=True, value_head_dim=48, max_attend_past=4, **XL),
    dict(position_embedding="rotary", rotary_rotate_values=True, shared_kv=True, add_zero_kv=True, sparse_topk=4,
         **MEM),
    dict(shared_kv=True, residual_type="gru", scale_residual=True, layer_dropout=0.2, **XL),
    dict(shift_tokens=2, norm_placement="deepnorm", zero_init_attn_output=True, zero_init_ff_output=True,
         layer_dropout=0.2, **MEM),
    dict(position_embedding="rotary", shift_tokens=[1, 0, 2, 1], norm_placement="resi_dual", resi_dual_scale=0.5,
         scale_residual_constant=0.7, zero_init_attn_output=True, zero_init_ff_output=True, **XL),
    dict(position_embedding="alibi", shift_tokens=[0, 1, 1, 0], norm_placement="resi_dual", residual_type="gru",
         scale_residual_constant=1.5, **MEM),
    dict(block_pattern=["attn", "attn", "ff", "attn", "ff", "ff"], shift_tokens=1, norm_placement="deepnorm",
         residual_type="gru", **MEM, **XL),
    dict(position_embedding="t5", sparse_topk=3, sparse_topk_mode="zeta_inverted", **MEM, **XL),  # not cacheable
    dict(cross_attend=True, cross_residual_attn=True, num_memory_kv=2, position_embedding="rotary", **MEM),
    dict(cross_attend=True, block_pattern=["attn", "cross", "ff", "cross", "ff"], add_zero_kv=True, talking_heads=True,
         **XL),
    # (memory tokens would be inert here: without self-attention no other position reads them)
    dict(cross_attend=True, only_cross=True, gate_values=True, num_memory_kv=1),
    dict(cross_attend=True, is_causal=False, position_embedding="dynamic", shift_tokens=1, max_attend_past=2,
         sparse_topk=3, **MEM),
    # static-cache variants (`supports_static_cache`: cacheable, rotary or no positions, nothing before the tokens on
    # the key axis, no XL mems), so the static-cache checks run rather than skip
    dict(position_embedding="rotary", norm="rmsnorm", ff_activation="swiglu", num_key_value_heads=2),
    dict(position_embedding="none", absolute_position_embedding="learned", norm_placement="sandwich", qk_norm=True,
         tie_word_embeddings=True),
    # what an x-transformers 2.x checkpoint converts to (docs/convert.md)
    dict(position_embedding="rotary", norm="rmsnorm", norm_unit_offset=True, norm_bias=False, ff_activation="swiglu",
         num_key_value_heads=2, qk_norm=True, gate_values=True, gate_values_bias=False, tie_word_embeddings=True,
         tie_embedding_scale=0.125, **MEM),
    dict(position_embedding="alibi", norm="scalenorm", norm_unit_offset=True, scalenorm_dim_scale=True,
         norm_placement="sandwich", ff_post_act_ln=True, norm_bias=False, talking_heads=True,
         talking_heads_residual=True, lm_head_bias=False, **MEM),
    dict(position_embedding="rotary", rotary_xpos=True, norm_unit_offset=True, norm_bias=False, lm_head_bias=False,
         **XL),
]


def variant_id(overrides: dict) -> str:
    """A readable name built from the options themselves, e.g. `alibi-gqa2-memkv1-mem2-xl`."""
    o = overrides
    pos = o.get("position_embedding", "absolute")
    tags = [{"scaled_sinusoidal": "sinusoidal"}.get(pos, pos)]
    if o.get("rotary_xpos"):
        tags.append("xpos")
    if o.get("rotary_rotate_values"):
        tags.append("rotv")
    if o.get("alibi_num_heads"):
        tags.append(f"heads{o['alibi_num_heads']}")
    if o.get("absolute_position_embedding"):
        tags.append(f"abs{o['absolute_position_embedding']}")
    if o.get("dynamic_pos_bias_log_distance"):
        tags.append("log")
    if o.get("dynamic_pos_bias_norm"):
        tags.append("dnorm")
    if pos == "dynamic" and "dynamic_pos_bias_mlp_depth" in o:
        tags.append(f"mlp{o['dynamic_pos_bias_mlp_depth']}")
    if o.get("block_pattern"):
        tags.append("pattern-" + "".join(kind[0] for kind in o["block_pattern"]))
    if o.get("only_cross"):
        tags.append("onlycross")
    elif o.get("cross_attend"):
        tags.append("cross")
    if o.get("cross_residual_attn"):
        tags.append("crossresattn")
    if o.get("norm", "layernorm") != "layernorm":
        tags.append(o["norm"].replace("_", ""))
    if o.get("norm_placement", "pre") != "pre":
        tags.append({"resi_dual": "resdual"}.get(o["norm_placement"], o["norm_placement"]))
    if o.get("ff_activation", "gelu") != "gelu":
        tags.append(o["ff_activation"].replace("_", ""))
    if o.get("ff_post_act_ln"):
        tags.append("postactln")
    kv = o.get("num_key_value_heads")
    if kv is not None:
        tags.append("mqa" if kv == 1 else f"gqa{kv}")
    if o.get("qk_norm"):
        tags.append("qknorm" + (f"g{o['qk_norm_groups']}" if o.get("qk_norm_groups", 1) > 1 else "")
                    + ("scale" if o.get("qk_norm_dim_scale") else ""))
    flags = ("macaron", "residual_attn", "talking_heads", "head_scale", "gate_values", "attn_on_attn", "add_zero_kv",
             "shared_kv", "scale_residual")
    for flag in flags:
        if o.get(flag):
            tags.append(flag.replace("_", ""))
    if o.get("value_head_dim"):
        tags.append(f"vdim{o['value_head_dim']}")
    if o.get("max_attend_past") is not None:
        tags.append(f"window{o['max_attend_past']}")
    if o.get("sparse_topk"):
        tags.append(f"topk{o['sparse_topk']}" + ("inv" if o.get("sparse_topk_mode") == "zeta_inverted" else ""))
    shift = o.get("shift_tokens")
    if shift:
        tags.append("shift" + ("".join(map(str, shift)) if isinstance(shift, list) else str(shift)))
    if o.get("residual_type", "add") != "add":
        tags.append(o["residual_type"])
    if o.get("scale_residual_constant"):
        tags.append(f"rconst{o['scale_residual_constant']}")
    if o.get("resi_dual_scale"):
        tags.append(f"rdscale{o['resi_dual_scale']}")
    if o.get("layer_dropout"):
        tags.append(f"layerdrop{o['layer_dropout']}")
    if o.get("zero_init_attn_output") or o.get("zero_init_ff_output"):
        tags.append("zeroinit")
    if o.get("num_memory_kv"):
        tags.append(f"memkv{o['num_memory_kv']}")
    if o.get("embedding_dim"):
        tags.append(f"emb{o['embedding_dim']}")
    if o.get("tie_word_embeddings"):
        tags.append("tied")
    if o.get("is_causal") is False:
        tags.append("encoder")
    if o.get("num_memory_tokens"):
        tags.append(f"mem{o['num_memory_tokens']}")
    if o.get("max_mem_len"):
        tags.append("xl")
    if o.get("norm_unit_offset") or o.get("norm_bias") is False:
        tags.append("xt2")
    return "-".join(tags)


assert len({variant_id(v) for v in VARIANTS}) == len(VARIANTS), "variant ids must be unique"

# Sizes of the inputs the checks feed: few tokens keep the whole file fast.
BATCH, SEQ, PROMPT, NEW_TOKENS, MEM_LEN, ENC_LEN = 2, 7, 5, 6, 4, 5
GEN = dict(max_new_tokens=NEW_TOKENS, pad_token_id=0)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, what: str, relative: bool = False) -> None:
    """`relative=True` measures `atol` in units of the largest |expected| value when that exceeds 1: float32 rounding
    grows with magnitude, and tied-embedding variants have logits around 15."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    if relative:
        atol = atol * max(1.0, expected.abs().max().item())
    diff = (actual.float() - expected.float()).abs().max().item()
    assert diff <= atol, f"{what}: max abs difference {diff:.3e} > {atol:.1e}"


def assert_tokens_equal(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.equal(actual, expected), f"{what}: tokens differ\n{actual.tolist()}\n!=\n{expected.tolist()}"


# ---------------------------------------------------------------------------------------------------------------------
# The mixin: a subclass provides `model_class` and a `config` fixture.
# ---------------------------------------------------------------------------------------------------------------------


class ModelCheckMixin:
    """Model checks that hold for every configuration; the subclass's `config` fixture picks the matrix."""

    model_class = None

    # ---- what the model class offers, read from the class itself (never a per-test list) ----
    def generates(self) -> bool:
        return self.model_class.can_generate()

    def takes_cache(self) -> bool:
        return "cache" in inspect.signature(self.model_class.forward).parameters

    def takes_labels(self) -> bool:
        return "labels" in inspect.signature(self.model_class.forward).parameters

    def returns_mems(self) -> bool:
        return not issubclass(self.model_class, ZetaEncoderHead)  # the task heads' outputs carry no XL memories

    def require_generation(self) -> None:
        if not self.generates():
            pytest.skip(f"{self.model_class.__name__} does not generate (can_generate() is False)")

    def require_cache_input(self) -> None:
        if not self.takes_cache():
            pytest.skip(f"{self.model_class.__name__}.forward takes no cache")

    @staticmethod
    def primary(out) -> torch.Tensor:
        """The model's main output: its logits, or the base model's last hidden state."""
        logits = getattr(out, "logits", None)
        return logits if logits is not None else out.last_hidden_state

    def labels_for(self, config: ZetaConfig, ids: torch.Tensor) -> torch.Tensor:
        """Labels the head trains on, with a few ignored (-100); the causal LM's are the ids themselves."""
        labels = ids.clone()
        labels[0, 2] = labels[1, 4] = labels[1, 5] = -100
        return labels

    def manual_loss(self, logits: torch.Tensor, labels: torch.Tensor, config: ZetaConfig) -> torch.Tensor:
        """The loss computed by hand: next-token cross-entropy for the causal LM."""
        shift_logits, shift_labels = logits[:, :-1].reshape(-1, config.output_dim), labels[:, 1:].reshape(-1)
        keep = shift_labels != -100
        return F.cross_entropy(shift_logits[keep], shift_labels[keep])

    def output_shape(self, config: ZetaConfig) -> tuple[int, ...]:
        return (BATCH, SEQ, config.output_dim)

    # ---- helpers ----
    def build(self, config: ZetaConfig, attn_implementation: str | None = None, seed: int = 0):
        torch.manual_seed(seed)
        model = self.model_class(config).eval()
        self.unzero(model)
        if attn_implementation is not None:
            model.set_attn_implementation(attn_implementation)
            assert model.config._attn_implementation == attn_implementation
        return model

    @staticmethod
    def ids(config: ZetaConfig, batch: int = BATCH, length: int = SEQ, seed: int = 1) -> torch.Tensor:
        """Random token ids, never the pad id 0."""
        g = torch.Generator().manual_seed(seed)
        return torch.randint(1, config.vocab_size, (batch, length), generator=g)

    @staticmethod
    def random_mems(config: ZetaConfig, batch: int = BATCH, seed: int = 2) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        return [torch.randn(batch, MEM_LEN, config.hidden_size, generator=g) for _ in range(config.num_attention_layers)]

    def mems_for(self, config: ZetaConfig, batch: int = BATCH) -> list[torch.Tensor] | None:
        """XL variants (`max_mem_len > 0`) run every check with memories from a previous segment."""
        return self.random_mems(config, batch) if config.max_mem_len else None

    @staticmethod
    def rows(mems: list[torch.Tensor] | None, i: int) -> list[torch.Tensor] | None:
        return None if mems is None else [m[i : i + 1] for m in mems]

    @staticmethod
    def encoder_inputs(config: ZetaConfig, batch: int = BATCH, seed: int = 3) -> dict[str, torch.Tensor]:
        """Variants with cross-attention layers run every check with encoder states (the same ones on every call) and
        an encoder mask that hides the last encoder position of row 0; other variants get no extra inputs."""
        if "cross" not in config.layer_pattern:
            return {}
        g = torch.Generator().manual_seed(seed)
        states = torch.randn(batch, ENC_LEN, config.hidden_size, generator=g)
        mask = torch.ones(batch, ENC_LEN, dtype=torch.long)
        mask[0, -1] = 0
        return {"encoder_hidden_states": states, "encoder_attention_mask": mask}

    @staticmethod
    def input_rows(inputs: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
        return {name: tensor[i : i + 1] for name, tensor in inputs.items()}

    @staticmethod
    def unzero(model) -> None:
        """Give tensors that start at exactly zero (Zeta's zero-initialised branch outputs) a small random value: a zero
        output projection hides its branch from every check (and blocks the gradients before it); the checks are about
        the computation, not the init (test_parity_xtransformers checks the init)."""
        g = torch.Generator().manual_seed(11)
        with torch.no_grad():
            for param in model.parameters():
                if param.numel() > 1 and not param.any():
                    param.copy_(0.02 * torch.randn(param.shape, generator=g))

    @staticmethod
    def require_causal(config: ZetaConfig) -> None:
        if not config.is_causal:
            pytest.skip("generation and incremental decoding need a causal model (config.is_causal=False)")

    @staticmethod
    def require_cache(config: ZetaConfig) -> None:
        if not config.supports_cache:
            pytest.skip("config.supports_cache is False")

    @staticmethod
    def require_continuous(config: ZetaConfig) -> None:
        if config.sparse_topk is not None:
            pytest.skip("sparse top-k picks keys by rank: a rounding change can flip a pick, so low precision is not "
                        "close to float32 (config.sparse_topk is set)")

    @staticmethod
    def require_padding_invariant(config: ZetaConfig) -> None:
        if not config.padding_invariant:
            pytest.skip("config.padding_invariant is False")

    def loss_and_grads(self, model, ids, mems, **inputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The head's own loss on `labels_for(ids)` (the base model: the mean square of its last hidden state)."""
        model.zero_grad(set_to_none=True)
        if self.takes_labels():
            loss = model(ids, labels=self.labels_for(model.config, ids), mems=mems, use_cache=False, **inputs).loss
        else:
            loss = model(ids, mems=mems, use_cache=False, **inputs).last_hidden_state.square().mean()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    @staticmethod
    def temperature_for(model, ids: torch.Tensor, **inputs) -> float:
        """A sampling temperature that brings the top-2 logit gap to at most 1, so top-p keeps several tokens: at
        initialisation tied-embedding variants predict the last token again with a gap of ~40 logits."""
        with torch.no_grad():
            top2 = model(ids, use_cache=False, **inputs).logits[:, -1].topk(2, dim=-1).values
        return max(1.0, (top2[:, 0] - top2[:, 1]).max().item())

    @staticmethod
    def greedy_loop(model, ids, mems=None, steps: int = NEW_TOKENS, **inputs) -> torch.Tensor:
        """Greedy decoding by hand: a full, uncached forward per new token."""
        seq = ids
        with torch.no_grad():
            for _ in range(steps):
                logits = model(seq, mems=mems, use_cache=False, **inputs).logits[:, -1]
                seq = torch.cat((seq, logits.argmax(-1, keepdim=True)), dim=1)
        return seq

    # ---- 1. forward shapes and loss ----
    def test_forward_shapes_and_loss(self, config):
        model = self.build(config)
        ids, mems, enc = self.ids(config), self.mems_for(config), self.encoder_inputs(config)
        with torch.no_grad():
            plain = self.primary(model(ids, mems=mems, use_cache=False, **enc))
        assert plain.shape == self.output_shape(config) and torch.isfinite(plain).all()
        if not self.takes_labels():  # the base model: its hidden states are what the causal LM's head reads
            lm = ZetaForCausalLM(config).eval()
            lm.model.load_state_dict(model.state_dict())
            with torch.no_grad():
                out = lm(ids, mems=mems, use_cache=False, **enc)
            assert_close(out.last_hidden_state, plain, 0.0, "causal LM's hidden states vs the base model's")
            assert_close(out.logits, lm.lm_head(plain), 1e-6, "causal LM's logits vs its head on the base model's")
            return
        labels = self.labels_for(config, ids)
        with torch.no_grad():
            out = model(ids, labels=labels, mems=mems, use_cache=False, **enc)
        assert_close(out.logits, plain, 0.0, "logits with labels")
        assert_close(out.loss, self.manual_loss(out.logits, labels, config), 1e-6, "loss vs the loss by hand")
        if (labels == -100).any():  # the ignored positions really are ignored
            everything = self.manual_loss(out.logits, labels.clamp(min=0), config)
            assert (out.loss - everything).abs() > 1e-6

    # ---- 2. save / load round trip ----
    def test_save_load_round_trip(self, config, tmp_path):
        model = self.build(config)
        model.save_pretrained(tmp_path)
        ids, mems, enc = self.ids(config), self.mems_for(config), self.encoder_inputs(config)
        with torch.no_grad():
            expected = self.primary(model(ids, mems=mems, use_cache=False, **enc))
        reference = model.state_dict()
        auto = next(getattr(transformers, name) for name, cls in AUTO_CLASSES.items() if cls is self.model_class)
        for loader in (self.model_class, auto):
            loaded = loader.from_pretrained(tmp_path).eval()
            assert type(loaded) is self.model_class, f"{loader.__name__} loaded {type(loaded)}"
            state = loaded.state_dict()
            assert state.keys() == reference.keys()
            for name, tensor in reference.items():
                assert torch.equal(state[name], tensor), f"{loader.__name__}: {name} changed in the round trip"
            with torch.no_grad():
                logits = self.primary(loaded(ids, mems=mems, use_cache=False, **enc))
            assert torch.equal(logits, expected), f"{loader.__name__}: logits changed in the round trip"

    def test_config_json_round_trip(self, config, tmp_path):
        config.save_pretrained(tmp_path)
        on_disk = json.loads((tmp_path / "config.json").read_text())
        assert on_disk["model_type"] == "zeta"
        for loaded in (ZetaConfig.from_pretrained(tmp_path), ZetaConfig.from_dict(json.loads(config.to_json_string()))):
            assert loaded.to_dict() == config.to_dict()
            assert loaded.to_json_string() == config.to_json_string()

    # ---- 3. cached generation is token-identical to uncached ----
    def test_generate_greedy_cached_equals_uncached(self, config):
        self.require_generation()
        self.require_causal(config)
        model = self.build(config)
        ids, enc = self.ids(config, length=PROMPT), self.encoder_inputs(config)
        expected = self.greedy_loop(model, ids, **enc)
        uncached = model.generate(ids, do_sample=False, use_cache=False, **enc, **GEN)
        assert_tokens_equal(uncached, expected, "uncached greedy generate vs manual greedy loop")
        self.require_cache(config)
        cached = model.generate(ids, do_sample=False, use_cache=True, **enc, **GEN)
        assert_tokens_equal(cached, expected, "cached greedy generate vs manual greedy loop")

    def test_generate_sample_cached_equals_uncached(self, config):
        self.require_generation()
        self.require_causal(config)
        self.require_cache(config)
        model = self.build(config)
        ids, enc = self.ids(config, length=PROMPT), self.encoder_inputs(config)
        outputs, temperature = {}, self.temperature_for(model, ids, **enc)
        for seed in (3, 4):
            for use_cache in (True, False):
                torch.manual_seed(seed)
                outputs[seed, use_cache] = model.generate(
                    ids, do_sample=True, temperature=temperature, top_k=20, top_p=0.9, use_cache=use_cache, **enc, **GEN
                )
            assert_tokens_equal(outputs[seed, True], outputs[seed, False], f"sampling (seed {seed}) cached vs uncached")
        assert not torch.equal(outputs[3, True], outputs[4, True]), "sampling ignored the seed"

    def test_generate_beam_cached_equals_uncached(self, config):
        self.require_generation()
        self.require_causal(config)
        self.require_cache(config)
        model = self.build(config)
        ids, enc = self.ids(config, length=PROMPT), self.encoder_inputs(config)
        cached = model.generate(ids, num_beams=3, do_sample=False, use_cache=True, **enc, **GEN)
        uncached = model.generate(ids, num_beams=3, do_sample=False, use_cache=False, **enc, **GEN)
        assert cached.shape == (BATCH, PROMPT + NEW_TOKENS)
        assert_tokens_equal(cached, uncached, "beam search cached vs uncached")

    def test_generate_static_cache_equals_manual_loop(self, config):
        """A static cache (fixed key axis, for torch.compile) gives the same tokens, or is refused up front."""
        self.require_generation()
        self.require_causal(config)
        self.require_cache(config)  # uncacheable models generate without a cache, whatever cache is asked for
        model = self.build(config)
        ids, enc = self.ids(config, length=PROMPT), self.encoder_inputs(config)
        if not config.supports_static_cache:
            with pytest.raises(ValueError, match="static cache"):
                model.generate(ids, do_sample=False, cache_implementation="static", **enc, **GEN)
            return
        expected = self.greedy_loop(model, ids, **enc)
        static = model.generate(ids, do_sample=False, cache_implementation="static", **enc, **GEN)
        assert_tokens_equal(static, expected, "static-cache greedy generate vs manual greedy loop")

    # ---- 4. incremental forward equals full forward ----
    @pytest.mark.parametrize("cache_kind", ["dynamic", "static"])
    @pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
    def test_incremental_forward_equals_full(self, config, attn_implementation, cache_kind):
        self.require_cache_input()
        self.require_causal(config)
        self.require_cache(config)
        model = self.build(config, attn_implementation)
        ids, mems, enc = self.ids(config, length=9), self.mems_for(config), self.encoder_inputs(config)
        with torch.no_grad():
            full = self.primary(model(ids, mems=mems, use_cache=False, **enc))
            cache = DynamicCache()
            if cache_kind == "static":
                cache = StaticCache(config=model.config, max_cache_len=12)
                if not config.supports_static_cache or mems is not None:  # refused up front, by name
                    with pytest.raises(ValueError, match="static cache"):
                        model(ids[:, :4], cache=cache, use_cache=True, mems=mems, **enc)
                    return
            # prefix of 4, then one token at a time, then a chunk of 3
            steps = [(0, 4), (4, 5), (5, 6), (6, 9)]
            parts = []
            for start, end in steps:
                out = model(ids[:, start:end], cache=cache, use_cache=True, mems=mems if start == 0 else None, **enc)
                assert out.cache is cache
                parts.append(self.primary(out))
        assert_close(torch.cat(parts, dim=1), full, 1e-5, "incremental vs full forward logits", relative=True)

    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
    def test_lean_decode_step_equals_generic_or_is_not_taken(self, config, dtype, monkeypatch):
        """One token per row on a warm cache may take the lean decode step (`ZetaLayer.decode_step`, chosen by
        `ZetaModel._takes_decode_step`). Wherever a
        configuration takes it, its logits equal the generic forward's bit for bit; a configuration that leaves it out
        never reaches it."""
        self.require_generation()
        self.require_causal(config)
        self.require_cache(config)
        from zeta_hf.modeling_zeta import ZetaModel

        calls = []
        original = ZetaModel._takes_decode_step
        monkeypatch.setattr(ZetaModel, "_takes_decode_step",
                            lambda model, *a: original(model, *a) and not calls.append(1))
        model = self.build(config).to(dtype)
        ids, enc = self.ids(config, length=PROMPT), self.encoder_inputs(config)
        enc = {k: v.to(dtype) if v.is_floating_point() else v for k, v in enc.items()}
        with torch.no_grad():
            lean_cache = model(ids, use_cache=True, **enc).cache
            generic_cache = model(ids, use_cache=True, **enc).cache
            # served wherever every layer serves it, whatever bias lies over the key axis (ALiBi, T5, window)
            lean_served = model.base_model._serves_decode_step()
            generic_cache.zeta_layout.lean_decode = False  # forces the generic forward
            token = model(ids, use_cache=False, **enc).logits[:, -1:].argmax(-1)
            for step in range(3):
                calls.clear()
                got = model(token, cache=lean_cache, use_cache=True, **enc).logits
                assert len(calls) == (1 if lean_served else 0), f"step {step}: lean step taken {len(calls)} times"
                calls.clear()
                want = model(token, cache=generic_cache, use_cache=True, **enc).logits
                assert not calls, "the generic reference went through the lean step"
                assert got.dtype == want.dtype == dtype
                assert torch.equal(got, want), f"step {step}: lean vs generic differ by {(got - want).abs().max()}"
                token = want.argmax(-1)
        # decided once, at the first decode step, from the layers' modules
        assert lean_cache.zeta_layout.lean_decode is model.base_model._serves_decode_step()

    # ---- 5. gradients reach every parameter ----
    def test_gradients_reach_every_parameter(self, config):
        model = self.build(config).train()
        ids, mems, enc = self.ids(config), self.mems_for(config), self.encoder_inputs(config)
        trainable = [name for name, param in model.named_parameters() if param.requires_grad]
        reached, problems = set(), []
        # stochastic depth (`layer_dropout`) skips random layers in a training step: a few steps reach them all
        for _ in range(6 if config.layer_dropout else 1):
            _, grads = self.loss_and_grads(model, ids, mems, **enc)
            for name, grad in grads.items():
                if not torch.isfinite(grad).all():
                    problems.append(f"{name}: non-finite grad")
                elif grad.abs().sum() > 0:
                    reached.add(name)
            if reached.issuperset(trainable):
                break
        problems += [f"{name}: no (non-zero) grad" for name in trainable if name not in reached]
        assert not problems, "; ".join(problems)

    # ---- 6. eager equals sdpa ----
    def test_eager_equals_sdpa(self, config, monkeypatch):
        ids, mems, enc = self.ids(config), self.mems_for(config), self.encoder_inputs(config)
        mask = torch.ones_like(ids)
        mask[1, :2] = 0  # one left-padded row exercises the float-bias path of both implementations
        calls = []
        sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]
        monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS, "sdpa", lambda *a, **k: calls.append(1) or sdpa(*a, **k))
        logits = {}
        for impl in ("eager", "sdpa"):
            model = self.build(config, impl)
            with torch.no_grad():
                logits[impl] = self.primary(model(ids, mems=mems, use_cache=False, **enc))
                logits[impl, "masked"] = self.primary(model(ids, attention_mask=mask, mems=mems, use_cache=False, **enc))
            if impl == "eager":
                assert not calls, "eager model called the sdpa attention"
        if not config.needs_attention_scores:
            assert calls, "sdpa model never called the sdpa attention"
        assert_close(logits["sdpa"], logits["eager"], 1e-5, "sdpa vs eager logits", relative=True)
        real = mask.bool() if logits["sdpa", "masked"].dim() == 3 else slice(None)  # pooled outputs: every row
        assert_close(logits["sdpa", "masked"][real], logits["eager", "masked"][real], 1e-5, "sdpa vs eager, padded", relative=True)

    # ---- 7. left padding equals unpadded ----
    def test_left_padding_equals_unpadded(self, config):
        self.require_padding_invariant(config)
        model = self.build(config)
        full, short = self.ids(config, 1, SEQ, seed=5), self.ids(config, 1, SEQ - 2, seed=6)
        batch = torch.cat((full, F.pad(short, (2, 0), value=0)), dim=0)
        mask = (torch.arange(SEQ)[None] >= torch.tensor([[0], [2]])).long()
        mems, enc = self.mems_for(config), self.encoder_inputs(config)
        with torch.no_grad():
            padded = self.primary(model(batch, attention_mask=mask, mems=mems, use_cache=False, **enc))
            alone_full = self.primary(model(full, mems=self.rows(mems, 0), use_cache=False, **self.input_rows(enc, 0)))
            alone_short = self.primary(model(short, mems=self.rows(mems, 1), use_cache=False, **self.input_rows(enc, 1)))
        kept = slice(2, None) if padded.dim() == 3 else slice(None)  # per token, or pooled over the kept tokens
        assert_close(padded[0], alone_full[0], 1e-5, "unpadded row in a padded batch", relative=True)
        assert_close(padded[1, kept], alone_short[0], 1e-5, "left-padded row vs the row alone", relative=True)

    def test_generate_left_padded_batch_equals_rows(self, config):
        self.require_generation()
        self.require_causal(config)
        self.require_padding_invariant(config)
        model = self.build(config)
        full, short = self.ids(config, 1, PROMPT, seed=5), self.ids(config, 1, PROMPT - 2, seed=6)
        batch = torch.cat((full, F.pad(short, (2, 0), value=0)), dim=0)
        mask = (torch.arange(PROMPT)[None] >= torch.tensor([[0], [2]])).long()
        mems, enc = self.mems_for(config), self.encoder_inputs(config)
        use_cache = config.supports_cache
        extra = {} if mems is None else {"mems": mems}
        gen = model.generate(batch, attention_mask=mask, do_sample=False, use_cache=use_cache, **extra, **enc, **GEN)
        for i, row in enumerate((full, short)):
            extra = {} if mems is None else {"mems": self.rows(mems, i)}
            alone = model.generate(row, do_sample=False, use_cache=use_cache, **extra, **self.input_rows(enc, i), **GEN)
            assert_tokens_equal(gen[i : i + 1, PROMPT:], alone[:, row.shape[1] :], f"row {i}: padded batch vs alone")

    # ---- 8. activation checkpointing ----
    @pytest.mark.parametrize("use_reentrant", [False, True], ids=["nonreentrant", "reentrant"])
    def test_activation_checkpointing_equal(self, config, use_reentrant):
        ids, mems, enc = self.ids(config), self.mems_for(config), self.encoder_inputs(config)

        def count_branch_calls(model) -> list:
            calls = []
            for layer in model.base_model.layers:
                branch = layer.self_attn or layer.cross_attn or layer.mlp
                branch.register_forward_pre_hook(lambda module, args: calls.append(module))
            return calls

        # both models start from the same random state, so stochastic depth (`layer_dropout`) drops the same layers
        plain = self.build(config).train()
        plain_calls = count_branch_calls(plain)
        loss, grads = self.loss_and_grads(plain, ids, mems, **enc)

        model = self.build(config).train()
        model.activation_checkpointing_enable({"use_reentrant": use_reentrant})
        calls = count_branch_calls(model)
        ckpt_loss, ckpt_grads = self.loss_and_grads(model, ids, mems, **enc)
        # the backward pass recomputed every layer that ran: each of those branches ran twice
        assert plain_calls and len(calls) == 2 * len(plain_calls), (
            f"{len(calls)} branch calls for {len(plain_calls)} checkpointed layers"
        )
        assert_close(ckpt_loss, loss, 1e-6, "loss with checkpointing")
        assert ckpt_grads.keys() == grads.keys(), f"parameters with grads differ: {set(grads) ^ set(ckpt_grads)}"
        for name in grads:
            assert_close(ckpt_grads[name], grads[name], 1e-6, f"grad of {name} with checkpointing")

    # ---- 9. Transformer-XL memories ----
    def test_xl_mems(self, config):
        if not self.returns_mems():
            pytest.skip(f"{self.model_class.__name__}'s output has no XL memories")
        model = self.build(config)
        seg1, seg2 = self.ids(config, seed=7), self.ids(config, seed=8)
        enc = self.encoder_inputs(config)
        max_len = config.max_mem_len or float("inf")
        attn_layers = [i for i, kind in enumerate(config.layer_pattern) if kind == "attn"]
        with torch.no_grad():
            out1 = model(seg1, output_mems=True, output_branch_states=True, use_cache=False, **enc)
            mems = out1.mems
            assert isinstance(mems, list) and len(mems) == config.num_attention_layers
            if not attn_layers:  # no self-attention to read them (only_cross): an empty list that can be fed back
                fed_back = model(seg2, mems=mems, output_mems=True, use_cache=False, **enc)
                assert fed_back.mems == []
                without = self.primary(model(seg2, use_cache=False, **enc))
                assert_close(self.primary(fed_back), without, 0.0, "logits with empty mems")
                return
            expected_len = min(max_len, config.num_memory_tokens + SEQ)
            for k, (mem, layer) in enumerate(zip(mems, attn_layers)):
                assert mem.shape == (BATCH, expected_len, config.hidden_size), f"mems[{k}]: {tuple(mem.shape)}"
                assert not mem.requires_grad
                # the newest rows are the tokens' input to that attention layer
                assert_close(mem[:, -SEQ:], out1.branch_states[layer][:, -min(SEQ, expected_len):], 0.0, f"mems[{k}] values")

            out2 = model(seg2, mems=mems, output_mems=True, use_cache=False, **enc)
            expected_len2 = min(max_len, expected_len + config.num_memory_tokens + SEQ)
            assert all(m.shape == (BATCH, expected_len2, config.hidden_size) for m in out2.mems)
            if expected_len2 > config.num_memory_tokens + SEQ:  # the oldest memory rows carry over
                keep = expected_len2 - config.num_memory_tokens - SEQ
                assert_close(out2.mems[0][:, :keep], mems[0][:, -keep:], 0.0, "carried-over memory rows")
            without = self.primary(model(seg2, use_cache=False, **enc))
        assert (self.primary(out2) - without).abs().max() > 1e-4, "feeding mems back did not change the logits"

    def test_generate_with_mems_cached_equals_uncached(self, config):
        self.require_generation()
        self.require_causal(config)
        model = self.build(config)
        enc = self.encoder_inputs(config)
        with torch.no_grad():
            mems = model(self.ids(config, seed=7), output_mems=True, use_cache=False, **enc).mems
        prompt = self.ids(config, length=PROMPT, seed=8)
        expected = self.greedy_loop(model, prompt, mems=mems, **enc)
        uncached = model.generate(prompt, mems=mems, do_sample=False, use_cache=False, **enc, **GEN)
        assert_tokens_equal(uncached, expected, "uncached generate with mems vs manual greedy loop")
        self.require_cache(config)
        cached = model.generate(prompt, mems=mems, do_sample=False, use_cache=True, **enc, **GEN)
        assert_tokens_equal(cached, expected, "cached generate with mems vs manual greedy loop")
        sampled, temperature = {}, self.temperature_for(model, prompt, **enc)
        for use_cache in (True, False):
            torch.manual_seed(5)
            sampled[use_cache] = model.generate(
                prompt, mems=mems, do_sample=True, temperature=temperature, top_k=20, use_cache=use_cache, **enc, **GEN
            )
        assert_tokens_equal(sampled[True], sampled[False], "sampling with mems cached vs uncached")

    # ---- 10. resizing and tying the token embeddings ----
    def test_resize_token_embeddings(self, config):
        model = self.build(config)
        ids, mems, enc = self.ids(config), self.mems_for(config), self.encoder_inputs(config)
        vocab = config.vocab_size
        with torch.no_grad():
            before = self.primary(model(ids, mems=mems, use_cache=False, **enc))
        has_head = model.get_output_embeddings() is not None
        model.resize_token_embeddings(vocab + 8)
        assert model.config.vocab_size == vocab + 8
        assert model.get_input_embeddings().weight.shape[0] == vocab + 8
        new_ids = ids.clone()
        new_ids[:, -1] = vocab + 7  # a new token is accepted
        with torch.no_grad():
            after = self.primary(model(ids, mems=mems, use_cache=False, **enc))
            with_new = self.primary(model(new_ids, mems=mems, use_cache=False, **enc))
        assert torch.isfinite(with_new).all()
        if not has_head:  # a classifier or the base model: the old tokens' outputs do not move
            assert_close(after, before, 1e-6, "outputs after resizing the embedding", relative=True)
            return
        assert after.shape == (BATCH, SEQ, vocab + 8)
        assert_close(after[..., :vocab], before, 1e-6, "old-token logits after resizing", relative=True)
        if config.tie_word_embeddings:
            assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()

    def test_tied_weights_after_from_pretrained(self, config, tmp_path):
        built = self.build(config)
        if built.get_output_embeddings() is None:
            pytest.skip(f"{self.model_class.__name__} has no output embedding to tie")
        built.save_pretrained(tmp_path)
        model = self.model_class.from_pretrained(tmp_path)
        head, emb = model.lm_head.weight, model.model.embed_tokens.weight
        if config.tie_word_embeddings:
            assert head.data_ptr() == emb.data_ptr(), "lm_head and embed_tokens are not tied after loading"
            with torch.no_grad():
                emb[3].add_(1.0)
            assert torch.equal(head[3], emb[3])
        else:
            assert head.data_ptr() != emb.data_ptr(), "untied head shares storage with the embedding"
            assert (model.lm_head.bias is not None) == config.lm_head_bias  # x-transformers 2.x heads have none

    # ---- 11. attention maps and hidden states ----
    def test_attentions_and_hidden_states(self, config):
        model = self.build(config, "eager")
        ids, mems, enc = self.ids(config), self.mems_for(config), self.encoder_inputs(config)
        with torch.no_grad():
            out = model(ids, mems=mems, output_attentions=True, output_hidden_states=True, output_branch_states=True,
                        use_cache=False, **enc)
        prefix = config.extra_key_slots + config.num_memory_kv + (MEM_LEN if mems else 0) + config.num_memory_tokens
        kv = prefix + SEQ
        kinds = [kind for kind in config.layer_pattern if kind != "ff"]
        assert len(out.attentions) == len(kinds)
        for k, (weights, kind) in enumerate(zip(out.attentions, kinds)):
            assert_close(weights.sum(-1), torch.ones(BATCH, config.num_attention_heads, SEQ), 1e-5, "attention row sums")
            if kind == "cross":  # keys: [zero slot | memory K/V slots | encoder states]
                cross_kv = config.extra_key_slots + config.num_memory_kv + ENC_LEN
                assert weights.shape == (BATCH, config.num_attention_heads, SEQ, cross_kv), f"attentions[{k}]"
                assert weights[0, ..., -1].abs().max() == 0, f"attentions[{k}] attends to a masked encoder position"
                assert weights[1, ..., -1].abs().max() > 0
                continue
            assert weights.shape == (BATCH, config.num_attention_heads, SEQ, kv), f"attentions[{k}]: {tuple(weights.shape)}"
            if config.sparse_topk is not None and config.sparse_topk_mode == "top_k":
                kept = (weights > 0).sum(-1)
                assert kept.max() <= config.sparse_topk, f"attentions[{k}] keeps {kept.max()} > sparse_topk keys"
            if config.is_causal:
                future = torch.ones(SEQ, kv, dtype=torch.bool).triu(prefix + 1)
                assert weights[..., future].abs().max() == 0, f"attentions[{k}] attends to future tokens"
        # transformers' convention: the embedding output and one state per block; Zeta's per-branch states on request
        starts = block_starts(config.layer_pattern)
        assert len(out.hidden_states) == len(starts) + 1
        branch_states = getattr(out, "branch_states", None)
        if branch_states is None:  # the task heads' outputs: transformers' fields only
            branch_states = model.base_model(ids, mems=mems, output_branch_states=True, use_cache=False,
                                             **enc).branch_states
        assert len(branch_states) == len(model.base_model.layers) + 1
        if "attn" in config.layer_pattern:
            assert len(out.hidden_states) == config.num_hidden_layers + 1
        for k, start in enumerate(starts):
            assert_close(out.hidden_states[k], branch_states[start], 0.0, f"hidden_states[{k}] = branch {start}")
        assert all(h.shape == (BATCH, SEQ, config.hidden_size) for h in out.hidden_states + branch_states)
        assert_close(branch_states[-1], out.hidden_states[-1], 0.0, "last branch state")
        last = getattr(out, "last_hidden_state", None)
        if last is not None:
            assert_close(out.hidden_states[-1], last, 0.0, "last hidden state")
        if model.get_output_embeddings() is not None:
            assert_close(model.lm_head(out.hidden_states[-1]), out.logits, 1e-6, "logits from the last hidden state",
                         relative=True)

    # ---- 12. dtype ----
    def test_bf16_close_to_fp32(self, config):
        self.require_continuous(config)
        model = self.build(config)
        ids, mems, enc = self.ids(config), self.mems_for(config), self.encoder_inputs(config)
        with torch.no_grad():
            fp32 = self.primary(model(ids, mems=mems, use_cache=False, **enc))
            model.to(torch.bfloat16)
            enc = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in enc.items()}
            bf16 = self.primary(model(ids, mems=mems, use_cache=False, **enc))
        assert bf16.dtype == torch.bfloat16
        assert torch.isfinite(bf16).all()
        scale = fp32.abs().max().item()
        assert_close(bf16, fp32, 0.05 * scale, "bf16 vs fp32 logits")


class TestZetaForCausalLM(ModelCheckMixin):
    model_class = ZetaForCausalLM

    @pytest.fixture(params=VARIANTS, ids=variant_id)
    def config(self, request, tiny_config) -> ZetaConfig:
        return tiny_config(**request.param)


# The other model classes run every check over a part of the matrix (each check skips what its class does not do,
# from the class itself); which part: decoders and encoders, memory tokens and XL mems, every position family.
SUBSET = [VARIANTS[i] for i in (0, 1, 4, 6, 12, 13, 15, 19, 20, 27)]


class TestZetaModel(ModelCheckMixin):
    model_class = ZetaModel

    def output_shape(self, config: ZetaConfig) -> tuple[int, ...]:
        return (BATCH, SEQ, config.hidden_size)

    @pytest.fixture(params=SUBSET, ids=variant_id)
    def config(self, request, tiny_config) -> ZetaConfig:
        return tiny_config(**request.param)


class TestZetaForMaskedLM(ModelCheckMixin):
    model_class = ZetaForMaskedLM

    def manual_loss(self, logits: torch.Tensor, labels: torch.Tensor, config: ZetaConfig) -> torch.Tensor:
        keep = labels != -100  # unshifted: each position predicts its own (masked) token
        return F.cross_entropy(logits[keep], labels[keep])

    @pytest.fixture(params=SUBSET, ids=variant_id)
    def config(self, request, tiny_config) -> ZetaConfig:
        return tiny_config(**request.param)


class TestZetaForSequenceClassification(ModelCheckMixin):
    model_class = ZetaForSequenceClassification

    def labels_for(self, config: ZetaConfig, ids: torch.Tensor) -> torch.Tensor:
        return torch.arange(ids.shape[0]) % config.num_labels

    def manual_loss(self, logits: torch.Tensor, labels: torch.Tensor, config: ZetaConfig) -> torch.Tensor:
        return F.cross_entropy(logits, labels)

    def output_shape(self, config: ZetaConfig) -> tuple[int, ...]:
        return (BATCH, config.num_labels)

    @pytest.fixture(params=SUBSET, ids=variant_id)
    def config(self, request, tiny_config) -> ZetaConfig:
        return tiny_config(num_labels=3, **request.param)


class TestZetaForTokenClassification(ModelCheckMixin):
    model_class = ZetaForTokenClassification

    def labels_for(self, config: ZetaConfig, ids: torch.Tensor) -> torch.Tensor:
        labels = ids % config.num_labels
        labels[0, 2] = labels[1, 4] = -100
        return labels

    def manual_loss(self, logits: torch.Tensor, labels: torch.Tensor, config: ZetaConfig) -> torch.Tensor:
        keep = labels != -100
        return F.cross_entropy(logits[keep], labels[keep])

    def output_shape(self, config: ZetaConfig) -> tuple[int, ...]:
        return (BATCH, SEQ, config.num_labels)

    @pytest.fixture(params=SUBSET, ids=variant_id)
    def config(self, request, tiny_config) -> ZetaConfig:
        return tiny_config(num_labels=4, **request.param)
