"""Figure A: sofnet.viz.decision_map renders headless, draws the decisions it is given, rejects bad input; and
sofnet.figure_a (real shards, a real gated network): the thumbnails are the evaluation's frames, correct/failed follow
the predictions, training logs them, and the command line works end to end."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

from sofnet.checkpoint import seal, write_meta, write_model
from sofnet.clips import IMAGENET_MEAN, IMAGENET_STD
from sofnet.config import load_config
from sofnet.data import make_eval_loader, read_manifest
from sofnet.early_exit import EarlyExit
from sofnet.evaluation import evaluate
from sofnet.figure_a import FigureError, choose_videos, eval_frames, figures, to_uint8
from sofnet.figure_a import main as figure_a_main
from sofnet.session import ensure_synthetic_shards
from sofnet.viz import (
    GT_INSIDE_COLOR,
    GT_OUTSIDE_COLOR,
    NOT_PROCESSED_COLOR,
    SKIPPED_COLOR,
    STAGE_COLORS,
    STOP_COLOR,
    decision_cells,
    decision_map,
)

from helpers import gated

REPO = Path(__file__).resolve().parents[1]

# Every stop, the classifier, and ET after frame 9: exit_step 10 = frames processed, as SoFOutput.exit_step.
DECISIONS = [5, 2, 0, 5, 4, 1, 5, 3, 5, 5, -1, -1]


def axis(fig: Figure, label: str):
    return next(a for a in fig.axes if a.get_label() == label)


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=60)
    return buf.getvalue()


def test_renders_png_and_cells_show_the_decisions() -> None:
    fig = decision_map(DECISIONS, exit_step=torch.tensor(10), title="v_demo", true_label="Skiing", pred_label="Surfing")
    assert isinstance(fig, Figure)
    assert png_bytes(fig).startswith(b"\x89PNG\r\n\x1a\n")
    drawn = axis(fig, "decisions").images[0].get_array()
    assert drawn.shape[:2] == (len(DECISIONS), 6)
    for i, d in enumerate(DECISIONS):
        for c in range(6):
            if d == -1:
                want = NOT_PROCESSED_COLOR
            else:
                want = STAGE_COLORS[c] if c <= d else SKIPPED_COLOR  # filled up to the block it stopped after
            np.testing.assert_allclose(drawn[i, c], to_rgba(want), err_msg=f"frame {i} column {c}")
    title = fig.get_suptitle()
    assert "v_demo" in title and "Skiing" in title and "Surfing" in title and "5/12 frames" in title
    # The exit mark: a line between frame 9 and 10, and a text saying so.
    lines = [ln for ln in axis(fig, "decisions").get_lines() if np.allclose(ln.get_ydata(), 9.5)]
    assert lines
    texts = [t.get_text() for a in fig.axes for t in a.texts]
    assert any("early exit after frame 9" in t for t in texts)
    # Red stop ticks sit on the gate after the last computed block of each stopped frame.
    stops = axis(fig, "decisions").collections[0].get_segments()
    assert sorted((int(round(s[0, 1])), s[0, 0]) for s in stops) == [(1, 2.5), (2, 0.5), (4, 4.5), (5, 1.5), (7, 3.5)]


def test_exit_step_is_inferred_and_tensor_input_accepted() -> None:
    fig = decision_map(torch.tensor(DECISIONS))
    assert any("early exit after frame 9" in t.get_text() for a in fig.axes for t in a.texts)
    no_exit = decision_map([5, 5, 0])
    assert not any(t.get_text() for a in no_exit.axes for t in a.texts)
    last = decision_map([5, 0, 5], exit_step=3)  # ET did not fire (or fired on the last frame): nothing dropped
    assert not any(t.get_text() for a in last.axes for t in a.texts)


def test_ground_truth_bar_from_flags_and_from_segments() -> None:
    ts = np.array([0.5, 1.5, 2.5, 3.5, 4.5, 5.5])
    inside = np.array([False, True, True, False, False, True])
    from_flags = axis(decision_map([5] * 6, inside=inside), "ground_truth").images[0].get_array()
    segs = [[1.0, 3.0], [5.0, 9.0]]
    fig = decision_map([5] * 6, timestamps=ts, segments=segs)
    from_segments = axis(fig, "ground_truth").images[0].get_array()
    np.testing.assert_array_equal(from_flags, from_segments)
    for i, flag in enumerate(inside):
        np.testing.assert_allclose(from_flags[i, 0], to_rgba(GT_INSIDE_COLOR if flag else GT_OUTSIDE_COLOR))
    assert "2.5 s" in axis(fig, "decisions").get_yticklabels()[2].get_text()
    assert not [a for a in decision_map([5] * 6).axes if a.get_label() == "ground_truth"]


def test_thumbnails_from_a_real_video(shared_dir: Path, tmp_path: Path) -> None:
    with av.open(str(shared_dir / "videos/carphone_distorted.mp4")) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)][:8]
    fig = decision_map([5, 4, 3, 2, 1, 0, -1, -1], thumbnails=frames, inside=[1, 1, 1, 1, 0, 0, 0, 0], title="carphone")
    strip = axis(fig, "thumbnails").images[0].get_array()
    assert strip.shape == (8 * 144, 176, 3)
    np.testing.assert_array_equal(strip[144:288], frames[1])  # row 1 is frame 1, in time order
    (tmp_path / "figure_a.png").write_bytes(png_bytes(fig))
    assert (tmp_path / "figure_a.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"decisions": [5, 6]}, "decision 6 at frame 1 is outside -1..5"),
        ({"decisions": [5, -2]}, "outside -1..5"),
        ({"decisions": [5, 1.5]}, "integers"),
        ({"decisions": []}, "non-empty"),
        ({"decisions": [[5, 5]]}, "1-D"),
        ({"decisions": [5, -1, 5]}, "exactly frames 1..2 must be -1"),
        ({"decisions": [-1, -1]}, "frame 0"),
        ({"decisions": [5, 5, -1], "exit_step": 1}, "exactly frames 1..2"),
        ({"decisions": [5, 5, -1], "exit_step": 3}, "no frame may be -1"),
        ({"decisions": [5, 5], "exit_step": 3}, "exit_step 3 is outside 1..2"),
        ({"decisions": [5, 5], "exit_step": 0}, "exit_step 0 is outside 1..2"),
        ({"decisions": [5, 5], "inside": [1, 0, 1]}, "one flag per frame"),
        ({"decisions": [5, 5], "timestamps": [0.0]}, "timestamps must be 2"),
        ({"decisions": [5, 5], "segments": [[0, 1]]}, "need timestamps"),
        ({"decisions": [5, 5], "timestamps": [0, 1], "segments": [[2, 1]]}, "start <= end"),
        ({"decisions": [5, 5], "inside": [1, 0], "timestamps": [0, 1], "segments": [[0, 1]]}, "not both"),
        ({"decisions": [5, 5], "thumbnails": [np.zeros((4, 4, 3), np.uint8)]}, "one image per frame"),
        ({"decisions": [5, 5], "thumbnails": [np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 3))]}, r"thumbnails\[1\]"),
        ({"decisions": [5, 5], "thumbnails": [np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5, 3), np.uint8)]},
         r"thumbnails\[1\]"),
    ],
)
def test_bad_input_raises_a_clear_value_error(kwargs: dict, match: str) -> None:
    decisions = kwargs.pop("decisions")
    with pytest.raises(ValueError, match=match):
        decision_map(decisions, **kwargs)


def test_decision_cells() -> None:
    np.testing.assert_array_equal(
        decision_cells(np.array([0, 5, -1])),
        [[1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1], [-1, -1, -1, -1, -1, -1]],
    )


def test_thumbnails_are_framed_by_their_fate() -> None:
    frames = [np.full((8, 8, 3), 10 * i, np.uint8) for i in range(len(DECISIONS))]
    fig = decision_map(DECISIONS, thumbnails=frames)
    tax = axis(fig, "thumbnails")
    np.testing.assert_array_equal(tax.images[0].get_array(), np.concatenate(frames))  # marks never touch pixels
    fates = {p.get_gid() for p in tax.patches}
    want = {f"frame{i}:" + ("not_processed" if d == -1 else "classifier" if d == 5 else "stopped")
            for i, d in enumerate(DECISIONS)}
    assert fates == want
    stopped = [p for p in tax.patches if p.get_gid().endswith("stopped")]
    assert all(np.allclose(p.get_edgecolor(), to_rgba(STOP_COLOR)) for p in stopped) and len(stopped) == 5


# ------------------------------------------------------------------ Figure A on real shards with a real network
T, SIZE, RESIZE, CLASSES = 8, 64, 73, 3


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Synthetic shards, a gated tiny SoF-Net calibrated on their frames, its evaluation with early exit, and the
    frames the eval loader gave it (by id)."""
    shards = ensure_synthetic_shards(tmp_path_factory.mktemp("figa"), videos=24)
    loader = make_eval_loader(shards, subset="validation", num_segments=T, input_size=SIZE, resize=RESIZE,
                              batch_size=4, num_workers=0, num_classes=CLASSES)
    seen = {vid: f for b in loader for vid, f in zip(b["id"], b["frames"])}
    model = gated("sofnet", torch.stack([seen[v] for v in sorted(seen)]).double(), classes=CLASSES)
    result = evaluate(model, loader, device=torch.device("cpu"), dtype=torch.float64, num_classes=CLASSES,
                      et=EarlyExit(True, 0.9, 2), expected=loader.dataset.num_videos)
    return SimpleNamespace(shards=shards, model=model, result=result, seen=seen,
                           names=read_manifest(shards)["classes"])


