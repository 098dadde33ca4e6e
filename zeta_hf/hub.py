"""`zeta-hf push`: a saved folder, re-saved with its tokenizer, report files and a rendered model card, uploaded to the
Hugging Face Hub in one commit."""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from .cli_common import SUMMARY_FILE, CLIError, check_license_option, load_model_and_tokenizer
from .model_card import LOSS_CURVE_FILE, render_card
from .training import card_config


# Files of a trained folder that belong on the Hub besides what save_pretrained writes (the card links the figure).
_PUSH_EXTRAS = (SUMMARY_FILE, LOSS_CURVE_FILE)


def stage_for_hub(folder: Path, stage: Path, repo_id: str, max_shard_size: str | None = None,
                  license: str | None = None) -> list[str]:
    """Write into `stage` everything `zeta-hf push` uploads; return the file names.

    The model is re-saved (not copied) so the upload always has safetensors, the current modeling code with a
    complete `auto_map`, `use_cache=True` and the requested sharding, whatever wrote `folder`.
    """
    model, tokenizer = load_model_and_tokenizer(str(folder))
    model.config.use_cache = True  # Trainer turns it off while training; users of the Hub copy want it on
    try:
        model.save_pretrained(stage, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    except ValueError as err:  # e.g. an unparsable --max-shard-size
        raise CLIError(f"--max-shard-size {max_shard_size!r}: {err}") from None
    tokenizer.save_pretrained(stage)
    summary = None
    for name in _PUSH_EXTRAS:
        if (folder / name).is_file():
            shutil.copy2(folder / name, stage / name)
    if (folder / SUMMARY_FILE).is_file():
        summary = json.loads((folder / SUMMARY_FILE).read_text())
    try:
        card = render_card(card_config(model.config), repo_id, repo_id.rsplit("/", 1)[-1], summary, license=license)
    except ValueError as err:  # a license recorded in training_summary.json that the card cannot carry
        raise CLIError(f"{err} (from {folder / SUMMARY_FILE}; pass --license)") from None
    (stage / "README.md").write_text(card)
    return sorted(p.name for p in stage.iterdir())


def push(args: argparse.Namespace) -> None:
    """`zeta-hf push`: stage the folder for the Hub, create the repository if needed and upload it in one commit."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    folder = Path(args.folder)
    if not args.repo_id.strip(" /"):
        raise CLIError("repo_id is empty: give it as NAME or ORG/NAME.")
    check_license_option(args.license)
    with tempfile.TemporaryDirectory() as scratch:
        stage = Path(scratch)
        files = stage_for_hub(folder, stage, args.repo_id, args.max_shard_size, args.license)
        api = HfApi(token=args.token)
        try:
            url = api.create_repo(args.repo_id, private=args.private, exist_ok=True, repo_type="model")
            # One commit with every staged file, as transformers' own push_to_hub does (the Hub validates the
            # card's YAML on commit).
            operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(stage / name)) for name in files]
            commit = api.create_commit(repo_id=url.repo_id, operations=operations, repo_type="model",
                                       commit_message=args.commit_message)
        except (HfHubHTTPError, OSError) as err:
            raise CLIError(f"could not push to {args.repo_id!r}: {str(err).splitlines()[0]}") from None
    print(f"pushed {len(files)} files ({', '.join(files)}) to {url}")
    print(f"commit: {getattr(commit, 'commit_url', commit)}")
