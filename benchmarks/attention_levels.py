"""What self-attention at each resolution costs a training step of the CPU recipe's network.

    python -m benchmarks.attention_levels [--size 32] [--batch 64] [--reps 5] [--warmup 1]
        [--channels-last]

The utkface_cpu network (conf/experiment/utkface_cpu.yaml: base 32, widths 32/64/64/64, two
blocks per level) with attention at 8x8 only (the recipe), and with an extra attention level at
16x16 or at the full 32x32 (1,024 tokens), timed round-robin in one process: forward, MSE,
backward, clipping and AdamW on random data. Prints steps/s (median and range) per layout.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from benchmarks.common import describe, device_info, interleave, pick_device, summarize
from facediff.models.registry import build_model

RECIPE = {
    "name": "unet",
    "base_channels": 32,
    "channel_mult": [1, 2, 2, 2],
    "num_res_blocks": 2,
    "attn_heads": 4,
    "dropout": 0.0,
    "groups": 8,
    "grad_checkpoint": False,
}
LAYOUTS = {"attention at 8 (the recipe)": [8], "+ 16": [16, 8], "+ 32": [32, 8]}


def training_step(
    net: nn.Module,
    batch: int,
    size: int,
    device: torch.device,
    memory_format: torch.memory_format = torch.contiguous_format,
):
    """A closure running one full training step of `net` on fixed random data (weights and
    batch in `memory_format`, as `module.channels_last` trains)."""
    net.to(memory_format=memory_format)
    opt = torch.optim.AdamW(net.parameters(), 1e-3)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=memory_format)
    t = torch.randint(0, 500, (batch,), device=device)
    y = torch.randint(0, 3, (batch,), device=device)

    def step() -> None:
        loss = (net(x, t, y) - x).pow(2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default=None)
    parser.add_argument("--channels-last", action="store_true", help="weights and batches")
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    torch.manual_seed(0)
    cases, params = {}, {}
    for name, levels in LAYOUTS.items():
        net = build_model({**RECIPE, "attn_resolutions": levels}, args.size, 3).to(device)
        params[name] = sum(p.numel() for p in net.parameters())
        fmt = torch.channels_last if args.channels_last else torch.contiguous_format
        cases[name] = training_step(net, args.batch, args.size, device, fmt)
    times = interleave(cases, args.reps, args.warmup, device)
    print(describe(device_info(device)))
    layout = "channels_last" if args.channels_last else "contiguous"
    print(f"{args.size}x{args.size}, batch {args.batch}, fp32, {layout}, {args.reps} reps")
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
