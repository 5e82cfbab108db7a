"""python -m twist_lightning.export: compose, export a subnet or a pruned baseline, and errors before any write."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

import twist_lightning.dense_export as dense_export
import twist_lightning.export as export_cli
import twist_lightning.hf_export as hf_export
import twist_lightning.selection as selection
from test_checkpoint import fit_tiny_checkpoint
from twist_lightning.checkpoint_data import build_datamodule, train_calibration
from twist_lightning.export import export_from_config, load_exported, load_exported_vocab, register_configs

CONF = Path(__file__).resolve().parents[1] / "conf"
HAS_HF = importlib.util.find_spec("transformers") is not None


def test_names_that_moved_out_are_re_exported() -> None:
    from twist_lightning import config

    for name in ("CONFIG", "FORMAT", "VOCAB", "WEIGHTS", "export_subnet", "load_exported", "load_exported_vocab",
                 "write_export"):
        assert getattr(export_cli, name) is getattr(dense_export, name), name
    for name in ("HF_DIR", "HFLayout", "export_hf", "to_hf"):
        assert getattr(export_cli, name) is getattr(hf_export, name), name
    for name in ("SELECTORS", "check_size", "select_blueprint"):
        assert getattr(export_cli, name) is getattr(selection, name), name
    assert export_cli.ExportConfig is config.ExportConfig and export_cli.register_configs is config.register_configs


def test_export_cli_compose(tmp_path: Path) -> None:
    ckpt = fit_tiny_checkpoint(tmp_path)  # a real 3-step Lightning checkpoint with a compact vocabulary
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("export", overrides=[f"checkpoint={ckpt}", "size=2", "selector=importance", "common=none",
                                           f"out={tmp_path / 'out'}", f"hf={HAS_HF}"])
        summary = export_from_config(cfg)
        bad = compose("export", overrides=[f"checkpoint={ckpt}", "size=7", f"out={tmp_path / 'bad'}"])
        missing = compose("export", overrides=[f"checkpoint={tmp_path / 'none.ckpt'}", "size=1", "out=x"])
        with pytest.raises(ConfigCompositionException, match="hf_layout"):  # a typo fails before any work
            compose("export", overrides=[f"checkpoint={ckpt}", "size=1", "out=x", "hf=true", "hf_layout=narrow"])
    assert summary["param_ratio"] < 1.0
    sub = load_exported(tmp_path / "out")
    assert sub.config.layer_heads == [2, 2, 2] and load_exported_vocab(tmp_path / "out").size == 256
    if HAS_HF:  # the HF folder holds the same, smaller model
        import transformers

        hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "hf").eval()
        idx = torch.randint(0, sub.config.vocab_size, (1, 8))
        with torch.no_grad():
            torch.testing.assert_close(hf(idx).logits, sub(idx)[0], atol=1e-5, rtol=1e-5)
        assert load_exported_vocab(tmp_path / "out" / "hf") == load_exported_vocab(tmp_path / "out")
    with pytest.raises(ValueError, match=r"size=7 is out of range"):
        export_from_config(bad)
    assert not (tmp_path / "bad").exists()  # failed before writing anything
    with pytest.raises(FileNotFoundError, match="checkpoint="):
        export_from_config(missing)


@pytest.mark.parametrize("method", ["flap", "reconstruct"])
def test_export_pruned_model_reloads_with_the_same_logits(tmp_path: Path, method: str) -> None:
    from twist_lightning.checkpoint import load_gpt
    from twist_lightning.prune import calibrate, prune

    ckpt = fit_tiny_checkpoint(tmp_path)
    out = tmp_path / "pruned"
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("export", overrides=[f"checkpoint={ckpt}", "size=2", f"method={method}", "calib_samples=16",
                                           f"out={out}", f"hf={HAS_HF}"])
        summary = export_from_config(cfg)
        bad = compose("export", overrides=[f"checkpoint={ckpt}", "size=2", "method=obs", f"out={tmp_path / 'b'}"])
        clash = compose("export", overrides=[f"checkpoint={ckpt}", "size=2", "method=flap", "selector=importance",
                                             f"out={tmp_path / 'b'}"])
        uncompensated = compose("export", overrides=[f"checkpoint={ckpt}", "size=2", "method=flap",
                                                     "flap_compensate=false", "calib_samples=16",
                                                     f"out={tmp_path / 'u'}"])
    assert summary["param_ratio"] < 1.0
    sub = load_exported(out)
    assert sub.config.extra["export"]["method"] == method and sub.config.attn_scale[1] == 1.0
    # the same pruning done in Python gives the same model: the export stored the re-fitted weights, not a subnet
    model, vocab, saved = load_gpt(ckpt)
    dm, _ = build_datamodule(saved, {}, model.config.vocab_size, model.config.block_size, vocab)
    calib = calibrate(model, train_calibration(dm, 16, 0, torch.device("cpu")))
    ref = prune(model, 2, method, calib).model
    idx = torch.randint(0, sub.config.vocab_size, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(sub(idx)[0], ref(idx)[0])
        from twist_lightning.subnets import extract

        plain = extract(model, prune(model, 2, method, calib).blueprint, scale=False)
        assert not torch.allclose(sub(idx)[0], plain(idx)[0])  # the kept weights were changed
    if HAS_HF:
        import transformers

        hf = transformers.AutoModelForCausalLM.from_pretrained(out / "hf", trust_remote_code=True).eval()
        with torch.no_grad():
            torch.testing.assert_close(hf(idx).logits, sub(idx)[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="method='obs' is not a pruning method"):
        export_from_config(bad)
    with pytest.raises(ValueError, match="drop selector=importance"):
        export_from_config(clash)
    assert not (tmp_path / "b").exists()
    if method == "flap":  # FLAP's units without the compensation: the kept weights as they were, scaled
        export_from_config(uncompensated)
        plain_scaled = extract(model, prune(model, 2, "flap", calib).blueprint)
        with torch.no_grad():
            torch.testing.assert_close(load_exported(tmp_path / "u")(idx)[0], plain_scaled(idx)[0])
