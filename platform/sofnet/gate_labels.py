"""What L_gate would teach: the share of frames each pseudo-label rule calls "forward", per gate, inside vs outside
the annotated segments (action vs background frames; valid on real ActivityNet too).

    from sofnet.gate_labels import label_rates, rate_rows
    rates = label_rates(model, loader, rules=[("next", 0.0), ("final", 0.05)])   # a SoF-Net, the eval loader
    for row in rate_rows(rates): print(row)                                       # rule, frames, gate 0..4

A good rule says "forward" on action frames and "stop" on background frames; ``loss.gate_label`` /
``loss.gate_margin`` pick the rule training uses (:func:`sofnet.losses.gate_pseudo_labels`, the one owner of the
rule). The dense path runs every head on every frame (the labels need them all): one pass costs what TSN costs plus
the heads, in eval mode (no Gumbel noise, dropout off).
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Sequence, Tuple

import torch

from sofnet.losses import gate_pseudo_labels, true_class_confidence

Rule = Tuple[str, float]  # (loss.gate_label, loss.gate_margin)


@torch.no_grad()
def label_rates(model: torch.nn.Module, loader: Iterable[Dict[str, Any]], rules: Sequence[Rule],
                max_videos: int = 0) -> Dict[str, Any]:
    """Forward rate of each rule per gate on action and background frames.

    Args:
        model: a SoF-Net (its dense path gives every head's answer); put in eval mode and restored after.
        loader: batches with ``frames`` [B, T, 3, H, W], ``label`` [B] (the primary class), ``inside`` [B, T].
        rules: (label, margin) pairs. max_videos: stop after this many videos (0: all).

    Returns:
        ``{"videos", "frames": {"action", "background"}, "rates": {"<label> <margin>": {"action": [G],
        "background": [G]}}}``; a frame kind that never occurs has rates of NaN.
    """
    was_training = model.training
    model.eval()
    dtype = next(model.parameters()).dtype
    confs, insides, videos = [], [], 0
    try:
        for batch in loader:
            confs.append(true_class_confidence(model(batch["frames"].to(dtype)), batch["label"].long()))
            insides.append(batch["inside"].bool())
            videos += len(batch["label"])
            if max_videos and videos >= max_videos:
                break
    finally:
        model.train(was_training)
    if not confs:
        raise ValueError("no videos to label: the loader is empty")
    conf, inside = torch.cat(confs), torch.cat(insides)
    kinds = {"action": inside, "background": ~inside}
    rates: Dict[str, Dict[str, List[float]]] = {}
    for label, margin in rules:
        forward = gate_pseudo_labels(conf, label, margin).float()  # [V, T, G]
        none = [float("nan")] * forward.shape[-1]
        rates[f"{label} {margin:g}"] = {k: forward[m].mean(0).tolist() if m.any() else none
                                        for k, m in kinds.items()}
    return {"videos": videos, "frames": {k: int(m.sum()) for k, m in kinds.items()}, "rates": rates}


def rate_rows(result: Dict[str, Any]) -> List[str]:
    """A markdown table: one row per rule and frame kind, the forward rate (%) at each gate."""
    gates = len(next(iter(result["rates"].values()))["action"])
    head = "| rule (label margin) | frames | " + " | ".join(f"gate {k}" for k in range(gates)) + " |"
    rows = [head, "|" + "---|" * (gates + 2)]
    for rule, by_kind in result["rates"].items():
        for kind, values in by_kind.items():
            cells = " | ".join(f"{100 * v:.0f}%" for v in values)
            rows.append(f"| {rule} | {kind} ({result['frames'][kind]}) | {cells} |")
    return rows
