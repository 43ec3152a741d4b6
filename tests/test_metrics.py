"""sofnet.metrics: hand-computed APs (ties, absent classes, multi-label videos), sklearn and a naive reference,
top-k accuracy, and the official ActivityNet submission round trip on synthetic and real files."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from sofnet.metrics import (
    MapResult,
    activitynet_map,
    first_label_map,
    smallest_label,
    topk_accuracy,
)
from sofnet.submission import evaluate_submission, export_submission


def naive_ap(scores: np.ndarray, positives: np.ndarray, interpolated: bool) -> float:
    """Independent reference: one precision/recall point per distinct score threshold, then the sum over
    recall steps (non-interpolated) or the official evaluator's VOC-2011 envelope."""
    npos = positives.sum()
    rec, prec = [], []
    for t in np.unique(scores)[::-1]:
        taken = scores >= t
        rec.append((positives & taken).sum() / npos)
        prec.append((positives & taken).sum() / taken.sum())
    if not interpolated:
        return float(sum((r1 - r0) * p for r0, r1, p in zip([0.0] + rec[:-1], rec, prec)))
    mprec, mrec = np.hstack([[0], prec, [0]]), np.hstack([[0], rec, [1]])
    for i in range(len(mprec) - 2, -1, -1):
        mprec[i] = max(mprec[i], mprec[i + 1])
    idx = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[idx] - mrec[idx - 1]) * mprec[idx]))


# ---------------------------------------------------------------- activitynet_map, hand-computed


def test_map_hand_computed_distinct_scores() -> None:
    # Class 0 ranking: pos, neg, neg, pos, pos -> precisions 1, 2/4, 3/5 -> AP 0.7; the envelope lifts the
    # 2/4 to the later 3/5 -> interpolated (1 + .6 + .6) / 3.
    s = np.array([[0.9], [0.8], [0.7], [0.6], [0.5]])
    t = np.array([[1], [0], [0], [1], [1]])
    assert activitynet_map(s, t).map == pytest.approx(0.7)
    assert activitynet_map(s, t, interpolated=True).map == pytest.approx(2.2 / 3)


def test_map_ties_are_one_group() -> None:
    # Scores 0.9 (neg), 0.5 (pos), 0.5 (neg), 0.1 (pos): the tied pair enters together, so its positive gets
    # precision 1/3 (not 1/2 as "positive first" would give): AP = (1/3 + 2/4) / 2 = 5/12.
    s = np.array([[0.9], [0.5], [0.5], [0.1]])
    t = np.array([[0], [1], [0], [1]])
    assert activitynet_map(s, t).map == pytest.approx(5 / 12)
    # Swapping the tied rows changes nothing: the result does not depend on input order.
    assert activitynet_map(s[[0, 2, 1, 3]], t[[0, 2, 1, 3]]).map == pytest.approx(5 / 12)
    # The envelope lifts the 1/3 to the later 2/4: interpolated (1/2 + 1/2) / 2.
    assert activitynet_map(s, t, interpolated=True).map == pytest.approx(0.5)


def test_map_absent_class_is_nan_and_multilabel_video_counts_for_both() -> None:
    # Video 1 has labels 0 and 2; class 1 has no positive (NaN, out of the mean).
    s = np.array([[0.6, 0.3, 0.1], [0.5, 0.1, 0.4], [0.2, 0.5, 0.3]])
    t = np.array([[1, 0, 0], [1, 0, 1], [0, 0, 0]])
    res = activitynet_map(s, t)
    assert isinstance(res, MapResult)
    # class 0: videos 0, 1 both positive at the top -> 1; class 2: ranking v1 (pos), v2, v0 -> 1.
    np.testing.assert_allclose(res.per_class, [1.0, np.nan, 1.0])
    assert res.map == 1.0 and res.num_classes == 2 and res.percent == 100.0
    t2 = t.copy()
    t2[:, 2] = [0, 0, 1]  # now class 2's positive is ranked 2nd of 3 -> AP 1/2
    assert activitynet_map(s, t2).map == pytest.approx((1.0 + 0.5) / 2)


