"""SoF-Net: a ResNet cut into 5 blocks with a stop-or-forward LSTM gate per frame after each block.

    model = build_model(model_config(arch="sofnet", backbone="resnet50", num_classes=200)).eval()
    out = model(x)                          # dense: every block on every frame, decisions as masks
    out = model.infer(x)                    # skipping: a block runs only on the frames that reach it
    out = model.infer(x, rho=0.99, t_min=4) # ... and early exit drops the rest of a confident video

Both paths return a :class:`SoFOutput` and agree (tests prove it): same decisions and exit steps, logits
equal within float tolerance. Rules shared by both paths:

* Gate k (after block k): global average pool -> Linear(C, C) -> LSTMCell(C, 512) over the frames in time
  order -> Linear(512, 2) (0 stop, 1 forward) and an auxiliary classifier Linear(512, K). Training draws a
  straight-through Gumbel-softmax decision at temperature tau; evaluation takes the argmax, no noise, and
  dropout is off (the official test script still samples Gumbel noise, and its dropout is an ``nn.Dropout``
  built inside ``forward``, so always in training mode; we do neither).
* A stop is final. Gate k's LSTM state advances only with frames that reached gate k, so a stopped frame
  still informs the gates it did reach, and a path that never computes it sees the same sequence. (The
  official code advances every gate's state only with frames that *reached* the last gate, whatever that gate
  decided: gate 0's state at frame t+1 would then wait on block 4 of frame t, which a block-major skipping
  path cannot do.)
* SoF-Net^TSM shifts causally (a frame reads only earlier frames, and a neighbour that did not reach a block
  contributes zeros there), so skipping and early exit are exact online. The bidirectional TSM of the
  baseline would need features of later frames that the skipping path never computes.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from sofnet.models.backbone import ShiftContext
from sofnet.models.base import VideoModel, init_linear
from sofnet.models.output import (PASSED, SoFOutput, accounted_gflops, aggregate, apply_early_exit,
                                  drop_after_exit, first_exit)
from sofnet.schema import GATE_INITS


class Gate(nn.Module):
    """Stop-or-forward gate with an auxiliary classifier; the LSTM cell is stepped by the caller."""

    def __init__(self, channels: int, hidden: int, num_classes: int, init: str = "official") -> None:
        super().__init__()
        # "official": N(0, 0.001) like every new Linear of the official code. Its output is then ~1e-3 of the
        # block's features, so the LSTM sees an almost constant input and, in a short run, a gate learns little
        # more than a per-block bias. "pytorch" keeps PyTorch's default init here (the heads stay official).
        if init not in GATE_INITS:
            raise ValueError(f"unknown model.gate_init {init!r}: {' | '.join(GATE_INITS)}")
        self.proj = nn.Linear(channels, channels)
        if init == "official":
            init_linear(self.proj)
        self.lstm = nn.LSTMCell(channels, hidden)  # holds the parameters; step() runs the cell
        self.head = init_linear(nn.Linear(hidden, 2))
        self.aux = init_linear(nn.Linear(hidden, num_classes))

    def input_gates(self, feats: torch.Tensor) -> torch.Tensor:
        """[M, C, H, W] block output -> [M, 4*hidden] input half of the LSTM gates, for all rows at once.

        Splitting the cell this way puts the big input matmul in one batched call; only the small
        hidden-to-hidden matmul remains in the sequential loop over time.
        """
        z = self.proj(feats.mean(dim=(2, 3)))
        return F.linear(z, self.lstm.weight_ih, self.lstm.bias_ih)

    def step(self, gi: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """One LSTMCell step (PyTorch's gate order i, f, g, o) from precomputed input gates."""
        g = gi + F.linear(h, self.lstm.weight_hh, self.lstm.bias_hh)
        i, f, gg, o = g.chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(gg)
        return torch.sigmoid(o) * torch.tanh(c), c


class SoFNet(VideoModel):
    """SoF-Net (``arch=sofnet``) and SoF-Net^TSM (``arch=sofnet_tsm``)."""

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        c = self.cfg
        self.gates = nn.ModuleList(Gate(ch, c.gate_hidden, c.num_classes, c.gate_init)
                                   for ch in self.trunk.channels)
        self.et_chunk = c.et_chunk

    # ----------------------------------------------------------------------------------------- dense path
    def _decide(self, gate_logits: torch.Tensor) -> torch.Tensor:
        """[N, 2] one-hot (0 stop, 1 forward): straight-through hard Gumbel in training, argmax in evaluation.

        Training samples exactly as the official gate does (log of the softmax clamped at 1e-8, then
        ``gumbel_softmax(hard=True)``); the sample keeps its straight-through gradient for the losses.
        """
        if self.training:
            logp = torch.log(F.softmax(gate_logits, dim=-1).clamp(min=1e-8))
            return F.gumbel_softmax(logp, tau=self.tau, hard=True)
        fwd = (gate_logits[..., 1] > gate_logits[..., 0]).long()
        return F.one_hot(fwd, 2).to(gate_logits.dtype)

    def forward(self, x: torch.Tensor, rho: Optional[float] = None, t_min: Optional[int] = None,
                mode: str = "reached") -> SoFOutput:
        """Dense path: x [B, T, 3, H, W]; every block runs on every frame, decisions act as masks.

        This is what training differentiates through. With ``rho`` set, early exit is applied to the
        results afterwards (evaluation only: it computes what the skipping path avoids).
        """
        b, t = x.shape[:2]
        n = b * t
        feats = x.transpose(0, 1).flatten(0, 1)  # time-major rows: row = t * B + b
        reach = x.new_ones(n)
        reaches, gate_logits, aux_logits, samples = [reach], [], [], []
        # Previous frame of row r is r - B; t = 0 reads the zero row (index n in the gather source).
        rows = torch.arange(n, device=x.device)
        prev_idx = torch.where(rows >= b, rows - b, torch.full_like(rows, n))
        for k, (block, gate) in enumerate(zip(self.trunk.blocks, self.gates)):
            if self.shift is not None:
                prev_w = torch.cat([reach, reach.new_zeros(1)])[prev_idx]  # neighbour reached this block?
                self.trunk.set_shift_context(ShiftContext(prev_idx, prev_weight=prev_w))
            try:
                feats = block(feats)
            finally:
                self.trunk.set_shift_context(None)
            gi = gate.input_gates(feats).view(t, b, -1)
            r = reach.view(t, b, 1)
            h = c = feats.new_zeros(b, gate.lstm.hidden_size)
            hs = []
            for s in range(t):
                hn, cn = gate.step(gi[s], h, c)
                hs.append(hn)
                # Advance the state only with frames that reached this gate: r is exactly 0 or 1.
                h = r[s] * hn + (1 - r[s]) * h
                c = r[s] * cn + (1 - r[s]) * c
            hs = torch.stack(hs).flatten(0, 1)
            gl = gate.head(hs)
            gate_logits.append(gl)
            aux_logits.append(gate.aux(hs))
            samples.append(self._decide(gl))
            reach = reach * samples[-1][:, 1]
            reaches.append(reach)
        frame_logits = self.fc(self.dropout(feats.mean(dim=(2, 3))))

        def bt(v: torch.Tensor) -> torch.Tensor:  # [T*B, ...] -> [B, T, ...]
            return v.view(t, b, *v.shape[1:]).transpose(0, 1)

        reach_all = bt(torch.stack(reaches, dim=1))  # [B, T, 6]
        decisions = (reach_all.detach() > 0.5).sum(dim=-1) - 1  # blocks entered - 1; 5 = passed
        out = SoFOutput(
            logits=x.new_zeros(0), decisions=decisions, exit_step=torch.full((b,), t, device=x.device),
            frame_logits=bt(frame_logits), aux_logits=bt(torch.stack(aux_logits, dim=1)),
            gate_logits=bt(torch.stack(gate_logits, dim=1)), reach=reach_all, gflops=x.new_zeros(0),
            fallback=x.new_zeros(0, dtype=torch.bool), gate_sample=bt(torch.stack(samples, dim=1)))
        fire = None
        if rho is not None:
            out.decisions, out.exit_step, fire = apply_early_exit(out.frame_logits, decisions, rho, t_min or 1, mode,
                                                                  self.cfg.video_score)
        passed_w = reach_all[..., -1] * (out.decisions >= 0)
        out.logits, out.fallback = aggregate(out.frame_logits, out.aux_logits, out.decisions, passed_w, fire,
                                             self.cfg.video_score)
        out.gflops = accounted_gflops(out.decisions, self.cost_table(*x.shape[-2:]).by_decision())
        return out

    # -------------------------------------------------------------------------------------- skipping path
    @torch.no_grad()
    def infer(self, x: torch.Tensor, rho: Optional[float] = None, t_min: Optional[int] = None,
              mode: str = "reached", chunk: Optional[int] = None) -> SoFOutput:
        """Skipping path: each block runs only on the frames that reach it, batched across frames and videos.

        Schedule. Without early exit it is block-major: block k runs once on every (video, frame) that
        passed gate k-1, so a block costs one batched call however the survivors are spread, and only the
        gates' small LSTM steps loop over time (T steps per gate). With early exit a frame must not run
        before the videos' earlier frames have had their say, so time is cut in chunks: first the
        ``t_min`` steps before which no exit is possible, then ``chunk`` steps at a time (``et_chunk`` of
        the config, 4 by default), block-major inside each chunk. The cost of a chunk: frames of a video
        that exits inside the chunk after its exit step are computed and thrown away (at most chunk-1 per
        video, counted by the executed-FLOPs measurement, not by the paper's accounting), against smaller
        batches with more calls when the chunk is short. On a GPU with few videos per batch, a longer
        chunk pays; on a CPU, a short one.

        Args:
            x: [B, T, 3, H, W] clips.
            rho: early-exit confidence; None turns early exit off.
            t_min: early-exit minimum count (see ``sofnet.models.output``).
            mode: ``reached`` or ``official`` counting.
            chunk: time steps per chunk with early exit; defaults to the config's ``et_chunk``.
        """
        if self.training:
            raise RuntimeError("infer() is the deterministic evaluation path: call model.eval() first")
        b, t = x.shape[:2]
        k_cls, g, hid = self.cfg.num_classes, len(self.gates), self.cfg.gate_hidden
        dt, dev = self.fc.weight.dtype, x.device
        x = x.to(dt)
        out = SoFOutput(
            logits=x.new_zeros(0), decisions=torch.full((b, t), -1, dtype=torch.long, device=dev),
            exit_step=torch.full((b,), t, dtype=torch.long, device=dev),
            frame_logits=x.new_zeros(b, t, k_cls), aux_logits=x.new_zeros(b, t, g, k_cls),
            gate_logits=x.new_zeros(b, t, g, 2), reach=x.new_zeros(b, t, g + 1), gflops=x.new_zeros(0),
            fallback=x.new_zeros(0, dtype=torch.bool))
        state = [(x.new_zeros(b, hid), x.new_zeros(b, hid)) for _ in range(g)]
        if rho is None:
            bounds = [(0, t)]
            carry = None
        else:
            first = min(t, (t_min or 1) + (mode == "official"))  # no exit can fire before this step
            step = chunk or self.et_chunk
            bounds = [(0, first)] + [(s, min(s + step, t)) for s in range(first, t, step)]
            carry = {} if self.shift is not None else None
        alive = torch.ones(b, dtype=torch.bool, device=dev)
        fire_all = torch.full((b,), -1, dtype=torch.long, device=dev)
        for t0, t1 in bounds:
            vids = alive.nonzero().squeeze(1)
            if vids.numel() == 0:
                break
            self._run_chunk(x, vids, t0, t1, state, carry, out)
            if rho is not None:
                fire = first_exit(out.frame_logits[:, :t1], out.decisions[:, :t1] == PASSED, rho, t_min or 1, mode,
                                  self.cfg.video_score)
                new = alive & (fire >= 0)
                if bool(new.any()):
                    fire_all = torch.where(new, fire, fire_all)
                    drop = drop_after_exit(out.decisions, torch.where(new, fire, -1))
                    out.decisions.masked_fill_(drop, -1)
                    for v in (out.frame_logits, out.aux_logits, out.gate_logits):
                        v.masked_fill_(drop.view(b, t, *([1] * (v.dim() - 2))), 0)
                    out.exit_step = torch.where(new, fire + 1, out.exit_step)
                    alive &= ~new
        out.reach = (out.decisions.unsqueeze(-1) >= torch.arange(g + 1, device=dev)).to(dt)
        out.logits, out.fallback = aggregate(out.frame_logits, out.aux_logits, out.decisions,
                                             fire=fire_all if rho is not None else None, score=self.cfg.video_score)
        out.gflops = accounted_gflops(out.decisions, self.cost_table(*x.shape[-2:]).by_decision())
        return out

    def _run_chunk(self, x: torch.Tensor, vids: torch.Tensor, t0: int, t1: int,
                   state: List[Tuple[torch.Tensor, torch.Tensor]], carry: Optional[dict], out: SoFOutput) -> None:
        """Run time steps [t0, t1) of videos ``vids`` block-major, writing results into ``out``."""
        b = x.shape[0]
        span = t1 - t0
        tt = torch.arange(t0, t1, device=x.device).repeat_interleave(vids.numel())  # time-major packing
        bb = vids.repeat(span)
        feats = x[bb, tt]
        for k, (block, gate) in enumerate(zip(self.trunk.blocks, self.gates)):
            if self.shift is not None:
                self.trunk.set_shift_context(self._packed_context(tt, bb, t0, span, b, carry))
            try:
                feats = block(feats)
            finally:
                self.trunk.set_shift_context(None)
            if tt.numel() == 0:
                continue  # nothing reached this block; the shift modules still reset their carries above
            hs = self._scan_packed(gate, gate.input_gates(feats), tt - t0, bb, span, state[k])
            gl = gate.head(hs)
            out.gate_logits[bb, tt, k] = gl
            out.aux_logits[bb, tt, k] = gate.aux(hs)
            fwd = gl[:, 1] > gl[:, 0]
            out.decisions[bb[~fwd], tt[~fwd]] = k
            if not bool(fwd.all()):  # compact to the frames that go on (advanced indexing: a parallel copy)
                keep = fwd.nonzero().squeeze(1)
                feats, tt, bb = feats[keep], tt[keep], bb[keep]
        if tt.numel():
            out.frame_logits[bb, tt] = self.fc(feats.mean(dim=(2, 3)))
            out.decisions[bb, tt] = PASSED

    @staticmethod
    def _scan_packed(gate: Gate, gi: torch.Tensor, steps: torch.Tensor, bb: torch.Tensor, span: int,
                     state: Tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Advance gate k's LSTM over packed rows (sorted by time) only for the videos present at each step."""
        h_state, c_state = state
        hs = torch.empty(gi.shape[0], h_state.shape[1], dtype=gi.dtype, device=gi.device)
        counts = torch.bincount(steps, minlength=span).tolist()  # one host sync per gate and chunk
        start = 0
        for n in counts:
            if n:
                rows, who = slice(start, start + n), bb[start:start + n]
                h, c = gate.step(gi[rows], h_state[who], c_state[who])
                h_state[who], c_state[who] = h, c
                hs[rows] = h
                start += n
        return hs

    @staticmethod
    def _packed_context(tt: torch.Tensor, bb: torch.Tensor, t0: int, span: int, num_videos: int,
                        carry: Optional[dict]) -> ShiftContext:
        """Row of each packed frame's previous frame at this block: in this chunk, carried, or zeros."""
        m = tt.numel()
        pos = torch.full((num_videos, span), -1, dtype=torch.long, device=tt.device)
        pos[bb, tt - t0] = torch.arange(m, device=tt.device)
        local = tt - t0 - 1
        prev = torch.where(local >= 0, pos[bb, local.clamp(min=0)], torch.full_like(tt, -1))
        zero_row = m + num_videos
        prev_idx = torch.where(prev >= 0, prev, torch.full_like(prev, zero_row))
        if carry is not None and t0 > 0:
            prev_idx = torch.where(local < 0, m + bb, prev_idx)  # first step of a chunk: carried feature
        last = pos[:, span - 1] if carry is not None else None
        return ShiftContext(prev_idx, carry=carry, last_idx=last, num_videos=num_videos)