def test_thumbnails_are_the_frames_the_evaluation_saw(evaluated: SimpleNamespace) -> None:
    r = evaluated.result
    ids = r.ids[:3]
    frames = eval_frames(evaluated.shards, ids, subset="validation", num_segments=T, input_size=SIZE, resize=RESIZE)
    assert sorted(frames) == sorted(ids)
    for vid in ids:
        np.testing.assert_array_equal(frames[vid], to_uint8(evaluated.seen[vid]))
        # ...and the inversion is the loader's normalization undone: renormalized, it is the loader's tensor
        back = (torch.from_numpy(frames[vid]).permute(0, 3, 1, 2).double() - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
                * 255) / (torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255)
        assert torch.allclose(back, evaluated.seen[vid].double(), atol=1e-4)
    picks = {"chosen": ids}
    for (rel, fig), vid in zip(figures(r, picks, evaluated.names, frames), ids):
        assert rel == f"chosen/{vid}.png"
        strip = axis(fig, "thumbnails").images[0].get_array()
        for t in range(T):  # cell t of the strip is frame t: the segment centre, resized and centre-cropped
            np.testing.assert_array_equal(strip[t * SIZE:(t + 1) * SIZE], to_uint8(evaluated.seen[vid])[t])
        i = r.ids.index(vid)
        gids = sorted(p.get_gid() for p in axis(fig, "thumbnails").patches)
        d = r.arrays["et_decisions"][i]
        assert sum(g.endswith("not_processed") for g in gids) == int((d == -1).sum())
    with pytest.raises(FigureError, match="'no-such-video' is not in the"):
        eval_frames(evaluated.shards, ["no-such-video"], subset="validation", num_segments=T, input_size=SIZE,
                    resize=RESIZE)


