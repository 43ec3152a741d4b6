"""SoF-Net's training objective, returned term by term so callers can log each one.

    L    = alpha * L_acc + (1 - alpha) * L_eff + L_pg
    L_pg = beta * L_gate + (1 - beta) * L_aux          (absent when beta is None)

    out = model(clips)                                  # dense path, training mode
    terms = sofnet_loss(out, labels, costs, alpha=0.95, beta=0.05)                 # ours (the defaults)
    terms = sofnet_loss(out, labels, costs, alpha=0.95, beta=0.05,
                        gate_target="sample", eff_weights="official")              # the official code's terms
    terms["loss"].backward(); log({f"train/{k}": v.item() for k, v in terms.items()})

* ``L_acc``: cross-entropy of the video logits against the video's *first* label (the smallest class id of a
  multi-label video, as the official data list makes it; 2.8% of ActivityNet training videos carry two).
* ``L_eff`` (``eff_weights``), always divided by the dense backbone's cost per frame so that alpha means the
  same at any backbone or resolution:

  - ``marginal`` (ours): the expected cost per frame from the gate probabilities (softmax, no noise): sum over
    blocks of P(frame enters block k) * cost(block k + gate k), plus P(reaches the classifier) * cost(classifier).
  - ``official``: the official ``cal_eff`` (``main_base.py`` ~l. 421-445) on the sampled straight-through
    decisions: sum over the 6 stages of mean(reach of stage i) * (the cost of all stages after i), the last
    weight 1e-5. Forwarding at gate j is so charged the cost remaining after block j+1 (ResNet-50 at 192 px:
    about [2.44, 1.68, 0.60, 0.0004, 0] GMACs for gates 0..4), not the block it opens.
* ``L_gate`` (``gate_target``): the official pseudo-label guidance. Heads 0..4 are the auxiliary heads after each
  block and head 5 the final classifier; gate k's target is "forward" where head k+1 is more confident on the
  true class than head k, else "stop"; a cross-entropy over all frames (not masked by earlier stops, as in the
  official code: the dense path gives every head's answer for every frame) of

  - ``logits`` (ours): the gate's logits, a smooth loss;
  - ``sample`` (official, ``confidence_criterion_loss``): the gate's hard Gumbel one-hot sample taken as logits:
    two values per frame (log(1 + e^-1) right, log(1 + e) wrong), its gradient reaching the gate through the
    straight-through estimator.
  The label itself (``gate_label``, ``gate_margin``): ``next`` with margin 0 is the official rule above; ``final``
  (ours) says "forward" where the final head beats head k by more than the margin, see :func:`gate_pseudo_labels`.
* ``L_aux``: cross-entropy of every auxiliary head against the first label, over all frames.

The official code weights the four terms 0.95 acc + 0.05 eff + 0.05 gate + 0.95 aux (policy tied to the
efficiency weight, inner accuracy to the accuracy weight); ``alpha=0.95, beta=0.05`` gives exactly that.
TSN/TSM (stage 1) use :func:`classification_loss` only.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

from sofnet.models.backbone import CostTable
from sofnet.models.output import SoFOutput
from sofnet.schema import EFF_WEIGHTS, GATE_LABELS, GATE_TARGETS

OFFICIAL_LAST_WEIGHT = 1e-5  # cal_eff adds it to the (zero) weight of "passed every gate"


def classification_loss(out: SoFOutput, target: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Stage-1 loss: cross-entropy of the video logits against the primary label index [B]."""
    acc = F.cross_entropy(out.logits.float(), target)
    return {"loss": acc, "acc": acc.detach()}


def efficiency_loss(gate_logits: torch.Tensor, costs: CostTable) -> torch.Tensor:
    """Expected per-frame cost / dense cost, from gate logits [B, T, G, 2]; in [0, 1 + gates/dense]."""
    p_fwd = torch.softmax(gate_logits.float(), dim=-1)[..., 1]  # [B, T, G]
    ones = p_fwd.new_ones(*p_fwd.shape[:2], 1)
    p_enter = torch.cumprod(torch.cat([ones, p_fwd], dim=-1), dim=-1)  # [B, T, G + 1]: enter block k / classifier
    stage = torch.tensor(_stage_costs(costs), dtype=p_enter.dtype, device=p_enter.device)
    return (p_enter * stage).sum(dim=-1).mean() / costs.dense()


