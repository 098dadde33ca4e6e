"""Transformer-XL streaming generation: run a `max_mem_len` model far past its segment length with flat memory.

A Zeta model with `max_mem_len > 0` reads a long sequence in segments of at most `segment_length` tokens; every
segment attends to the XL mems (the inputs of each attention layer over the previous segments, trimmed by the model
to the last `max_mem_len` rows). Generation follows the same recurrence:

    stream = prompt + new tokens, cut into segments [0, L), [L, 2L), ...
    segment k is generated with `model.generate(segment_so_far, mems=mems_k)` (KV cache inside the segment)
    once segment k holds L tokens, the token after it (the first of segment k+1) is predicted from its last
    position given mems_k, and mems_{k+1} = model(segment_k, mems=mems_k, output_mems=True).mems

So the cache never holds more than `num_memory_kv + max_mem_len + num_memory_tokens + L` keys, whatever the length.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch
from transformers.generation.streamers import BaseStreamer

from .modeling_zeta import ZetaForCausalLM

__all__ = ["generate_with_memory", "stream_with_memory"]

# generate() arguments that would contradict the segment recurrence, with the reason shown to the user.
_REFUSED_KWARGS = {
    "mems": "the mems are computed segment by segment by the streaming loop itself",
    "cache": "each segment starts a fresh KV cache over its own mems",
    "past_key_values": "each segment starts a fresh KV cache over its own mems",
    "max_length": "the length is set by `max_new_tokens`",
    "min_length": "generate() would apply it per segment, not to the whole stream",
    "min_new_tokens": "generate() would apply it per segment, not to the whole stream",
    "num_return_sequences": "the stream keeps one sequence per prompt row",
    "return_dict_in_generate": "the stream returns token ids only",
    "inputs_embeds": "segments are re-read from token ids",
    "prepend_embeds": "prepended embeddings have no place in a segment recurrence",
    "sum_embeds": "per-token embeddings cannot follow the stream across segments",
    "pos": "positions restart in every segment",
    "position_ids": "positions restart in every segment",
    "encoder_hidden_states": "cross-attention models are not supported by the streaming loop",
}


class _SegmentStreamer(BaseStreamer):
    """Forwards one segment's new tokens to the user's streamer: generate() re-announces the segment prompt and
    calls `end()` per segment, which would repeat tokens and end a `TextStreamer` line at every boundary."""

    def __init__(self, target: BaseStreamer):
        self.target = target
        self.seen_prompt = False

    def put(self, value: torch.Tensor) -> None:
        if not self.seen_prompt:  # the segment prompt: already streamed as new tokens of earlier calls
            self.seen_prompt = True
            return
        self.target.put(value)

    def end(self) -> None:
        pass


def _check_arguments(
    model: ZetaForCausalLM, input_ids: torch.Tensor, max_new_tokens: int, segment_length: int | None, kwargs: dict
) -> int:
    """Reject what the recurrence cannot honour, in one sentence each; returns the segment length."""
    if not isinstance(model, ZetaForCausalLM):
        raise TypeError(f"`model` must be a ZetaForCausalLM, but got {type(model).__name__}.")
    cfg = model.config
    if not cfg.is_causal:
        raise ValueError("`model` is an encoder (`is_causal=False`): streaming generation needs a causal decoder.")
    if "cross" in cfg.layer_pattern:
        raise ValueError("`model` has cross-attention layers: streaming generation does not carry a context along.")
    if not isinstance(cfg.max_mem_len, int) or cfg.max_mem_len <= 0:
        raise ValueError(
            f"`model.config.max_mem_len` is {cfg.max_mem_len!r}: streaming needs a positive `max_mem_len`, otherwise "
            "the XL mems (and memory use) grow with every segment. Set `max_mem_len` when building the model."
        )
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        got = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"`input_ids` must be a (batch, seq_len) tensor, but got {got}.")
    if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
        raise TypeError(f"`input_ids` must be an integer tensor, but got dtype {input_ids.dtype}.")
    if input_ids.shape[1] == 0:
        raise ValueError("`input_ids` is an empty sequence: streaming needs at least one prompt token.")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"`max_new_tokens` must be a non-negative integer, but got {max_new_tokens!r}.")
    if segment_length is None:
        segment_length = cfg.max_position_embeddings
    if isinstance(segment_length, bool) or not isinstance(segment_length, int) or segment_length < 1:
        raise ValueError(f"`segment_length` must be a positive integer, but got {segment_length!r}.")
    if cfg.absolute_position_embedding == "learned" and segment_length > cfg.max_position_embeddings:
        raise ValueError(
            f"`segment_length`={segment_length} is longer than the learned absolute position table "
            f"(`max_position_embeddings`={cfg.max_position_embeddings}); positions restart in every segment, so "
            "use a segment length of at most that size."
        )
    for name, reason in _REFUSED_KWARGS.items():
        if name in kwargs and not (name == "num_return_sequences" and kwargs[name] == 1):
            raise ValueError(f"`{name}` cannot be passed to streaming generation: {reason}.")
    mask = kwargs.get("attention_mask")
    if mask is not None:
        if tuple(mask.shape) != tuple(input_ids.shape):
            raise ValueError(
                f"`attention_mask` must have the shape of `input_ids` {tuple(input_ids.shape)}, but got "
                f"{tuple(mask.shape)}."
            )
        if not bool(mask.bool().all()):
            raise ValueError(
                "`attention_mask` contains padding (zeros): streaming generation does not support padded batches, "
                "because padding would shift each row's segment boundaries and mems. Generate rows separately."
            )
    return segment_length


def _eos_and_pad(model: ZetaForCausalLM, kwargs: dict) -> tuple[torch.Tensor | None, int | None]:
    """The end-of-sequence ids (as a tensor) and the pad id generate() fills finished rows with."""
    gen = kwargs.get("generation_config") or model.generation_config
    eos = kwargs.get("eos_token_id", gen.eos_token_id)
    pad = kwargs.get("pad_token_id", gen.pad_token_id)
    if eos is None:
        return None, pad
    eos = torch.as_tensor(eos if isinstance(eos, (list, tuple)) else [eos], dtype=torch.long).flatten()
    return eos, (pad if pad is not None else int(eos[0]))


def _generate(model: ZetaForCausalLM, segment: torch.Tensor, mems, max_new_tokens: int, **kwargs) -> torch.Tensor:
    """`model.generate` for one segment (XL memories enter at its prefill)."""
    return model.generate(segment, mems=mems, max_new_tokens=max_new_tokens, **kwargs)


def _next_mems(model: ZetaForCausalLM, segment: torch.Tensor, mems):
    """The mems after a full segment: one uncached forward (the model trims them to `max_mem_len`)."""
    out = model(segment, mems=mems, output_mems=True, use_cache=False, logits_to_keep=1, return_dict=True)
    return out.mems


@torch.no_grad()
def stream_with_memory(
    model: ZetaForCausalLM,
    input_ids: torch.LongTensor,
    max_new_tokens: int,
    segment_length: int | None = None,
    streamer: BaseStreamer | None = None,
    **generate_kwargs,
) -> Iterator[torch.LongTensor]:
    """Yield the new tokens of a Transformer-XL stream as they are produced, one (batch, k) chunk per segment.

    `segment_length` (default `config.max_position_embeddings`) is L in the module docstring. A prompt longer than L
    is read segment by segment first. `generate_kwargs` go to every per-segment `generate()` call (sampling, logits
    processors, eos / pad ids); processors that look back at earlier tokens (e.g. `repetition_penalty`) see the
    current segment only, like the model itself. A `streamer` receives the prompt once, every new token once, and
    one `end()`. Rows that produced an eos token are filled with the pad id afterwards; the stream stops when every
    row has finished. Memory stays flat: only the current segment, its KV cache and the trimmed mems are kept.
    """
    L = _check_arguments(model, input_ids, max_new_tokens, segment_length, generate_kwargs)
    generate_kwargs.pop("attention_mask", None)  # all ones (checked): each segment builds its own
    generate_kwargs.pop("num_return_sequences", None)
    eos, pad = _eos_and_pad(model, generate_kwargs)
    if eos is not None and "pad_token_id" not in generate_kwargs:
        generate_kwargs["pad_token_id"] = pad  # else generate() warns once per segment
    if streamer is not None:
        streamer.put(input_ids.cpu())

    # prefill: every full prompt segment that is followed by more prompt only updates the mems
    mems, start = None, 0
    while input_ids.shape[1] - start > L:
        mems = _next_mems(model, input_ids[:, start : start + L], mems)
        start += L
    segment = input_ids[:, start:]  # 1..L tokens
    finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    remaining = max_new_tokens
    while remaining > 0:
        s = segment.shape[1]
        # fill the segment, plus the token after it (predicted from its last position under the same mems)
        k = min(L - s + 1, remaining)
        proxy = _SegmentStreamer(streamer) if streamer is not None else None
        new = _generate(model, segment, mems, k, streamer=proxy, **generate_kwargs)[:, s:]  # (b, <= k)
        if eos is not None:
            new = torch.where(finished[:, None], torch.full_like(new, pad), new)
            finished = finished | torch.isin(new, eos.to(new.device)).any(dim=1)
        remaining -= new.shape[1]
        yield new
        if new.shape[1] < k or bool(finished.all()) or remaining == 0:
            break
        full = torch.cat((segment, new[:, :-1]), dim=1)  # (b, L)
        mems = _next_mems(model, full, mems)
        segment = new[:, -1:].clone()  # the first token of the next segment; the old segment's cache is gone
    if streamer is not None:
        streamer.end()


def generate_with_memory(
    model: ZetaForCausalLM,
    input_ids: torch.LongTensor,
    max_new_tokens: int,
    segment_length: int | None = None,
    streamer: BaseStreamer | None = None,
    **generate_kwargs,
) -> torch.LongTensor:
    """Like `model.generate(input_ids, max_new_tokens=...)` (prompt + new tokens), but for any length: Transformer-XL
    segments of `segment_length` tokens linked by the model's `max_mem_len` mems, see `stream_with_memory`.

    The result is written into one preallocated (batch, prompt + max_new_tokens) tensor, the only thing that grows
    with the length; it is cut short if every row reached an eos token.
    """
    b, p = input_ids.shape if isinstance(input_ids, torch.Tensor) and input_ids.dim() == 2 else (0, 0)
    chunks = stream_with_memory(model, input_ids, max_new_tokens, segment_length, streamer, **generate_kwargs)
    first = next(chunks, None)  # arguments are checked on the first step, before anything is allocated
    if first is None:
        return input_ids
    out = input_ids.new_empty((b, p + max_new_tokens))
    out[:, :p] = input_ids
    end = p
    for chunk in itertools.chain((first,), chunks):
        out[:, end : end + chunk.shape[1]] = chunk
        end += chunk.shape[1]
    return out[:, :end]
