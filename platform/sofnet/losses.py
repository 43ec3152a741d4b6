"""SoF-Net's training objective, returned term by term so callers can log each one.

    L    = alpha * L_acc + (1 - alpha) * L_eff + L_pg
    L_pg = beta * L_gate + (1 - beta) * L_aux          (absent when beta is None)

    out = model(clips)                                  # dense path, training mode
    terms = sofnet_loss(out, labels, costs, alpha=0.95, beta=0.05)
    terms["loss"].backward(); log({f"train/{k}": v.item() for k, v in terms.items()})

* ``L_acc``: cross-entropy of the video logits against the video's *first* label, as the official code does
  for multi-label ActivityNet videos (2.8% of training videos carry two labels).
* ``L_eff``: expected compute per frame from the gate probabilities, divided by the dense backbone's cost so
  that alpha means the same at any backbone or resolution: sum over blocks of P(frame enters block k) *
  cost(block k + gate k), plus P(reaches the classifier) * cost(classifier). P(enter k) is the product of
  the forward probabilities of the gates before it (softmax, no noise). The official code uses the sampled
  straight-through decisions instead; the expectation has the same mean and far less variance.
* ``L_gate``: the official pseudo-label guidance. Heads 0..4 are the auxiliary heads after each block and
  head 5 the final classifier; gate k's target is "forward" where head k+1 is more confident on the true
  class than head k, else "stop"; cross-entropy of gate k's logits over all frames (not masked by earlier
  stops, as in the official code: the dense path gives every head's answer for every frame).
* ``L_aux``: cross-entropy of every auxiliary head against the first label, over all frames.

TSN/TSM (stage 1) use :func:`classification_loss` only.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F

from sofnet.models.backbone import CostTable
from sofnet.models.output import SoFOutput


def classification_loss(out: SoFOutput, target: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Stage-1 loss: cross-entropy of the video logits against the primary label index [B]."""
    acc = F.cross_entropy(out.logits.float(), target)
    return {"loss": acc, "acc": acc.detach()}


def efficiency_loss(gate_logits: torch.Tensor, costs: CostTable) -> torch.Tensor:
    """Expected per-frame cost / dense cost, from gate logits [B, T, G, 2]; in [0, 1 + gates/dense]."""
    p_fwd = torch.softmax(gate_logits.float(), dim=-1)[..., 1]  # [B, T, G]
    ones = p_fwd.new_ones(*p_fwd.shape[:2], 1)
    p_enter = torch.cumprod(torch.cat([ones, p_fwd], dim=-1), dim=-1)  # [B, T, G + 1]: enter block k / classifier
    stage = torch.tensor([b + g for b, g in zip(costs.blocks, costs.gates)] + [costs.fc],
                         dtype=p_enter.dtype, device=p_enter.device)
    return (p_enter * stage).sum(dim=-1).mean() / costs.dense()


def gate_guidance_loss(out: SoFOutput, target: torch.Tensor) -> torch.Tensor:
    """The official pseudo-label loss: forward where the next head is more confident on the true class."""
    heads = torch.cat([out.aux_logits, out.frame_logits.unsqueeze(2)], dim=2).float()  # [B, T, G + 1, K]
    idx = target.view(-1, 1, 1, 1).expand(-1, heads.shape[1], heads.shape[2], 1)
    conf = torch.softmax(heads, dim=-1).gather(-1, idx).squeeze(-1).detach()  # [B, T, G + 1]
    pseudo = (conf[..., 1:] > conf[..., :-1]).long()  # [B, T, G]
    logits = out.gate_logits.float()
    return F.cross_entropy(logits.reshape(-1, 2), pseudo.reshape(-1))


def aux_loss(out: SoFOutput, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every auxiliary head on every frame against the primary label."""
    aux = out.aux_logits.float()
    tgt = target.view(-1, 1, 1).expand(*aux.shape[:3])
    return F.cross_entropy(aux.reshape(-1, aux.shape[-1]), tgt.reshape(-1))


def sofnet_loss(out: SoFOutput, target: torch.Tensor, costs: CostTable, alpha: float,
                beta: Optional[float]) -> Dict[str, torch.Tensor]:
    """The stage-2 objective and its parts.

    Args:
        out: the dense path's output in training mode.
        target: [B] primary label index.
        costs: the model's cost table at the training resolution (``model.cost_table(H, W)``).
        alpha: accuracy/efficiency trade-off.
        beta: gate-guidance vs auxiliary weight inside L_pg; None turns L_pg off.

    Returns:
        ``loss`` (to backpropagate) and the detached parts ``acc``, ``eff``, ``pg``, ``gate``, ``aux``
        (the last three only when beta is not None).
    """
    acc = F.cross_entropy(out.logits.float(), target)
    eff = efficiency_loss(out.gate_logits, costs)
    loss = alpha * acc + (1.0 - alpha) * eff
    terms = {"acc": acc.detach(), "eff": eff.detach()}
    if beta is not None:
        gate = gate_guidance_loss(out, target)
        aux = aux_loss(out, target)
        pg = beta * gate + (1.0 - beta) * aux
        loss = loss + pg
        terms.update(pg=pg.detach(), gate=gate.detach(), aux=aux.detach())
    return {"loss": loss, **terms}
