"""`zeta-hf serve`: transformers' OpenAI-compatible server (`transformers serve`) on a zeta_hf model folder.

transformers' serving stack is the engine: its FastAPI app (`/v1/completions`, `/v1/chat/completions` with streaming,
`/v1/models`, `/health`), its OpenAI request/response schemas, its model process, `generate` runner and continuous
batching runner (paged attention). This module changes three things, each where transformers' own code would fail or
answer a 500 for a zeta_hf model, and nothing else:

1. Loading (`ZetaModelLoader`). transformers resolves the model class as `getattr(transformers,
   config.architectures[0])`, which only finds transformers' own architectures. For a zeta model the loader makes
   zeta_hf's classes resolvable there for the duration of that one call, in the model's process. The classes are
   zeta_hf's installed ones (registered with the Auto classes by `import zeta_hf`): nothing from the folder is imported
   or executed (`trust_remote_code` stays off).
2. Request checks (`ZetaHandlerChecks`, `ZetaEngineClient`). Wrong field types, a `max_tokens` below 1 or past the
   model's context, and streaming with a tokenizer that has no `tokenizers` backend get a 4xx with a sentence instead
   of a 500 or a request that runs for 1024 tokens past the model's context.
3. Start-up checks (`serve`). The folder must be a zeta causal LM; `--continuous-batching` is refused, naming the
   options, for configurations whose outputs it cannot reproduce exactly (`ZetaConfig.continuous_batching_blockers`).

The serving internals used here (`ModelLoader`, `EngineClient`, the handler classes) arrived with transformers 5.25
(5.24 loaded models inside the API process, with no loader object), and they are not public API: the `serve` extra
pins transformers to 5.25.x, and importing this module names what is missing if another version is installed.
"""

from __future__ import annotations

import contextlib
import functools
import json
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import transformers
from transformers import AutoConfig
from transformers.utils.import_utils import is_serve_available

from . import modeling_zeta
from .configuration_zeta import ZetaConfig

# The model classes a zeta folder may name in `architectures`, resolvable by name inside the serve process only.
_ZETA_ARCHITECTURES = ("ZetaForCausalLM",)
# transformers' default for a request that sets no `max_tokens` (`BaseHandler._build_generation_kwargs`), which
# `ZetaEngineClient` shortens to what fits the model's context.
_TRANSFORMERS_DEFAULT_MAX_NEW_TOKENS = 1024


class ServeError(RuntimeError):
    """The server cannot start for this folder or these options (the message says why)."""


if not is_serve_available():
    raise ServeError(
        "`zeta-hf serve` needs fastapi, uvicorn, pydantic and openai: install them with `pip install zeta_hf[serve]`."
    )
try:
    from fastapi import HTTPException
    from openai.types.chat import ChatCompletionMessageParam
    from pydantic import TypeAdapter, ValidationError
    from transformers.cli.serve import Serve
    from transformers.cli.serving import chat_completion, completion, model_manager
    from transformers.cli.serving.chat_completion import ChatCompletionHandler
    from transformers.cli.serving.completion import CompletionHandler
    from transformers.cli.serving.model_manager import EngineClient, ModelLoader
    from transformers.cli.serving.utils import prompt_length
except ImportError as error:  # another layout of transformers' serving internals
    raise ServeError(
        f"`zeta-hf serve` adapts transformers' serving stack as of transformers 5.25, which the installed transformers "
        f"{transformers.__version__} does not have ({error}): install the versions of the `serve` extra "
        "(`pip install zeta_hf[serve]`)."
    ) from error


@contextlib.contextmanager
def _zeta_architectures_in_transformers() -> Iterator[None]:
    """Make `transformers.ZetaForCausalLM` resolve to zeta_hf's class while the block runs, and undo it after."""
    added = [name for name in _ZETA_ARCHITECTURES if not hasattr(transformers, name)]
    for name in added:
        setattr(transformers, name, getattr(modeling_zeta, name))
    try:
        yield
    finally:
        for name in added:
            delattr(transformers, name)


