"""Encoder heads (masked LM, sequence and token classification) and an encoder-decoder built from two Zeta models.

Every loss and pooled vector is recomputed by hand from the base model's outputs; saved heads reload through the
Auto classes (and through remote code); the encoder-decoder pair is checked for gradient flow, cached generation and
encoder padding.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_config, make_tiny_model, run_without_zeta_hf
from transformers import (
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

import zeta_hf  # (registers the "zeta" model type with the Auto classes)
from zeta_hf.modeling_zeta import AUTO_CLASSES
from zeta_hf import (
    ZetaConfig,
    ZetaForCausalLM,
    ZetaForMaskedLM,
    ZetaForSequenceClassification,
    ZetaForTokenClassification,
    ZetaModel,
)

BATCH, SEQ, PAD = 3, 8, 0
ENCODER = dict(is_causal=False)


def encoder_config(**overrides) -> ZetaConfig:
    return make_tiny_config(**{**ENCODER, **overrides})


def build(cls, config: ZetaConfig, seed: int = 0):
    return make_tiny_model(cls, seed, config=config)


def ids(batch: int = BATCH, length: int = SEQ, seed: int = 1, vocab: int = 64) -> torch.Tensor:
    """Random token ids, never the pad id 0."""
    return torch.randint(1, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Row 0 unpadded, row 1 right-padded by 3, row 2 left-padded by 2 (pad id 0, mask 0)."""
    x = ids()
    mask = torch.ones(BATCH, SEQ, dtype=torch.long)
    mask[1, -3:] = 0
    mask[2, :2] = 0
    return x.masked_fill(mask == 0, PAD), mask


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str, atol: float = 1e-5) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    diff = (actual.float() - expected.float()).abs().max().item() if expected.numel() else 0.0
    assert diff <= atol, f"{what}: max abs difference {diff:.3e} > {atol:.1e}"


# ---------------------------------------------------------------------------------------------------------------------
# masked LM
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [{}, dict(position_embedding="rotary", num_memory_tokens=2, tie_word_embeddings=True)],
    ids=["absolute", "rotary-mem2-tied"],
)
def test_masked_lm_loss_is_unshifted_cross_entropy_ignoring_minus_100(overrides):
    config = encoder_config(**overrides)
    model = build(ZetaForMaskedLM, config)
    x, mask = padded_batch()
    labels = torch.full_like(x, -100)
    labels[0, [1, 4]] = x[0, [1, 4]]
    labels[1, 2] = 7
    labels[2, [3, 7]] = x[2, [3, 7]]
    with torch.no_grad():
        out = model(x, attention_mask=mask, labels=labels)
        hidden = model.model(x, attention_mask=mask).last_hidden_state
    assert out.logits.shape == (BATCH, SEQ, config.vocab_size)
    assert_close(out.logits, model.lm_head(hidden), "logits vs lm_head(base model hidden states)")
    keep = labels != -100
    manual = F.cross_entropy(out.logits[keep], labels[keep])
    assert_close(out.loss, manual, "masked LM loss vs manual cross-entropy", atol=1e-6)
    # a masked LM predicts the token at its own position: the causal shift would give another number
    shifted_keep = labels[:, 1:] != -100
    shifted = F.cross_entropy(out.logits[:, :-1][shifted_keep], labels[:, 1:][shifted_keep])
    assert (out.loss - shifted).abs() > 1e-4


def test_masked_lm_sees_both_directions():
    """An encoder head: changing a later token changes the prediction at an earlier position."""
    model = build(ZetaForMaskedLM, encoder_config())
    x = ids(batch=1)
    y = x.clone()
    y[0, -1] = (y[0, -1] % 63) + 1
    with torch.no_grad():
        a, b = model(x).logits, model(y).logits
    assert (a[0, 0] - b[0, 0]).abs().max() > 1e-4


# ---------------------------------------------------------------------------------------------------------------------
# sequence classification
# ---------------------------------------------------------------------------------------------------------------------

POOLINGS = ["mean", "first", "last", "memory_token"]


