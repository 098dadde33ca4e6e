"""Sharing on the Hub, end to end and offline: push, serve over HTTP, load in a process without zeta_hf.

The upload side is the real `push_to_hub` / `zeta-hf push` with only `HfApi.create_repo` and `HfApi.create_commit`
redirected into a local git repository per Hub repo. Those repositories are then served over the Hub's HTTP API on
127.0.0.1 by `olah` (a Hub mirror server that serves local git repositories), and a fresh Python process, in which
`import zeta_hf` fails, loads them with `from_pretrained("org/name", trust_remote_code=True)` and `HF_ENDPOINT`
pointed at the server. The test starts and stops the server itself, by its process id. A small in-process proxy in
front of olah turns olah's 401 for missing files into the Hub's 404 (see `_HubStatusTranslator`), so the client is a
plain install with peft present.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_model, run_without_zeta_hf
from huggingface_hub import CommitInfo, CommitOperationAdd, CommitOperationDelete, HfApi, ModelCard, RepoUrl
from safetensors import safe_open
from transformers import ByT5Tokenizer

from zeta_hf import ZetaForCausalLM
from zeta_hf import cli, cli_common
from zeta_hf.data import make_tokenizer

pytestmark = pytest.mark.slow

# next to this interpreter first: the test extra installs it into the venv, which need not be on PATH
OLAH = shutil.which("olah-cli", path=os.path.dirname(sys.executable)) or shutil.which("olah-cli")
GIT = shutil.which("git")
CODE_FILES = {"configuration_zeta.py", "modeling_zeta.py", "positional_zeta.py"}
IDS = [[40, 107, 104, 35, 122, 108, 119, 107, 35, 118], [103, 104, 105, 35, 105, 43, 123, 44, 61, 35]]


def tiny_lm(seed: int) -> ZetaForCausalLM:
    return make_tiny_model(seed=seed, vocab_size=384, hidden_size=32, num_attention_heads=4, head_dim=8,
                           position_embedding="rotary", num_memory_tokens=2)


# --------------------------------------------------------------------------------------------------------------------
# A local "Hub": one git repository per repo id, laid out as olah's mirrors-path expects (models/<org>/<name>)
# --------------------------------------------------------------------------------------------------------------------


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "zeta", "GIT_AUTHOR_EMAIL": "zeta@localhost",
           "GIT_COMMITTER_NAME": "zeta", "GIT_COMMITTER_EMAIL": "zeta@localhost"}
    return subprocess.run([GIT, *args], cwd=repo, env=env, check=True, capture_output=True, text=True).stdout.strip()


class LocalHub:
    """Stands in for the Hub's write API: `create_repo` makes a git repository, `create_commit` commits into it."""

    def __init__(self, root: Path, endpoint: str):
        self.root, self.endpoint, self.commits = root, endpoint, []

    def repo_dir(self, repo_id: str) -> Path:
        org, name = repo_id.split("/") if "/" in repo_id else ("local-user", repo_id)
        return self.root / "models" / org / name

    def create_repo(self, api, repo_id: str, *, exist_ok: bool = False, **kwargs) -> RepoUrl:
        repo = self.repo_dir(repo_id)
        if repo.exists() and not exist_ok:
            raise FileExistsError(repo_id)
        if not repo.exists():
            repo.mkdir(parents=True)
            _git(repo, "init", "-q", "-b", "main")
            (repo / ".gitattributes").write_text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
            _git(repo, "add", "-A")
            _git(repo, "commit", "-q", "-m", "initial commit")
        org, name = repo.parent.name, repo.name
        return RepoUrl(f"{self.endpoint}/{org}/{name}", endpoint=self.endpoint)

    def create_commit(self, api, repo_id: str, operations, *, commit_message: str, **kwargs) -> CommitInfo:
        repo = self.repo_dir(repo_id)
        assert repo.exists(), f"create_commit before create_repo for {repo_id}"
        for op in operations:
            target = repo / op.path_in_repo
            if isinstance(op, CommitOperationDelete):
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
            elif isinstance(op, CommitOperationAdd):
                target.parent.mkdir(parents=True, exist_ok=True)
                with op.as_file() as src:  # path, bytes or file object: huggingface_hub's own reader
                    target.write_bytes(src.read())
            else:
                raise NotImplementedError(type(op).__name__)
        _git(repo, "add", "-A")
        _git(repo, "commit", "-q", "--allow-empty", "-m", commit_message)
        oid = _git(repo, "rev-parse", "HEAD")
        self.commits.append((repo_id, commit_message, sorted(op.path_in_repo for op in operations)))
        return CommitInfo(commit_url=f"{self.endpoint}/{repo_id}/commit/{oid}", commit_message=commit_message,
                          commit_description="", oid=oid, _endpoint=self.endpoint)

    def files(self, repo_id: str) -> set[str]:
        return set(_git(self.repo_dir(repo_id), "ls-files").splitlines())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _HubStatusTranslator(BaseHTTPRequestHandler):
    """Passes every request through to olah, but answers a missing file with the Hub's 404 + EntryNotFound.

    olah 0.5.4 answers `resolve/<rev>/<missing file>` (and `api/models/<repo>/tree/<rev>/<missing folder>`) of a local
    mirror with 401 (its "repository not found"), where the Hub says 404 with `X-Error-Code: EntryNotFound`.
    transformers probes for optional files (model.safetensors before the sharded index, adapter_config.json when peft
    is installed, additional_chat_templates/, ...) and only treats the Hub's answer as "absent"; the 401 becomes
    RepositoryNotFoundError and the load fails. Everything else is olah's own response.
    """

    protocol_version = "HTTP/1.1"
    upstream: tuple[str, int] = ("127.0.0.1", 0)

    def do_HEAD(self) -> None:
        self._forward()

    def do_GET(self) -> None:
        self._forward()

    def _forward(self) -> None:
        conn = http.client.HTTPConnection(*self.upstream, timeout=120)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        conn.request(self.command, self.path, headers=headers)
        resp = conn.getresponse()
        data, status, out = resp.read(), resp.status, resp.getheaders()
        conn.close()
        if status == 401 and ("/resolve/" in self.path or "/tree/" in self.path):
            data = b'{"error":"Entry not found"}'
            status, out = 404, [("Content-Type", "application/json"), ("X-Error-Code", "EntryNotFound"),
                                ("X-Error-Message", "Entry not found")]
            out.append(("Content-Length", str(len(data))))
        self.send_response(status)
        for key, value in out:
            if key.lower() not in ("transfer-encoding", "connection", "server", "date") and not (
                    key.lower() == "content-length" and self.command == "GET"):
                self.send_header(key, value)
        if self.command == "GET":
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(data)

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass


@pytest.fixture(scope="module")
def olah_server(tmp_path_factory):
    """olah on 127.0.0.1, offline, serving the git repositories under `mirrors/`; stopped by its process id."""
    if OLAH is None or GIT is None:
        if os.environ.get("CI"):  # under CI the test extra is installed: a missing server is a failure, not a skip
            pytest.fail("olah-cli (test extra) or git is missing")
        pytest.skip("needs the `olah` package (test extra) and git")
    root = tmp_path_factory.mktemp("hub")
    port = _free_port()
    (root / "mirrors" / "models").mkdir(parents=True)
    (root / "olah.toml").write_text(textwrap.dedent(f"""
        [basic]
        host = "127.0.0.1"
        port = {port}
        repos-path = "{root / 'cache'}"
        mirrors-path = ["{root / 'mirrors'}"]
        mirror-netloc = "127.0.0.1:{port}"
        mirror-lfs-netloc = "127.0.0.1:{port}"

        [accessibility]
        offline = true
        """))
    log = open(root / "olah.log", "w")
    proc = subprocess.Popen([OLAH, "-c", str(root / "olah.toml")], cwd=root, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"olah did not start:\n{(root / 'olah.log').read_text()[-3000:]}")
                time.sleep(0.2)
        translator_cls = type("Translator", (_HubStatusTranslator,), {"upstream": ("127.0.0.1", port)})
        translator = ThreadingHTTPServer(("127.0.0.1", 0), translator_cls)
        thread = threading.Thread(target=translator.serve_forever, daemon=True)
        thread.start()
        try:
            yield LocalHub(root / "mirrors", f"http://127.0.0.1:{translator.server_address[1]}")
        finally:
            translator.shutdown()
            translator.server_close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def pushed(olah_server, tmp_path_factory):
    """Push two models through the real upload code: `model.push_to_hub` (sharded) and `zeta-hf push` (sharded)."""
    hub = olah_server
    work = tmp_path_factory.mktemp("push")
    tokenizer = make_tokenizer()
    api_model, cli_model = tiny_lm(1), tiny_lm(2)

    # A folder as an earlier `zeta-hf train` left it: weights, ByT5's tokenizer (which `zeta-hf` used before its own
    # byte-level one; such folders must keep working), training summary with held-out metrics.
    folder = work / "trained"
    cli_model.config.use_cache = False  # what Trainer leaves in saved checkpoints; the push turns it back on
    cli_model.save_pretrained(folder)
    ByT5Tokenizer().save_pretrained(folder)
    summary = dict(corpus_description="Python documentation (`pydoc_data.topics`)", eval_fraction=0.05, steps=30,
                   tokens_seen=3840, train_seconds=12.0, tokens_per_second=320.0, seq_len=32, batch_size=4,
                   gradient_accumulation_steps=1, world_size=1, learning_rate=1e-3, lr_scheduler="cosine",
                   warmup_steps=3, num_parameters=cli_model.num_parameters(), command="zeta-hf train --preset tiny",
                   license="mit", loss_curve=None,
                   before=dict(loss=6.0, perplexity=403.4, bits_per_byte=8.66),
                   after=dict(loss=2.1, perplexity=8.17, bits_per_byte=3.03))
    (folder / cli_common.SUMMARY_FILE).write_text(json.dumps(summary))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(HfApi, "create_repo", lambda api, repo_id, **kw: hub.create_repo(api, repo_id, **kw))
        mp.setattr(HfApi, "create_commit", lambda api, repo_id, operations, **kw:
                   hub.create_commit(api, repo_id, operations, **kw))
        # The uploader reads nothing from the Hub except an existing card (absent here, as on a new repo).
        mp.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
        api_model.push_to_hub("org/pushed", max_shard_size="40KB", commit_message="push_to_hub test")
        tokenizer.push_to_hub("org/pushed")
        cli.main(["push", str(folder), "org/cli", "--max-shard-size", "60KB"])

    ids = torch.tensor(IDS)
    with torch.no_grad():
        expected = {"org/pushed": api_model(ids).logits, "org/cli": cli_model(ids).logits}
        generated = {"org/pushed": api_model.generate(ids[:1, :5], max_new_tokens=6, do_sample=False).tolist(),
                     "org/cli": cli_model.generate(ids[:1, :5], max_new_tokens=6, do_sample=False).tolist()}
    return hub, expected, generated, summary