class ZetaModelLoader(ModelLoader):
    """transformers' `ModelLoader` that also resolves zeta_hf's architectures (see the module docstring, 1.).

    Each model's process unpickles its loader, which imports this module there, and with it zeta_hf's registration.
    """

    def _load_model(self, model_id: str, tqdm_class: type | None = None, progress_callback=None):
        with _zeta_architectures_in_transformers():
            return super()._load_model(model_id, tqdm_class=tqdm_class, progress_callback=progress_callback)

    @classmethod
    def like(cls, loader: ModelLoader) -> "ZetaModelLoader":
        """This loader with the settings `Serve` gave `loader` (device, dtype, attention, quantization)."""
        zeta_loader = cls.__new__(cls)
        zeta_loader.__dict__.update(loader.__dict__)
        return zeta_loader


class ZetaEngineClient(EngineClient):
    """transformers' `EngineClient` that checks a request's length budget before it reaches the model's process."""

    def fit_to_context(self, inputs: dict, generation_kwargs: dict) -> None:
        """Check `max_new_tokens` against the room the prompt leaves in the context; a request that set none
        (marked `None` by `ZetaHandlerChecks`) gets transformers' default, shortened to that room."""
        limit = self.generation_state.context_length(self.model_config)
        room = None if limit is None else limit - prompt_length(inputs)
        requested = generation_kwargs.get("max_new_tokens")
        if requested is None:
            default = max(self.generation_config.max_new_tokens or 0, _TRANSFORMERS_DEFAULT_MAX_NEW_TOKENS)
            generation_kwargs["max_new_tokens"] = default if room is None else min(default, room)
        elif room is not None and requested > room:
            raise ValueError(
                f"`max_tokens`={requested} does not fit: the prompt has {prompt_length(inputs)} tokens and the "
                f"model's context is {limit} tokens, prompt and answer, which leaves room for at most {room}."
            )

    async def generate_non_streaming(self, inputs: dict, generation_kwargs: dict):
        self.fit_to_context(inputs, generation_kwargs)
        return await super().generate_non_streaming(inputs, generation_kwargs)

    def generate_streaming(self, inputs: dict, generation_kwargs: dict, response_parser=None):
        self.fit_to_context(inputs, generation_kwargs)
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        if getattr(tokenizer, "_tokenizer", None) is None:  # transformers' streaming decodes with the Rust backend
            raise ValueError(
                f"Streaming needs a tokenizer backed by the `tokenizers` library (a tokenizer.json), but this "
                f"model's tokenizer is a {type(tokenizer).__name__}: request without `stream`, or save the model "
                "with a fast tokenizer."
            )
        return super().generate_streaming(inputs, generation_kwargs, response_parser=response_parser)


# Fields checked as something else than their OpenAI annotation: chat's params class is the streaming one
# (`stream: Literal[True]`), and an `Iterable` annotation accepts a string, which transformers then fails on.
_FIELD_TYPES = {"stream": bool | None, "messages": list[ChatCompletionMessageParam]}


@functools.cache
def _field_adapter(params_class: type, name: str) -> TypeAdapter | None:
    """A pydantic validator of one field of an OpenAI request TypedDict (None for a field it does not declare)."""
    hints = typing.get_type_hints(params_class)
    if name not in hints:
        return None
    return TypeAdapter(_FIELD_TYPES.get(name, hints[name]))


class ZetaHandlerChecks:
    """Checks ahead of transformers' handlers, for the requests they would answer with a 500 (see 2.)."""

    _token_fields: tuple[str, ...] = ("max_tokens", "max_completion_tokens")

    def _validate_request(self, body: dict) -> None:
        super()._validate_request(body)  # unknown fields: 422
        # transformers converts fields with int() / float() and walks `messages`, so a value of the wrong type is a
        # TypeError there, a 500; its request schemas are the OpenAI client's TypedDicts, which pydantic can check
        for name, value in body.items():
            adapter = _field_adapter(self._valid_params_class, name)
            if adapter is None:
                continue
            try:
                adapter.validate_python(value)
            except ValidationError:
                shown = json.dumps(value)
                shown = shown if len(shown) <= 60 else shown[:57] + "..."
                raise HTTPException(
                    status_code=422, detail=f"The request's `{name}` has the wrong type: got {type(value).__name__} "
                    f"{shown}, which the OpenAI API does not accept there."
                ) from None
        for name in self._token_fields:
            value = body.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise HTTPException(
                    status_code=422, detail=f"`{name}` must be a positive integer, but got {json.dumps(value)}."
                )

    def _build_generation_kwargs(self, body: dict, model_generation_config) -> dict:
        generation_kwargs = super()._build_generation_kwargs(body, model_generation_config)
        if all(body.get(name) is None for name in self._token_fields):
            generation_kwargs["max_new_tokens"] = None  # as many as fit: see `ZetaEngineClient.fit_to_context`
        return generation_kwargs