def seq_config(pooling: str, **overrides) -> ZetaConfig:
    extra = dict(num_memory_tokens=2) if pooling == "memory_token" else {}
    return encoder_config(classifier_pooling=pooling, num_labels=3, **extra, **overrides)


def manual_pool(pooling: str, out, mask: torch.Tensor) -> torch.Tensor:
    hidden, keep = out.last_hidden_state, mask.bool()
    if pooling == "memory_token":
        return out.memory_states[:, 0]
    if pooling == "mean":
        return torch.stack([hidden[i][keep[i]].mean(0) for i in range(hidden.shape[0])])
    pick = [row.nonzero()[0 if pooling == "first" else -1, 0] for row in keep]
    return torch.stack([hidden[i, j] for i, j in enumerate(pick)])


@pytest.mark.parametrize("pooling", POOLINGS)
def test_sequence_classification_pooling_matches_manual(pooling):
    config = seq_config(pooling)
    model = build(ZetaForSequenceClassification, config)
    x, mask = padded_batch()
    with torch.no_grad():
        logits = model(x, attention_mask=mask).logits
        base = model.model(x, attention_mask=mask)
    assert logits.shape == (BATCH, config.num_labels)
    assert_close(logits, model.score(manual_pool(pooling, base, mask)), f"{pooling} pooling -> score")


@pytest.mark.parametrize("pooling", POOLINGS)
def test_sequence_classification_ignores_padding_on_either_side(pooling):
    """A row alone, right-padded and left-padded gives the same logits: pooling skips the pad positions."""
    model = build(ZetaForSequenceClassification, seq_config(pooling))
    row = ids(batch=1, length=SEQ - 3, seed=4)
    right = torch.cat((row, torch.full((1, 3), PAD)), dim=1)
    left = torch.cat((torch.full((1, 3), PAD), row), dim=1)
    batch = torch.cat((right, left), dim=0)
    mask = (batch != PAD).long()
    with torch.no_grad():
        alone = model(row).logits
        padded = model(batch, attention_mask=mask).logits
        unmasked = model(batch).logits
    assert_close(padded[0:1], alone, f"{pooling}: right-padded row vs alone")
    assert_close(padded[1:2], alone, f"{pooling}: left-padded row vs alone")
    # the mask is what makes the difference: attending to the pads changes the result
    assert (unmasked - padded).abs().max() > 1e-4


def test_memory_token_pooling_without_memory_tokens_raises():
    model = build(ZetaForSequenceClassification, encoder_config(classifier_pooling="memory_token", num_labels=2))
    with pytest.raises(ValueError, match="num_memory_tokens"):
        model(ids())


def test_single_label_classification_loss():
    model = build(ZetaForSequenceClassification, seq_config("mean"))
    x, mask = padded_batch()
    labels = torch.tensor([0, 2, 1])
    with torch.no_grad():
        out = model(x, attention_mask=mask, labels=labels)
    assert model.config.problem_type == "single_label_classification"
    assert_close(out.loss, F.cross_entropy(out.logits, labels), "single-label loss", atol=1e-6)


def test_regression_loss_with_one_label():
    model = build(ZetaForSequenceClassification, encoder_config(num_labels=1, classifier_pooling="last"))
    x, mask = padded_batch()
    labels = torch.tensor([0.5, -1.0, 2.0])
    with torch.no_grad():
        out = model(x, attention_mask=mask, labels=labels)
    assert out.logits.shape == (BATCH, 1)
    assert model.config.problem_type == "regression"
    assert_close(out.loss, F.mse_loss(out.logits.squeeze(-1), labels), "regression loss", atol=1e-6)


def test_multi_label_classification_loss():
    config = encoder_config(num_labels=4, classifier_pooling="first", problem_type="multi_label_classification")
    model = build(ZetaForSequenceClassification, config)
    x, mask = padded_batch()
    labels = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    with torch.no_grad():
        out = model(x, attention_mask=mask, labels=labels)
    assert_close(out.loss, F.binary_cross_entropy_with_logits(out.logits, labels), "multi-label loss", atol=1e-6)
    assert (out.loss - F.cross_entropy(out.logits, labels.argmax(-1))).abs() > 1e-4


