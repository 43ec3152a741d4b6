"""AR-Net (Meng et al., ECCV 2020): a light policy picks, per frame, a backbone at one resolution or a skip.

    from sofnet.models.arnet import ARNet
    model = ARNet(num_classes=200)                           # R50@224, R34@168, R18@112, policy MobileNetV2@84
    out = model(x)                                           # x: [N, T, 3, 224, 224]; training path (every net)
    out.logits, out.actions                                  # [N, C] video logits, [N, T] action ids
    fast = model.infer(x)                                    # real adaptive computation, same result at eval
    fast.gflops                                              # [N] GMACs per video that really ran

What follows the authors' code (``/work/shared/reference/official-arnet-code.md``, sections 2-4): MobileNetV2 at
the lowest resolution with its classifier replaced by dropout, an ``LSTMCell(1280, hidden)`` from zero state, the
actions ``[backbone_0 .. backbone_{B-1}, policy itself (lite_fc), skip_s for s in skips]``, log-softmax policy,
Gumbel-softmax (hard, straight-through) with temperature at training, lower resolutions by nearest-neighbour
downsampling of the normalised full-size crop, "skip s" covering frames t..t+s-1 (their h is the deciding step's,
the LSTM cell state keeps updating from every frame), video logits = mean of the chosen network's logits over the
frames that got a resolution action (all skipped: zeros), every new Linear N(0, 0.001), zero bias.

Deviations (README's deviation table): evaluation takes the policy's argmax, not a Gumbel sample (the official
test-time policy is a random draw; a benchmark needs a deterministic one); ``infer`` runs only the chosen backbone on
each frame (the official code runs all and masks); GFLOPs count what ran, the policy on every frame (it must run on
every frame to keep the cell state), where the official report charges it once per decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import copy

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from sofnet.models.costs import count_gmacs

OFFICIAL_BACKBONES = (("resnet50", 224), ("resnet34", 168), ("resnet18", 112))


@dataclass
class ARNetOutput:
    """Video logits [N, C], per-frame action ids [N, T], the (straight-through) one-hot actions [N, T, A] of the
    training path, and (``infer``) GMACs per video [N]."""

    logits: torch.Tensor
    actions: torch.Tensor
    gflops: Optional[torch.Tensor] = None
    one_hot: Optional[torch.Tensor] = None


def _new_linear(features: int, out: int) -> nn.Linear:
    layer = nn.Linear(features, out)
    nn.init.normal_(layer.weight, 0, 0.001)
    nn.init.zeros_(layer.bias)
    return layer


class _Backbone(nn.Module):
    """A torchvision ResNet whose ``fc`` is Dropout + a new Linear(feat, C), as the authors' code."""

    def __init__(self, name: str, num_classes: int, dropout: float) -> None:
        super().__init__()
        net = getattr(torchvision.models, name)(weights=None)
        features = net.fc.in_features
        net.fc = nn.Sequential(nn.Dropout(dropout), _new_linear(features, num_classes))
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ARNet(nn.Module):
    """AR-Net: see the module docstring. Inputs are full-size normalised frames ``[N, T, 3, S, S]``."""

    def __init__(self, num_classes: int, backbones: Sequence[Tuple[str, int]] = OFFICIAL_BACKBONES,
                 policy_size: int = 84, hidden: int = 512, skips: Sequence[int] = (1, 2, 4),
                 dropout: float = 0.5, tau: float = 5.0) -> None:
        super().__init__()
        self.sizes = [int(size) for _, size in backbones]
        self.policy_size, self.skips, self.tau = int(policy_size), [int(s) for s in skips], float(tau)
        self.backbones = nn.ModuleList(_Backbone(name, num_classes, dropout) for name, _ in backbones)
        mobile = torchvision.models.mobilenet_v2(weights=None)
        mobile.classifier = nn.Dropout(dropout)  # the pooled 1280-d feature, as the authors' policy
        self.policy = mobile
        self.rnn = nn.LSTMCell(1280, hidden)
        self.reso_dim = len(backbones) + 1  # + the policy itself as the cheapest classifier (lite_fc)
        self.linear = _new_linear(hidden, self.reso_dim + len(self.skips))
        self.lite_fc = _new_linear(hidden, num_classes)

    @property
    def num_actions(self) -> int:
        return self.reso_dim + len(self.skips)

    def _resize(self, x: torch.Tensor, size: int) -> torch.Tensor:
        return x if x.shape[-1] == size else F.interpolate(x, size=(size, size), mode="nearest")

    def _policy(self, frames: torch.Tensor, n: int, t: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Actions [N, T, A] (one-hot, straight-through at training) and the lite_fc logits [N, T, C]."""
        feats = self.policy(self._resize(frames, self.policy_size)).view(n, t, -1)
        h = feats.new_zeros(n, self.rnn.hidden_size)
        c = feats.new_zeros(n, self.rnn.hidden_size)
        actions, lite = [], []
        carry: List[Optional[Tuple[torch.Tensor, torch.Tensor, int]]] = [None] * n  # (one-hot, h, frames left)
        for step in range(t):
            h_new, c = self.rnn(feats[:, step], (h, c))  # the cell state updates on every frame
            logp = torch.log(F.softmax(self.linear(h_new), dim=-1).clamp(min=1e-8))
            if self.training:
                sample = F.gumbel_softmax(logp, tau=self.tau, hard=True)
            else:  # deviation: deterministic argmax (the official evaluation samples)
                sample = F.one_hot(logp.argmax(-1), self.num_actions).to(logp.dtype)
            rows_a, rows_h = [], []
            for i in range(n):
                held = carry[i]
                if held is not None and held[2] > 0:  # covered by an earlier skip: its action and h
                    rows_a.append(held[0])
                    rows_h.append(held[1])
                    carry[i] = (held[0], held[1], held[2] - 1)
                else:
                    rows_a.append(sample[i])
                    rows_h.append(h_new[i])
                    chosen = int(sample[i].argmax())
                    if chosen >= self.reso_dim:
                        carry[i] = (sample[i], h_new[i], self.skips[chosen - self.reso_dim] - 1)
            a, h = torch.stack(rows_a), torch.stack(rows_h)
            actions.append(a)
            lite.append(self.lite_fc(h))
        return torch.stack(actions, 1), torch.stack(lite, 1)

    @staticmethod
    def _combine(per_net: torch.Tensor, actions: torch.Tensor, reso_dim: int) -> torch.Tensor:
        """Mean over frames with a resolution action of the chosen network's logits; per_net: [N, T, R, C]."""
        mask = actions[..., :reso_dim]
        total = (per_net * mask.unsqueeze(-1)).sum(dim=(1, 2))
        count = mask.sum(dim=(1, 2)).clamp(min=1)
        return total / count.unsqueeze(-1)

    def forward(self, x: torch.Tensor) -> ARNetOutput:
        """Training path (the authors'): every backbone on every frame, decisions mask the logits afterwards."""
        n, t = x.shape[:2]
        frames = x.flatten(0, 1)
        actions, lite = self._policy(frames, n, t)
        nets = [b(self._resize(frames, s)).view(n, t, -1) for b, s in zip(self.backbones, self.sizes)]
        per_net = torch.stack(nets + [lite], 2)
        return ARNetOutput(self._combine(per_net, actions, self.reso_dim), actions.argmax(-1), one_hot=actions)

    @torch.no_grad()
    def infer(self, x: torch.Tensor) -> ARNetOutput:
        """Real adaptive computation (eval mode): the policy on every frame, each backbone only on the frames of
        any video that chose it, batched; skipped frames cost the policy alone. Equals ``forward`` at eval."""
        if self.training:
            raise RuntimeError("ARNet.infer is the evaluation path: call model.eval() first")
        n, t = x.shape[:2]
        frames = x.flatten(0, 1)
        actions, lite = self._policy(frames, n, t)
        ids = actions.argmax(-1).flatten()
        per_net = torch.zeros(n * t, self.reso_dim, lite.shape[-1], dtype=lite.dtype, device=lite.device)
        per_net[:, -1] = lite.flatten(0, 1)
        for k, (net, size) in enumerate(zip(self.backbones, self.sizes)):
            chosen = (ids == k).nonzero().flatten()
            if chosen.numel():
                per_net[chosen, k] = net(self._resize(frames[chosen], size)).to(per_net.dtype)
        logits = self._combine(per_net.view(n, t, self.reso_dim, -1), actions, self.reso_dim)
        return ARNetOutput(logits, ids.view(n, t), self.action_costs()[ids.cpu()].view(n, t).sum(1))

    def action_costs(self) -> torch.Tensor:
        """GMACs of a frame by its action: the policy (every frame) + the chosen backbone (none for the policy's
        own classifier and for skips)."""
        costs = self.frame_costs()
        backbone = costs[: len(self.sizes)] + [0.0] * (self.num_actions - len(self.sizes))
        return torch.tensor(backbone, dtype=torch.float64) + costs[self.policy_index()]

    def policy_index(self) -> int:
        """Where the policy's own per-frame cost sits in :meth:`frame_costs` (after the backbones)."""
        return len(self.sizes)

    def frame_costs(self) -> List[float]:
        """GMACs per frame: each backbone at its resolution, then the policy (MobileNetV2 + LSTMCell + heads)."""
        if not hasattr(self, "_costs"):
            self._costs = [count_gmacs(lambda: _meta_copy(net)(torch.empty(1, 3, size, size, device="meta")))
                           for net, size in zip(self.backbones, self.sizes)]
            self._costs.append(count_gmacs(self._policy_twin))
        return list(self._costs)

    def _policy_twin(self) -> None:
        mobile = _meta_copy(self.policy)
        rnn, linear, lite = _meta_copy(self.rnn), _meta_copy(self.linear), _meta_copy(self.lite_fc)
        feats = mobile(torch.empty(1, 3, self.policy_size, self.policy_size, device="meta"))
        h = torch.empty(1, rnn.hidden_size, device="meta")
        hn, _ = rnn(feats, (h, h))
        linear(hn)
        lite(hn)


def _meta_copy(module: nn.Module) -> nn.Module:
    """A twin of ``module`` on the meta device (counting FLOPs there costs nothing and leaves the module as is)."""
    return copy.deepcopy(module).to("meta")


def arnet_loss(out: ARNetOutput, target: torch.Tensor, backbone_gflops: Sequence[float], *,
               accuracy_weight: float = 0.95, efficiency_weight: float = 0.05,
               uniform_weight: float = 3.0) -> Tuple[torch.Tensor, dict]:
    """The authors' joint-training loss (facts sheet, section 4; ``main_base.py:473-572``).

    ``accuracy_weight * CE(video logits, smallest label) + efficiency_weight * (E[GFLOPs] + uniform_weight * U)``:
    E[GFLOPs] is the mean over batch and frames of the one-hot actions times the backbones' GFLOPs (0 for the
    policy's own head and the skips), raw, not normalised; U is the L2 norm of (usage share of each action - its mean)
    over the batch, from the hard one-hots (the gradient flows straight through).

    Returns:
        ``(loss, {"loss_acc", "loss_eff", "loss_uniform"})`` (the terms before weighting, detached floats).
    """
    actions = out.one_hot
    if actions is None:
        raise ValueError("arnet_loss needs the training path's output (ARNet.forward), not infer()")
    costs = actions.new_zeros(actions.shape[-1])
    costs[: len(backbone_gflops)] = actions.new_tensor(list(backbone_gflops))
    acc = F.cross_entropy(out.logits, target)
    eff = (actions.mean(dim=(0, 1)) * costs).sum()
    usage = actions.sum(dim=(0, 1))
    usage = usage / usage.sum()
    uniform = torch.linalg.vector_norm(usage - usage.mean())
    loss = accuracy_weight * acc + efficiency_weight * (eff + uniform_weight * uniform)
    return loss, {"loss_acc": float(acc), "loss_eff": float(eff), "loss_uniform": float(uniform)}
