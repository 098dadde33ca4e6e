"""Numerical parity with the oracle, `x_transformers==1.19.0` (what a Zeta checkpoint is).

Every test builds a tiny model in x-transformers with a fixed seed, converts its weights with `zeta_hf`'s converter
and compares numbers: logits, padded logits, Transformer-XL memories, the seed's forward flags, gradients and a
save / reload round trip. Tolerance is 1e-5 absolute in float32.
"""

from __future__ import annotations

import os
from importlib.metadata import version

import pytest
import torch
from zeta_hf.convert_zeta import head_permutation

if os.environ.get("CI"):  # under CI a missing oracle fails the run rather than silently skipping every parity test
    import x_transformers
else:
    x_transformers = pytest.importorskip("x_transformers")
assert version("x-transformers") == "1.19.0", "the parity oracle is x-transformers 1.19.0 (pinned in the test extra)"

import zeta_hf  # noqa: E402
from zeta_hf.convert_zeta import convert_state_dict  # noqa: E402

ATOL = 1e-5
BATCH, SEQ, MEM_LEN = 2, 12, 5
BASE_TRANSFORMER = dict(num_tokens=64, max_seq_len=32)
BASE_LAYERS = dict(dim=64, depth=2, heads=4, attn_dim_head=32)
DECODER, ENCODER = "decoder", "encoder"
BOTH = (DECODER, ENCODER)


