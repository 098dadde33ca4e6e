"""zeta_hf models work unchanged with the Hugging Face ecosystem: pipelines, streamers, PEFT, TRL, accelerate, export.

Every client is exercised for real on a tiny model and checked against plain `forward()` / `generate()` numbers.
Nothing downloads: the tokenizer is `zeta-hf`'s byte-level `PreTrainedTokenizerFast` (`make_tokenizer`, no vocabulary
file), which adds no end-of-text token to a prompt: no call here needs `add_special_tokens=False`.
"""

from __future__ import annotations

import threading

import pytest
import torch
from conftest import make_tiny_model
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, TextIteratorStreamer, TextStreamer, pipeline

from zeta_hf import ZetaConfig, ZetaForCausalLM
from zeta_hf.data import make_tokenizer

VOCAB = 384  # ByT5's layout: <pad>, </s>, <unk>, 256 bytes, 125 sentinels
# Every linear layer of a Zeta block, by the names PEFT's `target_modules` takes.
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]
PROMPT = "The with statement"


def tiny_lm(seed: int = 0, **overrides) -> ZetaForCausalLM:
    """A 4-layer (2 attention + 2 feedforward), width-32 byte-level model with generation defaults for tests."""
    model = make_tiny_model(seed=seed, **{**dict(vocab_size=VOCAB, hidden_size=32, num_attention_heads=4, head_dim=8,
                                                 position_embedding="rotary"), **overrides})
    gen = model.generation_config
    gen.eos_token_id, gen.pad_token_id, gen.bos_token_id = 1, 0, None
    # Printable ASCII only: an untrained model otherwise emits bytes that are not valid UTF-8 on their own, which
    # streamers hold back until a character completes; restricting to ASCII keeps the comparison exact.
    gen.suppress_tokens = [0, 2] + list(range(3 + 128, VOCAB))
    return model


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


@pytest.fixture(scope="module")
def model() -> ZetaForCausalLM:
    return tiny_lm()


def greedy_text(model, tokenizer, prompt: str = PROMPT, max_new_tokens: int = 20) -> str:
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    assert ids[0].tolist() == [b + 3 for b in prompt.encode()]  # the prompt's bytes, no end token
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


# --------------------------------------------------------------------------------------------------------------------
# 1. pipeline and streamers
# --------------------------------------------------------------------------------------------------------------------


def test_pipeline_text_generation_equals_generate(model, tokenizer):
    expected = greedy_text(model, tokenizer)
    assert len(expected) >= 10  # the comparison is not vacuous
    pipe = pipeline("text-generation", model=model, tokenizer=tokenizer, device="cpu")
    out = pipe(PROMPT, max_new_tokens=20, do_sample=False, return_full_text=False)
    assert out[0]["generated_text"] == expected
    full = pipe(PROMPT, max_new_tokens=20, do_sample=False)
    assert full[0]["generated_text"] == PROMPT + expected


def test_pipeline_batched_with_padding_equals_generate(model, tokenizer):
    prompts = [PROMPT, "def f(x):"]
    expected = [greedy_text(model, tokenizer, p, 12) for p in prompts]
    pipe = pipeline("text-generation", model=model, tokenizer=tokenizer, device="cpu")
    pipe.tokenizer.padding_side = "left"
    outs = pipe(prompts, max_new_tokens=12, do_sample=False, return_full_text=False, batch_size=2)
    assert [o[0]["generated_text"] for o in outs] == expected


def test_text_streamer_prints_generate_text(model, tokenizer, capsys):
    expected = greedy_text(model, tokenizer)
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    capsys.readouterr()
    model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False,
                   streamer=TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True))
    printed = capsys.readouterr().out
    assert printed == expected + "\n"  # TextStreamer ends the stream with a newline


def test_text_iterator_streamer_yields_generate_text(model, tokenizer):
    expected = greedy_text(model, tokenizer)
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=120)
    kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False,
                  streamer=streamer)
    thread = threading.Thread(target=model.generate, kwargs=kwargs)
    thread.start()
    chunks = list(streamer)
    thread.join()
    assert len(chunks) >= 2  # text arrives piece by piece, not at the end
    assert "".join(chunks) == expected


# --------------------------------------------------------------------------------------------------------------------
# 2. PEFT LoRA and TRL
# --------------------------------------------------------------------------------------------------------------------


def _batches(steps: int, batch: int = 4, length: int = 24):
    g = torch.Generator().manual_seed(1)
    return [torch.randint(3, 3 + 128, (batch, length), generator=g) for _ in range(steps)]


