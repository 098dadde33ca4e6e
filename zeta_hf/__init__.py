"""zeta_hf: Zeta / x-transformers style language models as Hugging Face transformers models.

`import zeta_hf` registers the "zeta" model type with transformers' Auto classes, so `AutoModelForCausalLM` and
friends load zeta folders without `trust_remote_code`. The `zeta-hf` command is the one exception: it loads torch,
transformers and the models only once a subcommand needs them (`zeta_hf.load()`), so `zeta-hf --help` and argument
errors answer at once.
"""

from __future__ import annotations

import importlib
import os
import sys

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "ZetaConfig": "configuration_zeta",
    "ZetaPreTrainedModel": "modeling_zeta",
    "ZetaModel": "modeling_zeta",
    "ZetaForCausalLM": "modeling_zeta",
    "ZetaForMaskedLM": "modeling_zeta",
    "ZetaForSequenceClassification": "modeling_zeta",
    "ZetaForTokenClassification": "modeling_zeta",
    "ZetaModelOutput": "modeling_zeta",
    "ZetaCausalLMOutput": "modeling_zeta",
    "Transformer": "zeta_api",
    "Decoder": "zeta_api",
    "Encoder": "zeta_api",
    "convert_zeta_checkpoint": "convert_zeta",
    "generate_with_memory": "streaming",
    "stream_with_memory": "streaming",
}
__all__ = [*_EXPORTS, "load"]


def load() -> None:
    """Import the models and register them with transformers' Auto classes (once; `import zeta_hf` does it)."""
    if "ZetaConfig" in globals():
        return
    import transformers

    for name, module in _EXPORTS.items():
        globals()[name] = getattr(importlib.import_module(f".{module}", __name__), name)
    from .modeling_zeta import AUTO_CLASSES

    config_class = globals()["ZetaConfig"]
    transformers.AutoConfig.register("zeta", config_class, exist_ok=True)
    # Saved folders carry the modeling code, so they load with trust_remote_code=True where zeta_hf is not installed.
    config_class.register_for_auto_class()
    for auto_name, model_class in AUTO_CLASSES.items():
        getattr(transformers, auto_name).register(config_class, model_class, exist_ok=True)
        model_class.register_for_auto_class(auto_name)


def __getattr__(name: str):
    if name in _EXPORTS:
        load()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _started_as_the_command_line() -> bool:
    """Whether this process is the `zeta-hf` console script or `python -m zeta_hf.cli` (also under torchrun /
    accelerate launch, which start their workers that way)."""
    argv = getattr(sys, "orig_argv", [])
    module = next((argv[i + 1] for i in range(len(argv) - 1) if argv[i] == "-m"), None)
    return module == "zeta_hf.cli" or os.path.basename(sys.argv[0] if sys.argv else "") == "zeta-hf"


if not _started_as_the_command_line():
    load()
