"""The fast decoding path: a static KV cache and a compiled decode step, set up by one call.

`compile_for_decode(model)` (also `ZetaForCausalLM.compile_for_decode`) sets the model's generation config so that
every later `model.generate(...)` runs its prefill eagerly (any prompt length, no recompilation) and its decode steps
through `torch.compile` over a static cache, the way transformers auto-compiles decoding on accelerators. On CPU
generate() only compiles when the compile config says so (`CompileConfig._compile_all_devices`), which is set here.

The inductor options are passed to this one compilation (`torch.compile(..., options=...)`), never set globally:
- `freezing`: the weights become constants of the compiled graph, so inductor can fold them and prepack them for
  oneDNN / MKL matrix products. Only valid while the weights do not change: compile again after training or loading
  other weights (`compile_for_decode` resets the compiled step).
- `cpp_wrapper`: the compiled step is called through generated C++ instead of Python (less per-step overhead).
- `max_autotune`: benchmarks kernel choices for each matrix product while compiling (slow to compile).
Which of these pays on this project's CPU is measured in `docs/decode_speed.md`; the defaults are what paid there
(the C++ wrapper on; freezing and max-autotune measured no gain, so they stay off).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import CompileConfig

# Inductor options that `compile_for_decode` accepts by keyword, with what was measured to pay (docs/decode_speed.md).
# Measured with bench/decode_ab.py --options (one thread, zeta_hf alone, alternating in one process): the C++ wrapper
# gave 1.14x (small) / 1.09x (medium); freezing 1.00x at both, max-autotune 1.02x (small): off, since they only cost.
DEFAULT_INDUCTOR_OPTIONS: dict[str, bool] = {"freezing": False, "cpp_wrapper": True, "max_autotune": False}


def decode_compile_config(**inductor_options: Any) -> CompileConfig:
    """The `CompileConfig` of the fast path: one full graph per static shape, inductor with `inductor_options` on
    top of `DEFAULT_INDUCTOR_OPTIONS`, compiled on every device type (CPU included)."""
    unknown = sorted(set(inductor_options) - set(DEFAULT_INDUCTOR_OPTIONS))
    if unknown:
        raise ValueError(
            f"compile_for_decode got unknown inductor option(s) {unknown}; the options it takes are "
            f"{sorted(DEFAULT_INDUCTOR_OPTIONS)} (each True or False)."
        )
    for name, value in inductor_options.items():
        if not isinstance(value, bool):
            raise ValueError(f"compile_for_decode's `{name}` must be True or False, got {value!r}.")
    options = {**DEFAULT_INDUCTOR_OPTIONS, **inductor_options}
    # torch.compile takes `mode` or `options`, not both: the options carry the settings (no CUDA graphs on CPU anyway)
    config = CompileConfig(fullgraph=True, dynamic=False, backend="inductor", mode=None,
                           options={name: value for name, value in options.items() if value})
    config._compile_all_devices = True  # generate() auto-compiles only on accelerators unless told so
    return config


def compile_for_decode(model: torch.nn.Module, **inductor_options: bool) -> torch.nn.Module:
    """Make `model.generate()` decode over a static cache with a compiled step; returns the model.

    `inductor_options` (`freezing`, `cpp_wrapper`, `max_autotune`: True / False) override
    `DEFAULT_INDUCTOR_OPTIONS` for this model's compilation only.

    The model must support a static cache (`model.config.supports_static_cache`; padded batches are refused by the
    static cache). Greedy tokens equal the default eager path's (`tests/test_fast_decode.py`). The first generate()
    compiles (seconds to a minute); later calls with the same batch size and `max_new_tokens` + prompt within the
    same static cache length reuse it (a new length compiles once more). With `freezing=True` the weights are baked
    into the compiled step: call `compile_for_decode` again after changing them.
    """
    config = getattr(model, "config", None)
    if config is None or not getattr(config, "supports_static_cache", False):
        raise ValueError(
            f"compile_for_decode needs a causal model whose config supports a static cache "
            f"(`config.supports_static_cache`); {type(model).__name__} with this configuration does not: use "
            "the default `generate()` instead."
        )
    compile_config = decode_compile_config(**inductor_options)
    model.eval()
    if not hasattr(model, "_generation_before_compile"):
        # how this process runs generate(), not the checkpoint's defaults: `save_pretrained` writes these back
        model._generation_before_compile = {
            name: getattr(model.generation_config, name) for name in ("cache_implementation", "disable_compile")
        }
    model.generation_config.cache_implementation = "static"
    model.generation_config.compile_config = compile_config
    model.generation_config.disable_compile = False
    if hasattr(model, "_compiled_call"):  # a step compiled before (maybe over other weights): compile anew
        del model._compiled_call
    return model