def test_correct_and_failed_follow_the_predictions(evaluated: SimpleNamespace) -> None:
    r, model = evaluated.result, evaluated.model
    x = torch.stack([evaluated.seen[v] for v in r.ids]).double()
    probs = model.infer(x, rho=0.9, t_min=2).logits.float().softmax(-1).numpy()  # the predictions, computed again
    pred, conf, label = probs.argmax(1), probs.max(1), r.arrays["label"]
    right = [v for v, p, y in zip(r.ids, pred, label) if p == y]
    wrong = [v for v, p, y in zip(r.ids, pred, label) if p != y]
    assert right and wrong, "the fixture must have both kinds of videos"
    picks = choose_videos(r, correct=len(r.ids), failed=1)
    assert set(picks["correct"]) == set(right) and picks["failed"][0] in wrong and len(picks["failed"]) == 1
    order = [conf[r.ids.index(v)] for v in picks["correct"]]
    assert order == sorted(order, reverse=True)
    assert conf[r.ids.index(picks["failed"][0])] == max(conf[r.ids.index(v)] for v in wrong)  # most confident failure
    no_et = choose_videos(r, 10, 10, prefix="")
    base = r.arrays["scores"].argmax(1)
    assert set(no_et["correct"]) == {v for v, p, y in zip(r.ids, base, label) if p == y}
    assert choose_videos(r, 0, 0) == {"correct": [], "failed": []}
    with pytest.raises(FigureError, match=">= 0"):
        choose_videos(r, -1, 2)


