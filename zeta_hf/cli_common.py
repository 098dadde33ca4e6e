"""What the `zeta-hf` command's modules share: the error type, presets and defaults, input checks, the model loader.

Only the standard library is imported at the top, so `zeta-hf --help` and argument errors answer at once; torch and
transformers are imported by the functions that need them.
"""

from __future__ import annotations

import errno
import math
from pathlib import Path
from typing import Any

from .model_card import check_license


class CLIError(Exception):
    """Bad input from the user: reported as one line, exit status 1, no traceback."""


PRESETS: dict[str, dict[str, Any]] = {
    # For tests and smoke runs.
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, head_dim=16, position_embedding="rotary"),
    # The default: 0.9M parameters, ~1.5 held-out bits per byte on Python's documentation in ~2.5 minutes on 2 cores.
    "small": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, head_dim=32, position_embedding="rotary"),
    # For a GPU.
    "base": dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, head_dim=64, position_embedding="rotary"),
}


DEFAULT_OUTPUT_DIR = "zeta-hf-model"


DEFAULT_MAX_NEW_TOKENS = 200  # `zeta-hf generate`'s own default; generation_config.json sets no length


SUMMARY_FILE = "training_summary.json"


def check_positive(name: str, value: float | None, allow_zero: bool = False) -> None:
    if value is not None and (not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero)):
        bound = ">= 0" if allow_zero else "> 0"
        raise CLIError(f"{name} must be a finite number {bound}, but got {value}.")


def folder_problem(flag: str, path: Path) -> str | None:
    """Why `path` cannot be (or become) a folder, as a sentence naming `flag`: a file, or under a file; else None."""
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                return f"{flag} {str(path)!r} cannot be created: {str(parent)!r} is a file, not a folder."
            break
    if path.exists() and not path.is_dir():
        return f"{flag} {str(path)!r} exists and is not a folder."
    return None


def check_creatable_folder(flag: str, path: Path) -> None:
    """A folder that exists, or can be created: not a file, not under a file."""
    if problem := folder_problem(flag, path):
        raise CLIError(problem)


def no_space_left(err: BaseException) -> bool:
    """Whether an exception means the disk is full (torch's zip writer only says "file write failed")."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return True
    text = str(err)
    return "No space left" in text or ("inline_container" in text and ("write" in text or "unexpected pos" in text))


def not_a_state_dict_file(err: BaseException) -> bool:
    """Whether `torch.load(..., weights_only=True)` refused or could not read a file."""
    text = str(err)
    # (pickle's UnpicklingError by name: this package never imports pickle)
    return (type(err).__name__ == "UnpicklingError" or isinstance(err, EOFError)
            or "Weights only load failed" in text or "PytorchStreamReader" in text)


def load_weights_only(path: str | Path) -> Any:
    """`torch.load(path, weights_only=True)`: tensors and plain containers only, nothing in the file is run."""
    import warnings

    import torch

    with warnings.catch_warnings():
        # torch warns about an unusual pickle protocol before it reads or refuses a file; callers word the refusal
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        return torch.load(path, map_location="cpu", weights_only=True)


def torch_load_state(path: Path, flag: str) -> Any:
    """`torch.load` without running code (weights_only), its failure worded for a person."""
    try:
        return load_weights_only(path)
    except Exception as err:
        if not not_a_state_dict_file(err):
            raise
        cause = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CLIError(f"{flag}: {str(path)!r} is not a checkpoint written by torch.save of a state dict, so it was "
                       f"not loaded (nothing in it was run): {cause}") from None


def check_license_option(license: str | None) -> None:
    try:
        if license is not None:
            check_license(license)
    except ValueError as err:
        raise CLIError(str(err)) from None


def load_model_and_tokenizer(folder: str):
    import transformers
    from safetensors import SafetensorError
    from transformers import AutoTokenizer, GenerationConfig

    from .modeling_zeta import ZetaForCausalLM

    path = Path(folder)
    if not (path / "config.json").is_file():
        raise CLIError(f"--model {folder!r} is not a model folder (no config.json).")
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # a failed load's table of keys would bury the one-line error
    try:
        model = ZetaForCausalLM.from_pretrained(path)
        # The tokenizer is transformers' own class (PreTrainedTokenizerFast, or ByT5Tokenizer in older folders): the
        # folder's modeling code is not needed for it.
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except SafetensorError as err:
        raise CLIError(f"--model {folder!r} could not be loaded: its weights file is damaged or truncated "
                       f"(safetensors: {str(err).splitlines()[0]}).") from None
    except RuntimeError as err:
        if "ignore_mismatched_sizes" not in str(err):
            raise
        raise CLIError(f"--model {folder!r} could not be loaded: its config.json does not match its weights (the "
                       "weights have other shapes than the configuration describes; size mismatch).") from None
    except (OSError, ValueError) as err:
        raise CLIError(f"--model {folder!r} could not be loaded: {str(err).splitlines()[0]}") from None
    finally:
        transformers.logging.set_verbosity(verbosity)
    if (path / "generation_config.json").is_file():
        # transformers falls back to defaults without a word when this file is unreadable: the sampling settings
        # saved with the model would be lost
        try:
            model.generation_config = GenerationConfig.from_pretrained(path)
        except (OSError, ValueError) as err:
            raise CLIError(f"--model {folder!r}: its generation_config.json could not be used: "
                           f"{str(err).splitlines()[0]}") from None
    return model.eval(), tokenizer
