"""Numerical parity with x-transformers 2.x (the real `x-transformers==2.31.10`), the library most people train with.

1.19.0 is installed in the test environment (it is the Zeta oracle), so 2.31.10 lives in its own folder: `.ci/run`
installs it with `pip install --target .xt2` (override with `ZETA_HF_XT2_PATH`; missing, it fails under `CI=true` or
`ZETA_HF_REQUIRE_XT2=1`, which .ci/run sets, and skips otherwise), and one child process with that
folder first on `sys.path` builds every reference model at once. The child (`CHILD` below) builds
`TransformerWrapper(**kwargs)` per case with a fixed seed, moves default-initialised parameters off their init, and
saves the state dict, logits (plain and right-padded) and its own greedy generation with `torch.save`; the parent
loads that with `weights_only=True`, converts with `source="xtransformers-2"` and compares (1e-5 in float32).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

import zeta_hf
from zeta_hf.convert_zeta import config_from_xtransformers2_kwargs, convert_zeta_checkpoint, detect_source

ROOT = Path(__file__).resolve().parents[1]
XT2_VERSION = "2.31.10"
ATOL = 1e-5
BATCH, SEQ, PAD = 2, 12, 3
BASE_TRANSFORMER = dict(num_tokens=64, max_seq_len=32)
BASE_LAYERS = dict(dim=32, depth=2, heads=4, attn_dim_head=16)
DECODER, ENCODER = "Decoder", "Encoder"
BOTH = (DECODER, ENCODER)

# id -> (TransformerWrapper kwargs, Decoder/Encoder kwargs, kinds the option allows)
OPTIONS: dict[str, tuple[dict, dict, tuple[str, ...]]] = {
    # absolute positions
    "abs": ({}, {}, BOTH),
    "sinu": (dict(scaled_sinu_pos_emb=True), {}, BOTH),
    "nopos": (dict(use_abs_pos_emb=False), {}, BOTH),
    "disable-abs": ({}, dict(disable_abs_pos_emb=True), BOTH),
    # rotary: interleaved pairs in 2.x, reordered into zeta_hf's halves by the converter
    "rotary": ({}, dict(rotary_pos_emb=True), BOTH),
    "rotary-dim12": ({}, dict(rotary_pos_emb=True, rotary_emb_dim=12), BOTH),
    "rotary-dim16": ({}, dict(rotary_pos_emb=True, rotary_emb_dim=16), BOTH),
    "rotary-interp2-ntk4": ({}, dict(rotary_pos_emb=True, rotary_interpolation_factor=2.0,
                                     rotary_base_rescale_factor=4.0), BOTH),
    "xpos": ({}, dict(rotary_xpos=True, rotary_xpos_scale_base=16), (DECODER,)),
    # biases
    "alibi": (dict(use_abs_pos_emb=False), dict(alibi_pos_bias=True), BOTH),
    "alibi-abs": ({}, dict(alibi_pos_bias=True), BOTH),
    "alibi-heads2": (dict(use_abs_pos_emb=False), dict(alibi_pos_bias=True, alibi_num_heads=2), BOTH),
    "t5": ({}, dict(rel_pos_bias=True, rel_pos_num_buckets=8, rel_pos_max_distance=16), BOTH),
    "dynamic": ({}, dict(dynamic_pos_bias=True), BOTH),
    "dynamic-log-depth3-mem3": (dict(num_memory_tokens=3, use_abs_pos_emb=False),
                                dict(dynamic_pos_bias=True, dynamic_pos_bias_log_distance=True,
                                     dynamic_pos_bias_mlp_depth=3), BOTH),
    # norms (2.x: bias-less LayerNorm, gains stored as offsets from 1 unless norm_add_unit_offset=False)
    "layernorm-no-offset": ({}, dict(norm_add_unit_offset=False), BOTH),
    "rmsnorm": ({}, dict(use_rmsnorm=True), BOTH),
    "rmsnorm-no-offset": ({}, dict(use_rmsnorm=True, norm_add_unit_offset=False), BOTH),
    "simple-rmsnorm": ({}, dict(use_simple_rmsnorm=True), BOTH),
    "scalenorm": ({}, dict(use_scalenorm=True), BOTH),
    "scalenorm-no-offset": ({}, dict(use_scalenorm=True, norm_add_unit_offset=False), BOTH),
    "postnorm": ({}, dict(pre_norm=False), BOTH),
    "postnorm-rmsnorm": ({}, dict(pre_norm=False, use_rmsnorm=True), BOTH),
    "sandwich": ({}, dict(sandwich_norm=True), BOTH),
    "sandwich-scalenorm": ({}, dict(sandwich_norm=True, use_scalenorm=True), BOTH),
    # attention
    "gqa2": ({}, dict(attn_kv_heads=2), BOTH),
    "gqa2-rotary": ({}, dict(attn_kv_heads=2, rotary_pos_emb=True), BOTH),
    "mqa": ({}, dict(attn_one_kv_head=True), BOTH),
    "mqa-alibi": (dict(use_abs_pos_emb=False), dict(attn_one_kv_head=True, alibi_pos_bias=True), BOTH),
    "qknorm": ({}, dict(attn_qk_norm=True), BOTH),
    "qknorm-groups2-scale5": ({}, dict(attn_qk_norm=True, attn_qk_norm_groups=2, attn_qk_norm_scale=5), BOTH),
    "qknorm-rotary-gqa2": ({}, dict(attn_qk_norm=True, rotary_pos_emb=True, attn_kv_heads=2), BOTH),
    "memkv2": ({}, dict(attn_num_mem_kv=2), BOTH),
    "memkv2-rotary": ({}, dict(attn_num_mem_kv=2, rotary_pos_emb=True), BOTH),
    "memkv2-qknorm-gqa2": ({}, dict(attn_num_mem_kv=2, attn_qk_norm=True, attn_kv_heads=2), BOTH),
    "talking-heads": ({}, dict(attn_pre_talking_heads=True, attn_post_talking_heads=True), BOTH),
    "talking-heads-resattn-gqa2": (
        {}, dict(attn_pre_talking_heads=True, attn_post_talking_heads=True, residual_attn=True, attn_kv_heads=2), BOTH
    ),
    "head-scale": ({}, dict(attn_head_scale=True), BOTH),
    "gate-values": ({}, dict(attn_gate_values=True), BOTH),
    "gate-values-head-scale-gqa2": ({}, dict(attn_gate_values=True, attn_head_scale=True, attn_kv_heads=2), BOTH),
    "on-attn": ({}, dict(attn_on_attn=True), BOTH),
    "zero-kv": ({}, dict(attn_add_zero_kv=True), BOTH),
    "value-dim8": ({}, dict(attn_value_dim_head=8), BOTH),
    "flash": ({}, dict(attn_flash=True), BOTH),
    "max-attend-past3": ({}, dict(attn_max_attend_past=3), BOTH),
    "max-attend-past2-rotary-mem3": (
        dict(num_memory_tokens=3), dict(attn_max_attend_past=2, rotary_pos_emb=True), BOTH
    ),
    "sparse-topk4": ({}, dict(attn_sparse_topk=4), BOTH),
    "sparse-topk3-alibi": (dict(use_abs_pos_emb=False), dict(attn_sparse_topk=3, alibi_pos_bias=True), BOTH),
    # feedforward
    "geglu": ({}, dict(ff_glu=True), BOTH),
    "swiglu": ({}, dict(ff_glu=True, ff_swish=True), BOTH),
    "swish": ({}, dict(ff_swish=True), BOTH),
    "relu2": ({}, dict(ff_relu_squared=True), BOTH),
    "post-act-ln": ({}, dict(ff_post_act_ln=True), BOTH),
    "nobias-mult2": ({}, dict(ff_no_bias=True, ff_mult=2), BOTH),
    "glu-nobias": ({}, dict(ff_glu=True, ff_swish=True, ff_no_bias=True), BOTH),
    # residual structure
    "macaron": ({}, dict(macaron=True), BOTH),
    "resattn": ({}, dict(residual_attn=True), BOTH),
    "resattn-alibi-macaron": (dict(use_abs_pos_emb=False), dict(residual_attn=True, alibi_pos_bias=True, macaron=True),
                              BOTH),
    "scale-residual": ({}, dict(scale_residual=True), BOTH),
    "scale-residual-const0.7": ({}, dict(scale_residual=True, scale_residual_constant=0.7), BOTH),
    "gru": ({}, dict(gate_residual=True), BOTH),
    "shift1": ({}, dict(shift_tokens=1), BOTH),
    "shift2-macaron-mem3": (dict(num_memory_tokens=3), dict(shift_tokens=2, macaron=True), BOTH),
    # layouts
    "custom-layers-aaff": ({}, dict(custom_layers=("a", "a", "f", "f")), BOTH),
    "par-ratio2-depth4": ({}, dict(depth=4, par_ratio=2), BOTH),
    "sandwich-coef1-depth3": ({}, dict(depth=3, sandwich_coef=1), BOTH),
    # embeddings and head
    "embdim16": (dict(emb_dim=16), {}, BOTH),
    "embdim16-sinu": (dict(emb_dim=16, scaled_sinu_pos_emb=True), {}, BOTH),
    "post-emb-norm": (dict(post_emb_norm=True), {}, BOTH),
    "l2norm-embed": (dict(l2norm_embed=True), {}, BOTH),
    "l2norm-embed-post-emb-norm-embdim16": (dict(l2norm_embed=True, post_emb_norm=True, emb_dim=16), {}, BOTH),
    "emb-frac-grad": (dict(emb_frac_gradient=0.25), {}, BOTH),
    "tie": (dict(tie_embedding=True), {}, BOTH),
    "tie-scale0.5": (dict(tie_embedding=True, tie_embedding_scale=0.5), {}, BOTH),
    "logits-dim10": (dict(logits_dim=10), {}, BOTH),
    # memory tokens
    "mem3": (dict(num_memory_tokens=3), {}, BOTH),
    "mem3-rotary": (dict(num_memory_tokens=3), dict(rotary_pos_emb=True), BOTH),
    "mem3-alibi": (dict(num_memory_tokens=3, use_abs_pos_emb=False), dict(alibi_pos_bias=True), BOTH),
    # what people train today
    "llama-like": (
        dict(tie_embedding=True),
        dict(rotary_pos_emb=True, use_rmsnorm=True, attn_kv_heads=2, ff_glu=True, ff_swish=True, ff_no_bias=True,
             attn_qk_norm=True),
        BOTH,
    ),
    "palm-like": (
        dict(use_abs_pos_emb=False),
        dict(rotary_pos_emb=True, rotary_emb_dim=8, attn_one_kv_head=True, ff_glu=True, ff_swish=True, ff_no_bias=True,
             norm_add_unit_offset=False, attn_num_mem_kv=2),
        BOTH,
    ),
    "xpos-swiglu-mem3-sandwich": (
        dict(num_memory_tokens=3), dict(rotary_xpos=True, ff_glu=True, ff_swish=True, sandwich_norm=True), (DECODER,)
    ),
    "alibi-gqa-scalenorm-tie-postembnorm": (
        dict(use_abs_pos_emb=False, tie_embedding=True, post_emb_norm=True),
        dict(alibi_pos_bias=True, attn_one_kv_head=True, use_scalenorm=True, attn_head_scale=True), BOTH,
    ),
}

CASES = [(name, kind) for name, (_, _, kinds) in OPTIONS.items() for kind in kinds]
# the one a user converts with `zeta-hf convert`: a checkpoint file, then greedy generation on both sides
GENERATE_CASE = "llama-like"
# more decoders whose greedy generation is compared with 2.x's (in-process conversion)
GENERATE_MORE = ("palm-like", "xpos-swiglu-mem3-sandwich", "alibi-gqa-scalenorm-tie-postembnorm", "mem3-rotary")
PROMPT_LEN, NEW_TOKENS = 5, 8


def case_kwargs(name: str, kind: str) -> dict:
    tkw, lkw, _ = OPTIONS[name]
    return {**BASE_TRANSFORMER, **tkw, "attn_layers": {"type": kind, **BASE_LAYERS, **lkw}}


def tokens(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, BASE_TRANSFORMER["num_tokens"], (BATCH, SEQ), generator=torch.Generator().manual_seed(seed))


def padding_mask() -> torch.Tensor:
    mask = torch.ones(BATCH, SEQ, dtype=torch.bool)
    mask[1, -PAD:] = False  # right padding (x-transformers counts positions by index, as zeta_hf does on the right)
    return mask


# --------------------------------------------------------------------------------------------------------------------
# the 2.x child process
# --------------------------------------------------------------------------------------------------------------------

# Runs with the 2.31.10 folder first on sys.path; reads a request, writes plain tensors / dicts with torch.save.
CHILD = textwrap.dedent(
    """
    import sys
    from importlib.metadata import version

    import torch
    import x_transformers
    from x_transformers import AutoregressiveWrapper, Decoder, Encoder, TransformerWrapper

    torch.set_num_threads(1)
    request = torch.load(sys.argv[1], weights_only=True)


    def build(kwargs, seed):
        kwargs = dict(kwargs)
        layer_kwargs = dict(kwargs.pop("attn_layers"))
        kind = {"Decoder": Decoder, "Encoder": Encoder}[layer_kwargs.pop("type")]
        torch.manual_seed(seed)
        model = TransformerWrapper(attn_layers=kind(verbose=False, **layer_kwargs), **kwargs)
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():  # move every default-initialised tensor (gains, offsets, dirac mixers, zero gates) off it
            for p in model.parameters():
                if p.numel() == 1:
                    p.fill_(0.5 + torch.rand((), generator=g).item())
                elif p.dim() != 2 or not p.any():
                    p.mul_(1 + 0.3 * torch.randn(p.shape, generator=g)).add_(0.2 * torch.randn(p.shape, generator=g))
        return model.eval()


    results = {"file": x_transformers.__file__, "version": version("x-transformers"), "cases": {}}
    ids, mask = request["ids"], request["mask"]
    with torch.no_grad():
        for key, kwargs in request["cases"].items():
            model = build(kwargs, request["seed"])
            results["cases"][key] = {
                "kwargs": kwargs, "state": model.state_dict(), "logits": model(ids),
                "masked_logits": model(ids, mask=mask),
            }
        gen = request["generate"]
        model = build(gen["kwargs"], request["seed"])
        torch.save(model.state_dict(), gen["checkpoint"])
        wrapper = AutoregressiveWrapper(model)
        results["generated"] = wrapper.generate(gen["prompt"], gen["new_tokens"], temperature=0.0)
        results["generated_uncached"] = wrapper.generate(gen["prompt"], gen["new_tokens"], temperature=0.0,
                                                         cache_kv=False)
        results["generated_more"] = {
            key: AutoregressiveWrapper(build(kwargs, request["seed"])).generate(
                gen["prompt"], gen["new_tokens"], temperature=0.0
            )
            for key, kwargs in gen["more"].items()
        }
    torch.save(results, sys.argv[2])
    """
)


def xt2_path() -> Path:
    """The folder holding x-transformers 2.31.10 (`.ci/run` installs it); missing is a failure in CI."""
    path = Path(os.environ.get("ZETA_HF_XT2_PATH", ROOT / ".xt2"))
    if not (path / "x_transformers").is_dir():
        message = (
            f"x-transformers {XT2_VERSION} is not installed in {path}: run `pip install --no-deps --target {path} "
            f"x-transformers=={XT2_VERSION} einx loguru torch-einops-utils frozendict` (see .ci/run) or set "
            "ZETA_HF_XT2_PATH."
        )
        required = (os.environ.get(name, "").lower() in ("1", "true", "yes") for name in ("CI", "ZETA_HF_REQUIRE_XT2"))
        if any(required):
            pytest.fail(message)
        pytest.skip(message)
    return path


def run_xt2_child(request: dict, tmp: Path) -> dict:
    """Run `CHILD` on `request` with x-transformers 2.x first on the path; return what it saved."""
    request_file, result_file = tmp / "request.pt", tmp / "result.pt"
    torch.save(request, request_file)
    env = {**os.environ, "PYTHONPATH": str(xt2_path()), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(request_file), str(result_file)], env=env, cwd=tmp,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"x-transformers 2.x child failed:\n{proc.stderr[-4000:]}"
    return torch.load(result_file, weights_only=True)


@pytest.fixture(scope="module")
def oracle(tmp_path_factory) -> dict:
    """Every case built once per test session by x-transformers 2.31.10, in one child process.

    Under pytest-xdist every worker sets this fixture up: the first runs the child into the session's shared
    temporary folder, the others wait on a file lock and read its result.
    """
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    tmp = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "xt2_oracle"
    tmp.mkdir(exist_ok=True)
    prompt = tokens(seed=7)[:, :PROMPT_LEN]
    with FileLock(str(tmp / "lock")):
        if (tmp / "result.pt").exists():
            result = torch.load(tmp / "result.pt", weights_only=True)
        else:
            request = {
                "seed": 0,
                "ids": tokens(),
                "mask": padding_mask(),
                "cases": {f"{name}-{kind}": case_kwargs(name, kind) for name, kind in CASES},
                "generate": {"kwargs": case_kwargs(GENERATE_CASE, DECODER), "checkpoint": str(tmp / "xt2_model.pt"),
                             "prompt": prompt, "new_tokens": NEW_TOKENS,
                             "more": {name: case_kwargs(name, DECODER) for name in GENERATE_MORE}},
            }
            result = run_xt2_child(request, tmp)
    result.update(tmp=tmp, prompt=prompt)
    return result


def assert_close(got: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert got.shape == expected.shape, f"{what}: shape {tuple(got.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(got).all() and torch.isfinite(expected).all(), f"{what}: non-finite values"
    err = (got - expected).abs().max().item()
    assert err <= ATOL, f"{what}: max abs error {err:.3e} > {ATOL}"


# --------------------------------------------------------------------------------------------------------------------
# parity
# --------------------------------------------------------------------------------------------------------------------


def test_oracle_is_xtransformers_2(oracle):
    assert oracle["version"] == XT2_VERSION
    assert oracle["file"].startswith(str(xt2_path())), oracle["file"]


@pytest.mark.parametrize("name, kind", CASES, ids=[f"{n}-{k.lower()}" for n, k in CASES])
def test_logits_parity(oracle, name, kind):
    """Logits equal 2.x's, with and without a padding mask (padded positions excluded), sdpa and eager; a converted
    decoder generates the same tokens with and without the KV cache."""
    ref = oracle["cases"][f"{name}-{kind}"]
    kwargs = case_kwargs(name, kind)
    assert ref["kwargs"] == kwargs  # what 2.x built is what gets converted
    model = convert_zeta_checkpoint(ref["state"], kwargs, source="xtransformers-2", source_version=XT2_VERSION)
    assert model.config.converted_from == f"x-transformers {XT2_VERSION}"
    ids, mask = tokens(), padding_mask()
    assert ref["logits"].abs().max() > 0.05 and ref["logits"].std() > 1e-3  # not a vacuous comparison
    with torch.no_grad():
        assert_close(model(ids, use_cache=False).logits, ref["logits"], "logits")
        masked = model(ids, attention_mask=mask, use_cache=False).logits
        assert_close(masked[mask], ref["masked_logits"][mask], "padded logits")
        model.set_attn_implementation("eager")
        assert_close(model(ids, use_cache=False).logits, ref["logits"], "eager logits")
        model.set_attn_implementation("sdpa")
    if kind == ENCODER:  # the mask matters: unpadded positions of an encoder see the padded ones without it
        assert (ref["masked_logits"][1, : SEQ - PAD] - ref["logits"][1, : SEQ - PAD]).abs().max() > 1e-4
    else:
        assert model.config.supports_cache
        cached = model.generate(ids[:, :4], max_new_tokens=6, do_sample=False)
        uncached = model.generate(ids[:, :4], max_new_tokens=6, do_sample=False, use_cache=False)
        assert cached.tolist() == uncached.tolist()


def test_cli_converted_checkpoint_generates_like_xtransformers(oracle, tmp_path):
    """`zeta-hf convert --source xtransformers-2` on a 2.x checkpoint file: the folder's greedy `generate` gives the
    tokens 2.x's own `AutoregressiveWrapper.generate(temperature=0.)` gives (cached and uncached)."""
    from transformers import AutoModelForCausalLM

    from zeta_hf.cli import main

    kwargs_file = tmp_path / "kwargs.json"
    kwargs_file.write_text(json.dumps(case_kwargs(GENERATE_CASE, DECODER)))
    out = tmp_path / "converted"
    main(["convert", "--checkpoint", str(oracle["tmp"] / "xt2_model.pt"), "--kwargs", str(kwargs_file),
          "--output-dir", str(out), "--source", "xtransformers-2", "--source-version", XT2_VERSION])
    assert json.loads((out / "config.json").read_text())["converted_from"] == f"x-transformers {XT2_VERSION}"

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert isinstance(model, zeta_hf.ZetaForCausalLM)
    prompt = oracle["prompt"]
    generated = model.generate(prompt, max_new_tokens=NEW_TOKENS, do_sample=False)[:, PROMPT_LEN:]
    assert oracle["generated"].tolist() == oracle["generated_uncached"].tolist()
    assert generated.tolist() == oracle["generated"].tolist()
    uncached = model.generate(prompt, max_new_tokens=NEW_TOKENS, do_sample=False, use_cache=False)[:, PROMPT_LEN:]
    assert uncached.tolist() == oracle["generated"].tolist()