def _stage_costs(costs: CostTable) -> List[float]:
    """GMACs of the G + 1 stages: block k + gate k, then the classifier."""
    return [b + g for b, g in zip(costs.blocks, costs.gates)] + [costs.fc]


def official_eff_weights(costs: CostTable) -> List[float]:
    """The official ``cal_eff`` weight of each of the G + 1 reach indicators: the cost of every later stage.

    Index 0 is the base (always reached, a constant), index k + 1 "forwarded at gate k"; the last gets 1e-5.
    """
    stage = _stage_costs(costs)
    remaining = [sum(stage[i + 1:]) for i in range(len(stage))]
    remaining[-1] += OFFICIAL_LAST_WEIGHT
    return remaining


def official_reach(gate_sample: torch.Tensor) -> torch.Tensor:
    """[B, T, G + 1] the official code's reach indicators ``r`` from the gates' own samples [B, T, G, 2].

    As in ``gate_fc_rnn_block_full``: once a frame is stopped its later entries carry the sample of the gate
    that stopped it (so the gradient goes to that gate alone), else the current gate's sample; which one is
    chosen is decided without gradient. The values equal ``SoFOutput.reach``; the gradients differ (ours is a
    product, which also sends every entry's gradient to all earlier gates).
    """
    fwd = gate_sample[..., 1].float()
    r = [fwd.new_ones(fwd.shape[:2])]
    for k in range(fwd.shape[-1]):
        take_curr = (r[-1].detach() > 0.5).to(fwd.dtype)
        r.append(r[-1] * (1 - take_curr) + fwd[..., k] * take_curr)
    return torch.stack(r, dim=-1)


def official_efficiency_loss(gate_sample: torch.Tensor, costs: CostTable) -> torch.Tensor:
    """The official L_eff on the sampled decisions [B, T, G, 2], divided by the dense cost (see module doc)."""
    r = official_reach(gate_sample)
    w = torch.tensor(official_eff_weights(costs), dtype=r.dtype, device=r.device)
    return (r.mean(dim=(0, 1)) * w).sum() / costs.dense()


def true_class_confidence(out: SoFOutput, target: torch.Tensor) -> torch.Tensor:
    """[B, T, G + 1] each head's softmax confidence on the true class ``target`` [B]: the auxiliary heads after
    blocks 0..G-1, then the final classifier (the dense path's outputs)."""
    heads = torch.cat([out.aux_logits, out.frame_logits.unsqueeze(2)], dim=2).float()  # [B, T, G + 1, K]
    idx = target.view(-1, 1, 1, 1).expand(-1, heads.shape[1], heads.shape[2], 1)
    return torch.softmax(heads, dim=-1).gather(-1, idx).squeeze(-1)


def gate_pseudo_labels(conf: torch.Tensor, label: str = "next", margin: float = 0.0) -> torch.Tensor:
    """[B, T, G] 1 = forward, 0 = stop, from each head's confidence on the true class ``conf`` [B, T, G + 1].

    ``next`` (official): head k+1 beats head k by more than ``margin`` (0 in the official code). ``final`` (ours):
    the final head beats head k by more than ``margin``. Why: where two adjacent shallow heads both know nothing
    (every background frame; an action frame before the block that sees the parts' arrangement) ``next`` is a coin
    flip of their noise. On the bench task (``jobs/gate_labels.py`` on the first study's seed-1 SoF-Net, 256
    validation videos) ``next`` says "forward" for 49-70 % of background frames at gates 0-3 and 58 % / 49 % of
    action frames at gates 0 / 1; ``final`` with margin 0.05 says it for 13 % and 91 %.
    """
    if label == "next":
        return (conf[..., 1:] > conf[..., :-1] + margin).long()
    if label == "final":
        return (conf[..., -1:] > conf[..., :-1] + margin).long()
    raise ValueError(f"unknown loss.gate_label {label!r}: {' | '.join(GATE_LABELS)}")


