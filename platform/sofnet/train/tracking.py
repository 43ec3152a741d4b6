"""MLflow tracking of a training job: the URI check before training, and what rank 0 logs per run.

Usage::

    from sofnet.train.tracking import RunTracker, check_tracking, resolve_tracking_uri
    uri = resolve_tracking_uri(cfg.mlflow.tracking_uri)        # config, else $MLFLOW_TRACKING_URI, else ./mlflow.db
    check_tracking(uri, cfg.mlflow.experiment)                 # TrackingError now, not after an hour of training

    tracker = RunTracker(cfg, uri, tags={"mlflow.source.git.commit": ..., "ray_job_id": ...})   # rank 0 only
    job_id = tracker.start_job(stages)                         # the job's parent run (or start_job(stages, run_id))
    run_id = tracker.start("stage2", stage_model)              # nested; or start("stage2", model, run_id=...)
    tracker.log_metrics(metrics, step=epoch + 1)          # steps are 1-based epochs
    tracker.log_eval(result, stage="stage2", epoch=epoch, class_names=names, figures=True)
    tracker.log_model(model, register=True, score=result.metrics["val/mAP"])
    tracker.end()
    tracker.end_job()

One parent run per job (the experiment is tagged as a model-training experiment; the run has the flattened
config, ``config.yaml``, a description and MLflow's source tags: ``mlflow.source.git.commit``, ``mlflow.source.name``)
and one nested run per stage: run name ``<name>/<stage> <arch> <backbone> <T>x<S>``, tags ``ray_job_id``,
``dataset``, ``stage``; the stage's effective config as params and ``config.yaml``; the shards as MLflow datasets
(training / validation, with the manifest's digest and counts); CPU and memory system metrics; per epoch the
``train/*`` and ``val/*`` (``val/et/*`` with early exit) metrics; per evaluated epoch the per-class AP table; at
the end of a stage the Figure A decision maps and the pyfunc model. The final stage's model is registered, and the
alias (``mlflow.alias``) points at the version with the best validation score.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import mlflow
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from sofnet.config import flatten, to_yaml
from sofnet.machine import fingerprint

logger = logging.getLogger(__name__)

SCORE_TAG = "val_score"
# Without this tag MLflow 3's UI opens an experiment on its GenAI traces page instead of the runs table.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


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


def ui_hint(uri: str) -> str:
    """The two lines a job prints at its end: the command that opens the MLflow UI on ``uri``, and the page to open.

    MLflow 3.17's UI opens on its GenAI pages unless the URL asks for model training (``workflowType``).
    """
    return (f"MLflow UI: {Path(sys.executable).parent}/mlflow ui --backend-store-uri {uri} --port 5000\n"
            "  then open http://127.0.0.1:5000/#/experiments?workflowType=machine_learning")


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
            return client.create_experiment(experiment, tags=EXPERIMENT_TAGS)
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        for key, value in EXPERIMENT_TAGS.items():
            if exp.tags.get(key) != value:
                client.set_experiment_tag(exp.experiment_id, key, value)
        return exp.experiment_id
    except Exception as e:  # connection refused, DNS, HTTP 5xx, bad sqlite path: one clear line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TrackingError(f"MLflow tracking store {uri} is not usable: {first[:300]}") from None


def backbone_name(m: Any) -> str:
    """The network(s) of a model config: ``resnet50``, or AR-Net's ``resnet50@224+resnet34@168+resnet18@112``."""
    if m["arch"] == "arnet":
        return "+".join(f"{n}@{s}" for n, s in zip(m["arnet_backbones"], m["arnet_sizes"]))
    return str(m["backbone"])


def run_name(cfg: Any, stage: str, arch: str) -> str:
    """``<name>/<stage> <arch> <backbone> <T>x<S>``, e.g. ``anet_sofnet/stage2 sofnet resnet50 16x224``."""
    m = cfg.model
    return f"{cfg.name or cfg.data.dataset}/{stage} {arch} {backbone_name(m)} {m.num_segments}x{m.input_size}"


def description(cfg: Any, stages: Sequence[Any]) -> str:
    """The job run's description (MLflow shows it on the run page): what is trained on what, stage by stage."""
    m = cfg.model
    parts = [f"{s.name}: {s.model['arch']} for {s.epochs} epochs" for s in stages]
    return (f"{cfg.name or cfg.data.dataset}: {m.arch} ({backbone_name(m)}, {m.num_segments} frames at "
            f"{m.input_size} px) on {cfg.data.dataset}; " + "; ".join(parts)
            + f"; loss alpha={cfg.loss.alpha} beta={cfg.loss.beta}")


