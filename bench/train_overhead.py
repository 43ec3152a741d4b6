"""Training-step overhead of our stack: Ray Train + DeepSpeed + ``sofnet.train.loop`` vs a plain torch loop.

Same model (SoF-Net, dense training path), same batch (one fixed in-memory batch, so data loading is out of the
picture), same loss (``sofnet_loss``), same optimizer groups and gradient clipping, same number of CPU threads.
The plain loop runs in this process before and after the Ray run (their mean is the reference); the Ray run is a
``TorchTrainer`` with one worker whose DeepSpeed engine (ZeRO stage of the config, fp32 on CPU) trains through
``train_one_epoch``. Prints one JSON line: wall-clock steps/s of both and their ratio (goal >= 0.95), and CPU time
per step (``cpu_ratio``, the same comparison insensitive to other load on the machine; 1 thread keeps it meaningful).

    .venv/bin/python bench/train_overhead.py [--steps 30] [--threads 1] [--size 64] [--segments 8] [--batch 4]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import partial

import torch

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def _setup(args: dict):
    from sofnet.config import load_config
    from sofnet.losses import sofnet_loss
    from sofnet.models import build_model
    from sofnet.train.deepspeed_config import build_optimizer

    cfg = load_config(None, [f"model.{k}={v}" for k, v in (("backbone", args["backbone"]), ("num_classes", 4),
                                                           ("num_segments", args["segments"]),
                                                           ("input_size", args["size"]), ("gate_hidden", 128))]
                      + [f"data.batch_size={args['batch']}", f"train.zero_stage={args['zero']}"])
    torch.manual_seed(0)
    model = build_model(cfg.model).train()
    g = torch.Generator().manual_seed(1)
    batch = {"frames": torch.randn(args["batch"], args["segments"], 3, args["size"], args["size"], generator=g),
             "label": torch.randint(0, 4, (args["batch"],), generator=g)}
    costs = model.cost_table(args["size"], args["size"])
    loss_fn = partial(sofnet_loss, costs=costs, alpha=cfg.loss.alpha, beta=cfg.loss.beta)
    return cfg, model, build_optimizer(model, cfg.train.stage2.optim), batch, loss_fn


def plain_steps_per_s(args: dict) -> tuple[float, float]:
    """The reference: forward, loss, backward, clip, SGD step, in a bare loop; (steps/s, CPU s per step)."""
    torch.set_num_threads(args["threads"])
    cfg, model, opt, batch, loss_fn = _setup(args)
    for i in range(args["warmup"] + args["steps"]):
        if i == args["warmup"]:
            start, cpu = time.perf_counter(), time.process_time()
        terms = loss_fn(model(batch["frames"]), batch["label"])
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.stage2.optim.clip_grad)
        opt.step()
    return args["steps"] / (time.perf_counter() - start), (time.process_time() - cpu) / args["steps"]


def ray_worker(args: dict) -> None:
    """One Ray Train worker: a DeepSpeed engine trained by ``train_one_epoch`` on the fixed batch."""
    import ray.train

    from sofnet.train.deepspeed_config import build_engine
    from sofnet.train.loop import train_one_epoch

    torch.set_num_threads(args["threads"])
    cfg, model, _, batch, loss_fn = _setup(args)
    engine = build_engine(model, cfg, cfg.train.stage2.optim, world_size=1, precision="fp32")
    run = partial(train_one_epoch, engine, loss_fn=loss_fn, epoch=0, epochs=1, stage="bench",
                  device=torch.device("cpu"), log_every=10**9, is_logger=False)
    run([batch] * args["warmup"], steps=args["warmup"])
    start, cpu = time.perf_counter(), time.process_time()
    run([batch] * args["steps"], steps=args["steps"])
    rate = args["steps"] / (time.perf_counter() - start)
    with open(args["result_file"], "w") as f:  # Ray Train v2 returns metrics only with a checkpoint
        json.dump({"steps_per_s": rate, "cpu_s_per_step": (time.process_time() - cpu) / args["steps"]}, f)
    ray.train.report({"steps_per_s": rate})


def ray_steps_per_s(args: dict) -> tuple[float, float]:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    ray.init(address="local", num_cpus=args["threads"] + 1, include_dashboard=False, log_to_driver=False)
    try:
        trainer = TorchTrainer(
            ray_worker, train_loop_config=args, torch_config=TorchConfig(backend="gloo"),
            scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": args["threads"]}),
            run_config=RunConfig(name=f"bench-{os.getpid()}", storage_path=args["storage"],
                                 worker_runtime_env={"env_vars": {"DS_ACCELERATOR": "cpu"}}))
        trainer.fit()
        with open(args["result_file"]) as f:
            got = json.load(f)
        return float(got["steps_per_s"]), float(got["cpu_s_per_step"])
    finally:
        ray.shutdown()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--segments", type=int, default=8)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--zero", type=int, default=0)
    p.add_argument("--storage", default="/tmp/sofnet-bench")
    args = vars(p.parse_args(argv))
    os.makedirs(args["storage"], exist_ok=True)
    args["result_file"] = os.path.join(args["storage"], f"result-{os.getpid()}.json")
    before = plain_steps_per_s(args)
    ours = ray_steps_per_s(args)
    after = plain_steps_per_s(args)
    plain = ((before[0] + after[0]) / 2, (before[1] + after[1]) / 2)
    print(json.dumps({
        "plain_steps_per_s": round(plain[0], 3), "ray_deepspeed_steps_per_s": round(ours[0], 3),
        "ratio": round(ours[0] / plain[0], 3),
        "plain_cpu_ms_per_step": round(1e3 * plain[1], 1), "ray_deepspeed_cpu_ms_per_step": round(1e3 * ours[1], 1),
        "cpu_ratio": round(plain[1] / ours[1], 3),  # steps per CPU second, ours / plain: insensitive to load
        "plain_before_after_steps_per_s": [round(before[0], 3), round(after[0], 3)],
        "threads": args["threads"], "model": f"sofnet {args['backbone']} {args['segments']}x{args['size']}",
        "batch": args["batch"], "zero_stage": args["zero"], "steps": args["steps"], "torch": torch.__version__}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