def gate_guidance_loss(out: SoFOutput, target: torch.Tensor, gate_target: str = "logits", label: str = "next",
                       margin: float = 0.0) -> torch.Tensor:
    """The pseudo-label loss: forward where a later head is more confident on the true class.

    ``gate_target``: ``logits`` (ours) or ``sample`` (official: the hard one-hot sample, ``out.gate_sample``);
    ``label``, ``margin``: see :func:`gate_pseudo_labels` (``next``, 0: the official rule).
    """
    pseudo = gate_pseudo_labels(true_class_confidence(out, target).detach(), label, margin)  # [B, T, G]
    if gate_target == "logits":
        inputs = out.gate_logits.float()
    elif gate_target == "sample":
        if out.gate_sample is None:
            raise ValueError("loss.gate_target=sample needs the dense path's gate samples (out.gate_sample)")
        inputs = out.gate_sample.float()
    else:
        raise ValueError(f"unknown loss.gate_target {gate_target!r}: {' | '.join(GATE_TARGETS)}")
    return F.cross_entropy(inputs.reshape(-1, 2), pseudo.reshape(-1))


def aux_loss(out: SoFOutput, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every auxiliary head on every frame against the primary label."""
    aux = out.aux_logits.float()
    tgt = target.view(-1, 1, 1).expand(*aux.shape[:3])
    return F.cross_entropy(aux.reshape(-1, aux.shape[-1]), tgt.reshape(-1))


def sofnet_loss(out: SoFOutput, target: torch.Tensor, costs: CostTable, alpha: float,
                beta: Optional[float], gate_target: str = "logits", gate_label: str = "next",
                gate_margin: float = 0.0, eff_weights: str = "marginal") -> Dict[str, torch.Tensor]:
    """The stage-2 objective and its parts.

    Args:
        out: the dense path's output in training mode.
        target: [B] primary label index.
        costs: the model's cost table at the training resolution (``model.cost_table(H, W)``).
        alpha: accuracy/efficiency trade-off.
        beta: gate-guidance vs auxiliary weight inside L_pg; None turns L_pg off.
        gate_target: ``loss.gate_target``: ``logits`` (ours) or ``sample`` (official).
        gate_label, gate_margin: ``loss.gate_label`` / ``loss.gate_margin``: L_gate's pseudo-label rule
            (:func:`gate_pseudo_labels`; ``next``, 0 is the official one).
        eff_weights: ``loss.eff_weights``: ``marginal`` (ours) or ``official``.

    Returns:
        ``loss`` (to backpropagate) and the detached parts ``acc``, ``eff``, ``pg``, ``gate``, ``aux``
        (the last three only when beta is not None).
    """
    acc = F.cross_entropy(out.logits.float(), target)
    if eff_weights == "marginal":
        eff = efficiency_loss(out.gate_logits, costs)
    elif eff_weights == "official":
        if out.gate_sample is None:
            raise ValueError("loss.eff_weights=official needs the dense path's gate samples (out.gate_sample)")
        eff = official_efficiency_loss(out.gate_sample, costs)
    else:
        raise ValueError(f"unknown loss.eff_weights {eff_weights!r}: {' | '.join(EFF_WEIGHTS)}")
    loss = alpha * acc + (1.0 - alpha) * eff
    terms = {"acc": acc.detach(), "eff": eff.detach()}
    if beta is not None:
        gate = gate_guidance_loss(out, target, gate_target, gate_label, gate_margin)
        aux = aux_loss(out, target)
        pg = beta * gate + (1.0 - beta) * aux
        loss = loss + pg
        terms.update(pg=pg.detach(), gate=gate.detach(), aux=aux.detach())
    return {"loss": loss, **terms}
