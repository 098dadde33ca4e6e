"""`zeta-hf serve` as a real process on 127.0.0.1, spoken to with the `openai` client; continuous batching in-process.

The served answers are compared with `model.generate` (greedy) on the same folder. The model is tiny and random, with
a byte-level tokenizer of the 128 ASCII bytes, so every generated token decodes to one character and texts compare
exactly, streamed or not.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
import torch
from conftest import make_tiny_config
from test_modeling_common import VARIANTS, variant_id
from transformers import ContinuousBatchingConfig, GenerationConfig, PreTrainedTokenizerFast

from zeta_hf import ZetaForCausalLM
from zeta_hf.chat import CHAT_TEMPLATE, add_chat_template
from zeta_hf.cli import main
from zeta_hf.data import make_tokenizer

ROOT = Path(__file__).resolve().parents[1]
CONTEXT = 1 << 16  # rotary: no position table, so a long context costs nothing until it is used
PROMPTS = ["Hello", "The quick brown fox", "def f(x):", "a", "zeta", "1 2 3 4", "OpenAI-compatible", "<|user|>"]
NEW_TOKENS = 12
SERVER_START_SECONDS = 240  # two cores shared with other test workers: imports alone can take a minute


def greedy(model: ZetaForCausalLM, ids: list[int], new_tokens: int) -> list[int]:
    out = model.generate(torch.tensor([ids]), max_new_tokens=new_tokens, do_sample=False)
    return out[0, len(ids):].tolist()


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """One tiny rotary GQA model saved twice: with zeta_hf's chat template, and without one."""
    torch.manual_seed(0)
    config = make_tiny_config(vocab_size=131, max_position_embeddings=CONTEXT, position_embedding="rotary",
                              num_key_value_heads=2, eos_token_id=1, pad_token_id=0, bos_token_id=None)
    model = ZetaForCausalLM(config).eval()
    root = tmp_path_factory.mktemp("serve")
    tokenizer = make_tokenizer(num_bytes=128)
    for name, template in (("chat", True), ("plain", False)):
        model.save_pretrained(root / name)
        (add_chat_template(make_tokenizer(num_bytes=128)) if template else tokenizer).save_pretrained(root / name)
    return {"chat": root / "chat", "plain": root / "plain"}