@pytest.mark.parametrize("name", GENERATE_MORE)
def test_greedy_generation_equals_xtransformers(oracle, name):
    """Greedy tokens of a converted decoder equal 2.x's `AutoregressiveWrapper.generate(temperature=0.)` (2.x decodes
    memory-token models without its cache; zeta_hf caches them)."""
    model = convert_zeta_checkpoint(oracle["cases"][f"{name}-{DECODER}"]["state"], case_kwargs(name, DECODER),
                                    source="xtransformers-2")
    generated = model.generate(oracle["prompt"], max_new_tokens=NEW_TOKENS, do_sample=False)[:, PROMPT_LEN:]
    assert generated.tolist() == oracle["generated_more"][name].tolist()


def test_converted_folder_loads_as_remote_code(oracle, tmp_path):
    """The converted folder runs with `trust_remote_code=True` where zeta_hf cannot be imported, with the same logits
    and the greedy tokens of x-transformers 2.x."""
    from conftest import run_without_zeta_hf
    from test_remote_code import CHILD

    key = f"{GENERATE_CASE}-{DECODER}"
    model = convert_zeta_checkpoint(oracle["cases"][key]["state"], case_kwargs(GENERATE_CASE, DECODER),
                                    tmp_path / "saved", source="xtransformers-2")
    ids = tokens()
    result = run_without_zeta_hf(CHILD, str(tmp_path / "saved"), json.dumps(ids.tolist()), tmp=tmp_path)
    assert result["zeta_hf_loaded"] is False
    assert result["lm_class"].startswith("transformers_modules.")
    torch.testing.assert_close(torch.tensor(result["logits"]), oracle["cases"][key]["logits"], rtol=0, atol=ATOL)
    with torch.no_grad():
        expected = model.generate(ids[:1, :4], max_new_tokens=5, do_sample=False)
    assert result["generated"] == expected.tolist()


