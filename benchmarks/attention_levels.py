"""What self-attention at each resolution costs a training step.

    python -m benchmarks.attention_levels [--network utkface_cpu] [--size 32] [--batch 64]
        [--precision fp32] [--layout 8 --layout 16 8 ...] [--base-channels N] [--channels-last]
        [--reps 5] [--warmup 1]

`--network` is the layout of a recipe or model config (`utkface_cpu`: conf/experiment's network,
widths 32/64/64/64; or a conf/model name such as `unet_attn`), `--base-channels` scales its widths
(e.g. `unet_attn` at 32: widths 32/64/96/128, a 64x64 network a CPU can train); each `--layout`
lists the resolutions with attention (none given: the network's own, plus 16 and plus 32 for the
CPU recipe's network). The layouts are timed round-robin in one process: forward, MSE, backward,
clipping and AdamW on random data, in fp32 or under bf16/fp16 autocast. Prints steps/s (median
and range) per layout.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import nn

from benchmarks.common import describe, device_info, interleave, pick_device, summarize
from benchmarks.models import facediff_model_config
from facediff.diffusion.sampling import network_precision
from facediff.models.registry import build_model

LAYOUTS = {"attention at 8 (the recipe)": [8], "+ 16": [16, 8], "+ 32": [32, 8]}


def training_step(
    net: nn.Module,
    batch: int,
    size: int,
    device: torch.device,
    memory_format: torch.memory_format = torch.contiguous_format,
    precision: str = "fp32",
):
    """A closure running one full training step of `net` on fixed random data (weights and
    batch in `memory_format`, as `module.channels_last` trains; under `precision`'s autocast)."""
    net.to(memory_format=memory_format)
    opt = torch.optim.AdamW(net.parameters(), 1e-3)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=memory_format)
    t = torch.randint(0, 500, (batch,), device=device)
    y = torch.randint(0, 3, (batch,), device=device)

    def step() -> None:
        with network_precision(precision, device):
            loss = (net(x, t, y).float() - x).pow(2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def network_config(network: str, base_channels: int | None) -> dict[str, Any]:
    """The network's model settings as train.py composes them (conf/experiment/<network>.yaml
    for a recipe such as utkface_cpu, else conf/model/<network>.yaml), widths optionally scaled."""
    cfg = facediff_model_config(network)
    if base_channels is not None:
        cfg["base_channels"] = base_channels
        cfg["groups"] = min(cfg["groups"], base_channels // 4)  # 8 groups at base 32
    return cfg


def layouts(network: str, given: list[list[int]] | None, own: list[int]) -> dict[str, list[int]]:
    if given:
        return {"attention at " + ", ".join(map(str, levels)) if levels else "no attention":
                levels for levels in given}  # fmt: skip
    return dict(LAYOUTS) if network == "utkface_cpu" else {"its own": own}


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--network", default="utkface_cpu", help="utkface_cpu or a conf/model")
    parser.add_argument("--base-channels", type=int, default=None)
    parser.add_argument("--layout", type=int, nargs="*", action="append", default=None,
                        help="resolutions with attention (repeat for each layout)")  # fmt: skip
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default=None)
    parser.add_argument("--channels-last", action="store_true", help="weights and batches")
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    base = network_config(args.network, args.base_channels)
    cases, params = {}, {}
    for name, levels in layouts(args.network, args.layout, base["attn_resolutions"]).items():
        torch.manual_seed(0)
        net = build_model({**base, "attn_resolutions": levels}, args.size, 3).to(device)
        params[name] = sum(p.numel() for p in net.parameters())
        fmt = torch.channels_last if args.channels_last else torch.contiguous_format
        cases[name] = training_step(net, args.batch, args.size, device, fmt, args.precision)
    times = interleave(cases, args.reps, args.warmup, device)
    print(describe(device_info(device)))
    layout = "channels_last" if args.channels_last else "contiguous"
    widths = [base["base_channels"] * m for m in base["channel_mult"]]
    print(f"{args.network} (widths {widths}), {args.size}x{args.size}, batch {args.batch}, "
          f"{args.precision}, {layout}, {args.reps} reps")  # fmt: skip
    results = {}
    for name, secs in times.items():
        rate = summarize([1.0 / s for s in secs])
        results[name] = rate
        print(
            f"{name:28s} {params[name] / 1e6:.2f}M params  {rate['median']:.2f} steps/s "
            f"({rate['min']:.2f}-{rate['max']:.2f})"
        )
    return results


if __name__ == "__main__":
    main()
