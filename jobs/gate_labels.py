"""What each pseudo-label rule of L_gate would teach a trained SoF-Net: "forward" rates per gate on action vs
background frames of the validation videos (``sofnet.gate_labels``).

    python jobs/gate_labels.py --config jobs/configs/bench.yaml --checkpoint runs/study/bench-study/bench-study-seed1
    python jobs/gate_labels.py ... --rule next:0 --rule final:0.05 --videos 128 --json labels.json

A good rule says "forward" on action frames and "stop" on background ones; ``loss.gate_label`` and
``loss.gate_margin`` choose the rule a training uses. Prints a markdown table (rule, frame kind, gate 0..4).
Exit status: 0 done, 2 bad input (config, flags, checkpoint, shards): one line.
"""

import argparse
import json
import sys

DEFAULT_RULES = ["next:0", "final:0", "final:0.05", "final:0.1"]


def _rules(specs):
    from sofnet.preflight import PreflightError
    from sofnet.schema import GATE_LABELS, GATE_MARGIN_RANGE, gate_margin_ok

    rules = []
    for spec in specs:
        label, _, margin = spec.partition(":")
        try:
            value = float(margin or 0)
        except ValueError:
            value = -1.0
        if label not in GATE_LABELS or not gate_margin_ok(value):
            raise PreflightError(f"--rule {spec}: expected LABEL:MARGIN, LABEL one of {' | '.join(GATE_LABELS)}, "
                                 f"MARGIN {GATE_MARGIN_RANGE}")
        rules.append((label, value))
    return rules


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="experiment YAML (data section: shards, batch size, workers)")
    p.add_argument("--checkpoint", required=True, help="a SoF-Net run directory (its best epoch) or checkpoint")
    p.add_argument("--which", choices=["best", "last"], default="best", help="for a run directory: best or last epoch")
    p.add_argument("--rule", action="append", default=[], metavar="LABEL:MARGIN",
                   help=f"a pseudo-label rule, repeatable (default: {' '.join(DEFAULT_RULES)})")
    p.add_argument("--videos", type=int, default=0, help="label the first N validation videos only (0: all)")
    p.add_argument("--shards", default="", help="shards (default: data.val_shards)")
    p.add_argument("--json", default="", help="also write the rates to this JSON file")
    from sofnet.session import run_command

    return run_command(p, argv, _run)


def _run(args, cfg) -> int:
    from sofnet import checkpoint
    from sofnet.evaluation import eval_loader
    from sofnet.gate_labels import label_rates, rate_rows
    from sofnet.preflight import PreflightError, check_shards

    rules = _rules(args.rule or DEFAULT_RULES)
    if args.videos < 0:
        raise PreflightError(f"--videos {args.videos}: must be >= 0")
    model, spec = checkpoint.load_network(args.checkpoint, which=args.which)
    if not hasattr(model, "gates"):
        raise PreflightError(f"--checkpoint {args.checkpoint}: a {spec['model']['arch']} network has no gates "
                             "(give a SoF-Net run)")
    hp = model.hparams()
    shards = args.shards or cfg.data.val_shards
    check_shards(shards, cfg.data.val_subset, key="--shards" if args.shards else "data.val_shards",
                 num_classes=hp["num_classes"])
    result = label_rates(model, eval_loader(model, cfg.data, shards), rules, max_videos=args.videos)
    print(f"{spec['path']}: {result['videos']} videos of {shards}; 'forward' rate of each rule per gate")
    print("\n".join(rate_rows(result)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