def test_map_matches_sklearn_and_naive_reference_with_many_ties() -> None:
    rng = np.random.default_rng(0)
    for trial in range(20):
        n, k = rng.integers(5, 60), rng.integers(1, 8)
        s = rng.integers(0, 6, size=(n, k)) / 5.0  # few distinct values: many ties
        t = rng.random((n, k)) < 0.3
        res = activitynet_map(torch.from_numpy(s), torch.from_numpy(t))  # tensors are accepted
        res_i = activitynet_map(s, t, interpolated=True)
        for c in range(k):
            if not t[:, c].any():
                assert np.isnan(res.per_class[c]) and np.isnan(res_i.per_class[c])
                continue
            assert res.per_class[c] == pytest.approx(average_precision_score(t[:, c], s[:, c]), abs=1e-12)
            assert res.per_class[c] == pytest.approx(naive_ap(s[:, c], t[:, c], False), abs=1e-12)
            assert res_i.per_class[c] == pytest.approx(naive_ap(s[:, c], t[:, c], True), abs=1e-12)
            assert res_i.per_class[c] >= res.per_class[c] - 1e-12


@pytest.mark.parametrize(
    "scores, targets, match",
    [
        (np.zeros((3, 2)), np.zeros((3, 3)), "shape"),
        (np.array([[np.nan, 1.0]]), np.array([[1, 0]]), "NaN"),
        (np.zeros((2, 2)), np.array([[2, 0], [0, 1]]), "multi-hot"),
        (np.zeros((2, 2)), np.zeros((2, 2)), "no positive"),
        (np.zeros(3), np.zeros(3), r"\[N, K\]"),
    ],
)
def test_map_rejects_bad_input(scores: np.ndarray, targets: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        activitynet_map(scores, targets)


# ---------------------------------------------------------------- topk_accuracy


def test_topk_hand_computed_with_ties_by_class_index() -> None:
    s = np.array([[0.1, 0.5, 0.5, 0.2], [0.1, 0.5, 0.5, 0.2], [0.4, 0.3, 0.2, 0.1]])
    # video 0 target 2 ties with class 1 (smaller index) -> rank 1; video 1 target 1 -> rank 0;
    # video 2 target 3 -> rank 3.
    assert topk_accuracy(s, np.array([2, 1, 3]), ks=(1, 2, 4)) == pytest.approx(
        {"top1": 1 / 3, "top2": 2 / 3, "top4": 1.0}
    )


def test_topk_matches_torch_topk_on_distinct_scores() -> None:
    g = torch.Generator().manual_seed(1)
    s = torch.randn(200, 487, generator=g)
    y = torch.randint(0, 487, (200,), generator=g)
    got = topk_accuracy(s, y, ks=(1, 5))
    for k in (1, 5):
        ref = (s.topk(k, dim=1).indices == y[:, None]).any(dim=1).float().mean().item()
        assert got[f"top{k}"] == pytest.approx(ref)


def test_topk_rejects_bad_input() -> None:
    s = np.zeros((2, 3))
    with pytest.raises(ValueError, match="out of range"):
        topk_accuracy(s, np.array([0, 3]))
    with pytest.raises(ValueError, match="outside 1..3"):
        topk_accuracy(s, np.array([0, 1]), ks=(1, 5))
    with pytest.raises(ValueError, match="integers"):
        topk_accuracy(s, np.array([0.0, 1.0]))


def test_first_label_map_scores_the_smallest_class_id_only() -> None:
    targets = np.array([[0, 1, 1], [1, 0, 0], [0, 0, 0], [0, 1, 0]])
    assert smallest_label(targets).tolist() == [1, 0, -1, 1]
    s = np.array([[0.1, 0.2, 0.7], [0.8, 0.1, 0.1], [0.3, 0.3, 0.4], [0.2, 0.5, 0.3]])
    # class 0: AP 1; class 1: positives (videos 0, 3) ranked 3rd and 1st -> (1 + 2/3) / 2; class 2: no first-label
    # positive (NaN, left out of the mean), while the multi-label mAP scores video 0's class 2 (ranked 1st: AP 1)
    res = first_label_map(s, smallest_label(targets))
    assert res.map == pytest.approx(11 / 12) and np.isnan(res.per_class[2])
    assert activitynet_map(s, targets).map == pytest.approx(17 / 18)
    with pytest.raises(ValueError, match="first_label"):
        first_label_map(s, np.array([0, 1, 3, 0]))


# ---------------------------------------------------------------- submissions


def write_annotations(path: Path, ids: list[str], targets: np.ndarray, names: list[str]) -> Path:
    """An official-schema annotation file: the given videos in 'validation' (one segment per label), plus a
    training video carrying an extra label that validation never has."""
    db = {
        vid: {
            "subset": "validation",
            "duration": 10.0,
            "resolution": "",
            "url": "",
            "annotations": [{"segment": [1.0, 5.0], "label": names[c]} for c in np.flatnonzero(row)],
        }
        for vid, row in zip(ids, targets)
    }
    db["trainvid0001"] = {"subset": "training", "annotations": [{"segment": [0, 1], "label": "Only in training"}]}
    path.write_text(json.dumps({"version": "VERSION 1.3", "taxonomy": [], "database": db}))
    return path


@pytest.fixture
def synthetic(tmp_path: Path) -> tuple[list[str], np.ndarray, np.ndarray, list[str], Path]:
    rng = np.random.default_rng(3)
    n, k = 120, 12
    ids = [f"vid{i:08d}" for i in range(n)]  # 11 chars, like YouTube ids
    targets = np.zeros((n, k), dtype=int)
    targets[np.arange(n), rng.integers(0, k, n)] = 1
    targets[rng.random((n, k)) < 0.05] = 1  # some videos have several labels
    scores = np.round(rng.random((n, k)) + 0.3 * targets, 1)  # rounded: ties inside and across videos
    names = [f"Class {c}" for c in range(k)]
    return ids, scores, targets, names, write_annotations(tmp_path / "gt.json", ids, targets, names)


def test_export_format_matches_the_official_sample(tmp_path: Path, shared_dir: Path) -> None:
    sample = json.loads((shared_dir / "data/activitynet/sample_classification_prediction.json").read_text())
    s = np.array([[0.2, 0.7, 0.1], [0.5, 0.5, 0.0]])
    out = export_submission(["v_abcdefghijk", "v_xyz"], s, ["A", "B", "C"], tmp_path / "sub/s.json", top_k=2)
    doc = json.loads(out.read_text())
    assert set(doc) == set(sample) and doc["version"] == sample["version"] == "VERSION 1.3"
    assert set(doc["external_data"]) == set(sample["external_data"])
    # 13-char "v_" ids lose the prefix; a short id that only starts with "v_" is kept.
    assert list(doc["results"]) == ["abcdefghijk", "v_xyz"]
    assert doc["results"]["abcdefghijk"] == [{"label": "B", "score": 0.7}, {"label": "A", "score": 0.2}]
    assert [r["label"] for r in doc["results"]["v_xyz"]] == ["A", "B"]  # tie: class order
    first = next(iter(sample["results"].values()))[0]
    assert set(first) == set(doc["results"]["v_xyz"][0]) == {"label", "score"}


def test_export_rejects_bad_input(tmp_path: Path) -> None:
    s = np.zeros((2, 3))
    with pytest.raises(ValueError, match="2 ids and 2 class names"):
        export_submission(["a", "b"], s, ["A", "B"], tmp_path / "x.json")
    with pytest.raises(ValueError, match="duplicates"):
        export_submission(["a", "a"], s, ["A", "B", "C"], tmp_path / "x.json")
    with pytest.raises(ValueError, match="top_k"):
        export_submission(["a", "b"], s, ["A", "B", "C"], tmp_path / "x.json", top_k=4)
    assert not (tmp_path / "x.json").exists()


def test_full_export_evaluates_to_activitynet_map(tmp_path: Path, synthetic) -> None:
    ids, scores, targets, names, gt = synthetic
    sub = export_submission(ids, scores, names, tmp_path / "full.json")
    res = evaluate_submission(sub, gt)
    assert res["map"] == pytest.approx(activitynet_map(scores, targets).map, abs=1e-12)
    assert res["map_interpolated"] == pytest.approx(activitynet_map(scores, targets, interpolated=True).map, abs=1e-12)
    assert res["map_interpolated"] > res["map"]  # the envelope lifts this ranking: the modes really differ
    per_class = activitynet_map(scores, targets).per_class
    assert res["per_class_ap"] == pytest.approx(dict(zip(names, per_class)))
    assert "Only in training" not in res["per_class_ap"]  # known label, no positive in this subset
    assert res["num_videos"] == len(ids) and res["num_rows"] == scores.size
    assert res["num_videos_not_in_subset"] == 0 and res["num_videos_without_rows"] == 0
    # hit@k is "any label of the video in its k best rows"; with one-label videos it is top-k accuracy.
    single = targets.sum(1) == 1
    sub1 = export_submission(np.array(ids)[single], scores[single], names, tmp_path / "single.json")
    res1 = evaluate_submission(sub1, write_annotations(tmp_path / "g1.json", list(np.array(ids)[single]),
                                                       targets[single], names))
    acc = topk_accuracy(scores[single], targets[single].argmax(1), ks=(1, 3, 5))
    assert [res1[f"hit@{k}"] for k in (1, 3, 5)] == pytest.approx([acc["top1"], acc["top3"], acc["top5"]])


def test_topk_export_loses_recall_keeps_hits_and_can_score_higher(tmp_path: Path, synthetic) -> None:
    ids, scores, targets, names, gt = synthetic
    full = evaluate_submission(export_submission(ids, scores, names, tmp_path / "full.json"), gt)
    top3 = evaluate_submission(export_submission(ids, scores, names, tmp_path / "top3.json", top_k=3), gt)
    assert top3["num_rows"] == 3 * len(ids)
    for k in (1, 3):  # the rows that decide hit@k are all still there
        assert top3[f"hit@{k}"] == full[f"hit@{k}"] and top3[f"avg_hit@{k}"] == full[f"avg_hit@{k}"]
    # Dropping rows is not monotone: a negative below its video's top 1 stops outranking a positive.
    # Class 0: v0 is a negative scored 0.5 (its 2nd label); v1 a positive scored 0.4 (its 1st label).
    s = np.array([[0.5, 0.9], [0.4, 0.1]])
    t = np.array([[0, 1], [1, 0]])
    g = write_annotations(tmp_path / "g.json", ["vidaaaaaaaa", "vidbbbbbbbb"], t, ["A", "B"])
    all_rows = evaluate_submission(export_submission(["vidaaaaaaaa", "vidbbbbbbbb"], s, ["A", "B"],
                                                     tmp_path / "a.json"), g)
    top1 = evaluate_submission(export_submission(["vidaaaaaaaa", "vidbbbbbbbb"], s, ["A", "B"],
                                                 tmp_path / "b.json", top_k=1), g)
    assert all_rows["per_class_ap"]["A"] == pytest.approx(0.5) and top1["per_class_ap"]["A"] == 1.0
    # ...while a positive that falls out of its video's top k costs recall (AP 0 here).
    s2 = np.array([[0.5, 0.9], [0.1, 0.4]])
    top1b = evaluate_submission(export_submission(["vidaaaaaaaa", "vidbbbbbbbb"], s2, ["A", "B"],
                                                  tmp_path / "c.json", top_k=1), g)
    assert top1b["per_class_ap"]["A"] == 0.0


def write_submission(path: Path, results: dict, **extra) -> Path:
    path.write_text(json.dumps({"version": "VERSION 1.3", "results": results, "external_data": {}, **extra}))
    return path


def test_missing_repeated_and_foreign_rows_follow_the_official_rules(tmp_path: Path) -> None:
    t = np.array([[1, 0], [1, 0], [0, 1]])
    g = write_annotations(tmp_path / "g.json", ["vidaaaaaaaa", "vidbbbbbbbb", "vidccccccccc"], t, ["A", "B"])
    # Class A: vidaaa's row repeated (2nd copy is a false positive), vidbbb has no A row (lost recall),
    # an unknown video's row is a false positive. Ranking: a 0.9 (TP), x 0.8 (FP), a 0.7 (FP) -> AP 1/2.
    results = {
        "vidaaaaaaaa": [{"label": "A", "score": 0.9}, {"label": "A", "score": 0.7}],
        "vidxxxxxxxx": [{"label": "A", "score": 0.8}],
        "vidccccccccc": [{"label": "B", "score": 0.3}],
    }
    res = evaluate_submission(write_submission(tmp_path / "s.json", results), g)
    assert res["per_class_ap"] == pytest.approx({"A": 0.5, "B": 1.0})
    assert res["map"] == pytest.approx(0.75)
    assert res["num_videos_not_in_subset"] == 1 and res["num_videos_without_rows"] == 1
    assert res["hit@1"] == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    "content, match",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"version": "VERSION 1.3", "results": {}}), "needs the fields"),
        (json.dumps({"version": "1", "results": [], "external_data": {}}), "'results' must map"),
        (json.dumps({"version": "1", "results": {"vidaaaaaaaa": [{"label": "Nope", "score": 1}]},
                     "external_data": {}}), "unknown label 'Nope'"),
        (json.dumps({"version": "1", "results": {"vidaaaaaaaa": [{"label": "A"}]}, "external_data": {}}),
         "without 'label' and 'score'"),
        (json.dumps({"version": "1", "results": {"vidaaaaaaaa": [{"label": "A", "score": "high"}]},
                     "external_data": {}}), "bad score"),
        (json.dumps({"version": "1", "results": {"v_vidaaaaaaaa": [{"label": "A", "score": 1}]},
                     "external_data": {}}), "spelled 'v_<id>'"),
    ],
)
def test_malformed_submission_errors_name_the_file(tmp_path: Path, content: str, match: str) -> None:
    g = write_annotations(tmp_path / "g.json", ["vidaaaaaaaa"], np.array([[1]]), ["A"])
    bad = tmp_path / "bad_submission.json"
    bad.write_text(content)
    with pytest.raises(ValueError, match=match) as err:
        evaluate_submission(bad, g)
    assert "bad_submission.json" in str(err.value)


