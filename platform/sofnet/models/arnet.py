"""AR-Net (Meng et al., ECCV 2020): a light policy picks, per frame, a backbone at one resolution or a skip.

    from sofnet.models.arnet import ARNet
    model = ARNet(num_classes=200)                           # R50@224, R34@168, R18@112, policy MobileNetV2@84
    out = model(x)                                           # x: [N, T, 3, 224, 224]; training path (every net)
    out.logits, out.actions                                  # [N, C] video logits, [N, T] action ids
    fast = model.infer(x)                                    # real adaptive computation, same result at eval
    fast.gflops                                              # [N] GMACs per video that really ran
    model = ARNet.from_config(model_config(arch="arnet", num_classes=200))  # what build_model does for the platform

Phases (``model.arnet_phase``, set per stage by the training job, facts sheet section 5): ``warmup`` (stage 1) trains
the backbones alone, each on its resolution, the policy does not run and is frozen (the authors train three TSNs;
here they are one model whose loss is the sum of their cross-entropies: the parameters are disjoint, only gradient
clipping sees them together), and evaluation is the largest backbone on every frame, i.e. TSN; ``joint`` (stage 2)
trains everything with :func:`arnet_loss`; ``finetune`` (stage 3) freezes the policy (MobileNetV2, LSTM, both heads).

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

import copy
import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from sofnet.models.backbone import load_pretrained
from sofnet.models.costs import count_gmacs
from sofnet.models.output import PASSED
from sofnet.schema import ModelConfig

OFFICIAL_BACKBONES = (("resnet50", 224), ("resnet34", 168), ("resnet18", 112))


@dataclass
class ARNetOutput:
    """Video logits [N, C], per-frame action ids [N, T], the (straight-through) one-hot actions [N, T, A] of the
    training path, each backbone's video logits [N, B, C] (warm-up), and from ``infer`` what the one evaluator
    reads of every model (:class:`sofnet.models.SoFOutput`'s names): GMACs per video [N], ``decisions`` [N, T]
    (5 = a backbone ran on the frame, 0 = the policy alone: its own head or a skip), ``exit_step`` [N] (= T, no
    early exit) and ``fallback`` [N] (every frame skipped: zero logits)."""

    logits: torch.Tensor
    actions: torch.Tensor
    gflops: Optional[torch.Tensor] = None
    one_hot: Optional[torch.Tensor] = None
    backbone_logits: Optional[torch.Tensor] = None
    decisions: Optional[torch.Tensor] = None
    exit_step: Optional[torch.Tensor] = None
    fallback: Optional[torch.Tensor] = None


def _new_linear(features: int, out: int) -> nn.Linear:
    layer = nn.Linear(features, out)
    nn.init.normal_(layer.weight, 0, 0.001)
    nn.init.zeros_(layer.bias)
    return layer


class _Backbone(nn.Module):
    """A torchvision ResNet whose ``fc`` is Dropout + a new Linear(feat, C), as the authors' code."""

    def __init__(self, name: str, num_classes: int, dropout: float, pretrained: str = "none") -> None:
        super().__init__()
        net = getattr(torchvision.models, name)(weights=None)
        load_pretrained(net, pretrained, name)
        features = net.fc.in_features
        net.fc = nn.Sequential(nn.Dropout(dropout), _new_linear(features, num_classes))
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ARNet(nn.Module):
    """AR-Net: see the module docstring. Inputs are full-size normalised frames ``[N, T, 3, S, S]``."""

    shift = None  # no temporal shift; the platform asks models this
    exits_early = False  # no early termination over frames: the policy's skips are AR-Net's own

    def __init__(self, num_classes: int, backbones: Sequence[Tuple[str, int]] = OFFICIAL_BACKBONES,
                 policy_size: int = 84, hidden: int = 512, skips: Sequence[int] = (1, 2, 4),
                 dropout: float = 0.5, tau: float = 5.0, phase: str = "joint", pretrained: str = "none") -> None:
        super().__init__()
        self.sizes = [int(size) for _, size in backbones]
        self.policy_size, self.skips, self.tau = int(policy_size), [int(s) for s in skips], float(tau)
        self.phase = phase
        self.cfg = SimpleNamespace(**{**vars(ModelConfig()), "arch": "arnet", "num_classes": int(num_classes),
                                      "arnet_backbones": [n for n, _ in backbones], "arnet_sizes": self.sizes,
                                      "arnet_policy_size": self.policy_size, "arnet_hidden": int(hidden),
                                      "arnet_skips": self.skips, "dropout": float(dropout), "tau0": float(tau),
                                      "arnet_phase": phase, "input_size": max(self.sizes),
                                      "pretrained": pretrained})
        self.backbones = nn.ModuleList(_Backbone(name, num_classes, dropout, pretrained) for name, _ in backbones)
        mobile = torchvision.models.mobilenet_v2(weights=None)
        if pretrained == "imagenet":  # the authors' policy starts from ImageNet MobileNetV2 (never trained alone)
            _load_mobilenet(mobile)
        mobile.classifier = nn.Dropout(dropout)  # the pooled 1280-d feature, as the authors' policy
        self.policy = mobile
        self.rnn = nn.LSTMCell(1280, hidden)
        self.reso_dim = len(backbones) + 1  # + the policy itself as the cheapest classifier (lite_fc)
        self.linear = _new_linear(hidden, self.reso_dim + len(self.skips))
        self.lite_fc = _new_linear(hidden, num_classes)
        if phase in ("warmup", "finetune"):  # warm-up: not run; fine-tuning: the authors' --freeze_policy (every name
            # with lite_fc, lite_backbone, rnn, linear); frozen parameters stay out of the optimizer
            for module in (self.policy, self.rnn, self.linear, self.lite_fc):
                module.requires_grad_(False)

    @classmethod
    def from_config(cls, cfg: Any) -> "ARNet":
        """The network a model config (namespace, see :func:`sofnet.models.base.as_namespace`) describes."""
        model = cls(cfg.num_classes, list(zip(cfg.arnet_backbones, cfg.arnet_sizes)), cfg.arnet_policy_size,
                    cfg.arnet_hidden, cfg.arnet_skips, cfg.dropout, cfg.tau0, cfg.arnet_phase, cfg.pretrained)
        model.cfg = SimpleNamespace(**vars(cfg))
        return model

    def hparams(self) -> Dict[str, Any]:
        """The model config as a plain dict: enough to rebuild this network with ``build_model``."""
        return dict(vars(self.cfg))

    def set_epoch(self, epoch: int) -> float:
        """The Gumbel temperature of ``epoch``: tau0 * exp(-tau_decay * epoch), as the authors' --exp_decay."""
        self.tau = float(self.cfg.tau0 * math.exp(-self.cfg.tau_decay * epoch))
        return self.tau

    def action_names(self) -> List[str]:
        """Names of the actions, in the policy's order (metric-name safe)."""
        return ([f"{n}_{s}" for n, s in zip(self.cfg.arnet_backbones, self.sizes)] + [f"policy_{self.policy_size}"]
                + [f"skip{s}" for s in self.skips])

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
        """Training path (the authors'): every backbone on every frame, decisions mask the logits afterwards. In the
        warm-up phase the backbones alone: ``backbone_logits`` [N, B, C] (TSN consensus: mean over frames), and
        ``logits`` the largest backbone's."""
        n, t = x.shape[:2]
        frames = x.flatten(0, 1)
        if self.phase == "warmup":
            video = torch.stack([b(self._resize(frames, s)).view(n, t, -1).mean(1)
                                 for b, s in zip(self.backbones, self.sizes)], 1)
            zeros = torch.zeros(n, t, dtype=torch.long, device=x.device)
            return ARNetOutput(video[:, 0], zeros, backbone_logits=video)
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
        if self.phase == "warmup":  # the largest backbone on every frame: TSN, no policy
            logits = self.backbones[0](self._resize(frames, self.sizes[0])).view(n, t, -1).mean(1)
            ids = torch.zeros(n, t, dtype=torch.long, device=x.device)
            gflops = torch.full((n,), self.frame_costs()[0] * t, dtype=torch.float64)
            return self._evaluated(logits, ids, gflops, passed=torch.ones_like(ids, dtype=torch.bool))
        actions, lite = self._policy(frames, n, t)
        ids = actions.argmax(-1).flatten()
        per_net = torch.zeros(n * t, self.reso_dim, lite.shape[-1], dtype=lite.dtype, device=lite.device)
        per_net[:, -1] = lite.flatten(0, 1)
        for k, (net, size) in enumerate(zip(self.backbones, self.sizes)):
            chosen = (ids == k).nonzero().flatten()
            if chosen.numel():
                per_net[chosen, k] = net(self._resize(frames[chosen], size)).to(per_net.dtype)
        logits = self._combine(per_net.view(n, t, self.reso_dim, -1), actions, self.reso_dim)
        ids = ids.view(n, t)
        return self._evaluated(logits, ids, self.action_costs()[ids.cpu()].sum(1), passed=ids < len(self.sizes))

    def _evaluated(self, logits: torch.Tensor, ids: torch.Tensor, gflops: torch.Tensor,
                   passed: torch.Tensor) -> ARNetOutput:
        n, t = ids.shape
        decisions = torch.where(passed, PASSED, 0).long()
        fallback = (ids >= self.reso_dim).all(1) if self.phase != "warmup" else torch.zeros(n, dtype=torch.bool)
        return ARNetOutput(logits, ids, gflops.to(ids.device), decisions=decisions,
                           exit_step=torch.full((n,), t, dtype=torch.long, device=ids.device),
                           fallback=fallback.to(ids.device))

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


def _load_mobilenet(net: nn.Module) -> None:
    """torchvision's ImageNet MobileNetV2 into ``net`` (its classifier is ours: dropout only)."""
    try:
        state = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
    except Exception as e:  # offline machines: one line, not a urllib traceback
        raise RuntimeError(f"could not download ImageNet weights for mobilenet_v2 ({e}); use model.pretrained=none"
                           ) from None
    net.load_state_dict({k: v for k, v in state.items() if not k.startswith("classifier.")})


def _meta_copy(module: nn.Module) -> nn.Module:
    """A twin of ``module`` on the meta device (counting FLOPs there costs nothing and leaves the module as is)."""
    return copy.deepcopy(module).to("meta").eval()  # eval: a one-frame count must not trip BatchNorm's batch check


def arnet_warmup_loss(out: ARNetOutput, target: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Stage 1: the sum over backbones of the cross-entropy of each one's video logits against the smallest label
    (the authors' three TSN trainings, each CE at weight 1). Returns ``{"loss", "ce<k>"}``."""
    if out.backbone_logits is None:
        raise ValueError("arnet_warmup_loss needs the warm-up phase's output (model.arnet_phase=warmup)")
    terms = {f"ce{k}": F.cross_entropy(out.backbone_logits[:, k], target)
             for k in range(out.backbone_logits.shape[1])}
    return {"loss": torch.stack(list(terms.values())).sum(), **terms}


def arnet_loss(out: ARNetOutput, target: torch.Tensor, backbone_gflops: Sequence[float], *,
               accuracy_weight: float = 0.95, efficiency_weight: float = 0.05,
               uniform_weight: float = 3.0) -> Dict[str, torch.Tensor]:
    """The authors' joint-training loss (facts sheet, section 4; ``main_base.py:473-572``).

    ``accuracy_weight * CE(video logits, smallest label) + efficiency_weight * (E[GFLOPs] + uniform_weight * U)``:
    E[GFLOPs] is the mean over batch and frames of the one-hot actions times the backbones' GFLOPs (0 for the
    policy's own head and the skips), raw, not normalised; U is the L2 norm of (usage share of each action - its mean)
    over the batch, from the hard one-hots (the gradient flows straight through).

    Returns:
        ``{"loss", "acc", "eff", "uniform"}``: the total and the terms before weighting (what the training loop logs
        as ``train/loss_acc`` ...).
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
    return {"loss": loss, "acc": acc, "eff": eff, "uniform": uniform}
