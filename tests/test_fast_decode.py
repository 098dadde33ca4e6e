"""The fast decoding paths: `compile_for_decode` (static cache + compiled, frozen decode step) and int8 weight-only
weights through transformers' `TorchAoConfig`.

Oracles: the default eager `generate()` for tokens; for int8, the float model carrying the dequantized weights
(same numbers up to float32 rounding) and the float32 model itself (within the stated tolerance).
"""

from __future__ import annotations

import pickle

import pytest
import torch
from conftest import make_tiny_model

from zeta_hf import ZetaForCausalLM
from zeta_hf.fast_decode import compile_for_decode

# int8 weight-only (per output row, symmetric) rounds each weight by at most half a step of max|row| / 127: on the tiny
# model below its logits moved by 1.1% of their largest magnitude (0.7% with two other seeds); stated bound 2%.
INT8_LOGITS_TOLERANCE = 0.02


def test_compile_for_decode_generates_the_eager_tokens():
    """Prefill eager, decode steps compiled (C++ wrapper) over a static cache: the default path's tokens, for
    a second prompt length too (no recompilation needed for it: the prefill is not compiled)."""
    model = make_tiny_model(position_embedding="rotary")
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 64, (1, n), generator=g) for n in (9, 5)]
    with torch.no_grad():
        expected = [model.generate(p, max_new_tokens=12, do_sample=False) for p in prompts]
        assert model.compile_for_decode() is model
        got = [model.generate(p, max_new_tokens=12, do_sample=False) for p in prompts]
    assert hasattr(model, "_compiled_call"), "generate() fell back to the eager step"
    assert model.generation_config.cache_implementation == "static"
    assert model.generation_config.compile_config.options == {"cpp_wrapper": True}
    for want, have in zip(expected, got):
        assert torch.equal(have, want)


def test_compile_for_decode_refuses_what_it_cannot_serve():
    model = make_tiny_model(num_memory_tokens=2)  # memory tokens need the dynamic cache
    with pytest.raises(ValueError, match="supports_static_cache"):
        compile_for_decode(model)
    model = make_tiny_model(position_embedding="rotary")
    with pytest.raises(ValueError, match=r"unknown inductor option\(s\) \['mode'\]"):
        compile_for_decode(model, mode="max-autotune")
    with pytest.raises(ValueError, match="`freezing` must be True or False, got 'yes'"):
        compile_for_decode(model, freezing="yes")


def refuse_unpickling(patch: pytest.MonkeyPatch) -> None:
    """While `patch` is active, every unpickling entry point raises: loading must not unpickle anything."""
    def refuse(*args, **kwargs):
        raise AssertionError("something was unpickled while loading")

    for module, name in ((torch, "load"), (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")):
        patch.setattr(module, name, refuse)


def test_int8_weight_only_loads_generates_saves_and_loads_back(tmp_path, monkeypatch):
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import TorchAoConfig

    model = make_tiny_model(vocab_size=256, hidden_size=64, head_dim=16)
    model.save_pretrained(tmp_path / "float")
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(7))

    with monkeypatch.context() as patch:
        refuse_unpickling(patch)
        quantized = ZetaForCausalLM.from_pretrained(tmp_path / "float",
                                                    quantization_config=TorchAoConfig(Int8WeightOnlyConfig())).eval()
    linears = {name: m for name, m in quantized.named_modules() if isinstance(m, torch.nn.Linear) and name != "lm_head"}
    assert linears and all(type(m.weight).__name__ == "Int8Tensor" for m in linears.values())
    # the oracle: the float model with each projection's weight replaced by its dequantized int8 weight
    oracle = make_tiny_model(vocab_size=256, hidden_size=64, head_dim=16)
    for name, module in linears.items():
        assert module.weight.qdata.dtype == torch.int8
        oracle.get_submodule(name).weight.data = module.weight.dequantize()
    with torch.no_grad():
        float_logits, logits, oracle_logits = model(ids).logits, quantized(ids).logits, oracle(ids).logits
        tokens = quantized.generate(ids[:1], max_new_tokens=6, do_sample=False)
        oracle_tokens = oracle.generate(ids[:1], max_new_tokens=6, do_sample=False)
    torch.testing.assert_close(logits, oracle_logits, rtol=1e-4, atol=1e-4)
    assert not torch.equal(logits, float_logits)  # the weights really were quantized
    assert (logits - float_logits).abs().max() <= INT8_LOGITS_TOLERANCE * float_logits.abs().max()
    assert torch.equal(tokens, oracle_tokens)

    quantized.save_pretrained(tmp_path / "int8")
    assert not list((tmp_path / "int8").glob("*.bin")), "quantized weights must be saved as safetensors"
    with monkeypatch.context() as patch:
        refuse_unpickling(patch)
        reloaded = ZetaForCausalLM.from_pretrained(tmp_path / "int8").eval()  # its config holds the quantization
    assert all(type(reloaded.get_submodule(name).weight).__name__ == "Int8Tensor" for name in linears)
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, logits)
        assert torch.equal(reloaded.generate(ids[:1], max_new_tokens=6, do_sample=False), tokens)


def test_the_documented_int8_example_runs(tmp_path):
    """docs/decode_speed.md's int8 block, as written: quantize on load, save, load back int8."""
    from test_readme_examples import readme_block

    make_tiny_model(vocab_size=256, hidden_size=64, head_dim=16).save_pretrained(tmp_path / "float")
    namespace = dict(ZetaForCausalLM=ZetaForCausalLM, folder=tmp_path / "float", out_folder=tmp_path / "int8")
    exec(compile(readme_block("## Int8 weights: transformers' `TorchAoConfig`", "docs/decode_speed.md"),
                 "decode_speed.md", "exec"), namespace)
    assert type(namespace["model"].model.layers[0].self_attn.q_proj.weight).__name__ == "Int8Tensor"


def test_int8_model_through_compile_for_decode_generates_its_eager_tokens(tmp_path):
    """The two fast paths together: an int8 weight-only model's compiled decode gives its eager tokens."""
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import TorchAoConfig

    make_tiny_model(vocab_size=256, hidden_size=64, head_dim=16, position_embedding="rotary").save_pretrained(tmp_path)
    model = ZetaForCausalLM.from_pretrained(tmp_path, quantization_config=TorchAoConfig(Int8WeightOnlyConfig())).eval()
    ids = torch.randint(0, 256, (1, 7), generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        expected = model.generate(ids, max_new_tokens=10, do_sample=False)
        got = model.compile_for_decode().generate(ids, max_new_tokens=10, do_sample=False)
    assert hasattr(model, "_compiled_call"), "generate() fell back to the eager step"
    assert torch.equal(got, expected)


def test_saving_a_model_compiled_for_decode_keeps_the_checkpoints_generation_defaults(tmp_path):
    """`compile_for_decode` changes how this process generates; the saved generation config stays the default one
    (a static cache in generation_config.json would refuse every padded batch a pipeline sends)."""
    import json

    model = make_tiny_model(ZetaForCausalLM, position_embedding="rotary").compile_for_decode()
    assert model.generation_config.cache_implementation == "static"
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "generation_config.json").read_text())
    assert saved.get("cache_implementation") is None and "compile_config" not in saved
    assert model.generation_config.cache_implementation == "static"  # still compiled in this process
    reloaded = ZetaForCausalLM.from_pretrained(tmp_path)
    ids = torch.tensor([[0, 0, 5, 6], [1, 2, 3, 4]])
    out = reloaded.generate(ids, attention_mask=torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]]), max_new_tokens=2,
                            do_sample=False)  # a left-padded batch, which a static cache would refuse
    assert out.shape == (2, 6)
