"""Loading a folder someone else wrote runs nothing from it (issue 14).

A config.json whose `embedding_provider` names code (a third-party callable, a package's `__main__`, a `.py` file next
to the weights with the working directory in the folder, standard-library callables, re-exports through another
module), and modeling files in the folder changed to leave a trace, are loaded in a child process through
`from_pretrained`, the Auto classes and the `zeta-hf` commands, with and without `import zeta_hf` first. An audit hook
(`sys.addaudithook`) installed after a warm-up load records every import of a module not yet imported, every
exec / compile, every process start, `os.system` and `os.kill`: none may happen, every load must fail with a clear
error, and no trace file may appear.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from zeta_hf import ZetaConfig, ZetaForCausalLM
from zeta_hf.data import make_tokenizer

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
ENV.pop("ZETA_HF_DEBUG", None)

# Values of `embedding_provider` an attacker (or a careless user) might write into config.json.
ATTACKS = [
    "zeta_evil_pkg.mod:factory",  # a third-party callable
    "zeta_evil_pkg.__main__:run",  # a package's command-line program
    "zeta_evil_pkg:__main__",
    "evil_local:factory",  # a .py file shipped beside the weights, found through the working directory
    "os:system",  # standard-library callables
    "os:kill",
    "builtins:exec",
    "subprocess:Popen",
    "zeta_evil_pkg.reexport:system",  # os.system re-exported by a third-party module
    "zeta_hf.modeling_zeta:sys.exit",  # a stdlib callable reached through our own module
]

EVIL_PACKAGE = {
    "__init__.py": "import os; open(os.path.join(os.environ['ZETA_EVIL_MARKERS'], 'package-imported'), 'w').close()\n",
    "mod.py": textwrap.dedent(
        """
        import os
        open(os.path.join(os.environ['ZETA_EVIL_MARKERS'], 'mod-imported'), 'w').close()

        def factory(num_tokens, dim):
            open(os.path.join(os.environ['ZETA_EVIL_MARKERS'], 'factory-called'), 'w').close()
        """
    ),
    "__main__.py": "import os; open(os.path.join(os.environ['ZETA_EVIL_MARKERS'], 'main-run'), 'w').close()\n",
    "reexport.py": "from os import system\n",
}
TRACE = "import os; open(os.path.join(os.environ['ZETA_EVIL_MARKERS'], {name!r}), 'w').close()\n"

# Runs in the child: warm up on a harmless provider name (same code path), install the audit hook, try every attack.
CHILD = textwrap.dedent(
    r"""
    import contextlib, io, json, os, sys
    mode, folder, import_first = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    attacks = json.loads(sys.argv[4])
    if import_first:
        import zeta_hf
        from zeta_hf import ZetaForCausalLM, cli
    import transformers
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
    transformers.logging.set_verbosity_error()
    config_path = os.path.join(folder, "config.json")
    kwargs_path = os.path.join(folder, "..", "kwargs.json")
    base = json.load(open(config_path))
    base_kwargs = json.load(open(kwargs_path))

    def set_provider(name):
        json.dump({**base, "embedding_provider": name}, open(config_path, "w"))
        json.dump({**base_kwargs, "embedding_provider": name}, open(kwargs_path, "w"))

    def run_cli(argv):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                cli.main(argv)
                return "exit 0: " + err.getvalue()
            except SystemExit as exit:
                return f"exit {exit.code}: {err.getvalue()}"

    loaders = {}
    if mode == "api" and import_first:
        loaders["ZetaForCausalLM"] = lambda: ZetaForCausalLM.from_pretrained(folder)
    if mode == "api":
        loaders["AutoModelForCausalLM"] = lambda: AutoModelForCausalLM.from_pretrained(folder)
        loaders["AutoModel"] = lambda: AutoModel.from_pretrained(folder)
        loaders["AutoConfig+from_config"] = lambda: AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    if mode == "cli":
        out = os.path.join(folder, "..", "converted")
        loaders["generate"] = lambda: run_cli(["generate", "--model", folder, "--max-new-tokens", "1"])
        loaders["eval"] = lambda: run_cli(["eval", "--model", folder, "--max-eval-sequences", "1"])
        loaders["push"] = lambda: run_cli(["push", folder, "me/model"])
        loaders["convert"] = lambda: run_cli(["convert", "--checkpoint", os.path.join(folder, "..", "zeta.pt"),
                                              "--kwargs", kwargs_path, "--output-dir", out])

    def attempt(load):
        try:
            return "returned " + str(load())
        except Exception as err:
            return f"{type(err).__name__}: {err}"

    set_provider("harmless_name:factory")
    for load in loaders.values():
        attempt(load)  # every module these paths import lazily is imported now

    events = []
    WATCHED = ("exec", "compile", "subprocess.Popen", "os.system", "os.kill", "os.killpg", "os.posix_spawn",
               "os.spawn", "os.exec", "os.fork", "os.startfile", "pty.spawn", "ctypes.dlopen")

    def hook(event, args):
        if event == "import" or event in WATCHED:
            events.append(f"{event} {str(args[0])[:200] if args else ''}")

    results = {}
    sys.addaudithook(hook)
    for name in attacks:
        set_provider(name)
        for loader, load in loaders.items():
            results[f"{loader} <- {name}"] = attempt(load)
    seen = len(events)
    # a control: the hook is live and sees the import of a module not imported before
    fresh = next(name for name in ("tabnanny", "mailbox", "colorsys", "wave") if name not in sys.modules)
    __import__(fresh)
    control = [fresh] + events[seen:]
    del events[seen:]
    print("RESULT " + json.dumps({"events": events, "results": results, "control": control}))
    """
)


@pytest.fixture(scope="module")
def attack_site(tmp_path_factory) -> Path:
    """A model folder with traps in it, a third-party package on the path, a Zeta checkpoint and its kwargs."""
    root = tmp_path_factory.mktemp("site")
    folder = root / "model"
    torch.manual_seed(0)
    config = ZetaConfig(vocab_size=384, max_position_embeddings=32, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, head_dim=16)
    ZetaForCausalLM(config).save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    (folder / "evil_local.py").write_text(TRACE.format(name="local-imported") + "def factory(n, d): pass\n")
    for code in folder.glob("*.py"):  # the modeling code saved for remote loading, changed to leave a trace
        if code.name != "evil_local.py":
            code.write_text(TRACE.format(name=f"{code.name}-run") + code.read_text())
    package = root / "site" / "zeta_evil_pkg"
    package.mkdir(parents=True)
    for name, text in EVIL_PACKAGE.items():
        (package / name).write_text(text)
    torch.save({"token_emb.emb.weight": torch.zeros(384, 32)}, root / "zeta.pt")
    (root / "kwargs.json").write_text(json.dumps(
        {"num_tokens": 384, "max_seq_len": 32, "attn_layers": {"type": "Decoder", "dim": 32, "depth": 1, "heads": 2}}))
    (root / "markers").mkdir()
    return root


@pytest.mark.parametrize("mode,import_first", [("api", True), ("api", False), ("cli", True)],
                         ids=["api-after-import-zeta_hf", "auto-classes-without-import", "cli"])
def test_nothing_named_in_a_folder_is_imported_or_run(attack_site, mode, import_first):
    folder = attack_site / "model"
    env = {**ENV, "ZETA_EVIL_MARKERS": str(attack_site / "markers"),
           "PYTHONPATH": os.pathsep.join([str(attack_site / "site"), ENV.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", CHILD, mode, str(folder), "1" if import_first else "0",
                           json.dumps(ATTACKS)], cwd=folder, env=env, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)  # transformers asks about remote code when stdin is a terminal
    # (transformers' remote-code question, answered by the empty stdin, may precede the report on its line)
    assert proc.returncode == 0 and "RESULT " in proc.stdout, proc.stdout + proc.stderr
    report = json.loads(proc.stdout.rsplit("RESULT ", 1)[1])
    assert f"import {report['control'][0]}" in report["control"][1:], report["control"]
    assert report["events"] == [], f"imports / code execution while loading: {report['events'][:10]}"
    assert sorted(os.listdir(attack_site / "markers")) == [], "code from the folder or the package ran"
    assert len(report["results"]) >= len(ATTACKS) * 3
    for case, outcome in report["results"].items():
        if mode == "cli":
            assert outcome.startswith("returned exit 1: zeta-hf ") and outcome.count("\n") == 1, f"{case}: {outcome}"
            assert "embedding_provider" in outcome, f"{case}: {outcome}"
        elif import_first:
            assert outcome.startswith("ValueError: ") and "never imports code named in a config file" in outcome, \
                f"{case}: {outcome}"
        else:  # transformers does not know the model type and refuses the folder's code without trust_remote_code
            assert outcome.startswith("ValueError: ") and "trust_remote_code" in outcome, f"{case}: {outcome}"
