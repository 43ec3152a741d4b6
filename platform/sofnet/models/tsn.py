"""TSN and TSM baselines: a ResNet on each of T frames, average consensus, dropout, a linear classifier.

    model = build_model(model_config(arch="tsm", backbone="resnet50", num_classes=200))
    out = model(x)          # x [B, T, 3, H, W] -> SoFOutput (every frame reaches the classifier)
    out.logits              # [B, K], the mean of the per-frame logits (TSN's average consensus)

TSM inserts the temporal shift (1/8 of the channels each way, zero padded) before the first conv of every
residual block, bidirectional as in the TSM paper; with ``shift=causal`` it is the stage-1 warm-up of
SoF-Net^TSM, which must not read later frames. Returning a ``SoFOutput`` (all decisions 5, no gates) lets the
evaluation code treat baselines and SoF-Net alike.
"""

from __future__ import annotations

from typing import Optional

import torch

from sofnet.models.base import VideoModel
from sofnet.models.output import PASSED, SoFOutput, accounted_gflops, aggregate, apply_early_exit


class TSN(VideoModel):
    """TSN (``arch=tsn``) and TSM (``arch=tsm``)."""

    def forward(self, x: torch.Tensor, rho: Optional[float] = None, t_min: Optional[int] = None,
                mode: str = "reached") -> SoFOutput:
        """x [B, T, 3, H, W] -> SoFOutput. ``rho`` applies early exit to the results (accounted, not saved:
        the baseline computes every frame; only causal models may use it)."""
        b, t = x.shape[:2]
        feats = self.trunk(x.flatten(0, 1))  # video-major rows: the TSM reshape expects [B, T]
        frame_logits = self.fc(self.dropout(feats)).view(b, t, -1)
        decisions = torch.full((b, t), PASSED, dtype=torch.long, device=x.device)
        exit_step = torch.full((b,), t, dtype=torch.long, device=x.device)
        fire = None
        if rho is not None:
            if self.shift == "bidirectional":
                raise ValueError("early exit needs a causal model; the bidirectional TSM reads later frames")
            decisions, exit_step, fire = apply_early_exit(frame_logits, decisions, rho, t_min or 1, mode,
                                                          self.cfg.video_score)
        empty = frame_logits.new_zeros(b, t, 0, frame_logits.shape[-1])
        logits, fallback = aggregate(frame_logits, empty, decisions, fire=fire, score=self.cfg.video_score)
        costs = self.cost_table(*x.shape[-2:]).by_decision()
        return SoFOutput(
            logits=logits, decisions=decisions, exit_step=exit_step, frame_logits=frame_logits, aux_logits=empty,
            gate_logits=frame_logits.new_zeros(b, t, 0, 2), reach=(decisions >= 0).to(x.dtype).unsqueeze(-1),
            gflops=accounted_gflops(decisions, costs), fallback=fallback)

    @torch.no_grad()
    def infer(self, x: torch.Tensor, rho: Optional[float] = None, t_min: Optional[int] = None,
              mode: str = "reached", chunk: Optional[int] = None) -> SoFOutput:
        """Evaluation pass (no gradients), the same interface as ``SoFNet.infer``."""
        if self.training:
            raise RuntimeError("infer() is the deterministic evaluation path: call model.eval() first")
        return self(x.to(self.fc.weight.dtype), rho=rho, t_min=t_min, mode=mode)