class ZetaCompletionHandler(ZetaHandlerChecks, CompletionHandler):
    """`/v1/completions` with `ZetaHandlerChecks`."""

    _token_fields = ("max_tokens",)


class ZetaChatCompletionHandler(ZetaHandlerChecks, ChatCompletionHandler):
    """`/v1/chat/completions` with `ZetaHandlerChecks`."""


# Where `Serve.run` looks its classes up: it imports them from their modules each time it runs.
_SWAPPED = (
    (model_manager, "EngineClient", ZetaEngineClient),
    (completion, "CompletionHandler", ZetaCompletionHandler),
    (chat_completion, "ChatCompletionHandler", ZetaChatCompletionHandler),
)


@contextlib.contextmanager
def _zeta_serving_stack() -> Iterator[None]:
    """Put the zeta_hf subclasses where `Serve.run` looks for its classes, for as long as the server runs, in this
    process only; the originals are restored afterwards."""
    originals = [(module, name, getattr(module, name)) for module, name, _ in _SWAPPED]
    for module, name, replacement in _SWAPPED:
        setattr(module, name, replacement)
    try:
        yield
    finally:
        for module, name, original in originals:
            setattr(module, name, original)


class ZetaServe(Serve):
    """`transformers serve` with `ZetaModelLoader` and the classes of `_zeta_serving_stack`."""

    def run(self, socket=None, engine_connection=None) -> None:
        self.loader = ZetaModelLoader.like(self.loader)
        with _zeta_serving_stack():
            super().run(socket, engine_connection)

    def run_api_servers(self, count: int) -> None:
        self.loader = ZetaModelLoader.like(self.loader)  # the model's process is started from here
        super().run_api_servers(count)


# --------------------------------------------------------------------------------------------------------------------
# Start-up
# --------------------------------------------------------------------------------------------------------------------


def check_model_folder(model_dir: str, continuous_batching: bool) -> None:
    """Check that `zeta-hf serve` can serve the folder with these options; raise `ServeError` saying why not.

    A zeta folder must hold a causal LM, and one `--continuous-batching` reproduces exactly. A folder of one of
    transformers' own architectures (e.g. a Llama, for side-by-side benchmarks) is served as `transformers serve` would.
    """
    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise ServeError(f"MODEL_DIR={model_dir!r} is not a saved model folder: it has no config.json.")
    config = AutoConfig.from_pretrained(path)  # trust_remote_code off: zeta is registered by `import zeta_hf`
    architectures = config.architectures or []
    if config.model_type != ZetaConfig.model_type:
        if not architectures or not hasattr(transformers, architectures[0]):
            raise ServeError(
                f"MODEL_DIR={model_dir!r} holds a {config.model_type!r} model with architectures={architectures}, "
                "which neither zeta_hf nor transformers provides."
            )
        return
    if not any(name in _ZETA_ARCHITECTURES for name in architectures):
        raise ServeError(
            f"MODEL_DIR={model_dir!r} holds {architectures or 'no architecture'}, but `zeta-hf serve` serves "
            f"causal language models ({', '.join(_ZETA_ARCHITECTURES)})."
        )
    if continuous_batching and not config.supports_continuous_batching:
        raise ServeError(
            "--continuous-batching cannot reproduce this model's outputs exactly, because of "
            f"{', '.join(config.continuous_batching_blockers)}: serve it without --continuous-batching."
        )


def serve(model_dir: str, **serve_options: Any) -> None:
    """Run transformers' OpenAI-compatible server on `model_dir` until it is stopped.

    `serve_options` are keyword arguments of `transformers.cli.serve.Serve` (host, port, continuous_batching, compile,
    device, dtype, attn_implementation, max_model_len, cb_* ...). `trust_remote_code` stays False: the model's code
    is zeta_hf's installed one.
    """
    check_model_folder(model_dir, serve_options.get("continuous_batching", False))
    ZetaServe(force_model=model_dir, trust_remote_code=False, **serve_options)


__all__ = ["ServeError", "ZetaServe", "check_model_folder", "serve"]
