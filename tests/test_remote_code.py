"""A saved folder loads with `trust_remote_code=True` in a fresh process where `zeta_hf` cannot be imported."""

from __future__ import annotations

import ast
import json

import pytest
import torch
from conftest import make_tiny_model, run_without_zeta_hf

from zeta_hf import ZetaForCausalLM

CODE_FILES = ("configuration_zeta.py", "modeling_zeta.py", "positional_zeta.py")

VARIANTS = {
    "rotary-mem": dict(position_embedding="rotary", num_memory_tokens=2, norm="rmsnorm", ff_activation="swiglu",
                       num_key_value_heads=1),
    "alibi-learned-memkv": dict(position_embedding="alibi", absolute_position_embedding="learned", num_memory_kv=2,
                                norm_placement="sandwich", qk_norm=True),
    "t5-tied": dict(position_embedding="t5", rel_pos_num_buckets=8, rel_pos_max_distance=16, tie_word_embeddings=True,
                    macaron=True),
}

# Runs in a child where zeta_hf cannot be imported (conftest's `run_without_zeta_hf`).
CHILD = """
import json, sys
import torch
torch.set_num_threads(1)  # as the parent (conftest): same reduction order, so 1e-6 holds
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

folder, ids = sys.argv[1], torch.tensor(json.loads(sys.argv[2]))
config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
lm = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
base = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
with torch.no_grad():
    logits = lm(ids).logits
    hidden = base(ids).last_hidden_state
generated = lm.generate(ids[:1, :4], max_new_tokens=5, do_sample=False)
print(json.dumps({
    "config_class": type(config).__module__ + "." + type(config).__name__,
    "lm_class": type(lm).__module__ + "." + type(lm).__name__,
    "base_class": type(base).__module__ + "." + type(base).__name__,
    "zeta_hf_loaded": any(name == "zeta_hf" or name.startswith("zeta_hf.") for name in sys.modules),
    "logits": logits.tolist(),
    "hidden": hidden.tolist(),
    "generated": generated.tolist(),
}))
"""

SIZE = dict(vocab_size=48, max_position_embeddings=32, hidden_size=32, num_attention_heads=4, head_dim=8)


def tiny_model(**overrides) -> ZetaForCausalLM:
    return make_tiny_model(**{**SIZE, **overrides})


@pytest.mark.parametrize("overrides", VARIANTS.values(), ids=VARIANTS.keys())
def test_remote_code_loads_in_fresh_process_without_zeta_hf(overrides, tmp_path):
    model = tiny_model(**overrides)
    folder = tmp_path / "saved"
    model.save_pretrained(folder)
    ids = torch.randint(0, 48, (2, 7), generator=torch.Generator().manual_seed(0))

    result = run_without_zeta_hf(CHILD, str(folder), json.dumps(ids.tolist()), tmp=tmp_path)

    assert result["zeta_hf_loaded"] is False
    for key in ("config_class", "lm_class", "base_class"):
        assert result[key].startswith("transformers_modules."), result[key]
    assert result["config_class"].endswith("configuration_zeta.ZetaConfig")
    assert result["lm_class"].endswith("modeling_zeta.ZetaForCausalLM")
    assert result["base_class"].endswith("modeling_zeta.ZetaModel")

    with torch.no_grad():
        expected_logits = model(ids).logits
        expected_hidden = model.model(ids).last_hidden_state
    torch.testing.assert_close(torch.tensor(result["logits"]), expected_logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.tensor(result["hidden"]), expected_hidden, rtol=0, atol=1e-6)
    expected_generated = model.generate(ids[:1, :4], max_new_tokens=5, do_sample=False)
    assert result["generated"] == expected_generated.tolist()


def test_saved_folder_has_code_and_full_auto_map(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    for name in CODE_FILES + ("config.json", "model.safetensors"):
        assert (tmp_path / name).is_file(), f"{name} missing from the saved folder"
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "zeta"
    auto_map = config.get("auto_map", {})
    assert auto_map.get("AutoConfig") == "configuration_zeta.ZetaConfig"
    assert auto_map.get("AutoModelForCausalLM") == "modeling_zeta.ZetaForCausalLM"
    assert auto_map.get("AutoModel") == "modeling_zeta.ZetaModel", (
        f"auto_map lacks AutoModel (DESIGN rule 8): {auto_map}"
    )


def test_base_model_folder_has_full_auto_map(tmp_path):
    tiny_model().model.save_pretrained(tmp_path)
    auto_map = json.loads((tmp_path / "config.json").read_text()).get("auto_map", {})
    assert {"AutoConfig", "AutoModel", "AutoModelForCausalLM"} <= set(auto_map), auto_map


def test_saved_code_has_no_absolute_zeta_hf_imports(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    for name in CODE_FILES:
        tree = ast.parse((tmp_path / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module or ""]
            else:
                continue
            assert not any(m == "zeta_hf" or m.startswith("zeta_hf.") for m in modules), (name, ast.unparse(node))