def log_input(dataset: Any, tags: Dict[str, str], context: str, attempts: int = 3) -> None:
    """``mlflow.log_input`` on the active run, again if another job logged the same dataset at the same moment.

    Jobs that start together (a study's seeds, a sweep's trials) log the same shards into one experiment, and MLflow's
    SQL store looks the dataset up before it inserts it: the second of two inserts fails the table's unique key and,
    unhandled, fails that job's first attempt (seen with two seeds started at once). Then the row exists, and logging
    again links it to this run.
    """
    from mlflow.exceptions import MlflowException

    for attempt in range(attempts):
        try:
            mlflow.log_input(dataset, context=context, tags=tags)
            return
        except MlflowException as e:
            text = str(e).lower()  # SQLite's "UNIQUE constraint failed", PostgreSQL's "violates unique constraint"
            if "unique constraint" not in text or "dataset" not in text or attempt + 1 == attempts:
                raise


def shard_dataset(shards: str, subset: str) -> tuple:
    """An MLflow dataset for shards (name, source, digest) and the tags logged with it (videos, shards, how many of
    the annotation's videos are present, fps, short side: what makes two runs' data differ)."""
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    from sofnet.data import read_manifest
    from sofnet.shards import shard_directory

    directory = shard_directory(shards)
    try:
        manifest = read_manifest(directory)
    except (OSError, ValueError):
        manifest = {}
    entry = manifest.get("subsets", {}).get(subset, {})
    params = manifest.get("params", {})
    tags = {"subset": subset, "videos": entry.get("videos"), "shards": len(entry.get("shards", [])) or None,
            "annotated": entry.get("annotated"), "present": entry.get("present"), "fps": params.get("fps"),
            "short_side": params.get("short_side"), "manifest_digest": entry.get("digest") or manifest.get("digest")}
    with warnings.catch_warnings():  # a local path matches two equivalent source types; MLflow warns about it
        warnings.simplefilter("ignore")
        source = resolve_dataset_source(shards)
    digest = (tags["manifest_digest"] or "")[:36] or None  # MLflow keeps at most 36 characters
    dataset = MetaDataset(source=source, name=f"{manifest.get('dataset', 'shards')}/{subset}", digest=digest)
    return dataset, {k: str(v) for k, v in tags.items() if v is not None}


