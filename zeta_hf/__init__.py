"""zeta_hf: Zeta / x-transformers style language models as Hugging Face transformers models."""

import transformers

from .configuration_zeta import ZetaConfig
from .modeling_zeta import (
    AUTO_CLASSES,
    ZetaCausalLMOutput,
    ZetaForCausalLM,
    ZetaForMaskedLM,
    ZetaForSequenceClassification,
    ZetaForTokenClassification,
    ZetaModel,
    ZetaModelOutput,
    ZetaPreTrainedModel,
)

__version__ = "0.1.0"

transformers.AutoConfig.register("zeta", ZetaConfig, exist_ok=True)
# Saved folders carry the modeling code, so they load with trust_remote_code=True where zeta_hf is not installed.
ZetaConfig.register_for_auto_class()
for _auto_name, _model_class in AUTO_CLASSES.items():
    getattr(transformers, _auto_name).register(ZetaConfig, _model_class, exist_ok=True)
    _model_class.register_for_auto_class(_auto_name)
del _auto_name, _model_class

__all__ = [
    "ZetaConfig",
    "ZetaPreTrainedModel",
    "ZetaModel",
    "ZetaForCausalLM",
    "ZetaForMaskedLM",
    "ZetaForSequenceClassification",
    "ZetaForTokenClassification",
    "ZetaModelOutput",
    "ZetaCausalLMOutput",
]

from .zeta_api import Decoder, Encoder, Transformer  # noqa: E402  (after registration: builds on the HF classes)
from .convert_zeta import convert_zeta_checkpoint  # noqa: E402

__all__ += ["Transformer", "Decoder", "Encoder", "convert_zeta_checkpoint"]
from .streaming import generate_with_memory, stream_with_memory  # noqa: E402

__all__ += ["generate_with_memory", "stream_with_memory"]
