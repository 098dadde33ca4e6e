"""Bad inputs raise a clear exception naming the offending value, instead of an IndexError deep inside torch."""

from __future__ import annotations

from typing import Callable

import pytest
import torch
from conftest import make_tiny_config

from zeta_hf import Decoder, Transformer, ZetaConfig, ZetaForCausalLM

VOCAB, MAX_LEN, DIM, DEPTH = 32, 16, 32, 2


def tiny_config(**overrides) -> ZetaConfig:
    return make_tiny_config(**{**dict(vocab_size=VOCAB, max_position_embeddings=MAX_LEN, hidden_size=DIM,
                                      num_hidden_layers=DEPTH, num_attention_heads=2, head_dim=16), **overrides})


MODELS: dict[str, Callable[[], ZetaForCausalLM]] = {
    "absolute": lambda: ZetaForCausalLM(tiny_config()),
    "memory": lambda: ZetaForCausalLM(tiny_config(num_memory_tokens=2, position_embedding="rotary")),
    "xpos-values": lambda: ZetaForCausalLM(
        tiny_config(position_embedding="rotary", rotary_xpos=True, rotary_rotate_values=True)
    ),
    "cross": lambda: ZetaForCausalLM(tiny_config(cross_attend=True)),
}
_built: dict[str, ZetaForCausalLM] = {}


def model(name: str) -> ZetaForCausalLM:
    if name not in _built:
        torch.manual_seed(0)
        _built[name] = MODELS[name]().eval()
    return _built[name]


def ids(n: int, batch: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, n), generator=torch.Generator().manual_seed(n))


def with_cache(name: str, n: int = 4):
    """A model and a non-empty cache after a prefill of `n` tokens."""
    m = model(name)
    return m, m(ids(n), use_cache=True).cache


def mems(count: int = DEPTH, batch: int = 1, length: int = 3, dim: int = DIM) -> list[torch.Tensor]:
    return [torch.zeros(batch, length, dim) for _ in range(count)]


def transformer() -> Transformer:
    torch.manual_seed(0)
    return Transformer(num_tokens=VOCAB, max_seq_len=MAX_LEN, attn_layers=Decoder(dim=DIM, depth=DEPTH, heads=2))


