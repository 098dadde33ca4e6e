"""The option table (docs/options.md) matches the code: every option is listed, and its cache / sdpa columns are true."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from zeta_hf import ZetaConfig
from zeta_hf.configuration_zeta import ZETA_ALIASES

OPTIONS_DOC = Path(__file__).resolve().parents[1] / "docs" / "options.md"
ROW = re.compile(r"^\| (`[^|]+`(?:, `[^|]+`)*) \|([^|]*)\|([^|]*)\|([^|]*)\|([^|]*)\|$", re.M)


def table() -> dict[str, tuple[str, str]]:
    """field -> (cache column, sdpa column) for each row of the option table."""
    rows = {}
    text = OPTIONS_DOC.read_text()
    options = text[text.index("# Options"):text.index("## Encoders")]
    for names, _zeta, _values, cache, sdpa in ROW.findall(options):
        for name in re.findall(r"`(\w+)`", names):
            rows[name] = (cache.strip(), sdpa.strip())
    return rows


def test_every_option_is_in_the_table_and_nothing_else():
    listed = set(table())
    options = ZetaConfig.option_names() - set(ZETA_ALIASES)
    assert options - listed == set(), "options missing from the table in docs/options.md"
    assert listed - options == set(), "docs/options.md rows naming no ZetaConfig field"


# One small configuration that turns each eager-only / cache-limited option on.
ENABLE = {
    "residual_attn": dict(residual_attn=True),
    "cross_residual_attn": dict(cross_attend=True, cross_residual_attn=True),
    "talking_heads": dict(talking_heads=True),
    "sparse_topk": dict(sparse_topk=2),
    "sparse_topk_mode": dict(sparse_topk=2, sparse_topk_mode="zeta_inverted"),
    "only_cross": dict(cross_attend=True, only_cross=True),
    "head_scale": dict(head_scale=True),
    "gate_values": dict(gate_values=True),
    "shift_tokens": dict(shift_tokens=1),
    "max_attend_past": dict(max_attend_past=2),
    "add_zero_kv": dict(add_zero_kv=True),
    "num_memory_tokens": dict(num_memory_tokens=2),
    "num_memory_kv": dict(num_memory_kv=2),
}


@pytest.mark.parametrize("field", sorted(ENABLE))
def test_sdpa_and_cache_columns_match_the_capabilities(field):
    cache, sdpa = table()[field]
    config = ZetaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, head_dim=16, **ENABLE[field])
    assert sdpa.startswith("no") == config.needs_attention_scores, (field, sdpa)
    cache_all = cache.startswith("yes")
    cache_some = cache.startswith("`top_k` only")
    if cache_all:
        assert config.supports_cache, field
    elif cache_some:
        assert not config.supports_cache  # the zeta_inverted value enabled here
    else:
        assert cache.startswith("no") and not config.supports_cache, (field, cache)
