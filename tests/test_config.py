"""Config loading: defaults -> YAML -> dotlist, and one clear line for every mistake."""

from __future__ import annotations

import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from sofnet.config import ConfigError, flatten, load_config, save_config


def write(tmp_path, text, name="exp.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_yaml_then_dotlist(tmp_path):
    p = write(tmp_path, "model:\n  arch: sofnet_tsm\n  num_classes: 10\nloss:\n  alpha: 0.8\n")
    cfg = load_config(p, ["loss.alpha=0.7", "loss.beta=null", "early_exit.t_min=3"])
    assert cfg.model.arch == "sofnet_tsm" and cfg.model.num_classes == 10
    assert cfg.loss.alpha == 0.7 and cfg.loss.beta is None and cfg.early_exit.t_min == 3
    assert cfg.model.num_segments == 16 and cfg.model.gate_hidden == 512 and cfg.model.tau0 == 5.0
    assert cfg.model.tau_decay == 0.045


@pytest.mark.parametrize("text,dotlist,needle", [
    ("model:\n  arhc: tsn\n", [], "model.arhc"),
    ("model:\n  num_classes: many\n", [], "model.num_classes"),
    ("loss:\n  alpha: 1.5\n", [], "loss.alpha"),
    ("model:\n  arch: i3d\n", [], "model.arch"),
    ("model:\n  arch: sofnet_tsm\n  shift: bidirectional\n", [], "model.shift"),
    ("model:\n  gate_init: xavier\n", [], "model.gate_init"),
    ("", ["model.video_score=sum"], "model.video_score"),
    ("model:\n  arch: arnet\n  video_score: frames_seen\n", [], "model.video_score"),
    ("loss:\n  gate_label: deeper\n", [], "loss.gate_label"),
    ("", ["loss.gate_margin=1.5"], "loss.gate_margin"),
    ("", ["early_exit.rho=high"], "early_exit.rho"),
    ("", ["trian.seed=1"], "trian"),
    ("model: [1, 2\n", [], "not valid YAML"),
])
def test_mistakes_are_one_line_naming_key_and_file(tmp_path, text, dotlist, needle):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(p, dotlist)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg
    assert str(p) in msg or "command line" in msg


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_save_roundtrip_and_flatten(tmp_path):
    cfg = load_config(None, ["model.arch=tsn", "train.stage2.epochs=3"])
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    again = load_config(path)
    assert OmegaConf.to_container(again) == OmegaConf.to_container(cfg)
    flat = flatten(cfg)
    assert flat["model.arch"] == "tsn" and flat["train.stage2.epochs"] == 3 and "train.stage2.optim.lr" in flat


def test_cli_error_is_one_line_without_traceback(tmp_path):
    p = write(tmp_path, "model:\n  arhc: tsn\n")
    code = "import sys; from sofnet.config import load_config_or_exit; load_config_or_exit(sys.argv[1])"
    res = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr and "model.arhc" in res.stderr and str(p) in res.stderr