# --------------------------------------------------------------------------------------------------------------------
# The client: a fresh process with no zeta_hf (and no peft: see below), downloading over HTTP from olah
# --------------------------------------------------------------------------------------------------------------------

CLIENT = textwrap.dedent(
    """
    import json, sys
    import torch
    from huggingface_hub import HfApi, hf_hub_download
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids = torch.tensor(json.loads(sys.argv[1]))
    out = {}
    for repo_id in sys.argv[2:]:
        model = AutoModelForCausalLM.from_pretrained(repo_id, trust_remote_code=True).eval()
        tokenizer = AutoTokenizer.from_pretrained(repo_id, trust_remote_code=True)
        with torch.no_grad():
            logits = model(ids).logits
        generated = model.generate(ids[:1, :5], max_new_tokens=6, do_sample=False)
        out[repo_id] = {
            "class": type(model).__module__ + "." + type(model).__name__,
            "tokenizer": type(tokenizer).__name__,
            "tokenizer_roundtrip": tokenizer.decode(tokenizer("def f(x):", add_special_tokens=False)["input_ids"]),
            "tokenizer_default_ids": tokenizer("def f(x):")["input_ids"],
            "use_cache": model.config.use_cache,
            "logits": logits.tolist(),
            "generated": generated.tolist(),
            "siblings": sorted(HfApi().list_repo_files(repo_id)),
            "readme": open(hf_hub_download(repo_id, "README.md")).read(),
        }
    out["zeta_hf_loaded"] = any(m == "zeta_hf" or m.startswith("zeta_hf.") for m, v in sys.modules.items() if v)
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def downloaded(pushed, tmp_path_factory):
    hub = pushed[0]
    env = dict(HF_ENDPOINT=hub.endpoint, HF_HUB_DISABLE_TELEMETRY="1", NO_PROXY="127.0.0.1,localhost",
               no_proxy="127.0.0.1,localhost")
    return run_without_zeta_hf(CLIENT, json.dumps(IDS), "org/pushed", "org/cli", tmp=tmp_path_factory.mktemp("client"),
                               offline=False, env=env)


def _shards(files: set[str]) -> list[str]:
    return sorted(f for f in files if f.endswith(".safetensors"))


# --------------------------------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------------------------------


def test_push_to_hub_uploads_sharded_safetensors_config_code_and_tokenizer(pushed):
    hub = pushed[0]
    files = hub.files("org/pushed")
    shards = _shards(files)
    assert len(shards) >= 2 and all(s.startswith("model-0000") for s in shards), shards
    assert "model.safetensors.index.json" in files
    index = json.loads((hub.repo_dir("org/pushed") / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    assert CODE_FILES | {"config.json", "generation_config.json", "README.md", "tokenizer_config.json",
                         "tokenizer.json"} <= files
    config = json.loads((hub.repo_dir("org/pushed") / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_zeta.ZetaForCausalLM"
    assert config["auto_map"]["AutoModel"] == "modeling_zeta.ZetaModel"
    assert not any(f.endswith((".bin", ".pt", ".pth")) for f in files)  # safetensors only
    assert ("org/pushed", "push_to_hub test") == hub.commits[0][:2]


def test_cli_push_uploads_one_commit_with_rendered_card(pushed):
    hub, _, _, summary = pushed
    files = hub.files("org/cli")
    shards = _shards(files)
    assert len(shards) >= 2 and "model.safetensors.index.json" in files
    for shard in shards:
        with safe_open(hub.repo_dir("org/cli") / shard, "pt") as f:
            assert f.metadata().get("format") == "pt"
    assert CODE_FILES | {"config.json", "generation_config.json", "README.md", "tokenizer_config.json",
                         "training_summary.json"} <= files
    cli_commits = [c for c in hub.commits if c[0] == "org/cli"]
    assert len(cli_commits) == 1  # everything lands in one commit
    config = json.loads((hub.repo_dir("org/cli") / "config.json").read_text())
    assert config["use_cache"] is True and config["auto_map"]["AutoModel"] == "modeling_zeta.ZetaModel"

    card = ModelCard.load(hub.repo_dir("org/cli") / "README.md")
    assert "{{" not in card.content
    data = card.data
    assert data.library_name == "transformers" and data.pipeline_tag == "text-generation"
    assert {"zeta", "zeta_hf", "custom_code"} <= set(data.tags) and data.license == "mit"
    assert data.datasets is None and "datasets" not in card.content.split("---")[1]  # pydoc has no Hub dataset id
    results = {r.metric_type: r.metric_value for r in data.eval_results}
    assert results == {"bits_per_byte": 3.03, "perplexity": 8.17, "loss": 2.1}
    assert all(r.task_type == "text-generation" for r in data.eval_results)
    assert 'pipeline("text-generation", model="org/cli", trust_remote_code=True)' in card.text
    assert "| optimizer steps | 30 |" in card.text and "3.030" in card.text


def test_cli_push_reports_bad_shard_size(tmp_path, capsys):
    model = tiny_lm(0)
    model.save_pretrained(tmp_path / "m")
    ByT5Tokenizer().save_pretrained(tmp_path / "m")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["push", str(tmp_path / "m"), "org/x", "--max-shard-size", "lots"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "--max-shard-size" in err and "Traceback" not in err


@pytest.mark.parametrize("repo_id", ["org/pushed", "org/cli"])
def test_from_pretrained_over_http_without_zeta_hf_reproduces_logits(pushed, downloaded, repo_id):
    _, expected, generated, _ = pushed
    got = downloaded[repo_id]
    assert downloaded["zeta_hf_loaded"] is False
    assert got["class"].startswith("transformers_modules.") and got["class"].endswith("modeling_zeta.ZetaForCausalLM")
    assert got["tokenizer_roundtrip"] == "def f(x):"
    prompt_ids = [b + 3 for b in b"def f(x):"]
    if repo_id == "org/pushed":  # zeta-hf's own tokenizer: transformers' class, nothing appended to a prompt
        assert got["tokenizer"] in ("TokenizersBackend", "PreTrainedTokenizerFast")
        assert got["tokenizer_default_ids"] == prompt_ids
    else:  # a folder saved with ByT5's tokenizer keeps it, and its behaviour
        assert got["tokenizer"] == "ByT5Tokenizer" and got["tokenizer_default_ids"] == prompt_ids + [1]
    assert got["use_cache"] is True
    torch.testing.assert_close(torch.tensor(got["logits"]), expected[repo_id], rtol=0, atol=1e-6)
    assert got["generated"] == generated[repo_id]
    assert len(_shards(set(got["siblings"]))) >= 2  # the sharded checkpoint came over the wire


def test_card_served_over_http(downloaded):
    card = downloaded["org/cli"]["readme"]
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: text-generation\n")
    assert "model-index:" in card and "bits_per_byte" in card
