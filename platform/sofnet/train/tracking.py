"""MLflow tracking of a training job: the URI check before training, and what rank 0 logs per run.

Usage::

    from sofnet.train.tracking import RunTracker, check_tracking, resolve_tracking_uri
    uri = resolve_tracking_uri(cfg.mlflow.tracking_uri)        # config, else $MLFLOW_TRACKING_URI, else ./mlflow.db
    check_tracking(uri, cfg.mlflow.experiment)                 # TrackingError now, not after an hour of training

    tracker = RunTracker(cfg, uri, tags={"git_commit": ..., "ray_job_id": ...})   # rank 0 only
    run_id = tracker.start("stage2")                           # or start("stage2", run_id=...) to resume
    tracker.log_metrics(metrics, step=epoch)
    tracker.log_eval(result, stage="stage2", epoch=epoch, class_names=names, figures=True)
    tracker.log_model(model, register=True, score=result.metrics["val/mAP"])
    tracker.end()

One MLflow run per stage: run name ``<name>/<stage> <arch> <backbone> <T>x<S>``, tags ``git_commit``,
``ray_job_id``, ``dataset``, ``stage``; the flattened config as params and the resolved ``config.yaml`` as an
artifact; per epoch the ``train/*`` and ``val/*`` (``val/et/*`` with early exit) metrics; per evaluated epoch the
per-class AP table; at the end of a stage the Figure A decision maps and the pyfunc model. The final stage's
model is registered, and the alias (``mlflow.alias``) points at the version with the best validation score.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import mlflow
from mlflow.tracking import MlflowClient

from sofnet.config import flatten, to_yaml

logger = logging.getLogger(__name__)
# MLflow draws a tqdm bar for every artifact download (each logged model is downloaded back to validate it): two
# bars per model in a console that should show one line per event.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

SCORE_TAG = "val_score"


class TrackingError(RuntimeError):
    """The MLflow tracking store cannot be used (unreachable server, bad URI)."""


def resolve_tracking_uri(configured: str = "", cwd: Optional[str] = None) -> str:
    """The tracking URI: the config's, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``.

    A relative ``sqlite:///x.db`` is made absolute against ``cwd`` so that Ray workers (whose working directory
    differs) write to the same file.
    """
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI", "")
    base = Path(cwd or os.getcwd())
    if not uri:
        return f"sqlite:///{base / 'mlflow.db'}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{base / uri[len('sqlite:///'):]}"
    return uri


def check_tracking(uri: str, experiment: str) -> str:
    """Fail fast: reach the store, create ``experiment`` if missing; returns its id.

    Raises:
        TrackingError: one line naming the URI and the cause.
    """
    if uri.startswith("http"):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    try:
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            return client.create_experiment(experiment)
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    except Exception as e:  # connection refused, DNS, HTTP 5xx, bad sqlite path: one clear line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TrackingError(f"MLflow tracking store {uri} is not usable: {first[:300]}") from None


def run_name(cfg: Any, stage: str, arch: str) -> str:
    """``<name>/<stage> <arch> <backbone> <T>x<S>``, e.g. ``anet_sofnet/stage2 sofnet resnet50 16x224``."""
    m = cfg.model
    return f"{cfg.name or cfg.data.dataset}/{stage} {arch} {m.backbone} {m.num_segments}x{m.input_size}"


class RunTracker:
    """Rank 0's MLflow logger; one run per stage (see the module docstring)."""

    def __init__(self, cfg: Any, tracking_uri: str, tags: Optional[Mapping[str, str]] = None) -> None:
        self.cfg, self.uri, self.tags = cfg, tracking_uri, dict(tags or {})
        mlflow.set_tracking_uri(tracking_uri)
        self.experiment_id = check_tracking(tracking_uri, cfg.mlflow.experiment)
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.run_id: Optional[str] = None

    def start(self, stage: str, arch: str, run_id: Optional[str] = None) -> str:
        """Start (or, with ``run_id``, reopen) the run of ``stage``; returns its id."""
        if run_id:
            run = mlflow.start_run(run_id=run_id)
            logger.info("MLflow: resumed run %s", run_id)
        else:
            tags = {**self.tags, "dataset": self.cfg.data.dataset, "stage": stage, "arch": arch}
            run = mlflow.start_run(experiment_id=self.experiment_id, run_name=run_name(self.cfg, stage, arch),
                                   tags=tags)
            params = {k: str(v)[:500] for k, v in flatten(self.cfg).items()}
            params["stage"] = stage
            mlflow.log_params(params)
            mlflow.log_text(to_yaml(self.cfg), "config.yaml")
            logger.info("MLflow: run %s (%s) in experiment %s at %s", run.info.run_id, run.info.run_name,
                        self.cfg.mlflow.experiment, self.uri)
        self.run_id = run.info.run_id
        return self.run_id

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log scalars at ``step`` (the epoch)."""
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_eval(self, result: Any, *, stage: str, epoch: int, class_names: Sequence[str], figures: bool) -> None:
        """The per-class AP table of an evaluation and, with ``figures``, the decision maps (Figure A).

        Args:
            result: A :class:`sofnet.train.loop.EvalResult`.
            stage: Stage name (artifact paths); epoch: 0-based epoch.
            class_names: ``K`` names.
            figures: Draw the decision maps of the first ``train.decision_map_videos`` videos (sorted ids).
        """
        table: Dict[str, List[Any]] = {"class": list(class_names), "ap": result.per_class_ap[""]}
        if "et" in result.per_class_ap:
            table["ap_et"] = result.per_class_ap["et"]
        mlflow.log_table(table, artifact_file=f"per_class_ap/epoch{epoch:03d}.json")
        if figures:
            self._decision_maps(result, epoch, class_names)

    def _decision_maps(self, result: Any, epoch: int, class_names: Sequence[str]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from sofnet.viz import decision_map

        a = result.arrays
        prefix = "et_" if "et_decisions" in a else ""
        for i, vid in enumerate(result.ids[: self.cfg.train.decision_map_videos]):
            label, pred = int(a["label"][i]), int(a[prefix + "scores"][i].argmax())
            fig = decision_map(a[prefix + "decisions"][i], exit_step=int(a[prefix + "exit_step"][i]),
                               inside=a["inside"][i], timestamps=a["timestamps"][i],
                               title=f"{vid} (epoch {epoch + 1}{', early exit' if prefix else ''})",
                               true_label=class_names[label] if 0 <= label < len(class_names) else None,
                               pred_label=class_names[pred] if pred < len(class_names) else str(pred))
            mlflow.log_figure(fig, f"decision_maps/epoch{epoch:03d}/{vid}.png")
            plt.close(fig)

    def log_model(self, model: Any, *, register: bool, score: Optional[float], step: int = 0,
                  best: Optional[Mapping[str, Any]] = None) -> Optional[str]:
        """Log the pyfunc model (linked to the metrics of epoch ``step``); when ``register`` and a registered name is
        configured, register it, tag the version with what it is (``best``: metric, value and epoch; GFLOPs/V and
        the early-exit setting) and move the alias to the best-scoring version. Returns the version, or None."""
        from sofnet.early_exit import EarlyExit
        from sofnet.train.pyfunc import log_pyfunc

        name = self.cfg.mlflow.registered_model if register else ""
        et = EarlyExit.from_config(self.cfg.early_exit)
        info = log_pyfunc(model, name="model", et=et.as_dict(), registered_model_name=name or None, step=step)
        if not name:
            return None
        version = str(info.registered_model_version)
        if score is not None:
            self.client.set_model_version_tag(name, version, SCORE_TAG, str(score))
        tags = {"best_metric": (best or {}).get("metric", ""), "best_epoch": str(step + 1),
                "early_exit": ("on" if et.enabled else "off") + f" rho={et.rho} t_min={et.t_min} mode={et.mode}"}
        for key in ("val/gflops_per_video", "val/et/gflops_per_video"):
            history = {m.step: m.value for m in self.client.get_metric_history(self.run_id, key)}
            if step in history:
                tags[key.replace("/", "_")] = f"{history[step]:.4f}"
        for k, v in tags.items():
            self.client.set_model_version_tag(name, version, k, v)
        self._drop_superseded(name, version)
        best = set_best_alias(self.client, name, self.cfg.mlflow.alias)
        logger.info("MLflow: registered %s version %s; alias %r -> version %s", name, version, self.cfg.mlflow.alias,
                    best)
        return version

    def _drop_superseded(self, name: str, version: str) -> None:
        """Delete versions of ``name`` that this same run registered before ``version``.

        A run registers once, at its final epoch; an earlier version from the same run means an attempt was killed
        between registering and checkpointing, and the resumed attempt re-ran that epoch. Keeping both would list one
        training run twice in the registry (and could leave the alias on the stale weights).
        """
        for old in self.client.search_model_versions(f"name='{name}' and run_id='{self.run_id}'"):
            if str(old.version) != version:
                logger.warning("MLflow: %s version %s came from an interrupted attempt of run %s; replaced by "
                               "version %s", name, old.version, self.run_id, version)
                self.client.delete_model_version(name, old.version)

    def end(self, status: str = "FINISHED") -> None:
        """End the active run."""
        if mlflow.active_run() is not None:
            mlflow.end_run(status=status)
        self.run_id = None


def set_best_alias(client: MlflowClient, name: str, alias: str) -> str:
    """Point ``alias`` at the version of ``name`` with the highest ``val_score`` tag (newest on ties)."""
    versions = client.search_model_versions(f"name='{name}'")

    def key(v: Any) -> tuple:
        try:
            score = float(v.tags.get(SCORE_TAG, "nan"))
        except ValueError:
            score = float("nan")
        return (score if score == score else float("-inf"), int(v.version))

    best = max(versions, key=key)
    client.set_registered_model_alias(name, alias, best.version)
    return str(best.version)
