"""Scoring a model over a loader, with and without early exit: the one evaluator of training, jobs and sweeps.

Usage::

    from sofnet.early_exit import EarlyExit
    from sofnet.evaluation import evaluate, evaluate_model, score
    result = evaluate(model, val_loader, device=device, num_classes=200, et=EarlyExit(True, 0.999, 4),
                      expected=val_loader.dataset.num_videos)            # training: every rank, gathered
    result.metrics["val/mAP"], result.metrics["val/et/gflops_per_video"]
    report = evaluate_model(model, cfg, out_dir="results/demo", et=et)  # jobs/evaluate.py: writes metrics.json
    metrics, per_class_ap = score("val/et/", scores, targets, label, decisions, gflops, fallback)   # replay

``evaluate`` runs the real skipping path (``model.infer``) once without early exit and, when ``et`` is given and
the model is causal, once with it; outputs stay on the device until the pass ends (no per-batch host sync), then
all ranks' videos are gathered (every video exactly once) and scored on the host by :func:`score`, which the
early-exit replay also uses, so a replayed point equals a full evaluation.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from sofnet.data import gather_eval, make_eval_loader, read_manifest
from sofnet.shards import shard_directory
from sofnet.early_exit import EarlyExit
from sofnet.flops import summarize
from sofnet.metrics import activitynet_map, first_label_map, smallest_label, topk_accuracy

logger = logging.getLogger(__name__)

BLOCK_NAMES = ("block0", "block1", "block2", "block3", "block4", "classifier")
OUTPUTS = ("scores", "decisions", "exit_step", "gflops", "fallback")
BATCH_FIELDS = ("labels", "label", "inside", "timestamps")
PER_VIDEO = "per_video.npz"  # evaluate_model's per-video outputs beside metrics.json (sofnet.study_interval reads them)


@dataclass
class EvalResult:
    """Gathered evaluation results (identical on every rank).

    Attributes:
        metrics: ``val/...`` (no early exit) and ``val/et/...`` (with early exit) scalars.
        per_class_ap: ``{"": [K] AP without ET, "et": [K] with ET}``.
        ids: Video ids (sorted); arrays: per-video arrays keyed by name, without (``""``) and with ET (``et_``):
            ``scores``, ``decisions``, ``exit_step``, ``gflops``, ``fallback``; plus ``targets``, ``label``,
            ``inside``, ``timestamps``.
    """

    metrics: Dict[str, float]
    per_class_ap: Dict[str, List[float]]
    ids: List[str]
    arrays: Dict[str, np.ndarray] = field(default_factory=dict)


def primary_metric(dataset: str) -> str:
    """The metric that picks the best epoch/model: ``val/mAP`` for ActivityNet, ``val/top1`` for Sports-1M."""
    return "val/top1" if dataset == "sports1m" else "val/mAP"


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> ``cuda`` when a GPU is present, else ``cpu``; anything else as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def gate_diagnostics(prefix: str, decisions: np.ndarray, inside: np.ndarray,
                     exit_step: Optional[np.ndarray] = None) -> Dict[str, float]:
    """Where frames stop and where early exit fires, against the annotated action segments.

    ``stop_rate/{action,background}/block<k>``: the share of the processed frames inside (outside) the segments that
    stopped at or before gate k (after block k). With ``exit_step``: ``exit/fired`` (share of videos where early exit
    fired before the last frame) and ``exit/before_action`` (of those with an action frame, the share that exited
    before seeing any). Valid on any annotated data (ActivityNet's segments too).
    """
    m: Dict[str, float] = {}
    inside = np.asarray(inside) > 0
    processed = decisions >= 0
    for name, mask in (("action", processed & inside), ("background", processed & ~inside)):
        n = int(mask.sum())
        if n:
            for k in range(len(BLOCK_NAMES) - 1):
                m[f"{prefix}stop_rate/{name}/block{k}"] = float(((decisions <= k) & mask).sum() / n)
    if exit_step is not None:
        t = decisions.shape[1]
        fired = np.asarray(exit_step) < t
        m[f"{prefix}exit/fired"] = float(fired.mean())
        seen = np.arange(t)[None, :] < np.asarray(exit_step)[:, None]
        relevant = fired & inside.any(axis=1)
        if relevant.any():
            m[f"{prefix}exit/before_action"] = float((~(inside & seen).any(axis=1))[relevant].mean())
    return m


def action_shares(prefix: str, actions: np.ndarray, names: List[str]) -> Dict[str, float]:
    """AR-Net's resolution shares: ``action_share/<name>``, the share of sampled frames that got each action."""
    actions = np.asarray(actions)
    return {f"{prefix}action_share/{name}": float((actions == k).mean()) for k, name in enumerate(names)}


def score(prefix: str, scores: np.ndarray, targets: np.ndarray, label: np.ndarray, decisions: np.ndarray,
          gflops: np.ndarray, fallback: np.ndarray, inside: Optional[np.ndarray] = None,
          exit_step: Optional[np.ndarray] = None) -> Tuple[Dict[str, float], List[float]]:
    """The metrics of one variant (``val/`` or ``val/et/``) and its per-class AP.

    Args:
        scores: [N, K] class probabilities; targets: [N, K] multi-hot; label: [N] primary label (-1 unlabelled).
        decisions, gflops, fallback: the per-video outputs of the skipping path (or of the replay).
        inside: [N, T] 1 where a sampled frame lies in an annotated segment: adds :func:`gate_diagnostics`;
        exit_step: [N] (early-exit variants) adds where early exit fired.
    """
    k = scores.shape[1]
    m: Dict[str, float] = {}
    ap = activitynet_map(scores, targets)
    m[f"{prefix}mAP"] = float(ap.map)  # multi-label (the official code's mmAP, which picks its best epoch)
    m[f"{prefix}mAP_first_label"] = float(first_label_map(scores, smallest_label(targets)).map)  # official "mAP"
    labelled = label >= 0
    if labelled.any():
        top = topk_accuracy(scores[labelled], label[labelled], ks=(1, min(5, k)))  # top-5 is top-K when K < 5
        m[f"{prefix}top1"], m[f"{prefix}top5"] = top["top1"], top[f"top{min(5, k)}"]
    s = summarize([SimpleNamespace(gflops=torch.from_numpy(gflops), decisions=torch.from_numpy(decisions),
                                   fallback=torch.from_numpy(fallback))])
    for key in ("gflops_per_video", "gflops_per_frame", "frame_usage", "frames_processed", "fallback_rate"):
        m[f"{prefix}{key}"] = s[key]
    for name, v in zip(BLOCK_NAMES, s["survival"]):
        m[f"{prefix}survival/{name}"] = v
    if inside is not None:
        m.update(gate_diagnostics(prefix, decisions, inside, exit_step))
    return m, [float(x) for x in np.asarray(ap.per_class, dtype=float)]


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: Any, *, device: torch.device, dtype: torch.dtype = torch.float32,
             num_classes: int, et: Optional[EarlyExit] = None, expected: Optional[int] = None,
             log_every: int = 50, is_logger: bool = True,
             on_batch: Optional[Callable[[Dict[str, Any], Any], None]] = None) -> EvalResult:
    """Evaluate with the real skipping path (``model.infer``) and gather all ranks' videos.

    Args:
        model: The bare network (``engine.module``); put in eval mode here and back in train mode after.
        loader: This rank's evaluation loader (every video once over all ranks).
        device: Device of the model; dtype: its parameter dtype (inputs are cast to it).
        num_classes: ``K``.
        et: The early exit of the ``val/et/*`` columns; None (or a non-causal model) evaluates without it only.
        expected: Total number of videos (``loader.dataset.num_videos``), checked after gathering.
        log_every: Batches between progress lines; is_logger: whether this process logs.
        on_batch: Called with each batch and its output without early exit (the early-exit cache's writer,
            :class:`sofnet.tune.et_cache.CacheWriter`: one pass serves both).
    """
    was_training = model.training
    model.eval()
    use_et = et is not None and et.applies_to(model)
    action_names = list(model.action_names()) if hasattr(model, "action_names") else []
    cols: Dict[str, List[Any]] = {}
    ids: List[str] = []
    start = time.perf_counter()
    try:
        for i, batch in enumerate(loader):
            frames = batch["frames"].to(device=device, dtype=dtype, non_blocking=True)
            variants = [("", model.infer(frames))]
            if on_batch is not None:
                on_batch(batch, variants[0][1])
            if use_et:
                variants.append(("et_", model.infer(frames, **et.infer_kwargs())))
            for prefix, out in variants:  # kept on the device: one copy to the host after the pass
                for name, v in zip(OUTPUTS, (out.logits.float().softmax(-1), out.decisions, out.exit_step,
                                             out.gflops.double(), out.fallback)):
                    cols.setdefault(prefix + name, []).append(v)
            if action_names:  # AR-Net: which network (or skip) each frame got
                cols.setdefault("actions", []).append(variants[0][1].actions)
            for name in BATCH_FIELDS:
                cols.setdefault(name, []).append(batch[name])
            ids += list(batch["id"])
            if is_logger and log_every and i % log_every == 0 and i:
                logger.info("eval: batch %d, %d videos, %.1f videos/s", i + 1, len(ids),
                            len(ids) / max(time.perf_counter() - start, 1e-9))
    finally:
        model.train(was_training)
    names = (list(OUTPUTS) + [f"et_{n}" for n in OUTPUTS if use_et] + ["actions"] * bool(action_names)
             + list(BATCH_FIELDS))
    host = [[v.cpu() for v in cols.get(n, [])] for n in names]
    gathered_ids, arrays = gather_eval(ids, *host, expected=expected)
    a = dict(zip(names, arrays))
    a["targets"] = a.pop("labels")
    metrics, per_class = score("val/", a["scores"], a["targets"], a["label"], a["decisions"], a["gflops"],
                               a["fallback"], a["inside"])
    if action_names:
        metrics.update(action_shares("val/", a["actions"], action_names))
    aps = {"": per_class}
    if "et_scores" in a:
        m_et, aps["et"] = score("val/et/", a["et_scores"], a["targets"], a["label"], a["et_decisions"],
                                a["et_gflops"], a["et_fallback"], a["inside"], a["et_exit_step"])
        metrics.update(m_et)
    metrics["val/videos"] = float(len(gathered_ids))
    return EvalResult(metrics=metrics, per_class_ap=aps, ids=gathered_ids, arrays=a)


