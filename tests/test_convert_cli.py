"""`python -m zeta_hf.convert_zeta`: an x-transformers 1.19 checkpoint on disk becomes a loadable folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

x_transformers = pytest.importorskip("x_transformers")

import zeta_hf  # noqa: E402

ATOL = 1e-5


def _run_cli(checkpoint, kwargs_file, output_dir) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "zeta_hf.convert_zeta", "--checkpoint", str(checkpoint), "--kwargs", str(kwargs_file),
         "--output-dir", str(output_dir)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )


CASES = {
    # id -> (Transformer kwargs, attention-layer kwargs including "type")
    "abs-decoder": (
        dict(num_tokens=64, max_seq_len=32), dict(type="Decoder", dim=64, depth=2, heads=4, attn_dim_head=32)
    ),
    "rotary-mem3-gqa2-swiglu-decoder": (
        dict(num_tokens=64, max_seq_len=32, num_memory_tokens=3),
        dict(type="Decoder", dim=64, depth=2, heads=4, attn_dim_head=32, rotary_pos_emb=True, attn_kv_heads=2,
             ff_glu=True, ff_swish=True),
    ),
    "t5-rmsnorm-tie-encoder": (
        dict(num_tokens=64, max_seq_len=32, tie_embedding=True),
        dict(type="Encoder", dim=64, depth=2, heads=4, attn_dim_head=32, rel_pos_bias=True, use_rmsnorm=True),
    ),
}


def _reference(tkw: dict, lkw: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    layer_kwargs = {k: v for k, v in lkw.items() if k != "type"}
    layers = getattr(x_transformers, lkw["type"])(**layer_kwargs)
    ref = x_transformers.TransformerWrapper(attn_layers=layers, **tkw)
    with torch.no_grad():  # move norm gains / biases off their init so they are checked too
        g = torch.Generator().manual_seed(1)
        for p in ref.parameters():
            if p.dim() == 1 and p.numel() > 1:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return ref.eval()


@pytest.mark.parametrize("name", list(CASES))
def test_cli_converts_checkpoint_with_identical_logits(name, tmp_path):
    from transformers import AutoModelForCausalLM

    tkw, lkw = CASES[name]
    ref = _reference(tkw, lkw)
    torch.save(ref.state_dict(), tmp_path / "model.pt")
    (tmp_path / "kwargs.json").write_text(json.dumps({**tkw, "attn_layers": lkw}))

    result = _run_cli(tmp_path / "model.pt", tmp_path / "kwargs.json", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "config.json").exists()

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert isinstance(loaded, zeta_hf.ZetaForCausalLM)
    x = torch.randint(0, tkw["num_tokens"], (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = ref(x)
        got = loaded(x, use_cache=False).logits
    assert expected.abs().max().item() > 0.05
    err = (got - expected).abs().max().item()
    assert err <= ATOL, f"max abs error {err:.3e}"


def _bad_kwargs(where: str, option: str) -> dict:
    tkw, lkw = CASES["abs-decoder"]
    kwargs = {**tkw, "attn_layers": dict(lkw)}
    if where == "attn_layers":
        kwargs["attn_layers"][option] = True
    else:
        kwargs[option] = 64
    return kwargs


def test_cli_rejects_unknown_option(tmp_path):
    """Zeta silently drops `qk_norm=True` (its README's spelling); the converter exits non-zero and names it."""
    tkw, lkw = CASES["abs-decoder"]
    torch.save(_reference(tkw, lkw).state_dict(), tmp_path / "model.pt")
    (tmp_path / "kwargs.json").write_text(json.dumps(_bad_kwargs("attn_layers", "qk_norm")))

    result = _run_cli(tmp_path / "model.pt", tmp_path / "kwargs.json", tmp_path / "out")
    assert result.returncode != 0
    assert "`qk_norm`" in result.stderr, result.stderr
    assert "attn_qk_norm" in result.stderr  # the hint points at the real option
    assert not (tmp_path / "out" / "config.json").exists()


@pytest.mark.parametrize(
    "where, option",
    [("attn_layers", "attn_flsh"), ("transformer", "num_tokenz")],
    ids=["layers-typo", "transformer-typo"],
)
def test_cli_main_names_unknown_option(where, option, tmp_path):
    """Same check in-process through `main(argv)` (cheap: no interpreter start-up)."""
    from zeta_hf.convert_zeta import main

    tkw, lkw = CASES["abs-decoder"]
    torch.save(_reference(tkw, lkw).state_dict(), tmp_path / "model.pt")
    (tmp_path / "kwargs.json").write_text(json.dumps(_bad_kwargs(where, option)))
    argv = ["--checkpoint", str(tmp_path / "model.pt"), "--kwargs", str(tmp_path / "kwargs.json"),
            "--output-dir", str(tmp_path / "out")]
    with pytest.raises(ValueError, match=f"`{option}`"):
        main(argv)
    assert not (tmp_path / "out").exists()


def test_cli_main_rejects_mismatched_checkpoint(tmp_path):
    """A checkpoint that does not match the kwargs (depth 2 saved, depth 3 declared) fails and says what is missing."""
    from zeta_hf.convert_zeta import main

    tkw, lkw = CASES["abs-decoder"]
    torch.save(_reference(tkw, lkw).state_dict(), tmp_path / "model.pt")
    (tmp_path / "kwargs.json").write_text(json.dumps({**tkw, "attn_layers": {**lkw, "depth": 3}}))
    argv = ["--checkpoint", str(tmp_path / "model.pt"), "--kwargs", str(tmp_path / "kwargs.json"),
            "--output-dir", str(tmp_path / "out")]
    with pytest.raises(ValueError, match="missing .*layers\\.4\\."):
        main(argv)
