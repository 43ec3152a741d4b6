"""Each criterion's interval over draws of the validation videos (sofnet.study_interval), on caches of random
networks: a draw scores as the evaluation scores the drawn videos, the identity draw gives the table's criteria, and
more videos give narrower intervals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sofnet.metrics import activitynet_map
from sofnet.models.output import PASSED
from sofnet.replay import ETCache
from sofnet.study_interval import criterion_draws, criterion_intervals, resampled_map, seed_outputs
from sofnet.study_table import Targets, summarize
from sofnet.tune.et_cache import ETBundle, replay_metrics

T, K = 8, 4
GRID = [[r, t] for r in (0.5, 0.7, 0.9) for t in (1, 2, 3)]
RHO, T_MIN = 0.6, 1  # early exit fires on many videos: another setting gives other rows


def _bundle(n: int, seed: int, gated: bool, copies: int = 1) -> ETBundle:
    """A cache of ``n`` videos (repeated ``copies`` times): frame logits that lean to the label, more on action
    frames; ``gated``: SoF-Net's, most background frames stopped after a shallow block."""
    g = torch.Generator().manual_seed(seed)
    label = torch.arange(n) % K
    inside = torch.rand(n, T, generator=g) < 0.5
    lean = torch.nn.functional.one_hot(label, K)[:, None] * inside[..., None]  # [n, T, K]: the label, on action frames
    frame_logits = torch.randn(n, T, K, generator=g) + 1.5 * lean
    decisions = torch.full((n, T), PASSED, dtype=torch.int8)
    if gated:
        stop = ~inside & (torch.rand(n, T, generator=g) < 0.8)
        decisions[stop] = torch.randint(0, 3, (int(stop.sum()),), generator=g, dtype=torch.int8)
        frame_logits[stop] = 0.0
    cost = torch.tensor([0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0], dtype=torch.float64)
    fallback = ~(decisions == PASSED).any(1)
    cache = ETCache(decisions=decisions, frame_logits=frame_logits, logits=frame_logits.mean(1), fallback=fallback,
                    cost_by_decision=cost)
    rep = torch.arange(n).repeat(copies)
    cache = ETCache(decisions=cache.decisions[rep], frame_logits=cache.frame_logits[rep], logits=cache.logits[rep],
                    fallback=cache.fallback[rep], cost_by_decision=cost)
    targets = np.eye(K, dtype=np.float32)[label[rep].numpy()]
    return ETBundle(cache=cache, targets=targets, label=label[rep].numpy(), ids=[f"v{i}" for i in range(n * copies)],
                    meta={"model": {"video_score": "passed_mean"}}, inside=inside[rep].numpy().astype(np.int8))


def _record(seed: int, tsn: ETBundle, sof: ETBundle) -> dict:
    """A seed's record as the study writes it: rows from a pass without early exit and at (RHO, T_MIN), grids."""
    never = T + 1
    stage2 = {**replay_metrics(sof, 0.5, never, prefix="val/"), **replay_metrics(sof, RHO, T_MIN)}
    return {"seed": seed, "reports": {"stage1": {"metrics": replay_metrics(tsn, 0.5, never, prefix="val/")},
                                      "stage2": {"metrics": stage2}},
            "grids": {stage: [{"rho": r, "t_min": t, **replay_metrics(b, r, t)} for r, t in GRID]
                      for stage, b in (("stage1", tsn), ("stage2", sof))}}


def test_a_draw_scores_as_the_evaluation_scores_the_drawn_videos() -> None:
    """Counts per video ranked once == the evaluation's mAP of the drawn rows, ties included."""
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(K), size=40).astype(np.float32)
    probs[::5] = probs[1]  # whole rows tied with another video's
    probs[:, 2] = np.round(probs[:, 2], 1)  # and many ties within one class
    targets = np.eye(K, dtype=bool)[rng.integers(0, K, 40)]
    index = rng.integers(0, 40, size=(25, 40))
    index[0] = np.arange(40)
    got = resampled_map(probs, targets, index)
    want = [activitynet_map(probs[i], targets[i]).map for i in index]
    assert got == pytest.approx(want, abs=1e-12)
    assert got[0] == pytest.approx(activitynet_map(probs, targets).map, abs=1e-12)


def test_the_identity_draw_gives_the_tables_criteria() -> None:
    """Same replays, same formulas: the criteria of the table (summarize over the seeds' records) come out of
    criterion_draws when the draw is every video once."""
    seeds = [(_bundle(48, s, gated=False), _bundle(48, s, gated=True)) for s in (1, 2)]
    table = summarize([_record(s, tsn, sof) for s, (tsn, sof) in zip((1, 2), seeds)], Targets())["criteria"]
    per_seed = [seed_outputs(tsn, sof, GRID, RHO, T_MIN) for tsn, sof in seeds]
    drawn = criterion_draws(per_seed, Targets(), np.arange(48)[None])
    by_name = {c["name"]: c for c in table}
    assert len(drawn) == 5 and all(name in by_name for name, _, _ in drawn)
    for name, value, ok in drawn:
        assert value[0] == pytest.approx(by_name[name]["value"], abs=1e-9), name
        assert bool(ok[0]) == by_name[name]["ok"], name


