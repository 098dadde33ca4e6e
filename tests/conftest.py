"""Shared test helpers: the one tiny-model factory, the one "child process without zeta_hf" runner, a fixed seed.

Nothing here downloads.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from zeta_hf import ZetaConfig, ZetaForCausalLM

# Tiny models are dominated by per-op overhead: extra intra-op threads only add synchronisation (60x slower generate()
# on a loaded 2-core machine), and pytest-xdist already runs one worker per core.
torch.set_num_threads(1)

# Small enough that a whole generate() runs in milliseconds on one CPU core.
TINY = dict(vocab_size=64, max_position_embeddings=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, head_dim=32)


def make_tiny_config(**overrides) -> ZetaConfig:
    """A tiny `ZetaConfig` (vocab 64, max_seq_len 64, dim 64, depth 2, heads 4, dim_head 32) with `overrides` on top."""
    return ZetaConfig(**{**TINY, **overrides})


def make_tiny_model(model_class: type = ZetaForCausalLM, seed: int = 0, config: ZetaConfig | None = None, **overrides):
    """A model of any zeta_hf class, built from `seed`, in eval mode: from `config`, or a tiny one
    (`make_tiny_config(**overrides)`)."""
    if config is not None and overrides:
        raise TypeError("make_tiny_model takes a config or overrides, not both")
    torch.manual_seed(seed)
    return model_class(config if config is not None else make_tiny_config(**overrides)).eval()


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


# Runs first in every child of `run_without_zeta_hf`: proves that zeta_hf cannot be imported there.
_NO_ZETA_PRELUDE = textwrap.dedent(
    """
    import sys
    try:
        import zeta_hf  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("zeta_hf is importable in the child: the test would not exercise a world without it")
    sys.modules.pop("zeta_hf", None)
    """
)


def run_without_zeta_hf(script: str, *args: str, tmp: Path, offline: bool = True, env: dict[str, str] | None = None,
                        stdin_open: bool = False, with_stderr: bool = False, timeout: float = 300) -> Any:
    """Run `script` (Python source; `sys.argv[1:]` = `args`) in a fresh interpreter where `zeta_hf` cannot be imported
    (a package of that name that raises ImportError shadows the installed one), with a private HF cache under `tmp`
    and, by default, no network. The child prints one JSON object as its last stdout line; it is returned (with the
    child's stderr, for `with_stderr`). `stdin_open` gives the child an open pipe nobody writes to, as a terminal
    nobody answers: a prompt would wait on it."""
    blocker = tmp / "no_zeta_hf"
    (blocker / "zeta_hf").mkdir(parents=True, exist_ok=True)
    (blocker / "zeta_hf" / "__init__.py").write_text('raise ImportError("zeta_hf is deliberately unavailable")\n')
    workdir = tmp / "child_cwd"
    workdir.mkdir(exist_ok=True)
    scrubbed = ("PYTHONPATH", "HF_HOME", "HF_MODULES_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    child_env = {k: v for k, v in os.environ.items() if k not in scrubbed}
    child_env.update(PYTHONPATH=str(blocker),  # before site-packages, so it shadows the editable install of zeta_hf
                     HF_HOME=str(tmp / "hf_home"), HF_MODULES_CACHE=str(tmp / "hf_modules"), OMP_NUM_THREADS="1")
    if offline:
        child_env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    child_env.update(env or {})
    proc = subprocess.Popen([sys.executable, "-c", _NO_ZETA_PRELUDE + textwrap.dedent(script), *args], cwd=workdir,
                            env=child_env, stdin=subprocess.PIPE if stdin_open else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout) if not stdin_open else _wait_keeping_stdin(proc, timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, f"child failed (rc={proc.returncode}):\n{stderr[-5000:]}"
    result = json.loads(stdout.strip().splitlines()[-1])
    return (result, stderr) if with_stderr else result


def _wait_keeping_stdin(proc: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """`communicate()` would close stdin; read the child's output while its stdin stays open until it exits."""
    import threading

    out: dict[str, str] = {}
    readers = [threading.Thread(target=lambda k=k, f=f: out.__setitem__(k, f.read()))
               for k, f in (("stdout", proc.stdout), ("stderr", proc.stderr))]
    for reader in readers:
        reader.start()
    proc.wait(timeout=timeout)
    for reader in readers:
        reader.join()
    proc.stdin.close()
    return out["stdout"], out["stderr"]