# id -> (Transformer kwargs, Decoder/Encoder kwargs, kinds the option allows)
OPTIONS: dict[str, tuple[dict, dict, tuple[str, ...]]] = {
    # absolute positions
    "abs": ({}, {}, BOTH),
    "sinu": (dict(scaled_sinu_pos_emb=True), {}, BOTH),
    "nopos": (dict(use_abs_pos_emb=False), {}, BOTH),
    # rotary
    "rotary": ({}, dict(rotary_pos_emb=True), BOTH),
    "rotary-dim48-head64": ({}, dict(rotary_pos_emb=True, attn_dim_head=64, rotary_emb_dim=48), BOTH),
    "rotary-dim16-head64": ({}, dict(rotary_pos_emb=True, attn_dim_head=64, rotary_emb_dim=16), BOTH),
    "rotary-interp2": ({}, dict(rotary_pos_emb=True, rotary_interpolation_factor=2.0), BOTH),
    "rotary-ntk4": ({}, dict(rotary_pos_emb=True, rotary_base_rescale_factor=4.0), BOTH),
    "xpos": ({}, dict(rotary_xpos=True), (DECODER,)),
    "xpos-base16": ({}, dict(rotary_xpos=True, rotary_xpos_scale_base=16), (DECODER,)),
    # ALiBi (Zeta keeps absolute positions unless told otherwise) and T5 buckets
    "alibi": (dict(use_abs_pos_emb=False), dict(alibi_pos_bias=True), BOTH),
    "alibi-abs": ({}, dict(alibi_pos_bias=True), BOTH),
    "alibi-heads2": (dict(use_abs_pos_emb=False), dict(alibi_pos_bias=True, alibi_num_heads=2), BOTH),
    "alibi-heads2-abs": ({}, dict(alibi_pos_bias=True, alibi_num_heads=2), BOTH),
    "t5": ({}, dict(rel_pos_bias=True), BOTH),
    "t5-buckets8-dist16": ({}, dict(rel_pos_bias=True, rel_pos_num_buckets=8, rel_pos_max_distance=16), BOTH),
    # norms
    "rmsnorm": ({}, dict(use_rmsnorm=True), BOTH),
    "scalenorm": ({}, dict(use_scalenorm=True), BOTH),
    "simple-rmsnorm": ({}, dict(use_simple_rmsnorm=True), BOTH),
    "postnorm": ({}, dict(pre_norm=False), BOTH),
    "postnorm-rmsnorm": ({}, dict(pre_norm=False, use_rmsnorm=True), BOTH),
    "sandwich": ({}, dict(sandwich_norm=True), BOTH),
    "sandwich-scalenorm": ({}, dict(sandwich_norm=True, use_scalenorm=True), BOTH),
    # attention
    "gqa2": ({}, dict(attn_kv_heads=2), BOTH),
    "gqa2-rotary": ({}, dict(attn_kv_heads=2, rotary_pos_emb=True), BOTH),
    "gqa2-t5": ({}, dict(attn_kv_heads=2, rel_pos_bias=True), BOTH),
    "mqa": ({}, dict(attn_one_kv_head=True), BOTH),
    "mqa-alibi-heads2": (
        dict(use_abs_pos_emb=False), dict(attn_one_kv_head=True, alibi_pos_bias=True, alibi_num_heads=2), BOTH
    ),
    "qknorm": ({}, dict(attn_qk_norm=True), BOTH),
    "qknorm-groups2-scale5-dimscale": (
        {}, dict(attn_qk_norm=True, attn_qk_norm_groups=2, attn_qk_norm_scale=5, attn_qk_norm_dim_scale=True), BOTH
    ),
    "memkv2": ({}, dict(attn_num_mem_kv=2), BOTH),
    "memkv2-rotary": ({}, dict(attn_num_mem_kv=2, rotary_pos_emb=True), BOTH),
    "memkv2-alibi": (dict(use_abs_pos_emb=False), dict(attn_num_mem_kv=2, alibi_pos_bias=True), BOTH),
    "memkv2-t5": ({}, dict(attn_num_mem_kv=2, rel_pos_bias=True), BOTH),
    "memkv2-qknorm-dimscale": ({}, dict(attn_num_mem_kv=2, attn_qk_norm=True, attn_qk_norm_dim_scale=True), BOTH),
    "memkv2-qknorm-groups2": ({}, dict(attn_num_mem_kv=2, attn_qk_norm=True, attn_qk_norm_groups=2), BOTH),
    # feedforward
    "geglu": ({}, dict(ff_glu=True), BOTH),
    "swiglu": ({}, dict(ff_glu=True, ff_swish=True), BOTH),
    "swish": ({}, dict(ff_swish=True), BOTH),
    "relu2": ({}, dict(ff_relu_squared=True), BOTH),
    "relu2-glu": ({}, dict(ff_relu_squared=True, ff_glu=True), BOTH),
    "post-act-ln": ({}, dict(ff_post_act_ln=True), BOTH),
    "swiglu-post-act-ln": ({}, dict(ff_glu=True, ff_swish=True, ff_post_act_ln=True), BOTH),
    "mult2-nobias": ({}, dict(ff_mult=2, ff_no_bias=True), BOTH),
    "mult1.5": ({}, dict(ff_mult=1.5), BOTH),
    "glu-nobias": ({}, dict(ff_glu=True, ff_no_bias=True), BOTH),
    # residual structure
    "macaron": ({}, dict(macaron=True), BOTH),
    "resattn": ({}, dict(residual_attn=True), BOTH),
    "macaron-resattn-alibi": (
        dict(use_abs_pos_emb=False), dict(macaron=True, residual_attn=True, alibi_pos_bias=True), BOTH
    ),
    # embeddings and head
    "embdim32": (dict(emb_dim=32), {}, BOTH),
    "embdim32-sinu": (dict(emb_dim=32, scaled_sinu_pos_emb=True), {}, BOTH),
    "post-emb-norm": (dict(post_emb_norm=True), {}, BOTH),
    "l2norm-embed": (dict(l2norm_embed=True), {}, BOTH),
    "l2norm-embed-embdim32-postembnorm": (dict(l2norm_embed=True, emb_dim=32, post_emb_norm=True), {}, BOTH),
    "emb-frac-grad": (dict(emb_frac_gradient=0.25), {}, BOTH),
    "tie": (dict(tie_embedding=True), {}, BOTH),
    "logits-dim10": (dict(logits_dim=10), {}, BOTH),
    # memory tokens
    "mem3": (dict(num_memory_tokens=3), {}, BOTH),
    "rotary-mem3": (dict(num_memory_tokens=3), dict(rotary_pos_emb=True), BOTH),
    "alibi-mem3": (dict(num_memory_tokens=3, use_abs_pos_emb=False), dict(alibi_pos_bias=True), BOTH),
    "t5-mem3": (dict(num_memory_tokens=3), dict(rel_pos_bias=True), BOTH),
    "memkv2-mem3": (dict(num_memory_tokens=3), dict(attn_num_mem_kv=2), BOTH),
    "xpos-mem3": (dict(num_memory_tokens=3), dict(rotary_xpos=True, rotary_xpos_scale_base=16), (DECODER,)),
    # Transformer-XL settings (inert without mems, exercised with mems below)
    "maxmem8-shift1": (dict(max_mem_len=8, shift_mem_down=1), {}, BOTH),
    # dynamic position bias (x-transformers asserts i == j: never with mems or attn_num_mem_kv, see _NO_MEMS)
    "dynamic-abs": ({}, dict(dynamic_pos_bias=True), BOTH),
    "dynamic-log-norm-depth3": (
        dict(use_abs_pos_emb=False),
        dict(dynamic_pos_bias=True, dynamic_pos_bias_log_distance=True, dynamic_pos_bias_norm=True,
             dynamic_pos_bias_mlp_depth=3),
        BOTH,
    ),
    "dynamic-depth1-gqa2-mem3": (
        dict(num_memory_tokens=3, use_abs_pos_emb=False),
        dict(dynamic_pos_bias=True, dynamic_pos_bias_mlp_depth=1, attn_kv_heads=2),
        BOTH,
    ),
    # attention extras
    "talking-heads": ({}, dict(attn_talking_heads=True), BOTH),
    "talking-heads-rotary": ({}, dict(attn_talking_heads=True, rotary_pos_emb=True), BOTH),
    "talking-heads-gqa2": ({}, dict(attn_talking_heads=True, attn_kv_heads=2), BOTH),
    "talking-heads-resattn-memkv2": ({}, dict(attn_talking_heads=True, residual_attn=True, attn_num_mem_kv=2), BOTH),
    "head-scale": ({}, dict(attn_head_scale=True), BOTH),
    "head-scale-gqa2-t5": ({}, dict(attn_head_scale=True, attn_kv_heads=2, rel_pos_bias=True), BOTH),
    "gate-values": ({}, dict(attn_gate_values=True), BOTH),
    "gate-values-head-scale-gqa2-mem3": (
        dict(num_memory_tokens=3), dict(attn_gate_values=True, attn_head_scale=True, attn_kv_heads=2), BOTH
    ),
    "on-attn": ({}, dict(attn_on_attn=True), BOTH),
    "on-attn-gqa2-rotary": ({}, dict(attn_on_attn=True, attn_kv_heads=2, rotary_pos_emb=True), BOTH),
    "zero-kv": ({}, dict(attn_add_zero_kv=True), BOTH),
    "zero-kv-alibi": (dict(use_abs_pos_emb=False), dict(attn_add_zero_kv=True, alibi_pos_bias=True), BOTH),
    "zero-kv-memkv2-mem3": (dict(num_memory_tokens=3), dict(attn_add_zero_kv=True, attn_num_mem_kv=2), BOTH),
    "zero-kv-rotary-resattn": ({}, dict(attn_add_zero_kv=True, rotary_pos_emb=True, residual_attn=True), BOTH),
    "value-dim16": ({}, dict(attn_value_dim_head=16), BOTH),
    "value-dim16-gqa2-gate-values": ({}, dict(attn_value_dim_head=16, attn_kv_heads=2, attn_gate_values=True), BOTH),
    # (x-transformers sizes memory values by attn_dim_head, so attn_value_dim_head with attn_num_mem_kv crashes there)
    "value-dim48-rotary": ({}, dict(attn_value_dim_head=48, rotary_pos_emb=True), BOTH),
    "shared-kv": ({}, dict(attn_shared_kv=True), BOTH),
    "shared-kv-rotary": ({}, dict(attn_shared_kv=True, rotary_pos_emb=True), BOTH),
    "shared-kv-gqa2-t5-mem3": (
        dict(num_memory_tokens=3), dict(attn_shared_kv=True, attn_kv_heads=2, rel_pos_bias=True), BOTH
    ),
    "max-attend-past3": ({}, dict(attn_max_attend_past=3), BOTH),
    "max-attend-past1": ({}, dict(attn_max_attend_past=1), BOTH),
    "max-attend-past4-alibi-mem3": (
        dict(num_memory_tokens=3, use_abs_pos_emb=False), dict(attn_max_attend_past=4, alibi_pos_bias=True), BOTH
    ),
    "max-attend-past2-rotary-memkv2": ({}, dict(attn_max_attend_past=2, rotary_pos_emb=True, attn_num_mem_kv=2), BOTH),
    # Zeta's sparse top-k drops the k largest scores (the converter keeps that: sparse_topk_mode="zeta_inverted")
    "sparse-topk4": ({}, dict(attn_sparse_topk=4), BOTH),
    "sparse-topk4-t5": ({}, dict(attn_sparse_topk=4, rel_pos_bias=True), BOTH),
    "sparse-topk3-alibi-zero-kv": (
        dict(use_abs_pos_emb=False), dict(attn_sparse_topk=3, alibi_pos_bias=True, attn_add_zero_kv=True), BOTH
    ),
    "sparse-topk2-memkv2-mem3": (dict(num_memory_tokens=3), dict(attn_sparse_topk=2, attn_num_mem_kv=2), BOTH),
    "sparse-topk4-dynamic": ({}, dict(attn_sparse_topk=4, dynamic_pos_bias=True), BOTH),
    # token shifting
    "shift1": ({}, dict(shift_tokens=1), BOTH),
    "shift2-macaron-mem3": (dict(num_memory_tokens=3), dict(shift_tokens=2, macaron=True), BOTH),
    "shift-per-layer-1-0-2-0": ({}, dict(shift_tokens=(1, 0, 2, 0)), BOTH),
    "shift1-rotary-memkv2": ({}, dict(shift_tokens=1, rotary_pos_emb=True, attn_num_mem_kv=2), BOTH),
    # residuals
    "gru": ({}, dict(gate_residual=True), BOTH),
    "gru-scale-residual-mem3": (dict(num_memory_tokens=3), dict(gate_residual=True, scale_residual=True), BOTH),
    "scale-residual": ({}, dict(scale_residual=True), BOTH),
    "scale-residual-const0.7": ({}, dict(scale_residual=True, scale_residual_constant=0.7), BOTH),
    "scale-residual-const1.5-only": ({}, dict(scale_residual_constant=1.5), BOTH),
    "layer-dropout0.3": ({}, dict(layer_dropout=0.3), BOTH),  # inert in eval mode; see test_layer_dropout_training
    # norm placements
    "deepnorm": ({}, dict(deepnorm=True), BOTH),
    "deepnorm-rmsnorm-macaron": ({}, dict(deepnorm=True, use_rmsnorm=True, macaron=True), BOTH),
    "resi-dual": ({}, dict(resi_dual=True), BOTH),
    "resi-dual-scale0.5-mem3": (dict(num_memory_tokens=3), dict(resi_dual=True, resi_dual_scale=0.5), BOTH),
    "resi-dual-scalenorm-resattn": ({}, dict(resi_dual=True, use_scalenorm=True, residual_attn=True), BOTH),
    # layouts
    "custom-layers-aafaff": ({}, dict(custom_layers=("a", "a", "f", "a", "f", "f")), BOTH),
    "custom-layers-faa-rotary-mem3": (
        dict(num_memory_tokens=3), dict(custom_layers=("f", "a", "a"), rotary_pos_emb=True), BOTH
    ),
    "par-ratio2-depth4": ({}, dict(depth=4, par_ratio=2), BOTH),
    "par-ratio4-depth6-t5": ({}, dict(depth=6, par_ratio=4, rel_pos_bias=True), BOTH),
    "sandwich-coef1-depth3": ({}, dict(depth=3, sandwich_coef=1), BOTH),
    "sandwich-coef2-depth3-macaron": ({}, dict(depth=3, sandwich_coef=2, macaron=True), BOTH),
}