class RunTracker:
    """Rank 0's MLflow logger: a parent run per job, a nested run per stage (see the module docstring)."""

    def __init__(self, cfg: Any, tracking_uri: str, tags: Optional[Mapping[str, str]] = None) -> None:
        self.cfg, self.uri, self.tags = cfg, tracking_uri, dict(tags or {})
        self.machine = fingerprint()  # this process's machine: read once, tagged on every run it opens
        mlflow.set_tracking_uri(tracking_uri)
        self.experiment_id = check_tracking(tracking_uri, cfg.mlflow.experiment)
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.run_id: Optional[str] = None
        self.logged_epochs: set[int] = set()  # the stage run's epochs already in MLflow (a resumed run)
        self.job_id: Optional[str] = None

    def start_job(self, stages: Sequence[Any], run_id: Optional[str] = None) -> str:
        """Start (or reopen) the job's parent run: the whole config, its description and source tags."""
        if run_id:
            run = mlflow.start_run(run_id=run_id)
            self._refresh_placement(run)
        else:
            tags = {**self.tags, **self.machine, "dataset": self.cfg.data.dataset,
                    "mlflow.note.content": description(self.cfg, stages)}
            run = mlflow.start_run(experiment_id=self.experiment_id, run_name=self.cfg.name or self.cfg.data.dataset,
                                   tags=tags)
            mlflow.log_params({k: str(v)[:500] for k, v in flatten(self.cfg).items()})
            mlflow.log_text(to_yaml(self.cfg), "config.yaml")
        self.job_id = run.info.run_id
        logger.info("MLflow: job run %s (%s) in experiment %s at %s", self.job_id, run.info.run_name,
                    self.cfg.mlflow.experiment, self.uri)
        return self.job_id

    def start(self, stage: str, model: Mapping[str, Any], run_id: Optional[str] = None) -> str:
        """Start (or, with ``run_id``, reopen) the run of ``stage``, nested in the job's run; returns its id.

        Its params are the settings the stage really trains with: ``model.*`` is the stage's model (stage 1 of a
        SoF-Net job trains a TSN, and says ``model.arch: tsn``). CPU, memory (and GPU) system metrics are logged.
        """
        self.logged_epochs = set()
        if run_id:
            run = mlflow.start_run(run_id=run_id, nested=True, log_system_metrics=True)
            self._refresh_placement(run)
            self.logged_epochs = {int(m.step) for m in self.client.get_metric_history(run_id, "epoch")}
            logger.info("MLflow: resumed run %s", run_id)
        else:
            arch = model["arch"]
            note = (f"{stage} of {self.cfg.name or self.cfg.data.dataset}: trains {arch} ({backbone_name(model)}, "
                    f"{model['num_segments']} frames at {model['input_size']} px); the job's run holds the whole "
                    "config")
            tags = {**self.tags, **self.machine, "dataset": self.cfg.data.dataset, "stage": stage, "arch": arch,
                    "mlflow.note.content": note}
            run = mlflow.start_run(experiment_id=self.experiment_id, run_name=run_name(self.cfg, stage, arch),
                                   tags=tags, nested=True, log_system_metrics=True)
            effective = OmegaConf.merge(self.cfg, {"model": dict(model)})
            params = {k: str(v)[:500] for k, v in flatten(effective).items()}
            params["stage"] = stage
            mlflow.log_params(params)
            mlflow.log_text(to_yaml(effective), "config.yaml")
            d = self.cfg.data
            for context, shards, subset in (("training", d.train_shards, d.train_subset),
                                             ("validation", d.val_shards, d.val_subset)):
                log_input(*shard_dataset(shards, subset), context)
            logger.info("MLflow: run %s (%s)", run.info.run_id, run.info.run_name)
        self.run_id = run.info.run_id
        return self.run_id

    def _refresh_placement(self, run: Any) -> None:
        """A resumed attempt may run elsewhere (a lost node): ``node_ips`` and the ``machine.*`` tags say where this
        attempt runs; the earlier placements stay in ``node_ips_history`` (attempts separated by ``;``)."""
        current = self.tags.get("node_ips")
        before = run.data.tags.get("node_ips")
        if current and before and current != before:
            history = run.data.tags.get("node_ips_history", before)
            mlflow.set_tag("node_ips_history", history if history.endswith(before) else f"{history};{before}")
        ranks = {k: v for k, v in self.tags.items() if k.startswith("machine.")}  # sofnet.machine.rank_tags
        for stale in [k for k in run.data.tags if k.startswith("machine.rank") and k not in ranks]:
            mlflow.delete_tag(stale)  # the earlier attempt's ranks differed in what this attempt's do not
        mlflow.set_tags({k: v for k, v in {**self.machine, **ranks, "node_ips": current}.items() if v})

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log derived settings (e.g. world size, global batch, effective lr) on the active run."""
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log scalars at ``step`` (the epoch)."""
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def first_logged(self, epoch: int) -> bool:
        """Whether 1-based ``epoch`` is new in the stage's run; False if a lost attempt already logged it.

        An attempt lost after logging an epoch but before Ray Train registered that epoch's checkpoint leaves its
        metrics behind, and the resumed attempt trains the epoch again. MLflow cannot delete a logged value, so the
        first values stand (from the same checkpoint and seed they are the retrained epoch's on one kind of machine)
        and the run's tag ``epochs_logged_by_lost_attempt`` names such epochs: each epoch is in the history once.
        """
        if epoch not in self.logged_epochs:
            return True
        seen = mlflow.get_run(self.run_id).data.tags.get("epochs_logged_by_lost_attempt", "")
        mlflow.set_tag("epochs_logged_by_lost_attempt", ",".join(filter(None, [seen, str(epoch)])))
        logger.info("epoch %d was logged by an attempt lost before its checkpoint: its first values stand", epoch)
        return False

    def log_eval(self, result: Any, *, stage: str, epoch: int, class_names: Sequence[str], figures: bool) -> None:
        """The per-class AP table of an evaluation and, with ``figures``, the decision maps (Figure A).

        Args:
            result: A :class:`sofnet.evaluation.EvalResult`.
            stage: Stage name (artifact paths); epoch: 0-based epoch.
            class_names: ``K`` names.
            figures: Draw the decision maps, with their frames, of the ``train.decision_maps_correct`` most
                confident correct and ``train.decision_maps_failed`` most confident failed videos
                (``decision_maps/epochNNN/{correct,failed}/<id>.png``, NNN the 1-based epoch; ``sofnet.figure_a``).
        """
        table: Dict[str, List[Any]] = {"class": list(class_names), "ap": result.per_class_ap[""]}
        if "et" in result.per_class_ap:
            table["ap_et"] = result.per_class_ap["et"]
        # artifact folders name the 1-based epoch, as the metric steps do (epoch001 = the first epoch)
        mlflow.log_table(table, artifact_file=f"per_class_ap/epoch{epoch + 1:03d}.json")
        if figures:
            self._decision_maps(result, epoch, class_names)

    def _decision_maps(self, result: Any, epoch: int, class_names: Sequence[str]) -> None:
        """Figure A of the chosen videos; their frames are read again from the eval shards (one pass at most: a
        failure to read them is a warning, and the maps are drawn without frames)."""
        from sofnet.clips import DataError
        from sofnet.figure_a import FigureError, choose_videos, eval_frames, figures

        t, d = self.cfg.train, self.cfg.data
        picks = choose_videos(result, t.decision_maps_correct, t.decision_maps_failed)
        ids = [v for group in picks.values() for v in group]
        size = int(self.cfg.model.input_size)
        try:
            frames = eval_frames(d.val_shards, ids, subset=d.val_subset,
                                 num_segments=int(result.arrays["decisions"].shape[1]), input_size=size,
                                 resize=max(int(d.resize), size))
        except (OSError, DataError, FigureError) as e:
            logger.warning("decision maps drawn without their frames: %s", str(e).splitlines()[0])
            frames = {}
        for rel, fig in figures(result, picks, class_names, frames, note=f"epoch {epoch + 1}"):
            mlflow.log_figure(fig, f"decision_maps/epoch{epoch + 1:03d}/{rel}")

    def log_model(self, model: Any, *, register: bool, score: Optional[float], step: int = 0,
                  best: Optional[Mapping[str, Any]] = None) -> Optional[str]:
        """Log the pyfunc model (linked to the metrics of ``step``, the 1-based epoch); when ``register`` and a name is
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
        tags = {"best_metric": (best or {}).get("metric", ""), "best_epoch": str(step),
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
        """End the active stage run (the job's run stays open)."""
        if self.run_id is not None and mlflow.active_run() is not None:
            mlflow.end_run(status=status)
        self.run_id = None

    def end_job(self, status: str = "FINISHED") -> None:
        """End the job's run (and a stage run still open, with the same status)."""
        self.end(status)
        if mlflow.active_run() is not None:
            mlflow.end_run(status=status)
        self.job_id = None


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


def log_evaluation(tracking_uri: str, parent_run_id: str, run_name: str, report: Mapping[str, Any],
                   files: Sequence[str | Path] = ()) -> str:
    """Log an evaluation (``jobs/evaluate.py``'s report) as a finished child run of ``parent_run_id``: its metrics,
    the early-exit setting and shards as params, the per-class AP table and ``files`` (metrics.json, submissions).

    Returns:
        The child run's id.
    """
    import math
    import time

    from mlflow.entities import Metric, Param

    client = MlflowClient(tracking_uri=tracking_uri)
    parent = client.get_run(parent_run_id)
    tags = {**fingerprint(), "mlflow.parentRunId": parent_run_id, "kind": "evaluation",  # evaluation's machine
            "evaluated_stage": parent.data.tags.get("stage", ""),
            "ray_run_name": parent.data.tags.get("ray_run_name", "")}
    run = client.create_run(parent.info.experiment_id, run_name=run_name, tags={k: v for k, v in tags.items() if v})
    rid, now = run.info.run_id, int(time.time() * 1000)
    et = report.get("early_exit") or {}
    params = {"shards": report.get("shards", ""), **{f"early_exit.{k}": v for k, v in et.items()}}
    metrics = [Metric(k, float(v), now, 0) for k, v in report["metrics"].items() if math.isfinite(float(v))]
    client.log_batch(rid, metrics=metrics, params=[Param(k, str(v)[:500]) for k, v in params.items()])
    ap = report.get("per_class_ap")
    if ap:
        client.log_table(rid, dict(ap), "per_class_ap.json")
    for f in files:
        if Path(f).is_file():
            client.log_artifact(rid, str(f))
    client.set_terminated(rid)
    logger.info("MLflow: evaluation run %s (%s) under run %s", rid, run_name, parent_run_id)
    return rid