# --------------------------------------------------------------------------------------------------------------------
# detection and refusals (no oracle needed)
# --------------------------------------------------------------------------------------------------------------------


def test_auto_detects_2x_checkpoint_and_explicit_source_wins(oracle):
    ref = oracle["cases"][f"abs-{DECODER}"]
    kwargs = case_kwargs("abs", DECODER)
    assert detect_source(ref["state"], kwargs) == "xtransformers-2"  # bias-less `gamma` LayerNorms
    model = convert_zeta_checkpoint(ref["state"], kwargs)
    with torch.no_grad():
        assert_close(model(tokens(), use_cache=False).logits, ref["logits"], "auto-detected logits")
    assert model.config.converted_from == "x-transformers 2.x"
    with pytest.raises(ValueError, match="gamma"):  # told it is a 1.19 checkpoint: no guessing, the keys do not fit
        convert_zeta_checkpoint(ref["state"], kwargs, source="xtransformers-1")


def test_cli_auto_detects_2x_and_refuses_by_name(oracle, tmp_path, capsys):
    """`zeta-hf convert` without `--source` recognises a 2.x checkpoint file; a refused option exits non-zero naming
    the option, and writes nothing."""
    from zeta_hf.cli import main

    ref = oracle["cases"][f"sandwich-{ENCODER}"]
    torch.save(ref["state"], tmp_path / "model.pt")
    (tmp_path / "kwargs.json").write_text(json.dumps(case_kwargs("sandwich", ENCODER)))
    argv = ["convert", "--checkpoint", str(tmp_path / "model.pt"), "--kwargs", str(tmp_path / "kwargs.json")]
    main([*argv, "--output-dir", str(tmp_path / "auto")])
    model = zeta_hf.ZetaForCausalLM.from_pretrained(tmp_path / "auto").eval()
    assert model.config.converted_from == "x-transformers 2.x"
    with torch.no_grad():
        assert_close(model(tokens(), use_cache=False).logits, ref["logits"], "auto-detected CLI logits")

    bad = case_kwargs("sandwich", ENCODER)
    bad["attn_layers"]["attn_qk_norm_dim_scale"] = True
    (tmp_path / "kwargs.json").write_text(json.dumps(bad))
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--output-dir", str(tmp_path / "refused")])
    assert exit_info.value.code == 1
    assert "attn_qk_norm_dim_scale" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()