# (id, call, exception type, fragments that must all appear in the message)
CASES = [
    # token ids
    ("id-equals-vocab", lambda: model("absolute")(torch.tensor([[1, VOCAB, 2]])), ValueError,
     [f"token id {VOCAB}", f"[0, {VOCAB})"]),
    ("id-minus-one", lambda: model("absolute")(torch.tensor([[1, -1]])), ValueError, ["token id -1", f"[0, {VOCAB})"]),
    ("id-far-out", lambda: model("absolute")(torch.tensor([[10_000]])), ValueError, ["10000", f"{VOCAB}"]),
    ("id-out-of-vocab-generate", lambda: model("absolute").generate(torch.tensor([[VOCAB + 1]]), max_new_tokens=2),
     ValueError, [f"token id {VOCAB + 1}"]),
    ("id-out-of-vocab-front-door", lambda: transformer()(torch.tensor([[VOCAB]])), ValueError, [f"token id {VOCAB}"]),
    ("float-ids", lambda: model("absolute")(torch.tensor([[1.0, 2.0]])), TypeError, ["input_ids", "torch.float32"]),
    ("bool-ids", lambda: model("absolute")(torch.tensor([[True, False]])), TypeError, ["input_ids", "torch.bool"]),
    ("1d-ids", lambda: model("absolute")(torch.tensor([1, 2, 3])), ValueError, ["input_ids", "(3,)"]),
    ("empty-sequence", lambda: model("absolute")(torch.zeros(1, 0, dtype=torch.long)), ValueError, ["empty"]),
    ("ids-and-embeds", lambda: model("absolute")(ids(3), inputs_embeds=torch.zeros(1, 3, DIM)), ValueError,
     ["input_ids", "inputs_embeds"]),
    ("no-ids-no-embeds", lambda: model("absolute")(), ValueError, ["input_ids", "inputs_embeds"]),
    # the absolute position table
    ("longer-than-table", lambda: model("absolute")(ids(MAX_LEN + 1)), ValueError,
     ["max_position_embeddings", f"{MAX_LEN}"]),
    ("longer-than-table-front-door", lambda: transformer()(ids(MAX_LEN + 5)), ValueError, ["max_position_embeddings"]),
    ("position-ids-past-table", lambda: model("absolute")(ids(2), position_ids=torch.tensor([[0, MAX_LEN]])),
     ValueError, ["max_position_embeddings", f"{MAX_LEN}"]),
    ("generate-past-table-cached", lambda: model("absolute").generate(ids(10), max_new_tokens=10, do_sample=False),
     ValueError, ["max_position_embeddings", f"{MAX_LEN}"]),
    ("generate-past-table-uncached",
     lambda: model("absolute").generate(ids(10), max_new_tokens=10, do_sample=False, use_cache=False),
     ValueError, ["max_position_embeddings", f"{MAX_LEN}"]),
    ("generate-past-table-max-length", lambda: model("absolute").generate(ids(10), max_length=MAX_LEN + 4,
                                                                          do_sample=False),
     ValueError, ["max_position_embeddings"]),
    ("generate-past-table-sampled",
     lambda: model("absolute").generate(ids(12), max_new_tokens=8, do_sample=True, top_p=0.9),
     ValueError, ["max_position_embeddings"]),
    ("generate-past-table-front-door", lambda: transformer().generate(ids(10), max_new_tokens=10), ValueError,
     ["max_position_embeddings"]),
    # attention mask
    ("mask-too-long", lambda: model("absolute")(ids(4), attention_mask=torch.ones(1, 5, dtype=torch.long)), ValueError,
     ["attention_mask", "(1, 5)", "batch=1, 4"]),
    ("mask-wrong-batch", lambda: model("absolute")(ids(4, batch=2), attention_mask=torch.ones(1, 4, dtype=torch.long)),
     ValueError, ["attention_mask", "(1, 4)", "batch=2"]),
    ("mask-1d", lambda: model("absolute")(ids(4), attention_mask=torch.ones(4, dtype=torch.long)), ValueError,
     ["attention_mask", "(4,)"]),
    ("mask-4d", lambda: model("absolute")(ids(4), attention_mask=torch.ones(1, 1, 4, 4, dtype=torch.long)), ValueError,
     ["attention_mask", "(1, 1, 4, 4)"]),
    ("mask-float", lambda: model("absolute")(ids(4), attention_mask=torch.ones(1, 4)), TypeError,
     ["attention_mask", "torch.float32"]),
    ("mask-not-covering-cache", lambda: (lambda m, c: m(ids(1), cache=c, attention_mask=torch.ones(1, 1)))(
        *with_cache("memory")), ValueError, ["attention_mask", "(1, 1)", "batch=1, 5"]),
    ("front-door-mask-wrong-shape", lambda: transformer()(ids(4), mask=torch.ones(1, 3, dtype=torch.bool)),
     ValueError, ["attention_mask", "(1, 3)"]),
    # Transformer-XL memories
    ("mems-wrong-count", lambda: model("absolute")(ids(4), mems=mems(count=1)), ValueError,
     ["mems", f"{DEPTH} tensors", "got 1"]),
    ("mems-not-a-list", lambda: model("absolute")(ids(4), mems=torch.zeros(DEPTH, 1, 3, DIM)), ValueError,
     ["mems", "Tensor"]),
    ("mems-wrong-dim", lambda: model("absolute")(ids(4), mems=[torch.zeros(1, 3, DIM), torch.zeros(1, 3, DIM - 1)]),
     ValueError, ["mems[1]", f"(1, 3, {DIM - 1})", f"dim={DIM}"]),
    ("mems-wrong-batch", lambda: model("absolute")(ids(4), mems=mems(batch=2)), ValueError,
     ["mems[0]", f"(2, 3, {DIM})", "batch=1"]),
    ("mems-2d", lambda: model("absolute")(ids(4), mems=[torch.zeros(3, DIM)] * DEPTH), ValueError,
     ["mems[0]", f"(3, {DIM})"]),
    ("mems-unequal-lengths", lambda: model("absolute")(ids(4), mems=[torch.zeros(1, 3, DIM), torch.zeros(1, 5, DIM)]),
     ValueError, ["mems[1]", "5"]),
    ("mems-with-cache", lambda: (lambda m, c: m(ids(1), cache=c, mems=mems()))(*with_cache("memory")), ValueError,
     ["mems", "empty cache"]),
    ("front-door-mems-wrong-count", lambda: transformer()(ids(4), mems=mems(count=DEPTH + 1)), ValueError,
     ["mems", f"{DEPTH} tensors"]),
    # prepended / summed embeddings
    ("prepend-with-cache",
     lambda: (lambda m, c: m(ids(1), cache=c, prepend_embeds=torch.zeros(1, 2, DIM)))(*with_cache("memory")),
     ValueError, ["prepend_embeds", "cache"]),
    ("prepend-wrong-width", lambda: model("absolute")(ids(3), prepend_embeds=torch.zeros(1, 2, DIM - 1)), ValueError,
     ["prepend_embeds", f"(1, 2, {DIM - 1})"]),
    ("prepend-wrong-batch", lambda: model("absolute")(ids(3), prepend_embeds=torch.zeros(2, 2, DIM)), ValueError,
     ["prepend_embeds", f"(2, 2, {DIM})"]),
    ("sum-embeds-wrong-shape", lambda: model("absolute")(ids(3), sum_embeds=torch.zeros(1, 2, DIM)), ValueError,
     ["sum_embeds", f"(1, 2, {DIM})"]),
    # caching a configuration that cannot be cached exactly
    ("use-cache-xpos-values", lambda: model("xpos-values")(ids(4), use_cache=True), ValueError,
     ["use_cache=False", "rotary_xpos", "rotary_rotate_values"]),
    ("generate-use-cache-xpos-values", lambda: model("xpos-values").generate(ids(4), max_new_tokens=2, use_cache=True),
     ValueError, ["use_cache=False"]),
    # unknown options
    ("front-door-unknown-forward-kwarg", lambda: transformer()(ids(4), return_atn=True), ValueError, ["return_atn"]),
    # external positions
    ("pos-float-wrong-shape", lambda: model("absolute")(ids(4), pos=torch.zeros(1, 3, DIM)), ValueError,
     ["pos", f"(1, 3, {DIM})", f"4, {DIM}"]),
    # encoder states for cross-attention
    ("encoder-states-wrong-width", lambda: model("cross")(ids(4), encoder_hidden_states=torch.zeros(1, 5, DIM - 1)),
     ValueError, ["encoder_hidden_states", f"(1, 5, {DIM - 1})", f"{DIM}"]),
    ("encoder-states-2d", lambda: model("cross")(ids(4), encoder_hidden_states=torch.zeros(5, DIM)), ValueError,
     ["encoder_hidden_states", f"(5, {DIM})"]),
    ("encoder-states-missing", lambda: model("cross")(ids(4)), ValueError, ["encoder_hidden_states"]),
    ("encoder-states-without-cross-layers",
     lambda: model("absolute")(ids(4), encoder_hidden_states=torch.zeros(1, 5, DIM)), ValueError,
     ["encoder_hidden_states", "no cross-attention"]),
    ("encoder-mask-wrong-shape", lambda: model("cross")(ids(4), encoder_hidden_states=torch.zeros(1, 5, DIM),
                                                        encoder_attention_mask=torch.ones(1, 4, dtype=torch.bool)),
     ValueError, ["encoder_attention_mask", "(1, 5)", "(1, 4)"]),
]