@pytest.mark.slow
def test_peft_lora_train_save_reload_merge(tmp_path):
    peft = pytest.importorskip("peft")
    model = tiny_lm().train()
    lora = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
    peft_model = peft.get_peft_model(model, lora)
    targeted = {n.rsplit(".", 1)[-1] for n, m in peft_model.named_modules() if hasattr(m, "lora_A")}
    assert targeted == set(LORA_TARGETS)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)

    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for ids in _batches(8):
        loss = peft_model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]  # the adapter learns

    peft_model.eval()
    ids = _batches(1)[0]
    with torch.no_grad():
        adapted = peft_model(input_ids=ids).logits
    peft_model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()

    base = tiny_lm()  # same seed: the same base weights
    with torch.no_grad():
        base_logits = base(ids).logits
    assert not torch.allclose(base_logits, adapted, atol=1e-3)  # the adapter changes the model
    reloaded = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, adapted, rtol=0, atol=1e-5)
    merged = reloaded.merge_and_unload()
    assert type(merged) is ZetaForCausalLM
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, adapted, rtol=0, atol=1e-5)
    merged.save_pretrained(tmp_path / "merged")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, adapted, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_trl_sft_trainer_equals_a_hand_written_loop(tmp_path, tokenizer):
    """TRL's SFTTrainer (its fused LM-head loss, activation checkpointing on by default) trains a zeta_hf model exactly
    as a plain AdamW loop over the batches it builds: every logged loss and the final weights agree. All rows are one
    text, so the batches are the same whatever order they come in."""
    trl = pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    from pydoc_data.topics import topics

    text = next(iter(topics.values()))[:120]
    train = datasets.Dataset.from_dict({"text": [text] * 16})
    model = tiny_lm().train()
    reference = tiny_lm().train()  # same seed: the same starting weights
    args = trl.SFTConfig(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4, learning_rate=1e-3,
                         lr_scheduler_type="constant", max_grad_norm=0.0, weight_decay=0.0, logging_steps=1,
                         bf16=False,  # SFTConfig turns bf16 autocast on by default; the loop by hand is float32
                         report_to="none", save_strategy="no", max_length=64, dataloader_pin_memory=False,
                         disable_tqdm=True, use_cpu=True)
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == 4 and bool((batch["input_ids"] == batch["input_ids"][:1]).all())
    result = trainer.train()
    assert result.global_step == 4
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]

    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "labels")}
    inputs.setdefault("labels", inputs["input_ids"])
    optimizer = torch.optim.AdamW(reference.parameters(), lr=1e-3, weight_decay=0.0)
    by_hand = []
    for _ in range(4):
        loss = reference(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        by_hand.append(loss.item())
    assert len(logged) == 4
    assert logged == pytest.approx(by_hand, rel=1e-4, abs=1e-5), f"TRL {logged} vs by hand {by_hand}"
    assert by_hand[-1] < by_hand[0]  # it learned
    for (name, got), want in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(got.detach(), want.detach(), rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")


# --------------------------------------------------------------------------------------------------------------------
# 3. accelerate: device_map, empty-weight init, disk offload
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory, model):
    folder = tmp_path_factory.mktemp("saved")
    model.save_pretrained(folder)
    ids = torch.randint(3, VOCAB, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(ids).logits
    return folder, ids, logits


def test_from_pretrained_device_map_auto(saved):
    folder, ids, logits = saved
    loaded = AutoModelForCausalLM.from_pretrained(folder, device_map="auto").eval()
    # On a CPU-only machine "auto" puts everything on the CPU (transformers 5.24 then sets no hf_device_map).
    assert {p.device.type for p in loaded.parameters()} == {"cpu"}
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, logits, rtol=0, atol=1e-6)


def test_init_empty_weights_then_load_checkpoint(saved):
    from accelerate import init_empty_weights, load_checkpoint_and_dispatch

    folder, ids, logits = saved
    config = ZetaConfig.from_pretrained(folder)
    with init_empty_weights():
        empty = ZetaForCausalLM(config)
    assert all(p.device.type == "meta" for p in empty.parameters())
    loaded = load_checkpoint_and_dispatch(empty, str(folder / "model.safetensors"), device_map={"": "cpu"},
                                          no_split_module_classes=ZetaForCausalLM._no_split_modules)
    loaded.eval()
    assert not any(p.device.type == "meta" for p in loaded.parameters())
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, logits, rtol=0, atol=1e-6)


