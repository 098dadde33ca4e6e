"""zeta_hf: Zeta / x-transformers style language models as Hugging Face transformers models."""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from .configuration_zeta import ZetaConfig
from .modeling_zeta import (
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

AutoConfig.register("zeta", ZetaConfig, exist_ok=True)
AutoModel.register(ZetaConfig, ZetaModel, exist_ok=True)
AutoModelForCausalLM.register(ZetaConfig, ZetaForCausalLM, exist_ok=True)
AutoModelForMaskedLM.register(ZetaConfig, ZetaForMaskedLM, exist_ok=True)
AutoModelForSequenceClassification.register(ZetaConfig, ZetaForSequenceClassification, exist_ok=True)
AutoModelForTokenClassification.register(ZetaConfig, ZetaForTokenClassification, exist_ok=True)
# Saved folders carry the modeling code, so they load with trust_remote_code=True where zeta_hf is not installed.
ZetaConfig.register_for_auto_class()
ZetaModel.register_for_auto_class("AutoModel")
ZetaForCausalLM.register_for_auto_class("AutoModelForCausalLM")
ZetaForMaskedLM.register_for_auto_class("AutoModelForMaskedLM")
ZetaForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
ZetaForTokenClassification.register_for_auto_class("AutoModelForTokenClassification")

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