def _cases(exclude: tuple[str, ...] = ()):
    return [
        pytest.param(name, kind, id=f"{name}-{kind}")
        for name, (_, _, kinds) in OPTIONS.items()
        if name not in exclude
        for kind in kinds
    ]


# --------------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------------


def _kwargs(name: str) -> tuple[dict, dict]:
    tkw, lkw, _ = OPTIONS[name]
    return {**BASE_TRANSFORMER, **tkw}, {**BASE_LAYERS, **lkw}


def _perturb(model: torch.nn.Module, seed: int) -> None:
    """Move every default-initialised vector (norm gains/biases, scales) off its init, so each one is tested."""
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.numel() == 1:  # ScaleNorm gain / sinusoidal scale: O(1), so logits are not vanishingly small
                p.fill_(0.5 + torch.rand((), generator=g).item())
                if name.endswith(".g"):
                    p.mul_(BASE_LAYERS["dim"] ** 0.5)
            elif p.dim() == 1:
                p.mul_(1 + 0.3 * torch.randn(p.shape, generator=g)).add_(0.1 * torch.randn(p.shape, generator=g))


def build_reference(tkw: dict, lkw: dict, kind: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    layers = (x_transformers.Decoder if kind == DECODER else x_transformers.Encoder)(**lkw)
    ref = x_transformers.TransformerWrapper(attn_layers=layers, **tkw)
    _perturb(ref, seed)
    return ref.eval()


def zeta_kwargs(tkw: dict, lkw: dict, kind: str) -> dict:
    return {**tkw, "attn_layers": {**lkw, "type": "Decoder" if kind == DECODER else "Encoder"}}


def build_pair(tkw: dict, lkw: dict, kind: str, seed: int = 0):
    ref = build_reference(tkw, lkw, kind, seed)
    ours = zeta_hf.convert_zeta_checkpoint(ref.state_dict(), zeta_kwargs(tkw, lkw, kind))
    return ref, ours


def tokens(num_tokens: int, n: int = SEQ, seed: int = 0, batch: int = BATCH) -> torch.Tensor:
    return torch.randint(0, num_tokens, (batch, n), generator=torch.Generator().manual_seed(100 + seed))


def random_mems(n_layers: int, dim: int, length: int = MEM_LEN, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(200 + seed)
    return [torch.randn(BATCH, length, dim, generator=g) for _ in range(n_layers)]


def right_padding_mask(n: int = SEQ, pad: int = 3) -> torch.Tensor:
    mask = torch.ones(BATCH, n, dtype=torch.bool)
    mask[1, -pad:] = False
    return mask


def padding_mask_with_hole(n: int = SEQ, pad: int = 3) -> torch.Tensor:
    """Right padding plus one masked position inside row 1: a decoder's kept tokens never see right padding (it comes
    after them), but they do see the hole, so the mask changes kept logits for decoders too."""
    mask = right_padding_mask(n, pad)
    mask[1, 2] = False
    return mask


def assert_close(ours: torch.Tensor, ref: torch.Tensor, what: str = "logits", relative: bool = False) -> None:
    """Max abs error <= 1e-5; with `relative`, 1e-5 times the reference's largest magnitude when that exceeds 1
    (gradients are sums over every position and vocabulary entry, so their float32 error scales with them)."""
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} != reference {tuple(ref.shape)}"
    err = (ours - ref).abs().max().item() if ref.numel() else 0.0
    assert torch.isfinite(ref).all() and torch.isfinite(ours).all(), f"{what}: non-finite values"
    tol = ATOL * max(1.0, ref.abs().max().item()) if relative and ref.numel() else ATOL
    assert err <= tol, f"{what}: max abs error {err:.3e} > {tol:.3g}"


def assert_nontrivial(ref: torch.Tensor) -> None:
    """Guard against vacuous comparisons (e.g. outputs that are all ~0)."""
    assert ref.abs().max().item() > 0.05 and ref.std().item() > 1e-3


def num_attn_layers(model) -> int:
    """Self-attention layers of a converted model (layouts like `custom_layers` / `par_ratio` set their own count)."""
    return model.config.num_attention_layers


# --------------------------------------------------------------------------------------------------------------------
# 1. logits for every option
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, kind", _cases())
def test_logits_parity(name, kind):
    tkw, lkw = _kwargs(name)
    ref, ours = build_pair(tkw, lkw, kind)
    x = tokens(tkw["num_tokens"])
    with torch.no_grad():
        expected = ref(x)
        got = ours(x, use_cache=False).logits
    assert_nontrivial(expected)
    assert_close(got, expected)


@pytest.mark.parametrize("name, kind", _cases())
def test_logits_parity_eager(name, kind):
    """The reference eager attention path agrees with the oracle as well (default path is sdpa)."""
    tkw, lkw = _kwargs(name)
    ref, ours = build_pair(tkw, lkw, kind)
    ours.set_attn_implementation("eager")
    x = tokens(tkw["num_tokens"], seed=1)
    with torch.no_grad():
        expected = ref(x)
        got = ours(x, use_cache=False).logits
    assert_close(got, expected)


def test_different_seeds_give_different_logits():
    """Sanity for the harness: parity is not an artefact of two models that ignore their weights."""
    tkw, lkw = _kwargs("rotary")
    ref_a, ours_a = build_pair(tkw, lkw, DECODER, seed=0)
    _, ours_b = build_pair(tkw, lkw, DECODER, seed=1)
    x = tokens(tkw["num_tokens"])
    with torch.no_grad():
        a, b = ours_a(x, use_cache=False).logits, ours_b(x, use_cache=False).logits
        assert_close(a, ref_a(x))
    assert (a - b).abs().max().item() > 0.1


@pytest.mark.parametrize(
    "lkw", [dict(attn_kv_heads=2), dict(attn_kv_heads=2, alibi_num_heads=2)], ids=["gqa2", "gqa2-heads2"]
)
def test_gqa_with_alibi_is_refused(lkw):
    tkw = {**BASE_TRANSFORMER, "use_abs_pos_emb": False}
    lkw = {**BASE_LAYERS, "alibi_pos_bias": True, **lkw}
    ref = build_reference(tkw, lkw, DECODER)
    ref(tokens(64))  # the combination itself is valid in x-transformers
    with pytest.raises(ValueError, match="ALiBi"):
        zeta_hf.convert_zeta_checkpoint(ref.state_dict(), zeta_kwargs(tkw, lkw, DECODER))


# --------------------------------------------------------------------------------------------------------------------
# 2. right-padding masks
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, kind", _cases())
def test_right_padding_mask_parity(name, kind):
    tkw, lkw = _kwargs(name)
    ref, ours = build_pair(tkw, lkw, kind)
    x = tokens(tkw["num_tokens"], seed=2)
    for mask in (right_padding_mask(), padding_mask_with_hole()):
        with torch.no_grad():
            expected = ref(x, mask=mask)
            got = ours(x, attention_mask=mask, use_cache=False).logits
            unmasked = ref(x)
        assert_close(got[mask], expected[mask])
        if kind == ENCODER or not mask[1, 2]:
            # the mask really changed kept logits of row 1 for the reference: in an encoder (bidirectional attention)
            # any padding does; in a decoder the hole does
            kept = mask[1]
            assert (unmasked[1, kept] - expected[1, kept]).abs().max().item() > 1e-4


@pytest.mark.parametrize("pad", [1, 6, 11])
@pytest.mark.parametrize("kind", BOTH)
def test_right_padding_lengths(kind, pad):
    tkw, lkw = _kwargs("t5-mem3")
    ref, ours = build_pair(tkw, lkw, kind)
    x = tokens(tkw["num_tokens"], seed=3)
    mask = right_padding_mask(pad=pad)
    with torch.no_grad():
        expected = ref(x, mask=mask)
        got = ours(x, attention_mask=mask, use_cache=False).logits
    assert_close(got[mask], expected[mask])


# --------------------------------------------------------------------------------------------------------------------
# 3. Transformer-XL memories
# --------------------------------------------------------------------------------------------------------------------

# x-transformers 1.19 itself crashes on rotary_xpos with mems, and on dynamic position bias with mems (it asserts
# that queries and keys have the same length).
_NO_MEMS = tuple(
    name for name, (_, lkw, _) in OPTIONS.items() if lkw.get("rotary_xpos") or lkw.get("dynamic_pos_bias")
)


def _run_mems(ref, ours, x, mems):
    with torch.no_grad():
        expected, expected_mems = ref(x, mems=mems, return_mems=True)
        out = ours(x, mems=mems, output_mems=True, use_cache=False)
    return expected, expected_mems, out


def _assert_mems(got_mems, expected_mems):
    assert got_mems is not None and len(got_mems) == len(expected_mems)
    for i, (g, e) in enumerate(zip(got_mems, expected_mems)):
        assert_close(g, e, what=f"mems[{i}]")


@pytest.mark.parametrize("name, kind", _cases(exclude=_NO_MEMS))
def test_xl_mems_parity(name, kind):
    tkw, lkw = _kwargs(name)
    ref, ours = build_pair(tkw, lkw, kind)
    x = tokens(tkw["num_tokens"], seed=4)
    mems = random_mems(num_attn_layers(ours), lkw["dim"], seed=4)
    expected, expected_mems, out = _run_mems(ref, ours, x, mems)
    assert_close(out.logits, expected)
    _assert_mems(out.mems, expected_mems)
    with torch.no_grad():  # the mems really entered the computation
        assert (ref(x) - expected).abs().max().item() > 1e-4


XL_SETTINGS = {
    # id -> (Transformer kwargs, Decoder kwargs)
    "nolimit": ({}, {}),
    "maxmem8": (dict(max_mem_len=8), {}),
    "maxmem3": (dict(max_mem_len=3), {}),
    "maxmem8-rotary": (dict(max_mem_len=8), dict(rotary_pos_emb=True)),
    "maxmem8-alibi": (dict(max_mem_len=8, use_abs_pos_emb=False), dict(alibi_pos_bias=True)),
    "maxmem8-t5": (dict(max_mem_len=8), dict(rel_pos_bias=True)),
    "shift1": (dict(shift_mem_down=1), {}),
    "shift1-depth3-rotary": (dict(shift_mem_down=1, max_mem_len=10), dict(depth=3, rotary_pos_emb=True)),
    "shift2-depth3": (dict(shift_mem_down=2), dict(depth=3)),
    "mem3": (dict(num_memory_tokens=3), {}),
    "mem3-maxmem8-rotary": (dict(num_memory_tokens=3, max_mem_len=8), dict(rotary_pos_emb=True)),
    "mem3-shift1-t5": (dict(num_memory_tokens=3, shift_mem_down=1), dict(rel_pos_bias=True)),
    "mem2-memkv2-alibi": (
        dict(num_memory_tokens=2, use_abs_pos_emb=False), dict(attn_num_mem_kv=2, alibi_pos_bias=True)
    ),
    "macaron-maxmem8": (dict(max_mem_len=8), dict(macaron=True)),
    "gqa2-rotary-maxmem8": (dict(max_mem_len=8), dict(attn_kv_heads=2, rotary_pos_emb=True)),
}


def _xl_cases():
    return [pytest.param(name, kind, id=f"{name}-{kind}") for name in XL_SETTINGS for kind in BOTH]


def _xl_kwargs(name: str) -> tuple[dict, dict]:
    tkw, lkw = XL_SETTINGS[name]
    return {**BASE_TRANSFORMER, **tkw}, {**BASE_LAYERS, **lkw}


@pytest.mark.parametrize("name, kind", _xl_cases())
def test_xl_mems_settings(name, kind):
    """Truncation (max_mem_len), shift_mem_down and memory tokens combined with mems: logits and every mem."""
    tkw, lkw = _xl_kwargs(name)
    ref, ours = build_pair(tkw, lkw, kind)
    x = tokens(tkw["num_tokens"], seed=5)
    mems = random_mems(lkw["depth"], lkw["dim"], seed=5)
    expected, expected_mems, out = _run_mems(ref, ours, x, mems)
    assert_close(out.logits, expected)
    _assert_mems(out.mems, expected_mems)
    full = MEM_LEN + tkw.get("num_memory_tokens", 0) + SEQ
    assert all(m.shape[1] == min(full, tkw.get("max_mem_len") or full) for m in out.mems)


@pytest.mark.parametrize("name, kind", _xl_cases())
def test_xl_mems_returned_without_input_mems(name, kind):
    tkw, lkw = _xl_kwargs(name)
    ref, ours = build_pair(tkw, lkw, kind)
    x = tokens(tkw["num_tokens"], seed=6)
    expected, expected_mems, out = _run_mems(ref, ours, x, None)
    assert_close(out.logits, expected)
    _assert_mems(out.mems, expected_mems)


@pytest.mark.parametrize("name, kind", _xl_cases())
def test_xl_two_segment_recurrence(name, kind):
    """Segment 1 -> returned mems -> segment 2, in both models; logits and mems agree at every step."""
    tkw, lkw = _xl_kwargs(name)
    ref, ours = build_pair(tkw, lkw, kind)
    seg1, seg2 = tokens(tkw["num_tokens"], seed=7), tokens(tkw["num_tokens"], seed=8)
    expected1, ref_mems, out1 = _run_mems(ref, ours, seg1, None)
    assert_close(out1.logits, expected1, "segment 1 logits")
    _assert_mems(out1.mems, ref_mems)
    # each model continues from its own mems
    with torch.no_grad():
        expected2, ref_mems2 = ref(seg2, mems=ref_mems, return_mems=True)
        out2 = ours(seg2, mems=out1.mems, output_mems=True, use_cache=False)
        no_memory = ref(seg2)
    assert_close(out2.logits, expected2, "segment 2 logits")
    _assert_mems(out2.mems, ref_mems2)
    assert (no_memory - expected2).abs().max().item() > 1e-4  # segment 2 really read segment 1


# --------------------------------------------------------------------------------------------------------------------
# 4. the seed's forward flags through the front door (`zeta_hf.Transformer`)
# --------------------------------------------------------------------------------------------------------------------


def build_front_door(tkw: dict, lkw: dict, kind: str = DECODER, seed: int = 0):
    ref = build_reference(tkw, lkw, kind, seed)
    layers = (zeta_hf.Decoder if kind == DECODER else zeta_hf.Encoder)(**lkw)
    t = zeta_hf.Transformer(attn_layers=layers, **tkw)
    t.to_hf().load_state_dict(convert_state_dict(ref.state_dict(), t.config))
    return ref, t.eval()


FRONT_DOOR = {
    "abs": ({}, {}),
    "rotary": ({}, dict(rotary_pos_emb=True)),
    "alibi-abs-memkv2": ({}, dict(alibi_pos_bias=True, attn_num_mem_kv=2)),
    "t5-gqa2": ({}, dict(rel_pos_bias=True, attn_kv_heads=2)),
    "embdim32-postembnorm": (dict(emb_dim=32, post_emb_norm=True), {}),
}


def _front_cases(names=None):
    return [
        pytest.param(name, kind, id=f"{name}-{kind}") for name in (names or FRONT_DOOR) for kind in BOTH
    ]


def _front_kwargs(name):
    tkw, lkw = FRONT_DOOR[name]
    return {**BASE_TRANSFORMER, **tkw}, {**BASE_LAYERS, **lkw}


@pytest.mark.parametrize("name, kind", _front_cases())
def test_front_door_logits_and_embeddings(name, kind):
    tkw, lkw = _front_kwargs(name)
    ref, t = build_front_door(tkw, lkw, kind)
    x = tokens(tkw["num_tokens"], seed=9)
    with torch.no_grad():
        assert_close(t(x), ref(x))
        assert_close(t(x, return_embeddings=True), ref(x, return_embeddings=True), "embeddings")
        logits, emb = t(x, return_logits_and_embeddings=True)
        ref_logits, ref_emb = ref(x, return_logits_and_embeddings=True)
    assert_close(logits, ref_logits)
    assert_close(emb, ref_emb, "embeddings")
    assert emb.shape == (BATCH, SEQ, lkw["dim"])


@pytest.mark.parametrize("name, kind", _front_cases())
def test_front_door_return_attn(name, kind):
    tkw, lkw = _front_kwargs(name)
    ref, t = build_front_door(tkw, lkw, kind)
    x = tokens(tkw["num_tokens"], seed=10)
    with torch.no_grad():
        logits, maps = t(x, return_attn=True)
        ref_logits, ref_maps = ref(x, return_attn=True)
    assert_close(logits, ref_logits)
    assert len(maps) == len(ref_maps) == lkw["depth"]
    # grouped-query heads are reordered on import (transformers' grouping), so the maps come in that order
    perm = head_permutation(t.config)
    for i, (m, r) in enumerate(zip(maps, ref_maps)):
        assert_close(m, r if perm is None else r[:, perm], f"attention map {i}")
        assert torch.allclose(m.sum(-1), torch.ones(()), atol=1e-5)


@pytest.mark.parametrize("kind", BOTH)
def test_front_door_return_attn_memory_tokens_and_mems(kind):
    """With memory tokens ours drops their query rows (keys stay); with mems the maps span mem + sequence keys."""
    tkw = {**BASE_TRANSFORMER, "num_memory_tokens": 3}
    lkw = {**BASE_LAYERS, "rotary_pos_emb": True}
    ref, t = build_front_door(tkw, lkw, kind)
    x = tokens(tkw["num_tokens"], seed=11)
    mems = random_mems(lkw["depth"], lkw["dim"], seed=11)
    with torch.no_grad():
        for kw in ({}, {"mems": mems}):
            _, maps = t(x, return_attn=True, **kw)
            _, ref_maps = ref(x, return_attn=True, **kw)
            for i, (m, r) in enumerate(zip(maps, ref_maps)):
                assert_close(m, r[:, :, 3:], f"attention map {i} {list(kw)}")


@pytest.mark.parametrize("name, kind", _front_cases(["abs", "rotary", "t5-gqa2"]))
def test_front_door_return_mems(name, kind):
    tkw, lkw = _front_kwargs(name)
    ref, t = build_front_door(tkw, lkw, kind)
    x = tokens(tkw["num_tokens"], seed=12)
    mems = random_mems(lkw["depth"], lkw["dim"], seed=12)
    with torch.no_grad():
        for kw in ({}, {"mems": mems}):
            logits, new_mems = t(x, return_mems=True, **kw)
            ref_logits, ref_new_mems = ref(x, return_mems=True, **kw)
            assert_close(logits, ref_logits)
            _assert_mems(new_mems, ref_new_mems)


@pytest.mark.parametrize("name, kind", _front_cases(["abs", "rotary", "embdim32-postembnorm"]))
def test_front_door_sum_embeds(name, kind):
    tkw, lkw = _front_kwargs(name)
    ref, t = build_front_door(tkw, lkw, kind)
    x = tokens(tkw["num_tokens"], seed=13)
    emb_dim = tkw.get("emb_dim", lkw["dim"])
    sum_embeds = torch.randn(BATCH, SEQ, emb_dim, generator=torch.Generator().manual_seed(13))
    with torch.no_grad():
        got, expected = t(x, sum_embeds=sum_embeds), ref(x, sum_embeds=sum_embeds)
        assert (expected - ref(x)).abs().max().item() > 1e-3
    assert_close(got, expected)


PREPEND = 4


@pytest.mark.parametrize("name, kind", _front_cases(["abs", "rotary", "alibi-abs-memkv2", "embdim32-postembnorm"]))
def test_front_door_prepend_embeds(name, kind):
    tkw, lkw = _front_kwargs(name)
    ref, t = build_front_door(tkw, lkw, kind)
    x = tokens(tkw["num_tokens"], seed=14)
    emb_dim = tkw.get("emb_dim", lkw["dim"])
    prepend = torch.randn(BATCH, PREPEND, emb_dim, generator=torch.Generator().manual_seed(14))
    with torch.no_grad():
        got, expected = t(x, prepend_embeds=prepend), ref(x, prepend_embeds=prepend)
        assert got.shape == (BATCH, PREPEND + SEQ, tkw["num_tokens"])
        assert_close(got, expected)
        mask = right_padding_mask(PREPEND + SEQ)
        got, expected = t(x, prepend_embeds=prepend, mask=mask), ref(x, prepend_embeds=prepend, mask=mask)
    assert_close(got[mask], expected[mask])


POSITION_CASES = [
    # x-transformers' sinusoidal embedding takes one position vector only (einsum 'i, j'), so no per-row positions
    pytest.param(extra, pos_kind, id=f"{name}-{pos_kind}")
    for name, extra in [("learned", {}), ("sinu", dict(scaled_sinu_pos_emb=True)), ("l2norm", dict(l2norm_embed=True))]
    for pos_kind in ("shifted-1d", "random-2d")
    if not (name == "sinu" and pos_kind == "random-2d")
]


@pytest.mark.parametrize("tkw_extra, pos_kind", POSITION_CASES)
def test_front_door_custom_positions(tkw_extra, pos_kind):
    tkw, lkw = {**BASE_TRANSFORMER, **tkw_extra}, dict(BASE_LAYERS)
    ref, t = build_front_door(tkw, lkw)
    x = tokens(tkw["num_tokens"], seed=15)
    if pos_kind == "shifted-1d":
        pos = torch.arange(SEQ) + 7
    else:
        pos = torch.randint(0, tkw["max_seq_len"], (BATCH, SEQ), generator=torch.Generator().manual_seed(15))
    with torch.no_grad():
        got, expected = t(x, pos=pos), ref(x, pos=pos)
        assert (expected - ref(x)).abs().max().item() > 1e-4
    assert_close(got, expected)


def test_front_door_external_float_positions():
    tkw, lkw = dict(BASE_TRANSFORMER), dict(BASE_LAYERS)
    ref, t = build_front_door(tkw, lkw)
    x = tokens(tkw["num_tokens"], seed=16)
    pos = torch.randn(BATCH, SEQ, lkw["dim"], generator=torch.Generator().manual_seed(16))
    with torch.no_grad():
        assert_close(t(x, pos=pos), ref(x, pos=pos))


# --------------------------------------------------------------------------------------------------------------------
# gradients (emb_frac_gradient only shows in the backward pass)
# --------------------------------------------------------------------------------------------------------------------


GRADIENT_CASES = [pytest.param("abs", kind, id=f"abs-{kind}") for kind in BOTH] + [
    pytest.param(name, DECODER, id=f"{name}-{DECODER}")
    for name in ("emb-frac-grad", "rotary-mem3", "gqa2-t5", "memkv2-alibi", "macaron-resattn-alibi")
]


@pytest.mark.parametrize("name, kind", GRADIENT_CASES)
def test_gradient_parity(name, kind):
    tkw, lkw = _kwargs(name)
    ref, ours = build_pair(tkw, lkw, kind)
    x = tokens(tkw["num_tokens"], seed=17)
    weight = torch.randn(BATCH, SEQ, tkw["num_tokens"], generator=torch.Generator().manual_seed(17))
    (ref(x) * weight).sum().backward()
    (ours(x, use_cache=False).logits * weight).sum().backward()
    ref_grads = {k: p.grad for k, p in ref.named_parameters()}
    assert all(g is not None for g in ref_grads.values())
    expected = convert_state_dict(ref_grads, ours.config)  # same renaming / head reordering as the weights
    ours_params = dict(ours.named_parameters())
    assert set(expected) == set(ours_params)
    for key, g in expected.items():
        assert ours_params[key].grad is not None, key
        assert_close(ours_params[key].grad, g, f"grad {key}", relative=True)


# --------------------------------------------------------------------------------------------------------------------
# 5. save_pretrained -> AutoModelForCausalLM.from_pretrained
# --------------------------------------------------------------------------------------------------------------------


ROUNDTRIP = ("abs", "rotary-mem3", "gqa2-t5", "tie", "xpos-base16", "memkv2-alibi", "l2norm-embed-embdim32-postembnorm")


@pytest.mark.parametrize("name, kind", [pytest.param(n, k, id=f"{n}-{k}") for n in ROUNDTRIP for k in OPTIONS[n][2]])
def test_save_pretrained_roundtrip(name, kind, tmp_path):
    from transformers import AutoModelForCausalLM

    tkw, lkw = _kwargs(name)
    ref, ours = build_pair(tkw, lkw, kind)
    ours.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is zeta_hf.ZetaForCausalLM
    x = tokens(tkw["num_tokens"], seed=18)
    mask = right_padding_mask()
    with torch.no_grad():
        assert_close(loaded(x, use_cache=False).logits, ref(x))
        got = loaded(x, attention_mask=mask, use_cache=False).logits
        assert_close(got[mask], ref(x, mask=mask)[mask])


# --------------------------------------------------------------------------------------------------------------------
# 6. options that logits alone do not cover: refusals, training-time layer dropout, initialisation
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", BOTH)
def test_rotary_with_value_dim_below_rotary_dim_is_refused(kind):
    """Zeta rotates values with the rotary dim (32 here): x-transformers crashes on smaller values, zeta_hf refuses."""
    tkw, lkw = dict(BASE_TRANSFORMER), {**BASE_LAYERS, "rotary_pos_emb": True, "attn_value_dim_head": 16}
    ref = build_reference(tkw, lkw, kind)
    with pytest.raises(RuntimeError):
        ref(tokens(tkw["num_tokens"]))
    with pytest.raises(ValueError, match="value_head_dim"):
        zeta_hf.convert_zeta_checkpoint(ref.state_dict(), zeta_kwargs(tkw, lkw, kind))
    with pytest.raises(ValueError, match="value_head_dim"):
        zeta_hf.Transformer(attn_layers=(zeta_hf.Decoder if kind == DECODER else zeta_hf.Encoder)(**lkw), **tkw)


LAYER_DROPOUT = {
    "plain": ({}, {}),
    "resi-dual-mem3": (dict(num_memory_tokens=3), dict(resi_dual=True)),
    "rotary-macaron": ({}, dict(rotary_pos_emb=True, macaron=True)),
}


@pytest.mark.parametrize("kind", BOTH)
@pytest.mark.parametrize("name", LAYER_DROPOUT)
def test_layer_dropout_training(name, kind):
    """In training, layer_dropout=1 skips every layer in both models (the only draw both RNGs agree on); in eval no
    layer is ever skipped (the eval logits are covered by the `layer-dropout0.3` option above)."""
    tkw, lkw = LAYER_DROPOUT[name]
    tkw, lkw = {**BASE_TRANSFORMER, **tkw}, {**BASE_LAYERS, **lkw, "layer_dropout": 1.0}
    ref, ours = build_pair(tkw, lkw, kind)
    ref.train()
    ours.train()
    x = tokens(tkw["num_tokens"], seed=19)
    with torch.no_grad():
        expected = ref(x)
        got = ours(x, use_cache=False).logits
        assert_close(got, expected)
        # skipping every layer leaves only embeddings -> final norm -> head: eval mode is a different function
        assert (ours.eval()(x, use_cache=False).logits - got).abs().max().item() > 1e-3


def _constant(t: torch.Tensor) -> bool:
    return bool((t == t.flatten()[0]).all())


INIT = {
    # id -> (Transformer kwargs, Decoder/Encoder kwargs): options whose effect is (also) on the initial weights
    "zero-init-branch": ({}, dict(zero_init_branch_output=True)),
    "zero-init-branch-glu-memkv2": ({}, dict(zero_init_branch_output=True, ff_glu=True, attn_num_mem_kv=2)),
    "deepnorm": ({}, dict(deepnorm=True)),
    "deepnorm-depth4-glu": ({}, dict(deepnorm=True, depth=4, ff_glu=True)),
    "gate-values": ({}, dict(attn_gate_values=True)),
    "head-scale-talking-heads": ({}, dict(attn_head_scale=True, attn_talking_heads=True)),
    "scale-residual-gru": ({}, dict(scale_residual=True, gate_residual=True)),
    "dynamic-log-norm": (
        {}, dict(dynamic_pos_bias=True, dynamic_pos_bias_norm=True, dynamic_pos_bias_log_distance=True)
    ),
    "resi-dual-value-dim16": ({}, dict(resi_dual=True, attn_value_dim_head=16)),
}


@pytest.mark.parametrize("name", INIT)
def test_fresh_init_matches_reference(name):
    """A freshly built zeta_hf model is initialised like Zeta: every tensor that Zeta initialises to a constant (zero
    output projections, open value gates, unit scales) has that constant, and random tensors have Zeta's spread."""
    tkw, lkw = INIT[name]
    tkw, lkw = {**BASE_TRANSFORMER, **tkw}, {**BASE_LAYERS, **lkw}
    torch.manual_seed(0)
    ref = x_transformers.TransformerWrapper(attn_layers=x_transformers.Decoder(**lkw), **tkw)
    torch.manual_seed(1)
    fresh = zeta_hf.Transformer(attn_layers=zeta_hf.Decoder(**lkw), **tkw).to_hf()
    expected = convert_state_dict(dict(ref.state_dict()), fresh.config)
    ours = fresh.state_dict()
    assert set(expected) <= set(ours)
    problems = []
    for key, want in expected.items():
        got = ours[key]
        if _constant(want):
            if not torch.equal(got, want):
                problems.append(f"{key}: Zeta initialises it to the constant {want.flatten()[0].item():g}, ours has "
                                f"values in [{got.min().item():.3g}, {got.max().item():.3g}]")
        elif _constant(got):
            problems.append(f"{key}: ours is the constant {got.flatten()[0].item():g}, Zeta's is random")
        elif want.numel() >= 64:  # the spread of fewer samples is too noisy to compare
            tol = 0.15 if want.numel() >= 1024 else 0.3
            ratio = got.std().item() / want.std().item()
            if abs(ratio - 1) > tol:
                problems.append(f"{key}: std {got.std().item():.4f} vs Zeta's {want.std().item():.4f}")
    assert not problems, "; ".join(problems)


@pytest.mark.parametrize("kind", BOTH)
def test_talking_heads_with_residual_attention_stays_finite(kind):
    """Residual attention carries the previous layer's masked scores into talking heads, whose head mixing can push a
    masked score past the float range; Zeta masks after mixing and stays finite. Mixing weights that sum below -1 on
    a row make the overflow certain rather than seed-dependent."""
    tkw, lkw = dict(BASE_TRANSFORMER), {**BASE_LAYERS, "attn_talking_heads": True, "residual_attn": True}
    ref = build_reference(tkw, lkw, kind)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith("pre_softmax_talking_heads.weight"):
                p.copy_(-0.5 + 0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    ours = zeta_hf.convert_zeta_checkpoint(ref.state_dict(), zeta_kwargs(tkw, lkw, kind))
    x, mask = tokens(tkw["num_tokens"], seed=20), right_padding_mask()
    with torch.no_grad():
        assert_close(ours(x, use_cache=False).logits, ref(x))
        assert_close(ours(x, attention_mask=mask, use_cache=False).logits[mask], ref(x, mask=mask)[mask])


# --------------------------------------------------------------------------------------------------------------------
# 7. cross-attention (`context` / `context_mask` in Zeta, `encoder_hidden_states` / `encoder_attention_mask` here)
# --------------------------------------------------------------------------------------------------------------------

CTX_LEN = 7

CROSS: dict[str, tuple[dict, dict, tuple[str, ...]]] = {
    "cross": ({}, dict(cross_attend=True), BOTH),
    "cross-memkv2-cross-resattn": ({}, dict(cross_attend=True, attn_num_mem_kv=2, cross_residual_attn=True), BOTH),
    "cross-resattn-both-rotary": (
        {}, dict(cross_attend=True, residual_attn=True, cross_residual_attn=True, rotary_pos_emb=True), BOTH
    ),
    "cross-gqa2-talking-heads-t5": (
        {}, dict(cross_attend=True, attn_kv_heads=2, attn_talking_heads=True, rel_pos_bias=True), BOTH
    ),
    "cross-zero-kv-gate-values-mem3": (
        dict(num_memory_tokens=3), dict(cross_attend=True, attn_add_zero_kv=True, attn_gate_values=True), BOTH
    ),
    "cross-sparse-topk3-qknorm": ({}, dict(cross_attend=True, attn_sparse_topk=3, attn_qk_norm=True), BOTH),
    "cross-value-dim16-head-scale-on-attn": (
        {}, dict(cross_attend=True, attn_value_dim_head=16, attn_head_scale=True, attn_on_attn=True), BOTH
    ),
    "cross-shift1-macaron-gru": ({}, dict(cross_attend=True, shift_tokens=1, macaron=True, gate_residual=True), BOTH),
    "cross-resi-dual-alibi": (
        dict(use_abs_pos_emb=False), dict(cross_attend=True, resi_dual=True, alibi_pos_bias=True), BOTH
    ),
    "cross-max-attend-past2": ({}, dict(cross_attend=True, attn_max_attend_past=2), BOTH),
    "cross-dynamic": ({}, dict(cross_attend=True, dynamic_pos_bias=True), BOTH),
    "only-cross": ({}, dict(cross_attend=True, only_cross=True), BOTH),
    "only-cross-memkv2-mem3-sandwich": (
        dict(num_memory_tokens=3), dict(cross_attend=True, only_cross=True, attn_num_mem_kv=2, sandwich_norm=True), BOTH
    ),
    # Zeta layouts with cross-attention blocks
    "cross-custom-layers-acfcf": ({}, dict(cross_attend=True, custom_layers=("a", "c", "f", "c", "f")), BOTH),
    "cross-sandwich-coef1-depth3": ({}, dict(cross_attend=True, depth=3, sandwich_coef=1), BOTH),
    "cross-par-ratio4-depth4": ({}, dict(cross_attend=True, depth=4, par_ratio=4), BOTH),
}
# dynamic position bias: x-transformers asserts i == j; only_cross: there is no self-attention to take mems
_CROSS_NO_MEMS = tuple(
    name for name, (_, lkw, _) in CROSS.items() if lkw.get("dynamic_pos_bias") or lkw.get("only_cross")
)


def _cross_cases(exclude: tuple[str, ...] = ()):
    return [
        pytest.param(name, kind, id=f"{name}-{kind}")
        for name, (_, _, kinds) in CROSS.items()
        if name not in exclude
        for kind in kinds
    ]


def _cross_kwargs(name: str) -> tuple[dict, dict]:
    tkw, lkw, _ = CROSS[name]
    return {**BASE_TRANSFORMER, **tkw}, {**BASE_LAYERS, **lkw}


def context_inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder states (b, 7, dim) and their mask: row 0 has two padded context positions at the end."""
    context = torch.randn(BATCH, CTX_LEN, BASE_LAYERS["dim"], generator=torch.Generator().manual_seed(300 + seed))
    context_mask = torch.ones(BATCH, CTX_LEN, dtype=torch.bool)
    context_mask[0, -2:] = False
    return context, context_mask


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("name, kind", _cross_cases())
def test_cross_attention_parity(name, kind, attn_implementation):
    tkw, lkw = _cross_kwargs(name)
    ref, ours = build_pair(tkw, lkw, kind)
    ours.set_attn_implementation(attn_implementation)
    x = tokens(tkw["num_tokens"], seed=21)
    context, context_mask = context_inputs()
    with torch.no_grad():
        expected = ref(x, context=context)
        got = ours(x, encoder_hidden_states=context, use_cache=False).logits
        assert_nontrivial(expected)
        assert_close(got, expected)
        expected_masked = ref(x, context=context, context_mask=context_mask)
        got_masked = ours(x, encoder_hidden_states=context, encoder_attention_mask=context_mask, use_cache=False).logits
        assert_close(got_masked, expected_masked, "logits with context_mask")
        # the context and its mask both matter
        assert (expected_masked[0] - expected[0]).abs().max().item() > 1e-4
        other = ref(x, context=context_inputs(seed=1)[0])
        assert (other - expected).abs().max().item() > 1e-4


@pytest.mark.parametrize("name, kind", _cross_cases())
def test_cross_attention_right_padding_parity(name, kind):
    tkw, lkw = _cross_kwargs(name)
    ref, ours = build_pair(tkw, lkw, kind)
    x = tokens(tkw["num_tokens"], seed=22)
    mask = right_padding_mask()
    context, context_mask = context_inputs(seed=2)
    with torch.no_grad():
        expected = ref(x, mask=mask, context=context, context_mask=context_mask)
        got = ours(x, attention_mask=mask, encoder_hidden_states=context, encoder_attention_mask=context_mask,
                   use_cache=False).logits
    assert_close(got[mask], expected[mask])


@pytest.mark.parametrize("name, kind", _cross_cases(exclude=_CROSS_NO_MEMS))
def test_cross_attention_xl_mems_parity(name, kind):
    tkw, lkw = _cross_kwargs(name)
    ref, ours = build_pair(tkw, lkw, kind)
    x = tokens(tkw["num_tokens"], seed=23)
    mems = random_mems(num_attn_layers(ours), lkw["dim"], seed=23)
    context, context_mask = context_inputs(seed=3)
    with torch.no_grad():
        expected, expected_mems = ref(x, mems=mems, return_mems=True, context=context, context_mask=context_mask)
        out = ours(x, mems=mems, output_mems=True, encoder_hidden_states=context, encoder_attention_mask=context_mask,
                   use_cache=False)
        without = ref(x, context=context, context_mask=context_mask)
    assert_close(out.logits, expected)
    _assert_mems(out.mems, expected_mems)
    assert (without - expected).abs().max().item() > 1e-4


@pytest.mark.parametrize("kind", BOTH)
def test_cross_attention_front_door(kind):
    """`Transformer(...)(x, context=..., context_mask=...)` as in Zeta, and a cross model refuses to run without it."""
    tkw, lkw = _cross_kwargs("cross-memkv2-cross-resattn")
    ref, t = build_front_door(tkw, lkw, kind)
    x = tokens(tkw["num_tokens"], seed=24)
    context, context_mask = context_inputs(seed=4)
    mask = right_padding_mask()
    with torch.no_grad():
        expected = ref(x, context=context, context_mask=context_mask)
        assert_close(t(x, context=context, context_mask=context_mask), expected)
        got = t(x, mask=mask, context=context, context_mask=context_mask)
        assert_close(got[mask], ref(x, mask=mask, context=context, context_mask=context_mask)[mask])
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        t(x)


# --------------------------------------------------------------------------------------------------------------------
# 8. the front door's `return_intermediates` against x-transformers' `LayerIntermediates`
# --------------------------------------------------------------------------------------------------------------------

INTERMEDIATES = {
    # id -> (Transformer kwargs, Decoder/Encoder kwargs, mems allowed)
    "abs": ({}, {}, True),
    "rotary-mem3": (dict(num_memory_tokens=3), dict(rotary_pos_emb=True), True),
    "t5-gqa2": ({}, dict(rel_pos_bias=True, attn_kv_heads=2), True),  # (x-transformers crashes on GQA + mem kv)
    "custom-layers-aafaff-shift1": ({}, dict(custom_layers=("a", "a", "f", "a", "f", "f"), shift_tokens=1), True),
    "resi-dual-talking-heads-zero-kv": ({}, dict(resi_dual=True, attn_talking_heads=True, attn_add_zero_kv=True), True),
    "dynamic-mem3": (dict(num_memory_tokens=3), dict(dynamic_pos_bias=True), False),
    "cross-memkv2-mem3": (dict(num_memory_tokens=3), dict(cross_attend=True, attn_num_mem_kv=2), True),
    "only-cross": ({}, dict(cross_attend=True, only_cross=True), False),
}


@pytest.mark.parametrize(
    "name, kind", [pytest.param(name, kind, id=f"{name}-{kind}") for name in INTERMEDIATES for kind in BOTH]
)
def test_front_door_return_intermediates(name, kind):
    """`hiddens` (the residual stream entering every self-attention layer, memory tokens included) equal Zeta's, the
    attention maps equal Zeta's post-softmax maps (memory-token query rows dropped, grouped heads in our order), and
    `layer_hiddens` (inputs of every layer) equal Zeta's without the memory-token rows."""
    tkw, lkw, with_mems = INTERMEDIATES[name]
    tkw, lkw = {**BASE_TRANSFORMER, **tkw}, {**BASE_LAYERS, **lkw}
    ref, t = build_front_door(tkw, lkw, kind)
    x = tokens(tkw["num_tokens"], seed=25)
    extra = {}
    if lkw.get("cross_attend"):
        context, context_mask = context_inputs(seed=5)
        extra = dict(context=context, context_mask=context_mask)
    n_mem = tkw.get("num_memory_tokens", 0)
    perm = head_permutation(t.config)
    runs = [{}]
    if with_mems:
        runs.append({"mems": random_mems(t.config.num_attention_layers, lkw["dim"], seed=25)})
    for kw in runs:
        with torch.no_grad():
            logits, inter = t(x, return_intermediates=True, **kw, **extra)
            ref_logits, ref_inter = ref(x, return_intermediates=True, **kw, **extra)
        assert_close(logits, ref_logits)
        assert len(inter.hiddens) == len(ref_inter.hiddens) == t.config.num_attention_layers
        for i, (h, r) in enumerate(zip(inter.hiddens, ref_inter.hiddens)):
            assert_close(h, r, f"hiddens[{i}] {list(kw)}")
        ref_maps = [a.post_softmax_attn for a in ref_inter.attn_intermediates]
        assert len(inter.attn_maps) == len(ref_maps) == sum(kind != "ff" for kind in t.config.layer_pattern)
        for i, (m, r) in enumerate(zip(inter.attn_maps, ref_maps)):
            assert_close(m, (r if perm is None else r[:, perm])[:, :, n_mem:], f"attn_maps[{i}] {list(kw)}")
        assert len(inter.layer_hiddens) == len(ref_inter.layer_hiddens) == len(t.config.layer_pattern) + 1
        for i, (h, r) in enumerate(zip(inter.layer_hiddens[:-1], ref_inter.layer_hiddens[:-1])):
            assert_close(h, r[:, n_mem:], f"layer_hiddens[{i}] {list(kw)}")


@pytest.mark.parametrize("kind", BOTH)
def test_only_cross_xl_recurrence(kind):
    """Without self-attention Zeta returns an empty mems list, and an XL loop feeds that list back unchanged."""
    tkw, lkw = _cross_kwargs("only-cross")
    ref, ours = build_pair(tkw, lkw, kind)
    x = tokens(tkw["num_tokens"], seed=26)
    context, context_mask = context_inputs(seed=6)
    with torch.no_grad():
        expected, ref_mems = ref(x, context=context, context_mask=context_mask, return_mems=True)
        out = ours(x, encoder_hidden_states=context, encoder_attention_mask=context_mask, output_mems=True,
                   use_cache=False)
        assert ref_mems == [] and out.mems == []
        assert_close(out.logits, expected)
        expected2 = ref(x, mems=ref_mems, context=context, context_mask=context_mask)
        got2 = ours(x, mems=out.mems, encoder_hidden_states=context, encoder_attention_mask=context_mask,
                    use_cache=False).logits
    assert_close(got2, expected2, "logits with the (empty) mems fed back")
