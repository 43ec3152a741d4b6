"""Evaluate a trained network (a checkpoint or a registered model) on shards with the skipping path.

Usage (what ``jobs/evaluate.py`` does)::

    python jobs/evaluate.py --model models:/sofnet-anet@best --config jobs/configs/anet_sofnet.yaml \
        --out results/anet --rho 0.99 --t-min 4
    python jobs/evaluate.py --checkpoint runs/anet_sofnet --config jobs/configs/anet_sofnet.yaml --out results/x

    from sofnet.train.evaluation import evaluate_model, load_trained
    model, spec = load_trained(checkpoint="runs/demo")          # latest checkpoint of a run, or one checkpoint dir
    report = evaluate_model(model, cfg, out_dir="results/demo", et=(0.999, 4, "reached"))

Writes ``metrics.json`` (``val/...`` without early exit, ``val/et/...`` with it, and the per-class AP) and the
official ActivityNet submission ``submission.json`` (and ``submission_et.json``) into ``out_dir``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from sofnet.data import make_eval_loader
from sofnet.metrics import export_submission
from sofnet.train.loop import evaluate
from sofnet.train.pyfunc import build_network

logger = logging.getLogger(__name__)


def latest_checkpoint(path: str | Path) -> Path:
    """``path`` itself when it holds ``weights.pt``, else its newest ``checkpoint-*`` subdirectory that does."""
    path = Path(path)
    if (path / "weights.pt").is_file():
        return path
    found = sorted((p for p in path.glob("checkpoint-*") if (p / "weights.pt").is_file()),
                   key=lambda p: ((p / "meta.json").stat().st_mtime if (p / "meta.json").exists() else 0, p.name))
    if not found:
        raise FileNotFoundError(f"{path}: no checkpoint with weights.pt (a run directory or a checkpoint-* folder)")
    return found[-1]


def load_trained(checkpoint: str = "", model_uri: str = "") -> Tuple[torch.nn.Module, Dict[str, Any]]:
    """The network and its spec (``{"model": hparams, "early_exit": {...}}``) from a checkpoint or an MLflow URI."""
    if model_uri:
        import mlflow

        python_model = mlflow.pyfunc.load_model(model_uri).unwrap_python_model()
        return python_model.model, python_model.spec
    ckpt = latest_checkpoint(checkpoint)
    spec = json.loads((ckpt / "model.json").read_text())
    logger.info("loading %s", ckpt)
    return build_network(spec, str(ckpt / "weights.pt")), spec


def evaluate_model(model: torch.nn.Module, cfg: Any, *, out_dir: str | Path, et: Optional[Tuple[float, int, str]],
                   class_names: Optional[list[str]] = None, shards: str = "", subset: str = "") -> Dict[str, Any]:
    """Evaluate ``model`` on ``cfg.data.val_shards`` (or ``shards``) in this process; write the reports.

    Args:
        model: The network (eval mode is set here).
        cfg: Our config (its ``data`` section: batch size, workers, resize, subset).
        out_dir: Where ``metrics.json`` and the submission files go.
        et: ``(rho, t_min, mode)`` for the early-exit columns, or None.
        class_names: ``K`` names for the submission (default: the shards' manifest).
        shards: Shards to read instead of ``cfg.data.val_shards``; subset: subset instead of ``cfg.data.val_subset``.

    Returns:
        The metrics dict written to ``metrics.json``.
    """
    from sofnet.train.worker import class_names as manifest_names

    hp = model.hparams()
    shards = shards or cfg.data.val_shards
    d = cfg.data
    loader = make_eval_loader(shards, num_segments=hp["num_segments"], input_size=hp["input_size"],
                              resize=max(d.resize, hp["input_size"]), batch_size=d.batch_size,
                              num_workers=d.num_workers, num_classes=hp["num_classes"], subset=subset or d.val_subset)
    result = evaluate(model, loader, device=torch.device("cpu"), num_classes=hp["num_classes"], et=et,
                      expected=loader.dataset.num_videos)
    names = class_names or manifest_names(shards, hp["num_classes"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {"model": hp, "early_exit": list(et) if et else None, "shards": shards, "metrics": result.metrics,
              "per_class_ap": {"class": names,
                               **{("ap_" + k if k else "ap"): v for k, v in result.per_class_ap.items()}}}
    (out / "metrics.json").write_text(json.dumps(report, indent=1))
    export_submission(result.ids, result.arrays["scores"], names, out / "submission.json")
    if "et_scores" in result.arrays:
        export_submission(result.ids, result.arrays["et_scores"], names, out / "submission_et.json")
    logger.info("wrote %s/metrics.json and the submission files", out)
    return report
