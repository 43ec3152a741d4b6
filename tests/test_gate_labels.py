"""The pseudo-label diagnostic (``sofnet.gate_labels``, ``jobs/gate_labels.py``): each rule's "forward" rate per
gate on action vs background frames equals the rule applied to every head's confidence, and the command reads a
real checkpoint and real shards, or refuses bad input in one line."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from helpers import clips, tiny_model
from sofnet import checkpoint
from sofnet.config import model_config
from sofnet.gate_labels import label_rates, rate_rows
from sofnet.losses import gate_pseudo_labels, true_class_confidence
from sofnet.models import build_model
from sofnet.session import ensure_synthetic_shards

REPO = Path(__file__).resolve().parents[1]
EE = {"enabled": True, "rho": 0.99, "t_min": 2, "mode": "reached"}


def test_rates_are_the_rule_applied_to_every_frame_split_by_the_annotation() -> None:
    torch.manual_seed(0)
    model = tiny_model("sofnet", segments=4, classes=4, dtype=torch.float32).train()
    batches = []
    for seed in range(3):
        inside = torch.zeros(2, 4, dtype=torch.bool)
        inside[:, seed % 4:] = True
        batches.append({"frames": clips(2, 4, 64, seed, dtype=torch.float32), "label": torch.tensor([seed, 3]),
                        "inside": inside})
    rules = [("next", 0.0), ("final", 0.05)]
    result = label_rates(model, batches, rules)
    assert model.training  # restored
    assert result["videos"] == 6 and result["frames"] == {"action": 18, "background": 6}
    model.eval()
    with torch.no_grad():
        conf = torch.cat([true_class_confidence(model(b["frames"]), b["label"]) for b in batches])
    inside = torch.cat([b["inside"] for b in batches])
    for label, margin in rules:
        forward = gate_pseudo_labels(conf, label, margin).float()
        got = result["rates"][f"{label} {margin:g}"]
        torch.testing.assert_close(torch.tensor(got["action"]), forward[inside].mean(0))
        torch.testing.assert_close(torch.tensor(got["background"]), forward[~inside].mean(0))
    assert label_rates(model, batches, rules, max_videos=2)["videos"] == 2
    rows = rate_rows(result)
    assert rows[0].startswith("| rule (label margin) | frames | gate 0") and len(rows) == 2 + 2 * len(rules)
    with pytest.raises(ValueError, match="no videos"):
        label_rates(model, [], rules)


def _job():
    spec = importlib.util.spec_from_file_location("gate_labels_job", REPO / "jobs/gate_labels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_the_command_labels_a_checkpoint_and_refuses_bad_input(tmp_path: Path, capsys) -> None:
    shards = ensure_synthetic_shards(tmp_path / "data")
    torch.manual_seed(0)
    ckpts = {}
    for arch in ("sofnet", "tsn"):
        ckpts[arch] = tmp_path / arch
        model = build_model(model_config(arch=arch, backbone="resnet18", num_classes=3, num_segments=4,
                                         input_size=64, gate_hidden=16))
        checkpoint.write_model(ckpts[arch], model, EE)
        checkpoint.seal(ckpts[arch])
    main = _job()
    base = ["--config", str(REPO / "jobs/configs/demo.yaml"), f"data.val_shards={shards}", "data.batch_size=2",
            "data.num_workers=0", "model.num_classes=3"]
    capsys.readouterr()
    out_json = tmp_path / "rates.json"
    assert main(base + ["--checkpoint", str(ckpts["sofnet"]), "--rule", "final:0.05", "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    assert "| final 0.05 | action (" in printed and "| final 0.05 | background (" in printed
    assert '"final 0.05"' in out_json.read_text()
    for extra, needle in ((["--checkpoint", str(ckpts["sofnet"]), "--rule", "deeper:0.1"], "--rule deeper:0.1"),
                          (["--checkpoint", str(ckpts["sofnet"]), "--rule", "final:2"], "--rule final:2"),
                          (["--checkpoint", str(ckpts["tsn"])], "has no gates"),
                          (["--checkpoint", str(tmp_path / "nowhere")], "nowhere")):
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err