def test_disk_offload_reproduces_logits(saved, tmp_path):
    folder, ids, logits = saved
    config = ZetaConfig.from_pretrained(folder)
    last = config.num_hidden_layers * 2 - 1  # attention and feedforward are separate layers
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "cpu",
                  **{f"model.layers.{i}": "disk" for i in range(2, last + 1)}}
    rest = AutoModelForCausalLM.from_pretrained(folder)
    named = {n for n, _ in rest.named_children()} | {f"model.{n}" for n, _ in rest.model.named_children()}
    for name in sorted(named - {"model", "model.layers"}):
        device_map.setdefault(name, "cpu")
    offload = tmp_path / "offload"
    loaded = AutoModelForCausalLM.from_pretrained(folder, device_map=device_map, offload_folder=str(offload)).eval()
    assert loaded.hf_device_map["model.layers.3"] == "disk"
    # Offloaded layers hold no weights in memory: they are read from disk (the safetensors file itself, which
    # accelerate memory-maps instead of copying into offload_folder) when the layer runs.
    offloaded = [p for n, p in loaded.named_parameters() if n.startswith(("model.layers.2.", "model.layers.3."))]
    assert offloaded and all(p.device.type == "meta" for p in offloaded)
    assert all(p.device.type == "cpu" for n, p in loaded.named_parameters() if n.startswith("model.layers.0."))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, logits, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------------------------------------
# 4. export: ONNX (dynamo) + onnxruntime, torch.compile
# --------------------------------------------------------------------------------------------------------------------


class LogitsOnly(torch.nn.Module):
    """Plain forward for export: input ids in, logits out, no cache.

    The ids go through the embedding here and enter the model as `inputs_embeds`; `IdsLogits` below feeds
    `input_ids` directly (ZetaModel skips its data-dependent id check while compiling or exporting).
    """

    def __init__(self, lm: ZetaForCausalLM):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        embeds = self.lm.get_input_embeddings()(input_ids)  # (b, n, d)
        return self.lm(inputs_embeds=embeds, use_cache=False).logits


class IdsLogits(LogitsOnly):
    """The same, but feeding `input_ids` to the model directly."""

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=input_ids, use_cache=False).logits




@pytest.mark.slow
def test_onnx_export_dynamic_batch_and_length_matches_pytorch(model, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    # transformers' sdpa integration passes `is_causal=query.shape[2] > 1`, a SymBool once the length is dynamic,
    # which sdpa rejects; eager attention (the reference implementation, same numbers) exports.
    model = tiny_lm()
    model.set_attn_implementation("eager")
    wrapper = LogitsOnly(model).eval()
    example = torch.randint(3, VOCAB, (2, 8), generator=torch.Generator().manual_seed(0))
    batch, length = torch.export.Dim("batch", max=64), torch.export.Dim("length", max=64)
    path = tmp_path / "zeta.onnx"
    torch.onnx.export(wrapper, (example,), str(path), dynamo=True, input_names=["input_ids"],
                      output_names=["logits"], dynamic_shapes={"input_ids": {0: batch, 1: length}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(2, 8), (1, 5), (3, 17)]:
        ids = torch.randint(3, VOCAB, shape, generator=torch.Generator().manual_seed(sum(shape)))
        (onnx_logits,) = session.run(None, {"input_ids": ids.numpy()})
        with torch.no_grad():
            expected = wrapper(ids)
        assert onnx_logits.shape == (*shape, VOCAB)
        torch.testing.assert_close(torch.from_numpy(onnx_logits), expected, rtol=1e-4, atol=1e-4)


def test_torch_export_with_input_ids():
    model = tiny_lm()
    model.set_attn_implementation("eager")  # sdpa's is_causal becomes a SymBool with a dynamic length (transformers)
    example = torch.randint(3, VOCAB, (2, 8))
    dims = {"input_ids": {0: torch.export.Dim("batch", max=64), 1: torch.export.Dim("length", max=64)}}
    exported = torch.export.export(IdsLogits(model).eval(), (example,), dynamic_shapes=dims, strict=False)
    ids = torch.randint(3, VOCAB, (3, 11))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(ids), model(ids, use_cache=False).logits, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_torch_compile_matches_eager(model):
    torch._dynamo.reset()
    ids = torch.randint(3, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eager = model(ids).logits
        compiled = torch.compile(LogitsOnly(model), fullgraph=True)(ids)  # inductor, one graph
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)


def test_torch_compile_fullgraph_with_input_ids(model):
    torch._dynamo.reset()
    ids = torch.randint(3, VOCAB, (2, 12))
    with torch.no_grad():
        compiled = torch.compile(IdsLogits(model), backend="eager", fullgraph=True)(ids)
        torch.testing.assert_close(compiled, model(ids, use_cache=False).logits, rtol=1e-4, atol=1e-5)
