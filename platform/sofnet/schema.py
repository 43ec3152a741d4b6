"""The configuration schema: plain dataclasses with the defaults (stdlib only, so model code can use them).

``sofnet.config`` turns them into OmegaConf structured configs and loads YAML and overrides on top.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

ARCHS = ("tsn", "tsm", "sofnet", "sofnet_tsm", "arnet")
STAGE_NAMES = ("stage1", "stage2", "stage3")  # stage3: AR-Net's fine-tuning (policy frozen) only
BACKBONES = ("resnet18", "resnet34", "resnet50")
SHIFTS = ("auto", "bidirectional", "causal")
GATE_INITS = ("official", "pytorch")
ARNET_PHASES = ("warmup", "joint", "finetune")
ET_MODES = ("reached", "official")
# The video score: the official mean over the frames that reached the classifier, or their sum over the frames seen
# (a deviation, see the README: the stopped frames count as evidence of nothing)
VIDEO_SCORES = ("passed_mean", "frames_seen")
GATE_TARGETS = ("sample", "logits")  # L_gate on the hard Gumbel sample (official) or on the gate logits
GATE_LABELS = ("next", "final")  # L_gate's pseudo-label: head k+1 vs head k (official), or the final head vs head k
GATE_MARGIN_RANGE = "in [0, 1): a softmax confidence gain"  # loss.gate_margin, and jobs/gate_labels.py's --rule
ARNET_EFF = ("official", "relative")  # AR-Net's GFLOPs term: raw GFLOPs per frame, or / the largest backbone's
EFF_WEIGHTS = ("official", "marginal")  # L_eff weights: the official shifted remaining cost, or our marginal cost
NUM_BLOCKS = 5  # stem, layer1..layer4: the five places SoF-Net may stop a frame
BEST_METRICS = ("", "val/mAP", "val/mAP_first_label", "val/top1", "val/top5")  # "": val/mAP, Sports-1M val/top1
PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")  # Ray placement groups


def gate_margin_ok(value: float) -> bool:
    """``loss.gate_margin`` is :data:`GATE_MARGIN_RANGE` (one check for the config and ``--rule``)."""
    return 0.0 <= value < 1.0


def arch_stages(arch: str) -> tuple:
    """The stages an architecture trains: stage 1 alone (TSN, TSM), 1-2 (SoF-Net: backbone, gates) or 1-3 (AR-Net:
    warm-up, joint, fine-tuning)."""
    if arch == "arnet":
        return STAGE_NAMES
    return STAGE_NAMES[:2] if arch.startswith("sofnet") else STAGE_NAMES[:1]


@dataclass
class ModelConfig:
    arch: str = "sofnet"  # tsn | tsm | sofnet | sofnet_tsm | arnet
    backbone: str = "resnet50"  # resnet18 | resnet34 | resnet50
    num_classes: int = 200
    num_segments: int = 16
    input_size: int = 224
    pretrained: str = "none"  # none | imagenet | path to a torchvision ResNet state dict
    dropout: float = 0.5
    gate_hidden: int = 512
    gate_init: str = "official"  # official: N(0, 0.001) gate projection; pytorch: its default (see README)
    tau0: float = 5.0  # Gumbel temperature tau(epoch) = tau0 * exp(-tau_decay * epoch)
    tau_decay: float = 0.045
    shift: str = "auto"  # TSM shift: auto = bidirectional for tsm, causal for sofnet_tsm
    shift_div: int = 8  # 1/shift_div of the channels move per direction
    partial_bn: bool = False  # TSN partial BN (freeze all BNs but the first); off as in the published runs (--npb)
    et_chunk: int = 4  # time steps per chunk of the skipping path when early exit is on
    video_score: str = "passed_mean"  # passed_mean (official) | frames_seen (a deviation: see the README)
    # AR-Net (arch arnet; ``backbone`` and the gate keys are unused): one backbone per resolution, largest first,
    # the policy (MobileNetV2 + LSTMCell) at policy_size, skip options. Official ActivityNet setting below.
    arnet_backbones: List[str] = field(default_factory=lambda: ["resnet50", "resnet34", "resnet18"])
    arnet_sizes: List[int] = field(default_factory=lambda: [224, 168, 112])
    arnet_policy_size: int = 84
    arnet_hidden: int = 512
    arnet_skips: List[int] = field(default_factory=lambda: [1, 2, 4])
    arnet_phase: str = "joint"  # set per stage by the job: warmup (stage 1) | joint (stage 2) | finetune (stage 3)


@dataclass
class LossConfig:
    alpha: float = 0.95  # L = alpha * L_acc + (1 - alpha) * L_eff + L_pg
    beta: Optional[float] = 0.05  # L_pg = beta * L_gate + (1 - beta) * L_aux; null turns L_pg off
    gate_target: str = "logits"  # L_gate on: logits (ours) | sample (official: the hard Gumbel one-hot)
    # L_gate's pseudo-label for gate k: next (official: forward if head k+1 beats head k on the true class) | final
    # (ours: forward if the final head beats head k by more than gate_margin)
    gate_label: str = "next"
    gate_margin: float = 0.0  # confidence the later head must add before "forward" is the label; official 0
    eff_weights: str = "marginal"  # L_eff: marginal (ours, expected cost) | official (sampled, shifted by a block)
    uniform_weight: float = 3.0  # AR-Net: L = alpha * CE + (1 - alpha) * (E[GFLOPs] + uniform_weight * U)
    arnet_eff: str = "official"  # E[GFLOPs] in raw GFLOPs per frame (official) or relative to the largest backbone


@dataclass
class EarlyExitConfig:
    enabled: bool = False
    rho: float = 0.999
    t_min: int = 4
    mode: str = "reached"  # reached: t_min counts frames that reached the classifier; official: time steps


@dataclass
class DataConfig:
    dataset: str = "activitynet"  # activitynet | sports1m
    train_shards: str = ""  # brace pattern or directory of WebDataset shards
    val_shards: str = ""
    batch_size: int = 24  # per worker, used when global_batch_size is 0
    global_batch_size: int = 0  # total over workers (official 24 on DataParallel); 0 = batch_size per worker
    num_workers: int = 4  # dataloader workers per training worker
    shuffle_buffer: int = 500
    scales: List[float] = field(default_factory=lambda: [1.0, 0.875, 0.75, 0.66])
    flip: bool = True
    resize: int = 256  # eval: resize short side, then centre crop input_size
    train_subset: str = "training"  # subset read from a shard directory for training
    val_subset: str = "validation"  # ... and for validation (mini-Sports1M: testing)


@dataclass
class OptimConfig:
    lr: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_steps: List[int] = field(default_factory=list)  # epochs at which lr is multiplied by lr_gamma
    lr_gamma: float = 0.1
    clip_grad: float = 20.0
    linear_lr_mult: float = 5.0  # the new linear layers learn faster (official: 5x weights, 10x biases)
    lstm_bias_official: bool = True  # LSTM biases at 2x lr without weight decay (official); false: base lr with decay
    gate_lr_mult: float = 1.0  # extra lr multiplier of the gates (official 1; short demo runs raise it)
    base_batch_size: int = 0  # linear lr scaling: lr * global batch / base_batch_size; 0 = off (official)


@dataclass
class StageConfig:
    enabled: bool = True
    epochs: int = 15
    optim: OptimConfig = field(default_factory=OptimConfig)
    init_from: str = ""  # "", a checkpoint directory, or models:/<name>@<alias>


@dataclass
class TrainConfig:
    seed: int = 1007
    stage1: StageConfig = field(default_factory=StageConfig)
    stage2: StageConfig = field(
        default_factory=lambda: StageConfig(epochs=60, optim=OptimConfig(lr_steps=[30]))
    )
    # AR-Net's fine-tuning (backbones, policy frozen); runs only for model.arch arnet
    stage3: StageConfig = field(default_factory=lambda: StageConfig(epochs=50, optim=OptimConfig(lr=0.0005)))
    log_every: int = 20  # steps between progress lines
    zero_stage: int = 0
    precision: str = "auto"  # auto (bf16 on GPUs that have it, else fp32) | fp32 | bf16
    output_dir: str = "runs"  # Ray Train's storage: a local path, or s3://, gs://, ... (every node must reach it)
    shared_storage: bool = False  # a local output_dir that every node mounts (NFS, Lustre): allowed on several nodes
    keep_checkpoints: int = 2
    best_metric: str = ""  # what picks a stage's best epoch; "": the official one (val/mAP = mmAP; Sports-1M top-1)
    max_failures: int = 2
    # validate every N epochs and the stage's last (the best is picked among those); 0: the last only
    val_every: int = 1
    decision_maps_correct: int = 2  # Figure A at a stage's last epoch: the most confident correct videos and
    decision_maps_failed: int = 2  # the most confident failures, with their frames (decision_maps/epochNNN/...)


@dataclass
class ScalingConfig:
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: int = 1
    gpus_per_worker: float = 1.0
    ray_address: str = ""  # "" = $RAY_ADDRESS (set by `ray job submit`) else a new local Ray; "auto" = the running one
    placement_strategy: str = "PACK"  # of the workers' placement group; STRICT_SPREAD = one worker per node
    collective_timeout_s: int = 1800  # torch.distributed (gloo/nccl) timeout: a lost peer fails the step


@dataclass
class MlflowConfig:
    tracking_uri: str = ""  # "" = $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory
    experiment: str = "sofnet"
    registered_model: str = ""  # e.g. sofnet-anet; "" = do not register
    alias: str = "best"


@dataclass
class Config:
    name: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    early_exit: EarlyExitConfig = field(default_factory=EarlyExitConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