def test_auto_warns_when_nothing_tells_versions_apart(oracle):
    """A tied RMSNorm model shows no 2.x marker: `auto` converts it as 1.19 and says so (pass the source)."""
    ref = oracle["cases"][f"rmsnorm-{DECODER}"]
    state = {k: v for k, v in ref["state"].items() if not k.startswith("to_logits")}
    kwargs = {**case_kwargs("rmsnorm", DECODER), "tie_embedding": True}
    with pytest.warns(UserWarning, match="xtransformers-2"):
        model = convert_zeta_checkpoint(state, kwargs)
    assert model.config.converted_from == "Zeta (x-transformers 1.19)"


def _xt2(layer_extra: dict | None = None, **transformer_extra) -> dict:
    return {**BASE_TRANSFORMER, **transformer_extra,
            "attn_layers": {"type": DECODER, **BASE_LAYERS, **(layer_extra or {})}}


REFUSED = {
    # option -> (kwargs, what the error names)
    "qk-norm-dim-scale": (_xt2(dict(attn_qk_norm=True, attn_qk_norm_dim_scale=True)), "attn_qk_norm_dim_scale"),
    "sparse-topk-straight-through": (_xt2(dict(attn_sparse_topk=4, attn_sparse_topk_straight_through=True)),
                                     "attn_sparse_topk_straight_through"),
    "layerscale": (_xt2(dict(use_layerscale=True)), "use_layerscale"),
    "hyper-connections": (_xt2(dict(num_residual_streams=4)), "num_residual_streams"),
    "value-residual": (_xt2(dict(add_value_residual=True)), "add_value_residual"),
    "dynamic-tanh": (_xt2(dict(use_dynamic_tanh=True)), "use_dynamic_tanh"),
    "dynamic-pos-bias-norm": (_xt2(dict(dynamic_pos_bias=True, dynamic_pos_bias_norm=True)), "dynamic_pos_bias_norm"),
    "shift-tokens-per-layer": (_xt2(dict(shift_tokens=[1, 0, 1, 0])), "shift_tokens=\\[1, 0, 1, 0\\]"),
    "gate-value-heads": (_xt2(dict(attn_gate_value_heads=True)), "attn_gate_value_heads"),
    "sublayer-dropout": (_xt2(dict(attn_sublayer_dropout=0.1)), "attn_sublayer_dropout"),
    "value-rmsnorm": (_xt2(dict(attn_value_rmsnorm=True)), "attn_value_rmsnorm"),
    "qk-rmsnorm": (_xt2(dict(attn_qk_rmsnorm=True)), "attn_qk_rmsnorm"),
    "cross-attend": (_xt2(dict(cross_attend=True)), "cross_attend"),
    "softclamp-logits": (_xt2(dict(attn_softclamp_logits=True)), "attn_softclamp_logits"),
    "glu-mult-bias": (_xt2(dict(ff_glu=True, ff_glu_mult_bias=True)), "ff_glu_mult_bias"),
    "polar": (_xt2(dict(polar_pos_emb=True)), "polar_pos_emb"),
    "typo": (_xt2(dict(attn_qk_nrom=True)), "attn_qk_nrom"),
    "mixture-of-softmax": (_xt2(mixture_of_softmax=True), "mixture_of_softmax"),
    "cls-token": (_xt2(use_cls_token=True), "use_cls_token"),
    "max-mem-len": (_xt2(max_mem_len=16), "max_mem_len=16"),
    "shift-mem-down": (_xt2(shift_mem_down=1), "shift_mem_down=1"),
    "scale-residual-float": (_xt2(dict(scale_residual=0.5)), "scale_residual=0.5"),
    "no-final-norm": (_xt2(dict(pre_norm_has_final_norm=False)), "pre_norm_has_final_norm=False"),
    "pre-talking-heads-only": (_xt2(dict(attn_pre_talking_heads=True)), "attn_pre_talking_heads=True"),
    "one-head": (_xt2(dict(heads=1, attn_dim_head=32)), "heads=1"),
    "qk-norm-groups-rotary": (_xt2(dict(attn_qk_norm=True, attn_qk_norm_groups=2, rotary_pos_emb=True)),
                              "attn_qk_norm_groups=2"),
    "qk-norm-groups-mem-kv": (_xt2(dict(attn_qk_norm=True, attn_qk_norm_groups=2, attn_num_mem_kv=2)),
                              "attn_qk_norm_groups=2"),
    "mem-kv-alibi": (_xt2(dict(attn_num_mem_kv=2, alibi_pos_bias=True), use_abs_pos_emb=False), "attn_num_mem_kv=2"),
    "mem-kv-t5": (_xt2(dict(attn_num_mem_kv=2, rel_pos_bias=True)), "attn_num_mem_kv=2"),
    "mem-kv-dynamic": (_xt2(dict(attn_num_mem_kv=2, dynamic_pos_bias=True)), "attn_num_mem_kv=2"),
    "mem-kv-max-attend-past": (_xt2(dict(attn_num_mem_kv=2, attn_max_attend_past=3)), "attn_num_mem_kv=2"),
    "abs-with-rotary": (_xt2(dict(disable_abs_pos_emb=False, rotary_pos_emb=True)), "disable_abs_pos_emb=False"),
    "cross-attender": ({**BASE_TRANSFORMER, "attn_layers": {"type": "CrossAttender", **BASE_LAYERS}}, "CrossAttender"),
}


