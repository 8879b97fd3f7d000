"""Time one training step (forward, loss, backward, AdamW) of a model config.

    python benchmarks/train_step.py model=unet_tiny image_size=32 batch_size=32 precision=32
    python benchmarks/train_step.py model=unet_attn image_size=64 batch_size=10 precision=16 \
        device=cuda

Prints the median step time over `iters` steps after `warmup` steps, images per second and,
on CUDA, the peak memory. `precision`: 32, bf16 or 16 (autocast; 16 also uses a GradScaler).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from facediff.diffusion.objective import build_diffusion, diffusion_loss
from facediff.models.registry import build_model

CONF = Path(__file__).parents[1] / "conf"


def main(argv: list[str]) -> None:
    args = dict(a.split("=", 1) for a in argv)
    model = args.pop("model", "unet_tiny")
    size, batch = int(args.pop("image_size", 32)), int(args.pop("batch_size", 32))
    precision, device = args.pop("precision", "32"), torch.device(args.pop("device", "cpu"))
    warmup, iters = int(args.pop("warmup", 3)), int(args.pop("iters", 10))
    grad_ckpt = args.pop("grad_checkpoint", "false") == "true"
    if args:
        raise SystemExit(f"unknown arguments: {sorted(args)}")
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model}", f"model.grad_checkpoint={grad_ckpt}"])
    net = build_model(cfg.model, image_size=size, num_classes=3).to(device).train()
    schedule, objective = build_diffusion(cfg.diffusion)
    schedule = schedule.to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-4)
    dtype = {"32": None, "bf16": torch.bfloat16, "16": torch.float16}[precision]
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "16")
    x0 = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 3, (batch,), device=device)

    def step() -> None:
        t = torch.randint(0, schedule.num_steps, (batch,), device=device)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = diffusion_loss(net, schedule, objective, x0, y, t, torch.randn_like(x0)).mean()
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()

    times = []
    for i in range(warmup + iters):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    med = statistics.median(times)
    params = sum(p.numel() for p in net.parameters()) / 1e6
    print(
        f"{model} ({params:.1f}M params) {size}x{size} batch {batch} precision {precision} "
        f"grad_checkpoint {grad_ckpt} on {device} ({torch.get_num_threads()} threads): "
        f"{med * 1e3:.1f} ms/step, {batch / med:.1f} img/s"
    )
    if device.type == "cuda":
        print(f"peak memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")


if __name__ == "__main__":
    main(sys.argv[1:])
