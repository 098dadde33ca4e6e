"""The chat template of zeta_hf models: role-tagged plain text, which a byte-level model reads as it reads any text."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

# Each message is "<|role|>\n" + content + "\n"; the generation prompt opens the assistant's turn. Plain text with no
# special tokens: a byte-level tokenizer spells the tags in bytes, and a model trained on raw text needs no new ids.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def add_chat_template(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give `tokenizer` zeta_hf's chat template (saved with it in tokenizer_config.json / chat_template.jinja) unless
    it has one already; returns the tokenizer."""
    if tokenizer.chat_template is None:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


__all__ = ["CHAT_TEMPLATE", "add_chat_template"]
