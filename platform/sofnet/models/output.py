"""What every model returns (``SoFOutput``), and how per-frame results become a video prediction.

The aggregation lives here, in one place, because three callers must agree on it to the last bit: the dense
training path, the skipping path, and the early-exit replay of the rho/T_min sweep, which re-runs
:func:`aggregate` on cached per-frame results instead of the network.

Early termination (ET) in one paragraph: frames are consumed in temporal order; at a frame that reached the
classifier the running mean of the classifier logits of all frames that reached it so far is updated; if
enough frames have been seen (``mode="reached"``: at least ``t_min`` frames reached the classifier, the
default; ``mode="official"``: the 0-based time index is > ``t_min`` - 1, as the official code counts) and the
max softmax of that mean is >= ``rho`` (official: > ``rho``), the video exits and no later frame is
processed. The test is made only at frames that reached the classifier, as in the official code. The running
mean, its softmax and the comparison are computed in float32 (float64 stays float64) whatever the model's dtype:
in bfloat16, 0.999 rounds to 1.0 and a probability cannot exceed it, so the official rule would never fire.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch

NOT_PROCESSED = -1  # decision code of a frame that early exit dropped before it was processed
PASSED = 5  # decision code of a frame that passed every gate and reached the classifier


@dataclass
class SoFOutput:
    """The result of a forward or infer pass on ``B`` videos of ``T`` frames, ``K`` classes, ``G`` gates.

    Attributes:
        logits: [B, K] video logits.
        decisions: [B, T] long: ``k`` in 0..G-1 stopped at gate k (after block k), ``G`` (=5) reached the
            classifier, -1 not processed (dropped by early exit).
        exit_step: [B] long, frames visited: the 1-based step at which ET fired, ``T`` when it did not.
        frame_logits: [B, T, K] classifier logits per frame.
        aux_logits: [B, T, G, K] auxiliary-head logits per frame and gate.
        gate_logits: [B, T, G, 2] gate logits (index 0 stop, 1 forward).
        reach: [B, T, G + 1] float, 1 where the frame entered block k (k < G) or reached the classifier
            (k = G); straight-through in training so that losses reach the gates.
        gflops: [B] multiply-accumulates per video in G(MAC), the paper's accounting: the blocks each frame
            ran, their gates, and the classifier where reached.
        fallback: [B] bool, True where no frame reached the classifier and the logits come from the
            deepest auxiliary head that any frame reached.
        gate_sample: [B, T, G, 2] (dense path only, else None) each gate's own one-hot decision before earlier
            stops are applied: the hard Gumbel-softmax sample with its straight-through gradient in training
            (the official code's ``all_policy_r``, which its L_gate and L_eff use), the argmax in evaluation.

    The dense path fills every entry of ``frame_logits``/``aux_logits``/``gate_logits`` (what each head would
    say for every frame: the training losses use them); the skipping path leaves zeros where nothing was
    computed. Compare the two under :attr:`gate_computed` and ``decisions == 5``.
    """

    logits: torch.Tensor
    decisions: torch.Tensor
    exit_step: torch.Tensor
    frame_logits: torch.Tensor
    aux_logits: torch.Tensor
    gate_logits: torch.Tensor
    reach: torch.Tensor
    gflops: torch.Tensor
    fallback: torch.Tensor
    gate_sample: Optional[torch.Tensor] = None

    @property
    def gate_computed(self) -> torch.Tensor:
        """[B, T, G] bool: gate k ran on the frame (the frame reached it and was processed)."""
        g = self.gate_logits.shape[2]
        ks = torch.arange(g, device=self.decisions.device)
        return self.decisions.unsqueeze(-1) >= ks

    @property
    def frame_usage(self) -> torch.Tensor:
        """[B] fraction of the sampled frames that reached the classifier."""
        return (self.decisions == PASSED).float().mean(dim=1)

    def survival(self) -> torch.Tensor:
        """[G + 1] fraction of sampled frames that entered each block, and (last) reached the classifier."""
        ks = torch.arange(self.reach.shape[-1], device=self.decisions.device)
        return (self.decisions.unsqueeze(-1) >= ks).float().mean(dim=(0, 1))


def first_exit(frame_logits: torch.Tensor, passed: torch.Tensor, rho: float, t_min: int,
               mode: str = "reached", score: str = "passed_mean") -> torch.Tensor:
    """The 0-based time index at which early exit fires for each video, or -1.

    The one place early exit is decided (dense paths, the skipping path's chunks and the replay all call it),
    in float32 at least: see the module docstring.

    Args:
        frame_logits: [B, T, K] classifier logits of frames (anything where ``passed`` is False).
        passed: [B, T] bool, the frame reached the classifier.
        rho: confidence threshold on the max softmax of the running mean.
        t_min: minimum count (frames that reached the classifier, or time steps in ``official`` mode).
        mode: ``reached`` (ours, >= rho) or ``official`` (the official code's counting, > rho).
        score: the video score whose confidence is tested (:func:`aggregate`).
    """
    frame_logits = frame_logits.detach().to(torch.promote_types(frame_logits.dtype, torch.float32))
    w = passed.to(frame_logits.dtype)
    csum = torch.cumsum(frame_logits * w.unsqueeze(-1), dim=1)
    count = torch.cumsum(w, dim=1)
    if score == "frames_seen":  # the running sum over the time steps so far
        seen = torch.arange(1, passed.shape[1] + 1, device=passed.device, dtype=frame_logits.dtype)
        prob = torch.softmax(csum / seen.view(1, -1, 1), dim=-1).amax(dim=-1)
    else:
        prob = torch.softmax(csum / count.clamp(min=1).unsqueeze(-1), dim=-1).amax(dim=-1)
    if mode == "reached":
        fire = passed & (count >= t_min) & (prob >= rho)
    elif mode == "official":
        steps = torch.arange(passed.shape[1], device=passed.device)
        fire = passed & (steps > t_min - 1) & (prob > rho)
    else:
        raise ValueError(f"unknown early-exit mode {mode!r}")
    any_fire = fire.any(dim=1)
    idx = fire.to(torch.int8).argmax(dim=1)  # first True
    return torch.where(any_fire, idx, torch.full_like(idx, -1))


def drop_after_exit(decisions: torch.Tensor, fire: torch.Tensor) -> torch.Tensor:
    """[B, T] bool mask of the frames after each video's exit step (``fire`` from :func:`first_exit`)."""
    steps = torch.arange(decisions.shape[1], device=decisions.device)
    return (fire.unsqueeze(1) >= 0) & (steps.unsqueeze(0) > fire.unsqueeze(1))


def apply_early_exit(frame_logits: torch.Tensor, decisions: torch.Tensor, rho: float, t_min: int,
                     mode: str = "reached", score: str = "passed_mean",
                     ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Early exit applied to finished per-frame results (dense paths and the replay).

    Returns ``(decisions, exit_step, fire)``: decisions with the frames after each exit marked -1, the frames
    visited per video (``T`` where no exit fired), and :func:`first_exit`'s index for :func:`aggregate`.
    """
    fire = first_exit(frame_logits, decisions == PASSED, rho, t_min, mode, score)
    dropped = decisions.masked_fill(drop_after_exit(decisions, fire), NOT_PROCESSED)
    exit_step = torch.where(fire >= 0, fire + 1, torch.full_like(fire, decisions.shape[1]))
    return dropped, exit_step, fire


def aggregate(frame_logits: torch.Tensor, aux_logits: torch.Tensor, decisions: torch.Tensor,
              passed_w: Optional[torch.Tensor] = None, fire: Optional[torch.Tensor] = None,
              score: str = "passed_mean") -> Tuple[torch.Tensor, torch.Tensor]:
    """Video logits from per-frame results; returns ``(logits [B, K], fallback [B] bool)``.

    The mean of the classifier logits of the frames that reached it (up to and including the exit step
    where ``fire`` >= 0). A video in which no frame reached the classifier gets the mean of the auxiliary
    logits at the deepest gate any of its frames reached, over those frames: the most informed prediction
    the network made for it. (The official code returns all-zero logits there, a uniform guess that a
    single confident frame would beat.)

    ``score="frames_seen"`` (``model.video_score``, a deviation) divides the same sum by the frames seen instead
    (``T``, or the exit step + 1): a stopped frame counts as a vote of zero logits, so a video's score keeps how
    many of its frames carried evidence, as TSN's dense mean does (see the README's deviation table).

    Args:
        passed_w: [B, T] weights of "reached the classifier"; defaults to ``decisions == 5``; the dense
            training path passes the straight-through mask so the gates receive the accuracy gradient.
        fire: [B] exit index from :func:`first_exit` (frames after it must already be marked -1).
    """
    passed = decisions == PASSED
    w = passed.to(frame_logits.dtype) if passed_w is None else passed_w
    if fire is not None and bool((fire >= 0).any()):
        # Running mean at the exit step: the prefix sum up to it (frames after it have zero weight anyway,
        # but the cumulative form is first_exit's; first_exit computes it in float32 at least, this in the
        # model's dtype, which only the value of the logits sees, never the exit step).
        csum = torch.cumsum(frame_logits * w.unsqueeze(-1), dim=1)
        count = torch.cumsum(w, dim=1)
        last = torch.where(fire >= 0, fire, torch.full_like(fire, decisions.shape[1] - 1))
        gather = last.view(-1, 1, 1).expand(-1, 1, frame_logits.shape[-1])
        num = csum.gather(1, gather).squeeze(1)
        den = count.gather(1, last.view(-1, 1)).squeeze(1)
        if score == "frames_seen":
            den = (last + 1).to(num.dtype)
    else:
        num = (frame_logits * w.unsqueeze(-1)).sum(dim=1)
        den = w.sum(dim=1)
        if score == "frames_seen":
            den = torch.full_like(den, decisions.shape[1])
    fallback = ~passed.any(dim=1)
    logits = num / den.clamp(min=1e-12).unsqueeze(-1)
    if bool(fallback.any()) and aux_logits.shape[2] > 0:
        deepest = decisions.clamp(max=aux_logits.shape[2] - 1).amax(dim=1)  # no frame passed: max is a gate
        sel = (decisions == deepest.unsqueeze(1)).to(aux_logits.dtype)  # [B, T]
        k = deepest.view(-1, 1, 1, 1).expand(-1, aux_logits.shape[1], 1, aux_logits.shape[-1])
        aux = aux_logits.gather(2, k).squeeze(2)  # [B, T, K] at each video's deepest gate
        fb = (aux * sel.unsqueeze(-1)).sum(dim=1) / sel.sum(dim=1).clamp(min=1).unsqueeze(-1)
        # Training: num is exactly 0 on these rows, so adding (num - num.detach()) keeps the value and gives the
        # gates the official gradient (its divisor is clamped at 1): passing a frame adds its classifier logits.
        # Without it no accuracy gradient reaches the gates of a video that stopped every frame, and the
        # efficiency loss alone drives them all to stop at the first gate.
        logits = torch.where(fallback.unsqueeze(-1), fb + (num - num.detach()), logits)
    return logits, fallback


def accounted_gflops(decisions: torch.Tensor, cost_by_decision: Sequence[float]) -> torch.Tensor:
    """[B] GMACs per video: each frame's cost looked up by its decision (see ``CostTable.by_decision``)."""
    table = torch.tensor(cost_by_decision, dtype=torch.float64, device=decisions.device)
    return table[decisions + 1].sum(dim=1)
