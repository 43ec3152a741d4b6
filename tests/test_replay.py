"""Replaying early exit from a cache equals running the skipping path with early exit, point by point."""

from __future__ import annotations

import pytest
import torch

from helpers import clips, gated, tiny_model
from sofnet.replay import ETCache, action_frames_only, replay


@pytest.mark.parametrize("arch,score", [("sofnet", "passed_mean"), ("sofnet_tsm", "passed_mean"),
                                        ("sofnet", "frames_seen")])
def test_replay_equals_full_evaluation_on_a_grid(arch, score, tmp_path):
    x = clips(4, 8, 64, 11)
    model = gated(arch, x, seed=11, survival=(0.9, 0.8, 0.7, 0.6, 0.5))
    model.cfg.video_score = score  # model.video_score: the replay must score as the network does
    batches = [x[:2], x[2:]]
    cache = ETCache.from_outputs([model.infer(b) for b in batches], model.cost_table(64, 64).by_decision())
    cache = ETCache.load(cache.save(tmp_path / "cache.pt"))
    fired = 0
    for rho in (0.6, 0.99):
        for t_min in (1, 3):
            for mode in ("reached", "official"):
                full = [model.infer(b, rho=rho, t_min=t_min, mode=mode) for b in batches]
                got = replay(cache, rho, t_min, mode, score)
                assert torch.equal(got.decisions, torch.cat([o.decisions for o in full]))
                assert torch.equal(got.exit_step, torch.cat([o.exit_step for o in full]))
                torch.testing.assert_close(got.logits, torch.cat([o.logits for o in full]).float())
                torch.testing.assert_close(got.gflops, torch.cat([o.gflops for o in full]))
                fired += int((got.exit_step < 8).sum())
    assert fired > 0


def test_cache_rejects_early_exit_outputs_and_bad_files(tmp_path):
    x = clips(2, 6, 64, 12)
    model = gated("sofnet", x, seed=12, survival=(1, 1, 1, 1, 1))
    with pytest.raises(ValueError, match="without early exit"):
        ETCache.from_outputs([model.infer(x, rho=1e-9, t_min=1)], [0.0] * 7)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        ETCache.load(tmp_path / "missing.pt")
    torch.save({"decisions": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="bad.pt"):
        ETCache.load(tmp_path / "bad.pt")


def test_action_frames_only_scores_tsn_on_the_annotated_frames(tmp_path):
    """TSN's frames do not see each other: scoring its cache on the annotated frames equals running TSN on those
    frames alone (video logits, GFLOPs); a video without an annotated frame keeps TSN's own result."""
    x = clips(3, 8, 64, 13)
    model = tiny_model("tsn")
    cache = ETCache.from_outputs([model.infer(x)], model.cost_table(64, 64).by_decision())
    inside = torch.zeros(3, 8, dtype=torch.int64)
    inside[0, 2:5] = 1
    inside[1, [0, 7]] = 1
    got = action_frames_only(ETCache.load(cache.save(tmp_path / "c.pt")), inside)
    for v in range(2):
        idx = inside[v].nonzero().flatten()
        alone = model.infer(x[v:v + 1, idx])  # TSN takes any number of frames
        torch.testing.assert_close(got.logits[v], alone.logits[0].float())
        torch.testing.assert_close(got.gflops[v], alone.gflops[0])
        assert got.decisions[v].tolist() == [5 if i else -1 for i in inside[v].tolist()]
    torch.testing.assert_close(got.logits[2], cache.logits[2])  # no action frame sampled: all frames, as TSN
    assert got.decisions[2].tolist() == [5] * 8 and not got.fallback.any()
    with pytest.raises(ValueError, match="dense model"):
        gated_cache = ETCache.from_outputs([gated("sofnet", x, seed=13).infer(x)], [0.0] * 7)
        action_frames_only(gated_cache, inside)
