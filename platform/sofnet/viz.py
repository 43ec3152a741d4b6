"""Figure A of the SoF-Net supplementary: where each sampled frame of one video stopped.

Built on ``matplotlib.figure.Figure`` with no pyplot state, so it renders headless and inside Ray workers:

    >>> from sofnet.viz import decision_map
    >>> fig = decision_map(out.decisions[0], exit_step=out.exit_step[0], inside=inside_flags,
    ...                    timestamps=frame_times_s, title="v_abc123", true_label="Skiing", pred_label="Skiing")
    >>> fig.savefig("figure_a.png", dpi=120)            # or mlflow.log_figure(fig, "figure_a.png")

Rows are the sampled frames (time increases downward); columns are the five blocks (stem, layer1..layer4)
and the classifier. A row is filled up to the block the frame last ran; a red tick marks the gate that
stopped it. With ``thumbnails`` (the sampled frames; ``sofnet.figure_a`` reads the evaluation's own frames and
has the command line) each frame is drawn left of its row and framed by its fate. Decisions are ints: k in 0..4 =
stopped at gate k (after block k), 5 = reached the classifier, -1 = not processed because early termination (ET)
fired at an earlier frame.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

log = logging.getLogger(__name__)

STAGE_NAMES = ("stem", "layer1", "layer2", "layer3", "layer4", "classifier")
REACHED_CLASSIFIER = len(STAGE_NAMES) - 1  # decision value 5
NOT_PROCESSED = -1
# Computed cells darken with depth, so the fill level reads at a glance; the classifier stands out in green.
STAGE_COLORS = ("#c6dbef", "#9ecae1", "#6baed6", "#3182bd", "#08519c", "#2ca02c")
SKIPPED_COLOR = "#ffffff"  # a block the frame's gate skipped
NOT_PROCESSED_COLOR = "#d9d9d9"  # a frame dropped by early termination
GT_INSIDE_COLOR = "#ff7f0e"
GT_OUTSIDE_COLOR = "#ffffff"
STOP_COLOR = "#d62728"


def decision_cells(decisions: Any) -> np.ndarray:
    """Validate decisions and expand them to the cell matrix that is drawn.

    Args:
        decisions: [T] ints in -1..5 (see the module docstring); a list, numpy array or torch tensor.

    Returns:
        [T, 6] int8: 1 = block computed, 0 = skipped by a gate, -1 = frame not processed (early termination).

    Raises:
        ValueError: If decisions are not a non-empty 1-D integer sequence in -1..5.
    """
    d = _array(decisions, "decisions")
    if d.ndim != 1 or d.size == 0:
        raise ValueError(f"decisions must be a non-empty 1-D sequence, got shape {d.shape}")
    if not (np.issubdtype(d.dtype, np.integer) or (np.issubdtype(d.dtype, np.floating) and np.all(d == np.round(d)))):
        raise ValueError(f"decisions must be integers, got dtype {d.dtype}")
    d = d.astype(np.int64)
    bad = np.flatnonzero((d < NOT_PROCESSED) | (d > REACHED_CLASSIFIER))
    if bad.size:
        raise ValueError(f"decision {d[bad[0]]} at frame {bad[0]} is outside -1..5")
    cells = (np.arange(len(STAGE_NAMES))[None, :] <= d[:, None]).astype(np.int8)
    cells[d == NOT_PROCESSED] = -1
    return cells


def _array(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}: cannot be read as an array ({err})") from err


def _resolve_exit(d: np.ndarray, exit_step: Any) -> int | None:
    """Index of the last processed frame when early termination dropped frames, else None."""
    t = d.size
    dropped = np.flatnonzero(d == NOT_PROCESSED)
    if exit_step is None:
        if dropped.size and dropped[0] == 0:
            raise ValueError("decisions: frame 0 is marked not processed (-1), but ET fires only after a frame ran")
        exit_step = int(dropped[0]) if dropped.size else t
    exit_step = int(exit_step)  # also a 0-d tensor, e.g. SoFOutput.exit_step[i]
    if not 1 <= exit_step <= t:
        raise ValueError(f"exit_step {exit_step} is outside 1..{t} (the number of frames processed)")
    if not np.array_equal(d == NOT_PROCESSED, np.arange(t) >= exit_step):
        want = f"exactly frames {exit_step}..{t - 1} must be -1" if exit_step < t else "no frame may be -1"
        raise ValueError(
            f"decisions: with exit_step={exit_step} ({exit_step} of {t} frames processed), {want} "
            f"(not processed), got -1 at frames {dropped.tolist()}"
        )
    # exit_step == T means ET did not fire, or fired on the last frame: nothing was dropped, nothing to mark.
    return exit_step - 1 if exit_step < t else None


def _ground_truth(t: int, inside: Any, timestamps: np.ndarray | None, segments: Any) -> np.ndarray | None:
    if inside is not None and segments is not None:
        raise ValueError("give either inside (per-frame flags) or segments (+ timestamps), not both")
    if inside is not None:
        flags = _array(inside, "inside")
        if flags.shape != (t,):
            raise ValueError(f"inside must have one flag per frame ({t}), got shape {flags.shape}")
        return flags.astype(bool)
    if segments is None:
        return None
    if timestamps is None:
        raise ValueError("segments need timestamps (seconds of each sampled frame) to place them on the rows")
    seg = _array(segments, "segments").astype(np.float64).reshape(-1, 2) if np.size(segments) else np.zeros((0, 2))
    if np.any(seg[:, 1] < seg[:, 0]):
        raise ValueError(f"segments must be [start_s, end_s] with start <= end, got {seg.tolist()}")
    return ((timestamps[:, None] >= seg[None, :, 0]) & (timestamps[:, None] <= seg[None, :, 1])).any(axis=1)


def _thumbnail_strip(thumbnails: Sequence[Any], t: int) -> np.ndarray:
    """Stack the frames into one tall image, downsampled so the figure stays small."""
    if len(thumbnails) != t:
        raise ValueError(f"thumbnails must have one image per frame ({t}), got {len(thumbnails)}")
    imgs = [_array(im, "thumbnails") for im in thumbnails]
    shape = imgs[0].shape
    for i, im in enumerate(imgs):
        if im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3 or im.shape != shape:
            raise ValueError(
                f"thumbnails[{i}] must be uint8 HxWx3 like thumbnails[0] {shape}, got {im.dtype} {im.shape}"
            )
    step = max(1, shape[0] // 96)  # ~96 px per row is plenty for a row a few tenths of an inch high
    return np.concatenate([im[::step, ::step] for im in imgs], axis=0)


def _mark_thumbnails(tax: Any, d: np.ndarray) -> None:
    """Frame each thumbnail by its fate, as patches over the image (its pixels stay the frame's): a green border =
    reached the classifier, a red border = stopped at a gate (its row says which), a grey hatched veil = never
    computed (early exit). No text on the frames: it would hide what the gate saw."""
    for i, k in enumerate(d):
        if k == NOT_PROCESSED:
            patch = Rectangle((0, i - 0.5), 1, 1, facecolor=NOT_PROCESSED_COLOR, alpha=0.6, hatch="//",
                              edgecolor="#999999", linewidth=0, gid=f"frame{i}:not_processed")
        else:
            reached = k == REACHED_CLASSIFIER
            patch = Rectangle((0.02, i - 0.46), 0.96, 0.92, fill=False, linewidth=2.5,
                              edgecolor=STAGE_COLORS[-1] if reached else STOP_COLOR,
                              gid=f"frame{i}:{'classifier' if reached else 'stopped'}")
        tax.add_patch(patch)


def decision_map(
    decisions: Any,
    *,
    exit_step: Any = None,
    inside: Any = None,
    timestamps: Any = None,
    segments: Any = None,
    thumbnails: Sequence[Any] | None = None,
    title: str = "",
    true_label: str | None = None,
    pred_label: str | None = None,
) -> Figure:
    """Draw the per-frame stop/forward decisions of one video (Figure A of the paper's supplementary).

    Args:
        decisions: [T] ints: k in 0..4 stopped at gate k (after block k), 5 reached the classifier,
            -1 not processed (early termination). Lists, numpy arrays and torch tensors are accepted.
        exit_step: Frames processed, as ``SoFOutput.exit_step``: the 1-based step at which early termination
            fired, T when it did not; frames from index ``exit_step`` on must be -1. Inferred from the -1s
            when None. The exit is marked only when frames were dropped (``exit_step < T``).
        inside: [T] flags, True where the frame lies inside a ground-truth action segment.
        timestamps: [T] seconds of each sampled frame; labels the rows, and places ``segments``.
        segments: [S, 2] ground-truth segments ``[start_s, end_s]`` (the annotation's ``segment`` fields).
        thumbnails: T uint8 HxWx3 frames of equal size (the frames the model saw: ``sofnet.figure_a.eval_frames``),
            drawn as a column left of the rows, each framed by its fate: green = reached the classifier, red =
            stopped at a gate, grey hatched veil = never computed (early exit).
        title: First title line, e.g. the video id.
        true_label: Ground-truth class name.
        pred_label: Predicted class name.

    Returns:
        The figure; nothing is registered with pyplot. Axes are labelled "decisions", "ground_truth" and
        "thumbnails" (``ax.get_label()``) for callers that want to add to them.

    Raises:
        ValueError: On a decision outside -1..5, -1s inconsistent with ``exit_step``, or any per-frame input
            whose length is not T.
    """
    cells = decision_cells(decisions)
    d = _array(decisions, "decisions").astype(np.int64)
    t = d.size
    last = _resolve_exit(d, exit_step)
    ts = None
    if timestamps is not None:
        ts = _array(timestamps, "timestamps").astype(np.float64)
        if ts.shape != (t,) or not np.isfinite(ts).all():
            raise ValueError(f"timestamps must be {t} finite seconds, got shape {ts.shape}")
    gt = _ground_truth(t, inside, ts, segments)
    strip = _thumbnail_strip(thumbnails, t) if thumbnails is not None else None

    # Sizes in inches, so rows stay readable at any T; thumbnails keep their aspect ratio per row.
    row_h = 0.9 if strip is not None else 0.32  # a frame must be big enough to see what is in it
    widths = [len(STAGE_NAMES) * 0.8]
    names = ["decisions"]
    if strip is not None:
        widths.insert(0, row_h * strip.shape[1] / (strip.shape[0] / t))
        names.insert(0, "thumbnails")
    if gt is not None:
        widths.append(0.3)
        names.append("ground_truth")
    left, right, top, bottom = 1.3, (2.1 if last is not None else 0.4), 1.1, 0.8
    fig_w, fig_h = left + sum(widths) + 0.15 * (len(widths) - 1) + right, top + row_h * t + bottom
    fig = Figure(figsize=(fig_w, fig_h))
    grid = fig.add_gridspec(1, len(widths), width_ratios=widths, left=left / fig_w, right=1 - right / fig_w,
                            top=1 - top / fig_h, bottom=bottom / fig_h, wspace=0.15 * len(widths) / sum(widths))
    axes: dict[str, Any] = {}
    for i, name in enumerate(names):  # one shared y axis: row i is frame i in every column
        axes[name] = fig.add_subplot(grid[0, i], sharey=next(iter(axes.values()), None), label=name)

    ax = axes["decisions"]
    palette = np.array([to_rgba(c) for c in STAGE_COLORS])
    rgba = np.where((cells == 1)[..., None], palette[None, :, :], to_rgba(SKIPPED_COLOR))
    rgba[cells == -1] = to_rgba(NOT_PROCESSED_COLOR)
    ax.imshow(rgba, aspect="auto", interpolation="nearest", extent=(-0.5, len(STAGE_NAMES) - 0.5, t - 0.5, -0.5))
    ax.set_xticks(range(len(STAGE_NAMES)), STAGE_NAMES, fontsize=9)
    ax.xaxis.tick_top()
    ax.set_xticks(np.arange(len(STAGE_NAMES) + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(t + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="#bbbbbb", linewidth=0.5)
    ax.tick_params(which="minor", length=0)
    ylabels = [f"{i}" if ts is None else f"{i}  ({ts[i]:.1f} s)" for i in range(t)]
    ax.set_yticks(range(t), ylabels)
    ax.set_ylabel("sampled frame (time ↓)")
    ax.set_ylim(t - 0.5, -0.5)
    # The stop: a red tick on the gate after the last block the frame ran (gates 0..4 sit between columns).
    stopped = np.flatnonzero((d >= 0) & (d < REACHED_CLASSIFIER))
    ax.add_collection(LineCollection([[(k + 0.5, i - 0.42), (k + 0.5, i + 0.42)] for i, k in zip(stopped, d[stopped])],
                                     colors=STOP_COLOR, linewidths=2.5, label="stops"))
    if last is not None:
        ax.add_patch(Rectangle((-0.5, last + 0.5), len(STAGE_NAMES), t - 1 - last, fill=False,
                               hatch="//", edgecolor="#999999", linewidth=0))

    if gt is not None:
        gax = axes["ground_truth"]
        gt_rgba = np.where(gt[:, None, None], to_rgba(GT_INSIDE_COLOR), to_rgba(GT_OUTSIDE_COLOR))
        gax.imshow(gt_rgba, aspect="auto", interpolation="nearest", extent=(-0.5, 0.5, t - 0.5, -0.5))
        gax.set_xticks([0], ["GT"])
        gax.xaxis.tick_top()
        gax.tick_params(axis="y", which="both", left=False, labelleft=False)
    if strip is not None:
        tax = axes["thumbnails"]
        tax.imshow(strip, aspect="auto", extent=(0, 1, t - 0.5, -0.5))
        tax.set_xticks([])
        tax.tick_params(axis="y", labelleft=True)
        tax.tick_params(axis="y", which="minor", left=False)
        ax.tick_params(axis="y", which="both", left=False, labelleft=False)
        ax.set_ylabel("")
        tax.set_ylabel("sampled frame (time ↓)")
        _mark_thumbnails(tax, d)

    if last is not None:
        for a in axes.values():
            a.axhline(last + 0.5, color=STOP_COLOR, linewidth=2, linestyle="--")
        edge = axes[names[-1]]
        edge.annotate(f"early exit after frame {last}\n({last + 1}/{t} frames processed)",
                      xy=(1.0, last + 0.5), xycoords=("axes fraction", "data"), xytext=(22, 0),
                      textcoords="offset points", va="center", fontsize=8.5, color=STOP_COLOR,
                      arrowprops={"arrowstyle": "->", "color": STOP_COLOR}, annotation_clip=False)

    lines = [title] if title else []
    if true_label is not None or pred_label is not None:
        verdict = "" if true_label is None or pred_label is None else ("  ✓" if true_label == pred_label else "  ✗")
        lines.append(f"true: {true_label or '?'}   predicted: {pred_label or '?'}{verdict}")
    used = int(np.sum(d == REACHED_CLASSIFIER))
    lines.append(f"{used}/{t} frames reached the classifier")
    centre = (left + (sum(widths) + 0.15 * (len(widths) - 1)) / 2) / fig_w  # over the axes, not the margins
    fig.suptitle("\n".join(lines), fontsize=10, x=centre, y=1 - 0.1 / fig_h, va="top")
    handles = [Patch(color=STAGE_COLORS[2], label="block computed"), Patch(color=STAGE_COLORS[-1], label="classifier"),
               Patch(facecolor=SKIPPED_COLOR, edgecolor="#999999", label="skipped"),
               Patch(color=STOP_COLOR, label="stopped at gate")]
    if last is not None:
        handles.append(
            Patch(facecolor=NOT_PROCESSED_COLOR, hatch="//", edgecolor="#999999", label="not processed (ET)")
        )
    if strip is not None:
        handles += [Patch(facecolor="none", edgecolor=STAGE_COLORS[-1], linewidth=2, label="frame: used"),
                    Patch(facecolor="none", edgecolor=STOP_COLOR, linewidth=2, label="frame: stopped early")]
    if gt is not None:
        handles.append(Patch(color=GT_INSIDE_COLOR, label="inside GT action"))
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    log.debug("decision map: %d frames, last processed %s", t, last)
    return fig