def write_per_video(path: Path, result: EvalResult) -> None:
    """Each video's outputs, in the evaluation's (sorted) order, as plain arrays (``np.load(..., allow_pickle=False)``
    reads them): ``ids``, ``scores`` [N, K], ``gflops`` [N], ``targets`` [N, K], ``label`` [N], and with early exit
    ``et_scores``, ``et_gflops``. What a comparison of two evaluations over draws of the videos needs (the metrics
    are means over the videos; ``submission.json`` has the scores but not the cost)."""
    a = result.arrays
    arrays = {"ids": np.asarray(result.ids, dtype=str), "scores": a["scores"], "gflops": a["gflops"],
              "targets": a["targets"], "label": a["label"]}
    if "et_scores" in a:
        arrays.update(et_scores=a["et_scores"], et_gflops=a["et_gflops"])
    tmp = path.with_name("." + path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    tmp.replace(path)


def class_names(shards: str, num_classes: int) -> list[str]:
    """Class names from the shards' ``manifest.json`` (``class <k>`` when there is none)."""
    directory = shard_directory(shards)
    try:
        names = list(read_manifest(directory).get("classes", []))
    except (OSError, ValueError):
        names = []
    return names if len(names) == num_classes else [f"class {k}" for k in range(num_classes)]


def eval_loader(model: torch.nn.Module, data: Any, shards: str = "", subset: str = "") -> Any:
    """The evaluation loader of ``model`` over ``shards`` (default ``data.val_shards``): the model's own segments
    and input size, ``data``'s batch size (the global batch in one process), workers and resize."""
    from sofnet.train.deepspeed_config import per_worker_batch

    hp = model.hparams()
    return make_eval_loader(shards or data.val_shards, num_segments=hp["num_segments"], input_size=hp["input_size"],
                            resize=max(data.resize, hp["input_size"]), batch_size=per_worker_batch(data, 1),
                            num_workers=data.num_workers, num_classes=hp["num_classes"],
                            subset=subset or data.val_subset)


def evaluate_model(model: torch.nn.Module, cfg: Any, *, out_dir: str | Path, et: Optional[EarlyExit],
                   names: Optional[list[str]] = None, shards: str = "", subset: str = "",
                   device: str = "auto", et_cache: str | Path = "", source: str = "") -> Dict[str, Any]:
    """Evaluate ``model`` on ``cfg.data.val_shards`` (or ``shards``) in this process; write the reports.

    Writes ``metrics.json`` (metrics, per-class AP, the early-exit setting, the shards), the official ActivityNet
    submission ``submission.json`` (and ``submission_et.json``) and each video's outputs (``per_video.npz``,
    :func:`write_per_video`) into ``out_dir``; returns the report. With ``et_cache``, also the early-exit cache of
    :mod:`sofnet.tune.et_cache` there, from the same pass without early exit (``source``: where the model came from,
    for its ``meta.json``).

    Raises:
        ValueError: ``et_cache`` for a model that cannot exit early (bidirectional shift), before the pass.
    """
    from sofnet.submission import export_submission

    hp = model.hparams()
    shards = shards or cfg.data.val_shards
    writer = None
    if et_cache:
        from sofnet.tune.et_cache import CacheWriter  # it scores with this module: imported here, not at the top

        writer = CacheWriter(model)
    dev = resolve_device(device)
    model = model.to(dev)
    loader = eval_loader(model, cfg.data, shards, subset)
    result = evaluate(model, loader, device=dev, dtype=next(model.parameters()).dtype, num_classes=hp["num_classes"],
                      et=et, expected=loader.dataset.num_videos, on_batch=writer and writer.add)
    if writer is not None:
        writer.write(et_cache, shards=shards, subset=subset or cfg.data.val_subset, source=source,
                     expected=loader.dataset.num_videos)
    names = names or class_names(shards, hp["num_classes"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {"model": hp, "early_exit": et.as_dict() if et else None, "shards": shards,
              "metrics": result.metrics,
              "per_class_ap": {"class": names,
                               **{("ap_" + k if k else "ap"): v for k, v in result.per_class_ap.items()}}}
    tmp = out / ".metrics.json.tmp"
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(out / "metrics.json")
    export_submission(result.ids, result.arrays["scores"], names, out / "submission.json")
    write_per_video(out / PER_VIDEO, result)
    if "et_scores" in result.arrays:
        export_submission(result.ids, result.arrays["et_scores"], names, out / "submission_et.json")
    logger.info("wrote %s/metrics.json and the submission files", out)
    return report