@pytest.fixture(scope="module")
def reference(folders):
    """The folder's model and tokenizer, loaded back as the server loads them, and its greedy answers."""
    model = ZetaForCausalLM.from_pretrained(folders["chat"]).eval()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folders["chat"])

    def answer(text: str | None = None, ids: list[int] | None = None, new_tokens: int = NEW_TOKENS) -> str:
        ids = tokenizer(text)["input_ids"] if ids is None else ids
        return tokenizer.decode(greedy(model, ids, new_tokens), skip_special_tokens=True)

    answer.tokenizer = tokenizer
    return answer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A `zeta-hf serve` process: its address, its log, and the name requests give the model."""

    def __init__(self, folder: Path, *options: str):
        self.port = free_port()
        self.model = str(folder)
        self.log_path = folder.parent / f"server-{self.port}.log"
        self.log = open(self.log_path, "w")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "zeta_hf.cli", "serve", self.model, "--port", str(self.port), "--device", "cpu",
             "--log-requests", *options],
            stdout=self.log, stderr=subprocess.STDOUT, env=env,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, timeout=120)

    def wait_until_healthy(self) -> None:
        deadline = time.monotonic() + SERVER_START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"zeta-hf serve exited with {self.process.returncode}:\n{self.log_text()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"zeta-hf serve was not healthy after {SERVER_START_SECONDS}s:\n{self.log_text()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()

    def log_text(self) -> str:
        self.log.flush()
        return self.log_path.read_text()

    def post(self, path: str, body=None, content: bytes | None = None) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", json=body, content=content, timeout=120,
                          headers={"content-type": "application/json"})

    def complete(self, prompt: str, max_tokens: int = NEW_TOKENS) -> str:
        result = self.client.completions.create(model=self.model, prompt=prompt, max_tokens=max_tokens, temperature=0)
        return result.choices[0].text


MODES = {"generate": (), "continuous_batching": ("--continuous-batching", "--cb-num-blocks", "64",
                                                  "--cb-max-batch-tokens", "256")}


@pytest.fixture(scope="module")
def servers(request, folders) -> dict[str, Server]:
    """Both servers, started together (start-up is mostly imports: in parallel it costs one wait, not two):
    `generate` on the folder with a chat template, continuous batching on the one without (its chat requests check
    the 4xx for a missing template)."""
    started = {}
    for mode, options in MODES.items():
        started[mode] = Server(folders["chat" if mode == "generate" else "plain"], *options)
        started[mode].mode = mode
        request.addfinalizer(started[mode].stop)
    for srv in started.values():
        srv.wait_until_healthy()
    return started


@pytest.fixture(params=list(MODES), ids=list(MODES))
def server(request, servers) -> Server:
    return servers[request.param]


pytestmark = pytest.mark.slow


def test_greedy_completion_equals_generate(server, reference):
    assert server.complete(PROMPTS[0]) == reference(PROMPTS[0])
    engine = "continuous batching" if server.mode == "continuous_batching" else "generate"
    assert f", {engine}, stream" in server.log_text()  # the server says which runner took the request


def test_streamed_chunks_concatenate_to_the_completion(server, reference):
    stream = server.client.completions.create(model=server.model, prompt=PROMPTS[1], max_tokens=NEW_TOKENS,
                                              temperature=0, stream=True)
    chunks = [chunk.choices[0].text for chunk in stream if chunk.choices]
    assert len([c for c in chunks if c]) > 1
    assert "".join(chunks) == reference(PROMPTS[1])


def test_concurrent_clients_each_get_their_own_answer(server, reference):
    answers: dict[int, str] = {}

    def ask(i: int) -> None:
        answers[i] = server.complete(PROMPTS[i])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert answers == {i: reference(PROMPTS[i]) for i in range(8)}


def test_chat_completion(server, reference):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    if server.mode == "generate":  # the folder has zeta_hf's template
        result = server.client.chat.completions.create(model=server.model, messages=messages,
                                                       max_tokens=NEW_TOKENS, temperature=0)
        ids = reference.tokenizer.apply_chat_template(messages, add_generation_prompt=True, chat_template=CHAT_TEMPLATE,
                                                      tokenize=True, return_dict=True)["input_ids"]
        assert reference.tokenizer.decode(ids) == "<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\n"
        assert result.choices[0].message.content == reference(ids=ids)
    else:  # the folder has none: a 400 naming it
        response = server.post("/v1/chat/completions", {"model": server.model, "messages": messages, "max_tokens": 4})
        assert response.status_code == 400 and "chat_template" in response.json()["detail"]
        assert server.complete(PROMPTS[0]) == reference(PROMPTS[0])


def test_bad_requests_get_4xx_and_the_server_keeps_serving(server, reference):
    good = {"model": server.model, "prompt": "hi", "max_tokens": 3}
    bad = [
        ({**good, "model": "no-such-model"}, 400, "no-such-model"),
        ({**good, "max_tokens": -3}, 422, "max_tokens"),
        ({**good, "max_tokens": 0}, 422, "max_tokens"),
        ({**good, "max_tokens": 10**9}, 400, "max_tokens"),
        ({**good, "max_tokens": [3]}, 422, "max_tokens"),
        ({**good, "max_tokens": "many"}, 422, "max_tokens"),
        ({**good, "temperature": {"t": 1}}, 422, "temperature"),
        ({**good, "prompt": 5}, 422, "prompt"),
        ({**good, "prompt": "x" * (CONTEXT + 1)}, 400, "prompt"),
        ({**good, "no_such_field": 1}, 422, "no_such_field"),
        ({"model": server.model, "messages": "hi", "max_tokens": 3}, 422, "messages"),
        (b'{"model": "x", "prompt": ', 422, "JSON"),
    ]
    for body, status, named in bad:
        path = "/v1/chat/completions" if isinstance(body, dict) and "messages" in body else "/v1/completions"
        raw = isinstance(body, bytes)
        response = server.post(path, None if raw else body, content=body if raw else None)
        assert response.status_code == status, (body, response.text)
        assert named in json.dumps(response.json()), (body, response.text)
    assert server.complete(PROMPTS[3]) == reference(PROMPTS[3])  # still serving, and correctly


def test_client_leaving_mid_stream_frees_its_slot(server, reference):
    # A stream asking for (nearly) the whole context, which the client leaves after its first chunk. Without continuous
    # batching requests run one at a time: unless that generation stops, the next request waits behind ~65000 decode
    # steps (minutes). With it, the request's paged KV blocks go back to the pool (the cache holds 64 blocks).
    max_tokens = CONTEXT - 8 if server.mode == "generate" else 2000
    with httpx.stream("POST", f"{server.url}/v1/completions", timeout=60, json={
        "model": server.model, "prompt": "a", "max_tokens": max_tokens, "temperature": 0, "stream": True,
    }) as response:
        assert response.status_code == 200
        next(response.iter_lines())
    start = time.monotonic()
    assert server.complete(PROMPTS[2]) == reference(PROMPTS[2])
    assert time.monotonic() - start < 30


# --------------------------------------------------------------------------------------------------------------------
# Continuous batching in-process: every eligible variant of the model matrix, and the refusal of the others
# --------------------------------------------------------------------------------------------------------------------

CB_VARIANTS = [v for v in VARIANTS if make_tiny_config(**v).supports_continuous_batching]


def test_the_matrix_has_continuous_batching_variants_of_each_kind():
    kinds = {make_tiny_config(**v).position_embedding for v in CB_VARIANTS}
    assert {"absolute", "rotary", "none"} <= kinds, kinds


@pytest.mark.parametrize("overrides", CB_VARIANTS, ids=[variant_id(v) for v in CB_VARIANTS])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_generate_batch_equals_generate(overrides, attn):
    config = make_tiny_config(**overrides, eos_token_id=None, pad_token_id=0)
    model = ZetaForCausalLM(config).eval()
    model.set_attn_implementation(attn)
    prompts = [[5 + i, 17, 40 - i, 9][: 1 + i % 4] + list(range(10, 10 + 3 * i)) for i in range(5)]
    expected = [greedy(model, p, 10) for p in prompts]
    results = model.generate_batch(
        prompts, generation_config=GenerationConfig(max_new_tokens=10, do_sample=False, pad_token_id=0),
        continuous_batching_config=ContinuousBatchingConfig(num_blocks=16, max_batch_tokens=64), progress_bar=False,
    )
    got = [results[f"req_{i}"].generated_tokens for i in range(len(prompts))]
    assert got == expected


INELIGIBLE = [(v, make_tiny_config(**v)) for v in VARIANTS if not make_tiny_config(**v).supports_continuous_batching]


@pytest.mark.parametrize("overrides", [v for v, _ in INELIGIBLE], ids=[variant_id(v) for v, _ in INELIGIBLE])
def test_continuous_batching_blockers_name_the_options(overrides):
    config = make_tiny_config(**overrides)
    blockers = config.continuous_batching_blockers
    assert blockers
    for name in ("num_memory_tokens", "num_memory_kv", "add_zero_kv", "max_attend_past", "residual_attn",
                 "talking_heads", "sparse_topk", "rotary_xpos", "value_head_dim"):
        if name in overrides and overrides[name] not in (None, False, 0):
            assert any(b.startswith(f"{name}=") for b in blockers), (name, blockers)


def test_generate_batch_fails_an_ineligible_model_with_the_blockers_named():
    model = ZetaForCausalLM(make_tiny_config(num_memory_tokens=2, eos_token_id=None, pad_token_id=0)).eval()
    results = model.generate_batch(
        [[5, 6, 7]], generation_config=GenerationConfig(max_new_tokens=3, do_sample=False, pad_token_id=0),
        continuous_batching_config=ContinuousBatchingConfig(num_blocks=16, max_batch_tokens=64), progress_bar=False,
    )
    assert "num_memory_tokens=2" in str(results["req_0"].error)


def test_serve_refuses_continuous_batching_for_an_ineligible_folder(tmp_path, capsys):
    ZetaForCausalLM(make_tiny_config(num_memory_tokens=2)).save_pretrained(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", str(tmp_path), "--continuous-batching"])
    assert exit_info.value.code == 1
    error = capsys.readouterr().err
    assert "--continuous-batching" in error and "num_memory_tokens=2" in error, error


def test_streaming_with_a_tokenizer_without_rust_backend_is_a_400_not_a_500():
    """transformers streams through the tokenizer's `tokenizers` backend; a folder saved with ByT5Tokenizer has none.
    The engine client refuses such a stream up front (a ValueError, which the app answers with a 400)."""
    from transformers import ByT5Tokenizer
    from transformers.cli.serving.utils import GenerationState

    from zeta_hf.serve import ZetaEngineClient

    client = ZetaEngineClient.__new__(ZetaEngineClient)  # no model process: the check runs before one is needed
    client.processor, client.generation_state = ByT5Tokenizer(), GenerationState()
    client.model_config, client.generation_config = make_tiny_config(), GenerationConfig()
    inputs = {"input_ids": torch.tensor([[5, 6, 7]])}
    with pytest.raises(ValueError, match="ByT5Tokenizer"):
        client.generate_streaming(inputs, {"max_new_tokens": None})
    with pytest.raises(ValueError, match="room for at most 61"):  # TINY's context is 64
        client.generate_streaming(inputs, {"max_new_tokens": 62})
    kwargs = {"max_new_tokens": None}
    client.fit_to_context(inputs, kwargs)
    assert kwargs == {"max_new_tokens": 61}  # no max_tokens: transformers' 1024, shortened to the room left
