"""sofnet.viz.decision_map: renders headless to PNG, draws the decisions it is given, rejects bad input."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

from sofnet.viz import (
    GT_INSIDE_COLOR,
    GT_OUTSIDE_COLOR,
    NOT_PROCESSED_COLOR,
    SKIPPED_COLOR,
    STAGE_COLORS,
    decision_cells,
    decision_map,
)

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
