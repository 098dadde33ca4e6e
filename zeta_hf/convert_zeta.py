"""Import a Zeta / x-transformers 1.19 checkpoint (state dict + constructor kwargs) as a `ZetaForCausalLM` folder.

    python -m zeta_hf.convert_zeta --checkpoint model.pt --kwargs kwargs.json --output-dir out/

`kwargs.json` holds the `Transformer(...)` keyword arguments with the attention layers under "attn_layers":
`{"num_tokens": 256, "max_seq_len": 1024, "attn_layers": {"type": "Decoder", "dim": 512, "depth": 6, ...}}`.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch

from .configuration_zeta import ZetaConfig
from .modeling_zeta import ZetaForCausalLM
from .zeta_api import Decoder, Encoder, config_from_zeta_kwargs

# Zeta key (after `attn_layers.layers.{i}.`) -> our key (after `model.layers.{i}.`)
_NORM_SLOTS = {"0.0": "pre_norm", "0.1": "branch_norm", "0.2": "post_norm"}
_ATTN_KEYS = {
    "to_q.weight": "q_proj.weight",
    "to_k.weight": "k_proj.weight",
    "to_v.weight": "v_proj.weight",
    "to_out.weight": "o_proj.weight",
    "to_out.0.weight": "o_proj.weight",  # attention-on-attention: Linear then GLU
    "to_v_gate.weight": "v_gate.weight",
    "to_v_gate.bias": "v_gate.bias",
    "head_scale_params": "head_scale",
    "attend.pre_softmax_talking_heads.weight": "pre_softmax_talking_heads.weight",
    "attend.post_softmax_talking_heads.weight": "post_softmax_talking_heads.weight",
    "qk_norm_q_scale": "q_scale",
    "qk_norm_k_scale": "k_scale",
    "mem_k": "memory_k",
    "mem_v": "memory_v",
}
_RESIDUAL_KEYS = re.compile(r"residual_scale|gru\.(weight|bias)_(ih|hh)")
_TOP_KEYS = {
    "token_emb.emb.weight": "model.embed_tokens.weight",
    "pos_emb.emb.weight": "model.embed_positions.emb.weight",
    "pos_emb.scale": "model.embed_positions.scale",
    "post_emb_norm.weight": "model.post_emb_norm.weight",
    "post_emb_norm.bias": "model.post_emb_norm.bias",
    "project_emb.weight": "model.project_emb.weight",
    "project_emb.bias": "model.project_emb.bias",
    "memory_tokens": "model.memory_tokens",
    "attn_layers.final_norm.weight": "model.norm.weight",
    "attn_layers.final_norm.bias": "model.norm.bias",
    "attn_layers.final_norm.g": "model.norm.weight",
    "attn_layers.rel_pos.relative_attention_bias.weight": "model.position_bias.relative_attention_bias.weight",
    "to_logits.weight": "lm_head.weight",
    "to_logits.bias": "lm_head.bias",
}
# Buffers Zeta saves that we recompute.
_SKIP = re.compile(r"attn_layers\.rotary_pos_emb\.(inv_freq|scale)$|\.inv_freq$")


def _ff_key(rest: str, post_act_ln: bool) -> str:
    """Zeta FeedForward keys: ff.0.0 / ff.0.proj (in), ff.1 (post-act LayerNorm), last index (out)."""
    m = re.fullmatch(r"ff\.(\d+)\.(?:(?:0|proj)\.)?(weight|bias)", rest)
    if m is None:
        raise ValueError(f"Unexpected feedforward parameter `{rest}` in the Zeta checkpoint.")
    index, kind = int(m.group(1)), m.group(2)
    out_index = 3 if post_act_ln else 2
    name = {0: "up_proj", out_index: "down_proj"}.get(index, "post_act_norm" if post_act_ln and index == 1 else None)
    if name is None:
        raise ValueError(f"Unexpected feedforward parameter `{rest}` in the Zeta checkpoint.")
    return f"mlp.{name}.{kind}"


def head_permutation(config: ZetaConfig) -> torch.Tensor | None:
    """Zeta groups query heads as `h -> kv head h % kv_heads`, transformers as `h -> h // groups`: reorder heads."""
    h, kv = config.num_attention_heads, config.num_key_value_heads
    if kv in (1, h):
        return None
    groups = h // kv
    ours = torch.arange(h)
    return (ours % groups) * kv + ours // groups  # our head -> Zeta head


def convert_state_dict(zeta_state: dict[str, torch.Tensor], config: ZetaConfig) -> dict[str, torch.Tensor]:
    """Rename (and, for grouped-query attention, reorder) a Zeta 1.19 state dict into `ZetaForCausalLM` keys."""
    perm = head_permutation(config)
    if perm is not None and config.position_embedding == "alibi":
        raise ValueError(
            "Converting grouped-query attention (kv_heads < heads, > 1) combined with ALiBi is not supported: the "
            "per-head slopes would need reordering."
        )
    out: dict[str, torch.Tensor] = {}
    for key, tensor in zeta_state.items():
        if _SKIP.search(key):
            continue
        if key in _TOP_KEYS:
            new = _TOP_KEYS[key]
        elif key.startswith("attn_layers.rel_pos.mlp."):  # dynamic position bias keeps Zeta's MLP layout
            new = "model.position_bias." + key.removeprefix("attn_layers.rel_pos.")
        else:
            m = re.fullmatch(r"attn_layers\.layers\.(\d+)\.(\d)\.(.+)", key)
            if m is None:
                raise ValueError(f"Unexpected parameter `{key}` in the Zeta checkpoint: this option is not supported.")
            i, slot, rest = int(m.group(1)), m.group(2), m.group(3)
            kind = config.layer_pattern[i]
            while rest.startswith("fn."):  # ShiftTokens and macaron's Scale(0.5) wrap the block
                rest = rest.removeprefix("fn.")
            if slot == "0":
                norm_slot, _, param = rest.partition(".")
                new = f"layers.{i}.{_NORM_SLOTS['0.' + norm_slot]}.{'weight' if param == 'g' else param}"
            elif slot == "1" and kind in ("attn", "cross"):
                if rest not in _ATTN_KEYS:
                    raise ValueError(f"Unexpected attention parameter `{key}` in the Zeta checkpoint.")
                new = f"layers.{i}.{'self_attn' if kind == 'attn' else 'cross_attn'}.{_ATTN_KEYS[rest]}"
                tensor = _reorder_heads(_ATTN_KEYS[rest], tensor, perm, config)
            elif slot == "1":
                new = f"layers.{i}.{_ff_key(rest, config.ff_post_act_ln)}"
            elif slot == "2" and _RESIDUAL_KEYS.fullmatch(rest):
                new = f"layers.{i}.residual.{rest}"
            else:
                raise ValueError(f"Unexpected parameter `{key}` in the Zeta checkpoint: this option is not supported.")
            new = "model." + new
        if perm is not None and new.endswith("relative_attention_bias.weight"):
            tensor = tensor[:, perm]  # (buckets, h)
        if perm is not None and new.startswith("model.position_bias.mlp.") and tensor.shape[0] == config.num_attention_heads:
            if new.startswith(f"model.position_bias.mlp.{config.dynamic_pos_bias_mlp_depth}."):
                tensor = tensor[perm]  # last layer: one output per head
        out[new] = tensor
    return out


def _reorder_heads(name: str, tensor: torch.Tensor, perm: torch.Tensor | None, config: ZetaConfig) -> torch.Tensor:
    """Apply the query-head permutation to every per-head attention parameter."""
    if name == "head_scale":
        tensor = tensor.reshape(-1)  # Zeta stores (1, h, 1, 1)
    if perm is None:
        return tensor
    d, vd = config.head_dim, config.value_dim
    if name == "q_proj.weight":
        return tensor.view(-1, d, tensor.shape[-1])[perm].reshape_as(tensor)  # (h * d, dim) rows by head
    if name == "o_proj.weight":
        return tensor.view(tensor.shape[0], -1, vd)[:, perm].reshape_as(tensor)  # (dim, h * vd) columns by head
    if name in ("v_gate.weight", "v_gate.bias"):
        return tensor.view(-1, vd, *tensor.shape[1:])[perm].reshape_as(tensor)  # (h * vd, ...) rows by head
    if name == "head_scale":
        return tensor[perm]
    if name.endswith("talking_heads.weight"):
        return tensor[perm][:, perm]  # (h, h, 1, 1): mixes heads, both sides reordered
    return tensor


def _layers_from_kwargs(layer_kwargs: dict):
    layer_kwargs = dict(layer_kwargs)
    kind = layer_kwargs.pop("type", "Decoder")
    classes = {"Decoder": Decoder, "Encoder": Encoder}
    if kind not in classes:
        raise ValueError(f"`attn_layers.type` must be 'Decoder' or 'Encoder', but got {kind!r}.")
    return classes[kind](**layer_kwargs)


def convert_zeta_checkpoint(
    zeta_state: dict[str, torch.Tensor], transformer_kwargs: dict, output_dir: str | Path | None = None
) -> ZetaForCausalLM:
    """Build a `ZetaForCausalLM` with the weights of a Zeta model; save it to `output_dir` when given.

    `transformer_kwargs` are the Zeta `Transformer(...)` kwargs, with `attn_layers` either a zeta_hf `Decoder` /
    `Encoder` or a dict of its kwargs plus `"type": "Decoder" | "Encoder"`.
    """
    kwargs = dict(transformer_kwargs)
    layers = kwargs.pop("attn_layers")
    if isinstance(layers, dict):
        layers = _layers_from_kwargs(layers)
    # Zeta 1.19's sparse top-k drops the k largest scores; a converted checkpoint keeps that behaviour.
    config = config_from_zeta_kwargs(kwargs, layers, sparse_topk_mode="zeta_inverted")
    model = ZetaForCausalLM(config)
    state = convert_state_dict(zeta_state, config)
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"Checkpoint does not match the configuration: missing {missing}, unexpected {unexpected}.")
    model.eval()
    if output_dir is not None:
        model.save_pretrained(output_dir)
    return model


def load_zeta_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A Zeta state dict saved with `torch.save`, read without running any code in it (`weights_only=True`)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise  # a missing or unreadable file says so itself
    except Exception as err:  # refused by weights_only (UnpicklingError), or not a torch file at all
        raise ValueError(
            f"--checkpoint {str(path)!r}: file is not a checkpoint written by torch.save of a state dict, so it was "
            f"not loaded (nothing in it was run): {str(err).splitlines()[0] if str(err) else type(err).__name__}"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # the common {"state_dict": ...} wrapper
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            f"--checkpoint {str(path)!r}: file is not a checkpoint written by torch.save of a state dict (it holds a "
            f"{type(state).__name__}, not a mapping of names to tensors)."
        )
    return state


def check_output_dir(path: Path, overwrite: bool) -> None:
    """Refuse, before anything is read or written, an --output-dir that is a file, lies under a file, or holds files."""
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"--output-dir {str(path)!r} cannot be created: {str(parent)!r} is a file.")
            break
    if path.exists() and not path.is_dir():
        raise ValueError(f"--output-dir {str(path)!r} exists and is not a folder.")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise ValueError(f"--output-dir {str(path)!r} is not empty; pass --overwrite to replace the model in it, or "
                         "choose another folder.")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="torch.save'd state dict of the Zeta Transformer")
    parser.add_argument("--kwargs", required=True, help="JSON file with the Transformer constructor kwargs")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--overwrite", action="store_true",
                        help="allow replacing the model in a non-empty --output-dir")
    args = parser.parse_args(argv)
    check_output_dir(Path(args.output_dir), args.overwrite)
    state = load_zeta_state_dict(args.checkpoint)
    kwargs = json.loads(Path(args.kwargs).read_text())
    convert_zeta_checkpoint(state, kwargs, args.output_dir)
    print(f"Saved ZetaForCausalLM to {args.output_dir}")


if __name__ == "__main__":
    main()