def test_sequence_classification_gradients_reach_the_encoder():
    model = build(ZetaForSequenceClassification, seq_config("mean")).train()
    x, mask = padded_batch()
    model(x, attention_mask=mask, labels=torch.tensor([0, 1, 2])).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


# ---------------------------------------------------------------------------------------------------------------------
# token classification
# ---------------------------------------------------------------------------------------------------------------------


def test_token_classification_loss():
    config = encoder_config(num_labels=5, position_embedding="t5")
    model = build(ZetaForTokenClassification, config)
    x, mask = padded_batch()
    labels = torch.randint(0, 5, (BATCH, SEQ), generator=torch.Generator().manual_seed(3))
    labels[mask == 0] = -100
    labels[0, 0] = -100
    with torch.no_grad():
        out = model(x, attention_mask=mask, labels=labels)
        hidden = model.model(x, attention_mask=mask).last_hidden_state
    assert out.logits.shape == (BATCH, SEQ, 5)
    assert_close(out.logits, model.score(hidden), "token logits vs score(hidden states)")
    keep = labels != -100
    assert_close(out.loss, F.cross_entropy(out.logits[keep], labels[keep]), "token classification loss", atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# save / load through the Auto classes, and remote code
# ---------------------------------------------------------------------------------------------------------------------

HEADS = [
    pytest.param(ZetaForMaskedLM, AutoModelForMaskedLM, {}, id="masked-lm"),
    pytest.param(
        ZetaForSequenceClassification, AutoModelForSequenceClassification,
        dict(num_labels=3, classifier_pooling="memory_token", num_memory_tokens=2), id="sequence-classification",
    ),
    pytest.param(
        ZetaForTokenClassification, AutoModelForTokenClassification, dict(num_labels=4), id="token-classification"
    ),
]


@pytest.mark.parametrize("cls, auto, overrides", HEADS)
def test_head_save_pretrained_auto_round_trip(cls, auto, overrides, tmp_path):
    model = build(cls, encoder_config(position_embedding="alibi", **overrides))
    x, mask = padded_batch()
    with torch.no_grad():
        expected = model(x, attention_mask=mask).logits
    model.save_pretrained(tmp_path)
    loaded = auto.from_pretrained(tmp_path).eval()
    assert type(loaded) is cls
    with torch.no_grad():
        got = loaded(x, attention_mask=mask).logits
    assert torch.equal(got, expected)


# the package's one Auto-class table, as a saved config.json spells it
AUTO_MAP = {"AutoConfig": "configuration_zeta.ZetaConfig",
            **{auto: f"modeling_zeta.{cls.__name__}" for auto, cls in AUTO_CLASSES.items()}}


def test_the_auto_table_covers_every_model_class_and_registers_it():
    """Every model class zeta_hf exports is in the table once, and the Auto class of its entry loads it in-process."""
    import transformers

    exported = {getattr(zeta_hf, name) for name in zeta_hf.__all__}
    models = {cls for cls in exported if isinstance(cls, type) and issubclass(cls, zeta_hf.ZetaPreTrainedModel)}
    assert set(AUTO_CLASSES.values()) == models - {zeta_hf.ZetaPreTrainedModel}
    assert len(set(AUTO_CLASSES.values())) == len(AUTO_CLASSES)
    config = encoder_config(num_labels=2)
    for auto, cls in AUTO_CLASSES.items():
        assert type(getattr(transformers, auto).from_config(config)) is cls, auto


@pytest.mark.parametrize("cls, auto, overrides", HEADS)
def test_saved_head_lists_every_class_in_auto_map(cls, auto, overrides, tmp_path):
    build(cls, encoder_config(**overrides)).save_pretrained(tmp_path)
    auto_map = json.loads((tmp_path / "config.json").read_text()).get("auto_map", {})
    for key, value in AUTO_MAP.items():
        assert auto_map.get(key) == value, f"auto_map[{key!r}] is {auto_map.get(key)!r}, expected {value!r}"
    for module in {value.split(".")[0] for value in AUTO_MAP.values()}:
        assert (tmp_path / f"{module}.py").exists(), f"{module}.py was not copied next to the weights"


REMOTE_CHILD = """
import json, sys
import torch
import transformers

results = {}
for name, folder in json.loads(sys.argv[1]).items():
    model = getattr(transformers, name).from_pretrained(folder, trust_remote_code=True).eval()
    x, mask = torch.tensor(json.loads(sys.argv[2])), torch.tensor(json.loads(sys.argv[3]))
    with torch.no_grad():
        results[name] = {"class": type(model).__module__ + "." + type(model).__name__,
                         "logits": model(x, attention_mask=mask).logits.tolist()}
print(json.dumps(results))
"""


def test_heads_load_as_remote_code_without_zeta_hf(tmp_path):
    """The three heads load in a fresh process where zeta_hf cannot be imported (`trust_remote_code=True`)."""
    x, mask = padded_batch()
    folders, expected = {}, {}
    for param in HEADS:
        cls, auto, overrides = param.values
        model = build(cls, encoder_config(position_embedding="rotary", **overrides))
        folders[auto.__name__] = str(tmp_path / cls.__name__)
        model.save_pretrained(folders[auto.__name__])
        with torch.no_grad():
            expected[auto.__name__] = (cls.__name__, model(x, attention_mask=mask).logits)
    results = run_without_zeta_hf(REMOTE_CHILD, json.dumps(folders), json.dumps(x.tolist()), json.dumps(mask.tolist()),
                                  tmp=tmp_path)
    for auto_name, (class_name, logits) in expected.items():
        got = results[auto_name]
        assert got["class"].startswith("transformers_modules.") and got["class"].endswith(class_name), got["class"]
        assert_close(torch.tensor(got["logits"]), logits, f"{auto_name} remote-code logits", atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# encoder-decoder: a ZetaModel encoder feeding a cross-attending ZetaForCausalLM decoder
# ---------------------------------------------------------------------------------------------------------------------

SRC_LEN, PROMPT, NEW_TOKENS = 6, 4, 6

DECODERS = {
    "cross": dict(cross_attend=True),
    "cross-rotary-memkv2-mem2": dict(
        cross_attend=True, position_embedding="rotary", num_memory_kv=2, num_memory_tokens=2
    ),
    "cross-alibi-zero-kv-resattn": dict(cross_attend=True, position_embedding="alibi", add_zero_kv=True,
                                        cross_residual_attn=True, residual_attn=True),
    "only-cross-shift1": dict(cross_attend=True, only_cross=True, shift_tokens=1),
}


def encoder_decoder(decoder_overrides: dict):
    torch.manual_seed(0)
    encoder = ZetaModel(encoder_config(position_embedding="t5")).eval()
    decoder = ZetaForCausalLM(make_tiny_config(**decoder_overrides)).eval()
    return encoder, decoder


def source_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two source rows; row 1 is shorter and right-padded by 2."""
    src = ids(batch=2, length=SRC_LEN, seed=9)
    mask = torch.ones(2, SRC_LEN, dtype=torch.long)
    mask[1, -2:] = 0
    return src.masked_fill(mask == 0, PAD), mask


@pytest.mark.parametrize("name", DECODERS)
def test_encoder_decoder_gradients_reach_encoder(name):
    encoder, decoder = encoder_decoder(DECODERS[name])
    encoder.train()
    decoder.train()
    src, src_mask = source_batch()
    tgt = ids(batch=2, length=5, seed=10)
    states = encoder(src, attention_mask=src_mask).last_hidden_state
    loss = decoder(tgt, labels=tgt, encoder_hidden_states=states, encoder_attention_mask=src_mask).loss
    loss.backward()
    missing = [n for n, p in encoder.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"encoder parameters without gradient: {missing}"
    # only the kept source positions matter: the pad rows of the encoder's embedding receive nothing
    assert encoder.embed_tokens.weight.grad[PAD].abs().max() == 0


@pytest.mark.parametrize("num_beams", [1, 3], ids=["greedy", "beam3"])
@pytest.mark.parametrize("name", DECODERS)
def test_encoder_decoder_generate_cached_equals_uncached(name, num_beams):
    encoder, decoder = encoder_decoder(DECODERS[name])
    src, src_mask = source_batch()
    prompt = ids(batch=2, length=PROMPT, seed=11)
    with torch.no_grad():
        states = encoder(src, attention_mask=src_mask).last_hidden_state
    gen = dict(max_new_tokens=NEW_TOKENS, num_beams=num_beams, do_sample=False, pad_token_id=PAD,
               encoder_hidden_states=states, encoder_attention_mask=src_mask)
    uncached = decoder.generate(prompt, use_cache=False, **gen)
    assert uncached.shape == (2, PROMPT + NEW_TOKENS)
    if decoder.config.supports_cache:
        cached = decoder.generate(prompt, use_cache=True, **gen)
        assert torch.equal(cached, uncached), f"cached {cached.tolist()} != uncached {uncached.tolist()}"
    if num_beams == 1:  # greedy generate equals a manual loop of full forwards
        seq = prompt
        with torch.no_grad():
            for _ in range(NEW_TOKENS):
                logits = decoder(seq, encoder_hidden_states=states, encoder_attention_mask=src_mask,
                                 use_cache=False).logits
                seq = torch.cat((seq, logits[:, -1].argmax(-1, keepdim=True)), dim=1)
        assert torch.equal(seq, uncached)
    # the encoder states steer generation: other states give other tokens
    other = decoder.generate(prompt, use_cache=False, **{**gen, "encoder_hidden_states": -states})
    assert not torch.equal(other, uncached)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("name", DECODERS)
def test_encoder_padding_changes_nothing_when_masked(name, side):
    encoder, decoder = encoder_decoder(DECODERS[name])
    src = ids(batch=1, length=SRC_LEN, seed=12)
    pads = torch.full((1, 3), PAD)
    padded = torch.cat((src, pads), dim=1) if side == "right" else torch.cat((pads, src), dim=1)
    mask = (torch.arange(SRC_LEN + 3)[None] < SRC_LEN) if side == "right" else (torch.arange(SRC_LEN + 3)[None] >= 3)
    mask = mask.long()
    tgt = ids(batch=1, length=5, seed=13)
    with torch.no_grad():
        states = encoder(src).last_hidden_state
        padded_states = encoder(padded, attention_mask=mask).last_hidden_state
        keep = mask[0].bool()
        assert_close(padded_states[:, keep], states, "encoder states of the kept positions")
        expected = decoder(tgt, encoder_hidden_states=states, use_cache=False).logits
        got = decoder(tgt, encoder_hidden_states=padded_states, encoder_attention_mask=mask, use_cache=False).logits
        unmasked = decoder(tgt, encoder_hidden_states=padded_states, use_cache=False).logits
    assert_close(got, expected, "decoder logits with a masked, padded encoder input")
    assert (unmasked - expected).abs().max() > 1e-4, "the pad states were never visible: the check proves nothing"
    gen = dict(max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=PAD)
    assert torch.equal(
        decoder.generate(tgt, encoder_hidden_states=padded_states, encoder_attention_mask=mask, **gen),
        decoder.generate(tgt, encoder_hidden_states=states, **gen),
    )


def test_cross_model_without_encoder_hidden_states_raises():
    _, decoder = encoder_decoder(DECODERS["cross"])
    prompt = ids(batch=2, length=PROMPT)
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        decoder(prompt)
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        decoder.generate(prompt, max_new_tokens=2, do_sample=False, pad_token_id=PAD)
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        decoder.model(prompt)


def test_encoder_hidden_states_for_a_model_without_cross_attention_raises():
    model = build(ZetaForCausalLM, make_tiny_config())
    with pytest.raises(ValueError, match="no cross-attention"):
        model(ids(batch=2, length=PROMPT), encoder_hidden_states=torch.randn(2, 3, 64))


def test_encoder_hidden_states_of_the_wrong_shape_raise():
    _, decoder = encoder_decoder(DECODERS["cross"])
    prompt = ids(batch=2, length=PROMPT)
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        decoder(prompt, encoder_hidden_states=torch.randn(2, 3, 32))
    with pytest.raises(ValueError, match="encoder_attention_mask"):
        decoder(prompt, encoder_hidden_states=torch.randn(2, 3, 64), encoder_attention_mask=torch.ones(2, 4))