def test_training_logs_correct_and_failed_maps_with_frames(evaluated: SimpleNamespace, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow
    from omegaconf import OmegaConf

    from sofnet.train.tracking import RunTracker

    monkeypatch.chdir(tmp_path)  # MLflow's artifact root (./mlruns) goes here
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_config(REPO / "jobs/configs/demo.yaml", [
        f"data.val_shards={evaluated.shards}", f"data.train_shards={evaluated.shards}", f"model.num_classes={CLASSES}",
        "train.decision_maps_correct=1", "train.decision_maps_failed=2", f"mlflow.tracking_uri={uri}"])
    tracker = RunTracker(cfg, uri)
    tracker.start_job([])
    run_id = tracker.start("stage2", OmegaConf.to_container(cfg.model))
    tracker.log_eval(evaluated.result, stage="stage2", epoch=3, class_names=evaluated.names, figures=True)
    tracker.end_job()
    client = mlflow.MlflowClient(tracking_uri=uri)
    picks = choose_videos(evaluated.result, 1, 2)
    for group in ("correct", "failed"):
        logged = [a.path for a in client.list_artifacts(run_id, f"decision_maps/epoch004/{group}")]  # 1-based
        assert logged == sorted(f"decision_maps/epoch004/{group}/{v}.png" for v in picks[group])
    local = client.download_artifacts(run_id, f"decision_maps/epoch004/failed/{picks['failed'][0]}.png", str(tmp_path))
    assert Path(local).read_bytes().startswith(b"\x89PNG") and Path(local).stat().st_size > 20_000


def _checkpoint(model: torch.nn.Module, where: Path) -> Path:
    write_model(where, model, early_exit={"enabled": True, "rho": 0.9, "t_min": 2})
    write_meta(where, {"stage": "stage2", "epoch": 0, "epochs": 1, "world": 1})
    seal(where, 0)
    return where


def test_cli_draws_chosen_and_picked_videos(evaluated: SimpleNamespace, tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    ckpt = _checkpoint(evaluated.model, tmp_path / "ckpt")
    common = ["--config", str(REPO / "jobs/configs/demo.yaml"), "--checkpoint", str(ckpt), "--device", "cpu", "--dpi",
              "50", f"data.val_shards={evaluated.shards}", f"model.num_classes={CLASSES}", "data.num_workers=0",
              "early_exit.rho=0.9", "early_exit.t_min=2"]
    out = tmp_path / "figs"
    assert figure_a_main([*common, "--out", str(out), "--correct", "1", "--failed", "1"]) == 0
    pngs = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert [p.split("/")[0] for p in pngs] == ["correct", "failed"]
    assert capsys.readouterr().out.split() == [str(out / p) for p in pngs]
    # Ids the user names (one starting with '-': --ids=...) land in the group their prediction puts them in.
    r = evaluated.result
    chosen = r.ids[:2]
    assert figure_a_main([*common, "--out", str(tmp_path / "mine"), f"--ids={','.join(chosen)}"]) == 0
    drawn = {p.stem: p.parent.name for p in (tmp_path / "mine").rglob("*.png")}
    assert set(drawn) == set(chosen)
    picks = choose_videos(r, len(r.ids), len(r.ids))  # this model in fp32 (the checkpoint) agrees with fp64 here
    for vid, group in drawn.items():
        assert vid in picks[group]


@pytest.mark.parametrize("bad, match", [
    (["--ids=no-such-video"], "video 'no-such-video' is not in the"),
    (["--ids=x", "--correct", "1"], "either --ids or --correct/--failed"),
    (["--checkpoint", "/nonexistent/run"], "no such checkpoint or run directory"),
    (["data.val_shards=/nonexistent/shards"], "/nonexistent/shards"),
])
def test_cli_bad_input_is_one_line_exit_2(evaluated: SimpleNamespace, tmp_path: Path, capsys: pytest.CaptureFixture,
                                          bad: list, match: str) -> None:
    ckpt = _checkpoint(evaluated.model, tmp_path / "ckpt")
    args = ["--config", str(REPO / "jobs/configs/demo.yaml"), "--checkpoint", str(ckpt), "--out", str(tmp_path / "o"),
            "--device", "cpu", f"data.val_shards={evaluated.shards}", f"model.num_classes={CLASSES}",
            "data.num_workers=0", "early_exit.t_min=2"]
    assert figure_a_main(args + bad) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.splitlines()[-1].startswith("error: ") and match in err.splitlines()[-1], err
