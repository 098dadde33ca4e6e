"""Transformer-XL streaming generation (`zeta_hf.streaming`): token-exact against a from-scratch segment loop in
zeta_hf and in the real x-transformers 1.19, bounded cache and mems at 10x the segment length, and clear errors."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_model

import zeta_hf
from zeta_hf import ZetaForCausalLM, ZetaModel
from zeta_hf.streaming import generate_with_memory, stream_with_memory

L, MEM = 8, 6  # segment length (= max_seq_len) and max_mem_len of every tiny model here
TINY_XL = dict(vocab_size=64, max_position_embeddings=L, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
               head_dim=16, max_mem_len=MEM)

# id -> ZetaConfig overrides; ids read as names
VARIANTS = {
    "rotary": dict(position_embedding="rotary"),
    "alibi": dict(position_embedding="alibi", absolute_position_embedding="none"),
    "t5-shift1": dict(position_embedding="t5", shift_mem_down=1),
    "abs-mem2-memkv2": dict(num_memory_tokens=2, num_memory_kv=2),
}


def build(seed: int = 0, **overrides) -> ZetaForCausalLM:
    return make_tiny_model(seed=seed, **{**TINY_XL, **overrides})


def prompt(n: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, TINY_XL["vocab_size"], (batch, n), generator=torch.Generator().manual_seed(100 + seed))


def reference_loop(step, tokens: torch.Tensor, max_new_tokens: int, segment_length: int) -> torch.Tensor:
    """Greedy decoding that recomputes the current segment from scratch for every token.

    `step(segment, mems, want_mems) -> (last logits (b, vocab), new mems | None)`. A full segment predicts the first
    token of the next one and hands its mems on; a prompt longer than a segment is read segment by segment first.
    """
    mems, start = None, 0
    with torch.no_grad():
        while tokens.shape[1] - start > segment_length:
            _, mems = step(tokens[:, start : start + segment_length], mems, True)
            start += segment_length
        for _ in range(max_new_tokens):
            segment = tokens[:, start:]
            full = segment.shape[1] == segment_length
            logits, new_mems = step(segment, mems, full)
            if full:
                mems, start = new_mems, start + segment_length
            tokens = torch.cat((tokens, logits.argmax(-1, keepdim=True)), dim=1)
    return tokens


def zeta_step(model: ZetaForCausalLM):
    def step(segment, mems, want_mems):
        out = model(segment, mems=mems, output_mems=want_mems, use_cache=False)
        return out.logits[:, -1], out.mems

    return step


def assert_tokens_equal(got: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert got.shape == expected.shape, f"{what}: shape {tuple(got.shape)} != {tuple(expected.shape)}"
    diff = (got != expected).nonzero()
    assert diff.numel() == 0, f"{what}: first mismatch at (row, position) {tuple(diff[0].tolist())}"


# ---------------------------------------------------------------------------------------------------------------
# (a) streaming == from-scratch segment loop
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt_len", [3, L, 2 * L + 3], ids=lambda n: f"prompt{n}")
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_greedy_stream_equals_segment_loop(variant, prompt_len):
    model = build(**VARIANTS[variant])
    x = prompt(prompt_len)
    expected = reference_loop(zeta_step(model), x, 3 * L + 2, L)
    got = generate_with_memory(model, x, 3 * L + 2, do_sample=False)
    assert_tokens_equal(got, expected, f"{variant}: streaming vs segment loop")


def test_shorter_segment_length_than_max_seq_len():
    model = build(**VARIANTS["rotary"])
    x = prompt(4)
    expected = reference_loop(zeta_step(model), x, 20, 5)
    assert_tokens_equal(generate_with_memory(model, x, 20, segment_length=5, do_sample=False), expected, "L=5")


def test_within_one_segment_equals_plain_generate():
    """Up to the token after the first full segment, streaming is exactly one `generate()` call."""
    model = build(**VARIANTS["abs-mem2-memkv2"])
    x = prompt(3)
    plain = model.generate(x, max_new_tokens=L - 3, do_sample=False, pad_token_id=0)
    assert_tokens_equal(generate_with_memory(model, x, L - 3, do_sample=False), plain, "one segment")


def test_mems_change_the_stream():
    """Guard against a vacuous pass: without mems (segments restarted cold) the tokens differ."""
    model = build(**VARIANTS["rotary"])
    x = prompt(L)
    got = generate_with_memory(model, x, 2 * L, do_sample=False)
    cold = reference_loop(lambda seg, mems, want: zeta_step(model)(seg, None, want), x, 2 * L, L)
    assert (got != cold).any()


# ---------------------------------------------------------------------------------------------------------------
# (b) the oracle: the same loop in x-transformers 1.19 on the same weights
# ---------------------------------------------------------------------------------------------------------------

# id -> (TransformerWrapper kwargs, Decoder kwargs)
XT_VARIANTS = {
    "rotary": ({}, dict(rotary_pos_emb=True)),
    "alibi": (dict(use_abs_pos_emb=False), dict(alibi_pos_bias=True)),
    "abs-mem2-shift1": (dict(num_memory_tokens=2, shift_mem_down=1), {}),
}


@pytest.mark.parametrize("variant", list(XT_VARIANTS))
def test_stream_matches_x_transformers(variant):
    x_transformers = pytest.importorskip("x_transformers")
    tkw, lkw = XT_VARIANTS[variant]
    tkw = dict(num_tokens=64, max_seq_len=L, max_mem_len=MEM, **tkw)
    lkw = dict(dim=32, depth=2, heads=2, attn_dim_head=32, **lkw)  # x-transformers rotates max(dim_head // 2, 32) dims
    torch.manual_seed(0)
    ref = x_transformers.TransformerWrapper(attn_layers=x_transformers.Decoder(**lkw), **tkw).eval()
    ours = zeta_hf.convert_zeta_checkpoint(ref.state_dict(), {**tkw, "attn_layers": {**lkw, "type": "Decoder"}})

    def xt_step(segment, mems, want_mems):
        if want_mems:
            logits, new_mems = ref(segment, mems=mems, return_mems=True)
            return logits[:, -1], new_mems
        return ref(segment, mems=mems)[:, -1], None

    x = prompt(L + 3, seed=1)
    expected = reference_loop(xt_step, x, 3 * L, L)
    got = generate_with_memory(ours, x, 3 * L, do_sample=False)
    assert_tokens_equal(got, expected, f"{variant}: vs x-transformers")


# ---------------------------------------------------------------------------------------------------------------
# (c) 10x max_seq_len with bounded cache and mems
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["rotary", "abs-mem2-memkv2"])
def test_ten_times_max_seq_len_with_bounded_state(variant):
    model = build(**VARIANTS[variant])
    cfg = model.config
    seen = {"inputs": [], "mems": [], "cache": []}

    def record(module, args, kwargs, output):
        ids = kwargs.get("input_ids", args[0] if args else None)
        seen["inputs"].append(ids.shape[1])
        if kwargs.get("mems") is not None:
            seen["mems"].append({m.shape[1] for m in kwargs["mems"]})
        if output.cache is not None:
            seen["cache"].append(output.cache.get_seq_length())

    handle = model.register_forward_hook(record, with_kwargs=True)
    try:
        x = prompt(3, batch=1)
        out = generate_with_memory(model, x, 10 * L, do_sample=False)
    finally:
        handle.remove()
    assert out.shape == (1, 3 + 10 * L)
    bound = cfg.num_memory_kv + MEM + cfg.num_memory_tokens + L
    assert max(seen["cache"]) == bound, "the KV cache must fill up to one segment over the trimmed mems, no further"
    assert max(seen["inputs"]) <= L
    assert all(lengths == {MEM} for lengths in seen["mems"][2:]), "mems are trimmed to max_mem_len"
    assert len(seen["mems"]) > 10  # the recurrence really ran over every segment


def test_generator_and_streamer_see_each_token_once():
    model = build(**VARIANTS["alibi"])
    x = prompt(5, batch=1)
    full = generate_with_memory(model, x, 3 * L, do_sample=False)
    chunks = list(stream_with_memory(model, x, 3 * L, do_sample=False))
    assert all(c.shape[1] <= L + 1 for c in chunks)
    assert_tokens_equal(torch.cat((x, *chunks), dim=1), full, "generator chunks")

    class Recorder:
        def __init__(self):
            self.puts, self.ends = [], 0

        def put(self, value):
            self.puts.append(value.reshape(1, -1))

        def end(self):
            self.ends += 1

    recorder = Recorder()
    generate_with_memory(model, x, 3 * L, streamer=recorder, do_sample=False)
    assert recorder.ends == 1
    assert_tokens_equal(torch.cat(recorder.puts, dim=1), full, "streamed tokens")


def test_sampling_is_reproducible_and_runs_past_segments():
    model = build(**VARIANTS["rotary"])
    x = prompt(2)
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        runs.append(generate_with_memory(model, x, 3 * L, do_sample=True, top_k=10, temperature=1.5))
    assert runs[0].shape == (2, 2 + 3 * L)
    assert_tokens_equal(runs[0], runs[1], "seeded sampling")


def test_eos_stops_the_stream_in_a_later_segment():
    model = build(**VARIANTS["rotary"])
    x = prompt(3, batch=1)
    greedy = generate_with_memory(model, x, 4 * L, do_sample=False)[0, 3:].tolist()
    # a token whose first occurrence lies past the first segment boundary
    firsts = [j for j, t in enumerate(greedy) if t not in greedy[:j] and j > L]
    if not firsts:
        pytest.skip("the greedy stream of this tiny model repeats itself before the first segment boundary")
    j = firsts[0]
    got = generate_with_memory(model, x, 4 * L, do_sample=False, eos_token_id=greedy[j], pad_token_id=0)
    assert got[0, 3:].tolist() == greedy[: j + 1]


# ---------------------------------------------------------------------------------------------------------------
# (d) errors name the argument and the value
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case, error, fragment",
    [
        ("no-max-mem-len", ValueError, "`model.config.max_mem_len` is 0"),
        ("base-model", TypeError, "`model` must be a ZetaForCausalLM, but got ZetaModel"),
        ("padding", ValueError, "`attention_mask` contains padding"),
        ("segment-zero", ValueError, "`segment_length` must be a positive integer, but got 0"),
        ("segment-past-table", ValueError, "`segment_length`=9 is longer than the learned absolute position table"),
        ("negative-new", ValueError, "`max_new_tokens` must be a non-negative integer, but got -1"),
        ("mems-kwarg", ValueError, "`mems` cannot be passed to streaming generation"),
        ("max-length-kwarg", ValueError, "`max_length` cannot be passed"),
        ("float-ids", TypeError, "`input_ids` must be an integer tensor"),
        ("1d-ids", ValueError, "`input_ids` must be a (batch, seq_len) tensor, but got (5,)"),
    ],
)
def test_bad_inputs(case, error, fragment):
    model = build(**VARIANTS["abs-mem2-memkv2"])
    x = prompt(5)
    call = dict(model=model, input_ids=x, max_new_tokens=4)
    if case == "no-max-mem-len":
        call["model"] = build(max_mem_len=0)
    elif case == "base-model":
        call["model"] = ZetaModel(model.config)
    elif case == "padding":
        mask = torch.ones_like(x)
        mask[0, 0] = 0
        call["attention_mask"] = mask
    elif case == "segment-zero":
        call["segment_length"] = 0
    elif case == "segment-past-table":
        call["segment_length"] = L + 1
    elif case == "negative-new":
        call["max_new_tokens"] = -1
    elif case == "mems-kwarg":
        call["mems"] = [torch.zeros(2, 1, 32)] * 2
    elif case == "max-length-kwarg":
        call["max_length"] = 50
    elif case == "float-ids":
        call["input_ids"] = x.float()
    elif case == "1d-ids":
        call["input_ids"] = x[0]
    with pytest.raises(error) as info:
        generate_with_memory(**call)
    assert fragment in str(info.value)


def test_unpadded_attention_mask_and_zero_new_tokens_are_fine():
    model = build(**VARIANTS["rotary"])
    x = prompt(4)
    plain = generate_with_memory(model, x, 2 * L, do_sample=False)
    masked = generate_with_memory(model, x, 2 * L, attention_mask=torch.ones_like(x), do_sample=False)
    assert_tokens_equal(masked, plain, "all-ones mask")
    assert_tokens_equal(generate_with_memory(model, x, 0), x, "zero new tokens")
