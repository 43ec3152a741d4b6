"""The study tests' tiny study: a smoke-sized two-stage job of ``jobs/configs/demo.yaml`` (optionally with AR-Net) on
given shards, written as a study file, and ``jobs/study.py`` run on it in a subprocess.

Usage::

    from study_helpers import run_cli, tiny_study
    path = tiny_study(tmp_path, shards)              # <tmp>/study.yaml: study "t", seeds 1 and 2
    done = run_cli(tmp_path, path, "seeds=[1]")
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from sofnet.study import StudyConfig

REPO = Path(__file__).resolve().parents[1]

# AR-Net's job in the tiny study: the demo config as arch arnet, two small backbones, one epoch a phase
ARNET_TINY = ["model.arch=arnet", "model.arnet_backbones=[resnet18,resnet18]", "model.arnet_sizes=[64,32]",
              "model.arnet_policy_size=32", "model.arnet_hidden=16", "model.arnet_skips=[1,2]",
              "early_exit.enabled=false", "train.stage3.epochs=1"]


def tiny_overrides(shards: Path) -> list:
    """The smoke-sized job on ``shards`` (3 classes, one worker, nothing registered)."""
    from sofnet.session import SMOKE

    return SMOKE + [f"data.train_shards={shards}", f"data.val_shards={shards}", "model.num_classes=3",
                    "train.keep_checkpoints=1", "mlflow.registered_model=''", "scaling.num_workers=1"]


def tiny_study(tmp: Path, shards: Path, extra: str = "", arnet: bool = False) -> Path:
    """Study "t" (seeds 1 and 2, a 2 x 2 early-exit grid) written to ``<tmp>/study.yaml`` (``study_b.yaml`` with
    AR-Net), ``extra`` YAML appended; its runs go to ``<tmp>/runs``."""
    demo = str(REPO / "jobs/configs/demo.yaml")
    study = OmegaConf.structured(StudyConfig(name="t", base_config=demo, overrides=tiny_overrides(shards),
                                             seeds=[1, 2], output_dir=str(tmp / "runs")))
    if arnet:  # Table B: AR-Net's job is the same tiny demo config as arch arnet
        study.methods, study.arnet_config = ["tsn", "sofnet", "arnet"], demo
        study.arnet_overrides = tiny_overrides(shards) + ARNET_TINY
    study.et_grid.rho, study.et_grid.t_min = [0.5, 0.99], [1, 2]
    path = tmp / ("study_b.yaml" if arnet else "study.yaml")
    path.write_text(OmegaConf.to_yaml(study) + extra)
    return path


def run_cli(tmp: Path, path: Path, *extra: str) -> subprocess.CompletedProcess:
    """``python jobs/study.py --config path *extra`` in ``tmp`` (local Ray, MLflow in ``<tmp>/mlflow.db``)."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "DS_ACCELERATOR": "cpu",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run([sys.executable, str(REPO / "jobs/study.py"), "--config", str(path), *extra], cwd=tmp,
                          env=env, capture_output=True, text=True, timeout=900, start_new_session=True)