CASES += [
    # mems, integer positions and encoder states of the wrong kind
    ("mems-integer-dtype", lambda: model("absolute")(ids(4), mems=[torch.zeros(1, 3, DIM, dtype=torch.long)] * DEPTH),
     TypeError, ["mems[0]", "torch.int64"]),
    ("mems-other-device", lambda: model("absolute")(ids(4), mems=[torch.zeros(1, 3, DIM, device="meta")] * DEPTH),
     ValueError, ["mems[0]", "meta"]),
    ("pos-int-wrong-length", lambda: model("absolute")(ids(4), pos=torch.arange(3)[None]), ValueError,
     ["pos", "(1, 3)"]),
    ("encoder-states-wrong-batch", lambda: model("cross")(ids(4), encoder_hidden_states=torch.zeros(2, 5, DIM)),
     ValueError, ["encoder_hidden_states", f"(2, 5, {DIM})", "batch"]),
    ("encoder-states-integer-dtype",
     lambda: model("cross")(ids(4), encoder_hidden_states=torch.zeros(1, 5, DIM, dtype=torch.long)), TypeError,
     ["encoder_hidden_states", "torch.int64"]),
]


@pytest.mark.parametrize("call,exc_type,fragments", [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_bad_input_raises_clear_error(call, exc_type, fragments):
    with torch.no_grad(), pytest.raises(Exception) as info:
        call()
    assert info.type is exc_type, f"expected {exc_type.__name__}, got {info.type.__name__}: {info.value}"
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in error message: {message}"


# ----------------------------------------------------------------------------------------------------------------------
# The boundaries themselves are allowed (the checks must not be off by one)
# ----------------------------------------------------------------------------------------------------------------------


def test_boundaries_are_accepted():
    m = model("absolute")
    with torch.no_grad():
        assert m(torch.tensor([[0, VOCAB - 1]])).logits.shape == (1, 2, VOCAB)
        assert m(ids(MAX_LEN)).logits.shape == (1, MAX_LEN, VOCAB)
    out = m.generate(ids(10), max_new_tokens=MAX_LEN - 10, do_sample=False)
    assert out.shape == (1, MAX_LEN)
    uncached = m.generate(ids(10), max_new_tokens=MAX_LEN - 10, do_sample=False, use_cache=False)
    assert torch.equal(out, uncached)


def test_left_padded_prompt_may_use_the_table_it_actually_occupies():
    """Padding does not consume positions: a padded prompt of 8 real tokens can generate up to the table size."""
    m = model("absolute")
    prompt = torch.cat((torch.zeros(1, 4, dtype=torch.long), ids(8)), dim=1)
    mask = torch.cat((torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 8, dtype=torch.long)), dim=1)
    out = m.generate(prompt, attention_mask=mask, max_new_tokens=MAX_LEN - 8, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 12 + MAX_LEN - 8)


def test_non_cacheable_config_generates_uncached_by_default():
    m = model("xpos-values")
    assert not m.config.supports_cache
    out = m.generate(ids(4), max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 7)
    with torch.no_grad():
        assert m(ids(4)).logits.shape == (1, 4, VOCAB)  # plain forward needs no `use_cache=False`


def test_correct_mems_and_mask_are_accepted():
    m = model("absolute")
    with torch.no_grad():
        out = m(ids(4), mems=mems(), output_mems=True, attention_mask=torch.tensor([[0, 1, 1, 1]]))
    assert out.logits.shape == (1, 4, VOCAB)
    assert len(out.mems) == DEPTH


def test_generation_may_fill_the_position_table_exactly():
    # the last new token is sampled from the last embedded position, never embedded itself
    m = model("absolute")
    with torch.no_grad():
        out = m.generate(ids(MAX_LEN - 3), max_new_tokens=4, do_sample=False)
        expected = m(out[:, :MAX_LEN]).logits[:, -1].argmax(-1)
    assert out.shape[1] == MAX_LEN + 1
    assert out[0, -1] == expected[0]
    with pytest.raises(ValueError, match="max_position_embeddings"):
        m.generate(ids(MAX_LEN - 3), max_new_tokens=5, do_sample=False)