def test_more_videos_narrow_the_interval_and_the_draws_repeat() -> None:
    def intervals(copies: int) -> dict:
        per_seed = [seed_outputs(_bundle(40, 3, False, copies), _bundle(40, 3, True, copies), GRID, RHO, T_MIN)]
        return criterion_intervals(per_seed, Targets(), draws=150)

    one, four = intervals(1), intervals(4)
    assert one == intervals(1)  # seeded draws: the same table twice
    for name in ("SoF-Net: mAP - TSN mAP (points)", "SoF-Net: GFLOPs vs TSN (%)"):
        width = [d[name]["interval"][1] - d[name]["interval"][0] for d in (one, four)]
        assert 0 < width[1] < 0.7 * width[0], (name, width)  # ~1/2 expected: the standard error goes as 1/sqrt(n)
    assert all(0.0 <= c["met"] <= 1.0 for c in one.values())


def test_no_intervals_without_draws_or_for_caches_of_other_videos() -> None:
    tsn, sof = _bundle(20, 1, False), _bundle(20, 1, True)
    ours = seed_outputs(tsn, sof, GRID, RHO, T_MIN)
    assert criterion_intervals([ours], Targets(), draws=0) == {}
    other = _bundle(20, 2, True)
    other.ids = [f"w{i}" for i in range(20)]
    assert seed_outputs(tsn, other, GRID, RHO, T_MIN) is None
    assert criterion_intervals([ours, None], Targets()) == {}


def test_arnet_comparisons_from_its_evaluations_per_video_file(tmp_path) -> None:
    """Table B's comparisons: AR-Net's per-video outputs as ``evaluate_model`` writes them, read back in the caches'
    order; the identity draw gives the rows' own differences (the means over seeds of each seed's mAP and GFLOPs,
    computed here by the evaluation's scoring), the draws an interval around them; a seed without the file, or with
    other videos, gives none."""
    from sofnet.evaluation import EvalResult, score, write_per_video
    from sofnet.study_interval import ARNET_COMPARISONS, arnet_comparisons, arnet_scored

    n, never = 48, T + 1
    rng = np.random.default_rng(5)
    seeds, want = [], {name: [] for name in ("tsn", "sofnet", "arnet")}
    for s in (1, 2):
        tsn, sof = _bundle(n, s, gated=False), _bundle(n, s, gated=True)
        probs = rng.dirichlet(np.ones(K), size=n) * 0.5 + 0.5 * tsn.targets  # leans to the label
        gflops = rng.uniform(0.2, 0.9, size=n)
        order = rng.permutation(n)  # written in another order than the caches': read back by id
        arrays = {"scores": probs[order], "gflops": gflops[order], "targets": tsn.targets[order],
                  "label": tsn.label[order]}
        path = tmp_path / f"seed{s}" / "per_video.npz"
        path.parent.mkdir()
        write_per_video(path, EvalResult(metrics={}, per_class_ap={}, ids=[tsn.ids[i] for i in order],
                                         arrays=arrays))
        out = seed_outputs(tsn, sof, GRID, RHO, T_MIN)
        out["arnet"] = arnet_scored(path, out["ids"])
        np.testing.assert_array_equal(out["arnet"].probs, probs)
        seeds.append(out)
        metrics = {"tsn": replay_metrics(tsn, 0.5, never, prefix="val/"),
                   "sofnet": replay_metrics(sof, 0.5, never, prefix="val/"),
                   "arnet": score("val/", probs, tsn.targets, tsn.label, np.zeros((n, T), np.int8), gflops,
                                  np.zeros(n, bool))[0]}
        for name, m in metrics.items():
            want[name].append((m["val/mAP"], m["val/gflops_per_video"]))
    mean = {name: np.mean(v, axis=0) for name, v in want.items()}  # (mAP, GFLOPs/V) over the seeds
    expected = [100 * (mean["arnet"][0] - mean["tsn"][0]), 100 * mean["arnet"][1] / mean["tsn"][1],
                100 * (mean["sofnet"][0] - mean["arnet"][0]), 100 * mean["sofnet"][1] / mean["arnet"][1]]
    got = arnet_comparisons(seeds, draws=200)
    assert [c["name"] for c in got] == list(ARNET_COMPARISONS)
    for c, value in zip(got, expected):
        assert c["value"] == pytest.approx(value, abs=1e-9), c["name"]
        low, high = c["interval"]
        assert low < c["value"] < high, c  # a spread over the draws, around the value of the videos themselves
    assert got == arnet_comparisons(seeds, draws=200)  # seeded draws
    assert [set(c) for c in arnet_comparisons(seeds, draws=0)] == [{"name", "value"}] * 4
    assert arnet_scored(tmp_path / "none.npz", seeds[0]["ids"]) is None
    assert arnet_scored(tmp_path / "seed1" / "per_video.npz", seeds[0]["ids"][1:]) is None  # other videos
    assert arnet_comparisons([seeds[0], {**seeds[1], "arnet": None}]) == []
