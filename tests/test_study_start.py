"""Early exit alone vs the gates by where the action starts (sofnet.study_start), on caches built by hand: videos
whose action starts later make early exit alone pay for the background frames before it; the gates do not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sofnet.models.output import PASSED
from sofnet.replay import ETCache
from sofnet.study_interval import bucket_intervals, seed_outputs
from sofnet.study_start import by_action_start, first_action_frame, start_summary, start_table, subset
from sofnet.study_table import Targets
from sofnet.tune.et_cache import ETBundle, replay_metrics

T, K = 8, 3
STARTS = [0, 1, 2, 3, 5, 6, 7, None]  # first action frame of each video (None: no sampled frame inside a segment)


def _bundle(gated: bool) -> ETBundle:
    """Background frames: uniform logits (early exit cannot fire on them); action frames: the label, confidently.
    ``gated``: SoF-Net's cache, background frames stopped after the first block at a tenth of a frame's cost."""
    n = len(STARTS)
    label = np.arange(n) % K
    inside = np.zeros((n, T), dtype=np.int8)
    frame_logits = torch.zeros(n, T, K)
    decisions = torch.full((n, T), PASSED, dtype=torch.int8)
    for i, start in enumerate(STARTS):
        if start is None:
            continue
        inside[i, start:] = 1
        frame_logits[i, start:, label[i]] = 6.0
    if gated:
        decisions[torch.as_tensor(inside) == 0] = 0
        frame_logits[torch.as_tensor(inside) == 0] = 0.0
    cost = [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0]  # GMACs of a frame by decision + 1: dropped, stopped after 1..5, passed
    fallback = ~(decisions == PASSED).any(1)
    cache = ETCache(decisions=decisions, frame_logits=frame_logits, logits=frame_logits.mean(1), fallback=fallback,
                    cost_by_decision=torch.tensor(cost, dtype=torch.float64))
    targets = np.eye(K, dtype=np.float32)[label]
    return ETBundle(cache=cache, targets=targets, label=label, ids=[f"v{i}" for i in range(n)],
                    meta={"model": {"video_score": "passed_mean"}}, inside=inside)


def test_videos_are_grouped_by_their_first_action_frame_and_a_subset_scores_as_a_set() -> None:
    tsn = _bundle(gated=False)
    assert first_action_frame(tsn.inside).tolist() == [0, 1, 2, 3, 5, 6, 7, T]
    everything = subset(tsn, np.arange(len(STARTS)))
    assert replay_metrics(everything, 0.9, 2) == replay_metrics(tsn, 0.9, 2)
    part = subset(tsn, np.array([4, 5]))
    assert part.ids == ["v4", "v5"] and part.inside.shape == (2, T) and part.cache.frame_logits.shape == (2, T, K)


def test_early_exit_alone_pays_for_the_background_before_a_late_action() -> None:
    tsn, sof = _bundle(gated=False), _bundle(gated=True)
    grid = [[r, t] for r in (0.5, 0.9) for t in (1, 2)]
    seed = by_action_start(tsn, sof, grid, rho=0.9, t_min=1)
    assert [(e["bucket"], e["videos"]) for e in seed] == [("first quarter", 2), ("second quarter", 2),
                                                          ("second half", 3), ("all videos", 8)]
    first, second, late, every = seed
    assert every["tsn"]["gflops"] == pytest.approx(T * 1.0)  # TSN's own row: no exit, every frame at full cost
    assert first["tsn"]["mAP"] == 1.0 and late["tsn"]["mAP"] == 1.0
    # early exit alone: out after the first action frame (its confidence), having paid for every frame before it
    cheapest_late = min(p["gflops"] for p in late["tsn_et"] if p["mAP"] == 1.0)
    assert cheapest_late == pytest.approx(np.mean([6, 7, 8]))  # frames 0-5, 0-6, 0-7
    assert min(p["gflops"] for p in first["tsn_et"]) == pytest.approx(1.5)  # frames 0 and 0-1
    # the gates: the background before it at a tenth of the cost
    assert late["sofnet_et"]["gflops"] == pytest.approx(np.mean([5 * 0.1 + 1, 6 * 0.1 + 1, 7 * 0.1 + 1]))
    rows = start_summary([seed, seed], map_drop=1.0)
    assert [r["bucket"] for r in rows] == ["first quarter", "second quarter", "second half", "all videos"]
    by = {r["bucket"]: r for r in rows}
    assert by["second half"]["ratio"] == pytest.approx(7.0 / 1.6)
    assert by["first quarter"]["ratio"] < by["second quarter"]["ratio"] < by["second half"]["ratio"]
    text = start_table(rows, map_drop=1.0, gates_over_et=1.3, rho=0.9, t_min=1)
    ratio = by["second half"]["ratio"]
    assert f"| second half | 3 | 100.0 | 100.0 / 20 | 0.5, 1, 100.0 / 88 | {ratio:.2f} |" in text, text
    # a cache written before the annotations were kept: no section, not a wrong one
    bare = _bundle(gated=False)
    bare.inside = None
    assert by_action_start(bare, sof, grid, 0.9, 1) is None and start_summary([seed, None], 1.0) == []
    assert start_table([], 1.0, 1.3, 0.9, 1) == ""


def test_each_bucket_has_its_interval_over_draws_of_its_videos() -> None:
    """A late action makes early exit alone pay in every draw of the bucket's videos (each of them alone gives a ratio
    over 3); the first quarter's two videos give 1.0 (both start at frame 0: nothing to save) in a quarter of the
    draws, so there the criterion is met in some draws, not all."""
    tsn, sof = _bundle(gated=False), _bundle(gated=True)
    grid = [[r, t] for r in (0.5, 0.9) for t in (1, 2)]
    drawn = bucket_intervals([seed_outputs(tsn, sof, grid, rho=0.9, t_min=1)], Targets())
    assert set(drawn) == {"first quarter", "second quarter", "second half"}  # "all videos": the table's criterion
    late, first = drawn["second half"], drawn["first quarter"]
    assert late["met"] == 1.0 and late["interval"][0] >= 6 / 1.7 - 1e-9 and late["interval"][1] <= 8 / 1.5 + 1e-9
    assert first["interval"][0] == pytest.approx(1.0) and 0.5 < first["met"] < 1.0
    bare = _bundle(gated=False)
    bare.inside = None
    assert bucket_intervals([seed_outputs(bare, sof, grid, 0.9, 1)], Targets()) == {}