@pytest.mark.parametrize("option", list(REFUSED))
def test_refused_option_is_named(option):
    kwargs, named = REFUSED[option]
    with pytest.raises(ValueError, match=f"(?s){named}.*"):
        config_from_xtransformers2_kwargs(kwargs)


def test_refusal_lists_supported_options():
    with pytest.raises(ValueError) as err:
        config_from_xtransformers2_kwargs(_xt2(dict(use_layerscale=True, attn_laser=True)))
    message = str(err.value)
    assert "['attn_laser', 'use_layerscale']" in message
    for supported in ("rotary_pos_emb", "attn_kv_heads", "norm_add_unit_offset", "attn_pre_talking_heads"):
        assert supported in message


def test_switched_off_options_are_accepted():
    """A full kwargs dump carries 2.x's defaults for features that are off: those change nothing and convert."""
    config = config_from_xtransformers2_kwargs(
        _xt2(dict(use_layerscale=False, num_residual_streams=1, attn_sparse_topk=None, shift_tokens=0, verbose=True,
                  learned_value_residual_mix=True, pre_norm_has_final_norm=True), attn_z_loss_weight=1e-4,
             max_mem_len=0, num_output_heads=1)
    )
    assert config.norm_unit_offset and not config.norm_bias and not config.lm_head_bias


