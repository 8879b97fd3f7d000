"""Two helpers of benchmarks/gpu_session.sh (a lent GPU's few minutes, planned ahead).

python -m benchmarks.gpu_session steps BENCH_JSON --model unet_attn --seconds 200 --batch 64
    how many training steps fit in `seconds`, from the bench's measured rate of the model (its
    fastest mixed precision) after a minute of start-up; without such a row, from the 8.5
    steps/s an H100 trained utkface64 at (BENCHMARKS.md, run 15). On that H100 the bench's
    batch-32 rate (343 img/s, host-bound) was below what Lightning reached at batch 64 (545
    img/s), so the plan is on the safe side. At least 100 steps, whatever the budget
python -m benchmarks.gpu_session slim CKPT OUT
    a facediff checkpoint's EMA weights in fp16 with its configs, without the optimiser state
    and the raw weights: an eighth of the size, for sampling and figures elsewhere
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

FALLBACK_STEPS_PER_S = 8.5  # utkface64 on one H100, batch 64 (BENCHMARKS.md, run 15)


def planned_steps(
    bench: dict[str, Any], model: str, seconds: float, batch: int, share: float = 1.0,
    startup: float = 150.0, bounds: tuple[int, int] = (100, 50_000),
) -> int:  # fmt: skip
    """Steps of `batch` images that `share` of the model's best measured img/s fits in `seconds`
    after `startup` seconds (Lightning, the data index, the evaluation classifier, and
    utkface64's compiling: ~100 s on an H100, run 24); clamped to `bounds`, so the lower bound
    can exceed a very short budget. The rate is the bench's eager one: compiled, the run trains
    about 2.5x as fast (run 24), so the plan errs on the safe side."""
    rates = [
        r["img_per_s"]["median"]
        for r in bench.get("train", {}).values()
        if r.get("model") == model and r.get("precision") != "fp32" and "img_per_s" in r
        and not (r.get("compile") or r.get("compile_graphs") or r.get("grad_ckpt"))
    ]  # fmt: skip
    steps_per_s = share * max(rates) / batch if rates else FALLBACK_STEPS_PER_S
    steps = int(steps_per_s * max(seconds - startup, 0.0))
    return min(max(steps, bounds[0]), bounds[1])


def slim_checkpoint(src: Path, dst: Path) -> None:
    """Keep what sampling needs: the configs and the EMA weights (the checkpoint's state_dict,
    Lightning's WeightAveraging puts them there) in fp16. An empty `current_model_state` keeps
    the EMA label; resuming from the result is not possible (no optimiser, no raw weights)."""
    from facediff.checkpoint import load_checkpoint

    ckpt = load_checkpoint(src)
    dropped = ("optimizer_states", "lr_schedulers", "callbacks", "loops", "current_model_state")
    slim = {k: v for k, v in ckpt.items() if k not in dropped}
    slim["state_dict"] = {
        k: v.half() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()
    }
    slim["current_model_state"] = {}
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(slim, dst)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("steps")
    s.add_argument("bench_json", type=Path)
    s.add_argument("--model", default="unet_attn")
    s.add_argument("--seconds", type=float, required=True)
    s.add_argument("--batch", type=int, default=64)
    c = sub.add_parser("slim")
    c.add_argument("ckpt", type=Path)
    c.add_argument("out", type=Path)
    args = p.parse_args(argv)
    if args.cmd == "steps":
        bench = json.loads(args.bench_json.read_text()) if args.bench_json.is_file() else {}
        print(planned_steps(bench, args.model, args.seconds, args.batch))
    else:
        slim_checkpoint(args.ckpt, args.out)


if __name__ == "__main__":
    main()