def test_annotation_errors(tmp_path: Path) -> None:
    g = write_annotations(tmp_path / "g.json", ["vidaaaaaaaa"], np.array([[1]]), ["A"])
    sub = write_submission(tmp_path / "s.json", {})
    with pytest.raises(ValueError, match=r"no video in subset 'testing'.*'training', 'validation'"):
        evaluate_submission(sub, g, subset="testing")
    with pytest.raises(ValueError, match="no 'database'"):
        evaluate_submission(sub, sub)
    with pytest.raises(ValueError, match="missing.json: cannot read"):
        evaluate_submission(sub, tmp_path / "missing.json")


# ---------------------------------------------------------------- the real files


def test_real_sample_submission_against_real_annotations(shared_dir: Path) -> None:
    anet = shared_dir / "data/activitynet"
    start = time.perf_counter()
    res = evaluate_submission(anet / "sample_classification_prediction.json", anet / "activity_net.v1-3.bsn.json")
    assert time.perf_counter() - start < 10
    # The official "fake submission" lists each validation video's true labels, all at score 1.0. Against
    # this annotation dump (4,728 of the 4,926 validation videos) the 198 absent videos' rows are false
    # positives tied with every true row, so AP per class = recall (1) x precision of the single tie group.
    assert res["num_videos"] == 4728 and res["num_rows"] == 4933 and res["num_videos_not_in_subset"] == 198
    assert res["hit@1"] == 1.0 and res["num_videos_without_rows"] == 0
    assert res["map"] == pytest.approx(0.958561, abs=1e-6)
    assert res["map_interpolated"] == res["map"]  # one tie group per class: one PR point, nothing to lift
    assert len(res["per_class_ap"]) == 200


def test_real_annotations_perfect_submission_and_a_missing_row(tmp_path: Path, shared_dir: Path) -> None:
    ann = shared_dir / "data/activitynet/activity_net.v1-3.bsn.json"
    db = json.loads(ann.read_text())["database"]
    results = {
        vid: [{"label": lab, "score": 1.0} for lab in sorted({a["label"] for a in v["annotations"]})]
        for vid, v in db.items()
        if v["subset"] == "validation"
    }
    assert evaluate_submission(write_submission(tmp_path / "p.json", results), ann)["map"] == 1.0
    vid, rows = next(iter(results.items()))
    label = rows[0]["label"]
    npos = sum(any(a["label"] == label for a in v["annotations"]) for v in db.values() if v["subset"] == "validation")
    results[vid] = rows[1:]  # drop one true row: that class's AP is its recall, the rest stay perfect
    res = evaluate_submission(write_submission(tmp_path / "m.json", results), ann)
    assert res["per_class_ap"][label] == pytest.approx((npos - 1) / npos)
    assert res["map"] == pytest.approx(1 - 1 / npos / 200)