def test_gqa_with_alibi_is_refused():
    kwargs = _xt2(dict(alibi_pos_bias=True, attn_kv_heads=2), use_abs_pos_emb=False)
    config = config_from_xtransformers2_kwargs(kwargs)
    state = zeta_hf.ZetaForCausalLM(config).state_dict()  # any state: the refusal comes before the weights are read
    with pytest.raises(ValueError, match="ALiBi"):
        convert_zeta_checkpoint({"token_emb.emb.weight": state["model.embed_tokens.weight"]}, kwargs,
                                source="xtransformers-2")


def test_xl_mems_are_refused_on_a_converted_model():
    """2.x's recurrence differs from Zeta's (pre-normed mems, empty mems at max_mem_len=0): the converted model
    refuses `mems` / `output_mems` instead of computing Zeta's."""
    config = config_from_xtransformers2_kwargs(_xt2())
    model = zeta_hf.ZetaForCausalLM(config).eval()
    with pytest.raises(ValueError, match="xl_memory=False"):
        model(tokens(), output_mems=True)


def test_warning_free_explicit_2x_conversion(oracle):
    ref = oracle["cases"][f"tie-{DECODER}"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = convert_zeta_checkpoint(ref["state"], case_kwargs("tie", DECODER), source="xtransformers-2")
    assert model.config.tie_embedding_scale == pytest.approx(BASE_LAYERS["dim"] ** -0.5)
