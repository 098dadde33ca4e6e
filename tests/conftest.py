"""Shared test helpers: tiny configs and a fixed seed. Nothing here downloads."""

from __future__ import annotations

import random

import pytest
import torch

from zeta_hf import ZetaConfig

# Tiny models are dominated by per-op overhead: extra intra-op threads only add synchronisation (60x slower generate()
# on a loaded 2-core machine), and pytest-xdist already runs one worker per core.
torch.set_num_threads(1)

# Small enough that a whole generate() runs in milliseconds on one CPU core.
TINY = dict(vocab_size=64, max_position_embeddings=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, head_dim=32)


def make_tiny_config(**overrides) -> ZetaConfig:
    """A tiny `ZetaConfig` (vocab 64, max_seq_len 64, dim 64, depth 2, heads 4, dim_head 32) with `overrides` on top."""
    return ZetaConfig(**{**TINY, **overrides})


@pytest.fixture
def tiny_config():
    """The factory `tiny_config(**overrides) -> ZetaConfig`."""
    return make_tiny_config


@pytest.fixture(autouse=True)
def seed() -> int:
    """Every test starts from the same random state."""
    random.seed(0)
    torch.manual_seed(0)
    return 0
