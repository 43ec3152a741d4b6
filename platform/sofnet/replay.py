"""Replay early termination on cached per-frame results, without running the network again.

Early exit only changes which frames are processed after the last decision point: a frame's gate decisions
and classifier logits do not depend on any later frame (causal gates, causal shift). So one skipping-path
pass without early exit, cached per video, determines the result of every (rho, T_min) setting:

    cache = ETCache.from_outputs(outputs, cost_by_decision=model.cost_table(H, W).by_decision())
    cache.save("val_cache.pt")                       # tensors only; loads with weights_only=True
    out = replay(ETCache.load("val_cache.pt"), rho=0.99, t_min=4)
    out.logits, out.gflops, out.decisions, out.exit_step   # == model.infer(x, rho=0.99, t_min=4)

It uses the same functions as the network's own paths (``apply_early_exit``, ``aggregate``, ``accounted_gflops``),
so a replayed point equals a full evaluation, as tests prove. The cache holds float32 logits and early exit is
decided in float32 everywhere (``first_exit``), so the replay of a bfloat16 model exits where its run does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Sequence, Union

import torch

from sofnet.models.output import NOT_PROCESSED, PASSED, SoFOutput, accounted_gflops, aggregate, apply_early_exit


@dataclass
class ETCache:
    """What replaying early exit needs, per video, from a skipping-path pass without early exit.

    Attributes:
        decisions: [N, T] int8 decisions (no -1: every frame was processed).
        frame_logits: [N, T, K] classifier logits (zeros where a frame did not reach the classifier).
        logits: [N, K] video logits without early exit (the fallback logits where ``fallback``).
        fallback: [N] bool, no frame reached the classifier (then early exit never fires either).
        cost_by_decision: [7] GMACs of a frame by decision + 1.
    """

    decisions: torch.Tensor
    frame_logits: torch.Tensor
    logits: torch.Tensor
    fallback: torch.Tensor
    cost_by_decision: torch.Tensor

    @classmethod
    def from_outputs(cls, outputs: Iterable[SoFOutput], cost_by_decision: Sequence[float]) -> "ETCache":
        """Build from ``model.infer(x)`` outputs (early exit off), one per batch, in dataset order."""
        outs: List[SoFOutput] = list(outputs)
        if not outs:
            raise ValueError("ETCache.from_outputs() needs at least one output")
        dec = torch.cat([o.decisions for o in outs]).cpu()
        if (dec < 0).any():
            raise ValueError("ETCache needs outputs computed without early exit (found dropped frames)")
        return cls(decisions=dec.to(torch.int8),
                   frame_logits=torch.cat([o.frame_logits for o in outs]).float().cpu(),
                   logits=torch.cat([o.logits for o in outs]).float().cpu(),
                   fallback=torch.cat([o.fallback for o in outs]).cpu(),
                   cost_by_decision=torch.tensor(list(cost_by_decision), dtype=torch.float64))

    def __len__(self) -> int:
        return self.decisions.shape[0]

    def save(self, path: Union[str, Path]) -> Path:
        """Write atomically as a dict of tensors."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save({k: getattr(self, k) for k in self.__dataclass_fields__}, tmp)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Union[str, Path]) -> "ETCache":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: early-exit cache not found (write it with jobs/evaluate.py)")
        data = torch.load(path, map_location="cpu", weights_only=True)
        missing = set(cls.__dataclass_fields__) - set(data)
        if missing:
            raise ValueError(f"{path}: not an early-exit cache (missing {sorted(missing)})")
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


def replay(cache: ETCache, rho: float, t_min: int, mode: str = "reached", score: str = "passed_mean") -> SoFOutput:
    """The output ``model.infer(x, rho, t_min, mode)`` would give, from the cache alone; ``score`` is the model's
    ``video_score`` (the cache's ``meta``).

    Only ``logits``, ``decisions``, ``exit_step``, ``frame_logits``, ``gflops`` and ``fallback`` are
    meaningful; the gate and auxiliary tensors are empty.
    """
    dec = cache.decisions.long()
    decisions, exit_step, fire = apply_early_exit(cache.frame_logits, dec, rho, t_min, mode, score)
    frame_logits = cache.frame_logits.masked_fill((decisions != PASSED).unsqueeze(-1), 0)
    logits, _ = aggregate(frame_logits, _no_aux(frame_logits), decisions, fire=fire, score=score)
    logits = torch.where(cache.fallback.unsqueeze(-1), cache.logits, logits)
    return _output(cache, logits, decisions, exit_step, frame_logits, cache.fallback)


def _no_aux(frame_logits: torch.Tensor) -> torch.Tensor:
    """[N, T, 0, K]: the cache keeps no auxiliary logits."""
    n, t, k = frame_logits.shape
    return frame_logits.new_zeros(n, t, 0, k)


def _output(cache: ETCache, logits: torch.Tensor, decisions: torch.Tensor, exit_step: torch.Tensor,
            frame_logits: torch.Tensor, fallback: torch.Tensor) -> SoFOutput:
    """A replayed result in the network's output type: GFLOPs from the cache's cost table; no gate tensors."""
    n, t = decisions.shape
    return SoFOutput(logits=logits, decisions=decisions, exit_step=exit_step, frame_logits=frame_logits,
                     aux_logits=_no_aux(frame_logits), gate_logits=frame_logits.new_zeros(n, t, 0, 2),
                     reach=(decisions.unsqueeze(-1) >= torch.arange(6)).float(),
                     gflops=accounted_gflops(decisions, cache.cost_by_decision.tolist()), fallback=fallback)


def action_frames_only(cache: ETCache, inside: torch.Tensor) -> SoFOutput:
    """A dense model (TSN) scored on the annotated action frames alone: what gates that stop exactly the background
    would give it, with SoF-Net's video score (the mean of the classifier logits over the frames kept).

    A diagnostic, not a method: it tells whether a gated model's gap to TSN comes from what its gates stop or from
    scoring fewer frames. A video with no sampled action frame keeps all its frames (TSN's own result). GFLOPs count
    the kept frames at the dense per-frame cost (finding them is free here).

    Args:
        cache: The dense model's cache (every frame reached the classifier).
        inside: [N, T] 1 where a sampled frame lies in an annotated segment (``ETBundle.inside``).

    Raises:
        ValueError: a frame of the cache stopped before the classifier (not a dense model's cache).
    """
    dec = cache.decisions.long()
    if bool((dec != PASSED).any()):
        raise ValueError("action_frames_only needs a dense model's cache (every frame reaching the classifier)")
    inside = torch.as_tensor(inside).bool()
    keep = inside | ~inside.any(dim=1, keepdim=True)
    decisions = torch.where(keep, dec, torch.full_like(dec, NOT_PROCESSED))
    frame_logits = cache.frame_logits.masked_fill(~keep.unsqueeze(-1), 0)
    logits, fallback = aggregate(frame_logits, _no_aux(frame_logits), decisions)
    n, t = dec.shape
    return _output(cache, logits, decisions, torch.full((n,), t, dtype=torch.long), frame_logits, fallback)
