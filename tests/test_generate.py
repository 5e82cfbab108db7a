"""python -m twist_lightning.generate: text from a trained checkpoint, its subnets and an exported 2/4 ticket."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from test_checkpoint import fit_tiny_checkpoint
from twist_lightning.export import ExportConfig, export_from_config
from twist_lightning.generate import GenerateConfig, generate_from_config, register_configs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A 30-step checkpoint (3 layers x 4 heads, compact 256-id vocabulary) and its random 2/4 ticket."""
    root = tmp_path_factory.mktemp("generate")
    ckpt = fit_tiny_checkpoint(root, steps=30)
    ticket = root / "ticket"
    export_from_config(OmegaConf.structured(ExportConfig(checkpoint=str(ckpt), out=str(ticket), size=2,
                                                         selector="random", seed=5, common="none")))
    return ckpt, ticket


def run(**kw) -> dict:
    kw.setdefault("max_new_tokens", 40)
    kw.setdefault("stop_at_eot", False)
    return generate_from_config(OmegaConf.structured(GenerateConfig(**kw)))


def test_text_from_the_checkpoint_same_seed_same_tokens(trained):
    ckpt, _ = trained
    a = run(checkpoint=str(ckpt), prompt="ROMEO:", seed=1, num_samples=2)
    b = run(checkpoint=str(ckpt), prompt="ROMEO:", seed=1, num_samples=2)
    c = run(checkpoint=str(ckpt), prompt="ROMEO:", seed=2, num_samples=2)
    assert a["compact_vocab"] and a["subnet"] is None
    assert [len(t) for t in a["tokens"]] == [40, 40] and all(len(s) > 20 for s in a["samples"])
    assert a["tokens"] == b["tokens"] and a["samples"] == b["samples"] and a["tokens"] != c["tokens"]
    assert a["tokens"][0] != a["tokens"][1]  # two samples, two draws


def test_a_ticket_samples_like_its_masked_subnet_in_the_checkpoint(trained):
    ckpt, ticket = trained
    from_ticket = run(ticket=str(ticket), prompt="To be", seed=3, temperature=1.0, top_k=50)
    masked = run(checkpoint=str(ckpt), size=2, selector="random", subnet_seed=5, common="none", prompt="To be",
                 seed=3, temperature=1.0, top_k=50)
    full = run(checkpoint=str(ckpt), prompt="To be", seed=3, temperature=1.0, top_k=50)
    assert from_ticket["compact_vocab"] and len(from_ticket["tokens"][0]) == 40
    assert from_ticket["tokens"] == masked["tokens"] and from_ticket["samples"] == masked["samples"]
    assert masked["subnet"]["blueprint"]["heads"] == json.loads((ticket / "config.json").read_text())["extra"][
        "blueprint"]["heads"]
    # the subnet is not the full model (sampled tokens can coincide for a 30-step model, so compare logits)
    import torch

    from twist_lightning.checkpoint import load_gpt
    from twist_lightning.export import load_exported

    full_model, sub = load_gpt(ckpt)[0], load_exported(ticket)
    idx = torch.tensor(masked["tokens"][:1])[:, :16]
    with torch.no_grad():
        assert not torch.allclose(full_model(idx)[0], sub(idx)[0], atol=1e-4)
    assert len(full["tokens"][0]) == 40


def test_importance_subnet_and_greedy_decoding(trained):
    ckpt, _ = trained
    greedy = [run(checkpoint=str(ckpt), size=0.5, selector="importance", temperature=0, seed=s) for s in (0, 1)]
    assert greedy[0]["tokens"] == greedy[1]["tokens"]  # greedy ignores the seed
    assert greedy[0]["subnet"]["selector"] == "importance"


@pytest.mark.parametrize("kw, match", [
    (dict(), "exactly one of checkpoint"),
    (dict(checkpoint="CKPT", ticket="TICKET"), "exactly one of checkpoint"),
    (dict(ticket="TICKET", size=2), "size=2 picks a subnet of a checkpoint"),
    (dict(checkpoint="CKPT", size=9), "size=9 is out of range"),
    (dict(checkpoint="CKPT", num_samples=0), "num_samples"),
    (dict(checkpoint="CKPT", temperature=-1.0), "temperature"),
])
def test_bad_settings_are_named(trained, kw, match):
    ckpt, ticket = trained
    kw = {k: (str(ckpt) if v == "CKPT" else str(ticket) if v == "TICKET" else v) for k, v in kw.items()}
    with pytest.raises(ValueError, match=match):
        run(**kw)


def test_cli_prints_the_prompt_and_its_continuation(trained, tmp_path):
    _, ticket = trained
    out = tmp_path / "gen.json"
    proc = subprocess.run([sys.executable, "-m", "twist_lightning.generate", f"ticket={ticket}", "prompt='To be, or'",  # Hydra: quote a value with a comma
                           "max_new_tokens=12", "seed=4", f"out={out}", f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert proc.stdout == "To be, or" + result["samples"][0] + "\n" and len(result["samples"][0]) > 0
    again = run(ticket=str(ticket), prompt="To be, or", max_new_tokens=12, seed=4, stop_at_eot=True)
    assert again["tokens"] == result["tokens"]


def test_cli_config_composes_and_rejects_a_typo():
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("generate", overrides=["ticket=x", "top_k=null", "selector=importance"])
        assert cfg.top_k is None and cfg.prompt == "\n" and cfg.selector.value == "importance"
        with pytest.raises(Exception, match="max_new_tokenz"):
            compose("generate", overrides=["max_new_tokenz=3"])
        with pytest.raises(Exception, match="selector"):
            compose("generate", overrides=["selector=biggest"])


def test_names_that_moved_out_are_re_exported():
    import twist_lightning.generate as generate_cli
    from twist_lightning import config, generation, selection

    for name in ("decode_ids", "encode_prompt"):
        assert getattr(generate_cli, name) is getattr(generation, name)
    assert generate_cli.Selector is selection.Selector and generate_cli.GenerateConfig is config.GenerateConfig
