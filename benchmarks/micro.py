"""Micro-benchmarks behind the findings in BENCHMARKS.md (interleaved, median and min-max).

    PYTHONPATH=. python -m benchmarks.micro [--only attention,step,ops] [--reps 5]

- attention: facediff's AttentionBlock forward + backward, before (the 1x1-conv layout whose q,
  k, v had a strided last dim, so F.scaled_dot_product_attention took its unfused math path)
  and now (token layout, fused kernel), at the three attention resolutions unet_attn had then
  (32, 16, 8 px; 16 and 8 since BENCHMARKS.md run 21).
- step: a whole unet_attn training step with the old and the new attention forward.
- ops: what bf16 autocast costs on this CPU, op by op: a 3x3 convolution and GroupNorm, in
  contiguous and channels_last layouts, and a matmul, each in fp32 and bf16.
- lowp: facediff's CPU bf16 paths against torch's own kernels ("before"): attention (SDPA) in
  fp32 inside bf16 autocast, GroupNorm of a bf16 channels_last input in fp32, and the
  utkface_cpu recipe's whole training step (32x32, batch 64, bf16, channels_last) with both.
- groupnorm: GroupNorm forward + backward of 16-bit channels_last tensors at the shapes of
  `unet_attn` (batch `--batch`, 64x64) and of the CPU recipe: torch's NCHW kernel (what a
  contiguous network runs), torch's NHWC kernel, facediff's previous path (normalise in fp32,
  "before") and `ChannelsLastGroupNorm` ("after"); then whole bf16 training steps: `unet_attn`
  contiguous and channels_last (before / after), the size-matched peer (contiguous, its
  fastest), and the CPU recipe's network (channels_last, before / after); and five bf16
  DPM-Solver++ steps (guidance 3) of both networks with the input contiguous ("before") and in
  channels_last ("after", `facediff.diffusion.sampling.network_layout`).
- adagn: the ResBlock's adaptive GroupNorm, GN(h) * (1 + scale) + shift, as three ops
  ("before") and folded into `ChannelsLastGroupNorm`'s affine ("after"): forward + backward of
  one bf16 channels_last (batch, 64, 64, 64) map, and whole bf16 channels_last training steps of
  `unet_attn` (64x64, batch `--batch`) and of the CPU recipe's network, beside the peer's.
- dropout: facediff's CPU dropout (16 random bits per element) against nn.Dropout's
  (`bernoulli_`, one random number per element) and against its own words drawn by
  `torch.randint` (run 22's path), at `unet_attn`'s four widths, and `unet_attn`'s whole
  training step (64x64, batch `--batch`, bf16) with each.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parents[1]


def legacy_attention_forward(self: Any, x: Any) -> Any:
    """AttentionBlock.forward as it was before this benchmark (kept for comparison only)."""
    import torch.nn.functional as F

    B, C, H, W = x.shape
    d = C // self.heads
    qkv = self.qkv(self.norm(x)).reshape(B, 3, self.heads, d, H * W)
    q, k, v = qkv.transpose(-1, -2).unbind(dim=1)  # (B, heads, HW, d), last-dim stride HW
    out = F.scaled_dot_product_attention(q, k, v)
    out = out.transpose(-1, -2).reshape(B, C, H, W)
    return x + self.proj(out)


def fp32_group_norm_forward(self: Any, x: Any) -> Any:
    """facediff's GroupNorm.forward before BENCHMARKS.md run 28 (kept for comparison only): a
    16-bit channels_last CPU input normalised in fp32, then cast back."""
    import torch
    import torch.nn.functional as F

    from facediff.models.group_norm import takes_channels_last_path

    if not takes_channels_last_path(x):
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
    with torch.autocast("cpu", enabled=False):
        w, b = (None if p is None else p.float() for p in (self.weight, self.bias))
        out = F.group_norm(x.float(), self.num_groups, w, b, self.eps)
    return out.to(x.dtype)


def fwd_bwd(fn: Callable[[], Any], precision: str) -> Callable[[], None]:
    import torch

    def run() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = fn()
        out.float().sum().backward()

    return run


def attention_cases(batch: int) -> dict[str, Callable[[], None]]:
    import torch

    from facediff.models.layers import AttentionBlock

    cases = {}
    for res, ch in ((32, 128), (16, 192), (8, 256)):  # unet_attn at 64x64 before run 21
        torch.manual_seed(0)
        block = AttentionBlock(ch, 4, 32)
        old = AttentionBlock(ch, 4, 32)
        old.load_state_dict(block.state_dict())
        old.forward = types.MethodType(legacy_attention_forward, old)  # type: ignore[method-assign]
        x = torch.randn(batch, ch, res, res, requires_grad=True)
        for precision in ("fp32", "bf16"):
            for label, blk in (("before", old), ("after", block)):
                key = f"attention {res}px C{ch} {precision} {label}"
                cases[key] = fwd_bwd(lambda blk=blk, x=x: blk(x), precision)
    return cases


def step_cases(batch: int, size: int) -> dict[str, Callable[[], None]]:
    from benchmarks.bench_train import TrainCase, TrainStep
    from facediff.models.layers import AttentionBlock

    device = __import__("torch").device("cpu")
    new = TrainStep(TrainCase("unet_attn"), size, batch, device)
    old = TrainStep(TrainCase("unet_attn"), size, batch, device)
    for module in old.net.modules():
        if isinstance(module, AttentionBlock):
            module.forward = types.MethodType(legacy_attention_forward, module)  # type: ignore[method-assign]
    return {"unet_attn step fp32 before": old, "unet_attn step fp32 after": new}


def op_cases(batch: int) -> dict[str, Callable[[], None]]:
    import torch
    from torch import nn

    cases = {}
    torch.manual_seed(0)
    conv = nn.Conv2d(128, 128, 3, padding=1)
    norm = nn.GroupNorm(32, 128)
    x = torch.randn(batch, 128, 32, 32, requires_grad=True)
    x_cl = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    conv_cl = nn.Conv2d(128, 128, 3, padding=1).to(memory_format=torch.channels_last)
    conv_cl.load_state_dict(conv.state_dict())
    for precision in ("fp32", "bf16"):
        cases[f"conv3x3 128ch 32px {precision}"] = fwd_bwd(lambda: conv(x), precision)
        cases[f"conv3x3 128ch 32px {precision} channels_last"] = fwd_bwd(
            lambda: conv_cl(x_cl), precision
        )
        cases[f"groupnorm 128ch 32px {precision}"] = fwd_bwd(lambda: norm(x), precision)
        cases[f"groupnorm 128ch 32px {precision} channels_last"] = fwd_bwd(
            lambda: norm(x_cl), precision
        )
    a32, b32 = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a16, b16 = a32.bfloat16(), b32.bfloat16()
    cases["matmul 1024 fp32"] = lambda: torch.mm(a32, b32)
    cases["matmul 1024 bf16"] = lambda: torch.mm(a16, b16)
    return cases


def torch_kernels_step(step: Callable[[], None]) -> Callable[[], None]:
    """Run `step` with torch's own bf16 kernels: SDPA under autocast, nn.GroupNorm.forward."""
    import torch
    import torch.nn.functional as F

    import facediff.models.layers as layers
    from facediff.models.group_norm import GroupNorm

    def run() -> None:
        fast_attention, fast_norm = layers.attention, GroupNorm.forward
        layers.attention = F.scaled_dot_product_attention  # type: ignore[assignment]
        GroupNorm.forward = torch.nn.GroupNorm.forward  # type: ignore[method-assign]
        try:
            step()
        finally:
            layers.attention, GroupNorm.forward = fast_attention, fast_norm  # type: ignore[method-assign]

    return run


def lowp_cases() -> dict[str, Callable[[], None]]:
    import torch
    import torch.nn.functional as F
    from torch import nn

    from benchmarks.bench_train import TrainCase, TrainStep
    from facediff.models.group_norm import GroupNorm
    from facediff.models.layers import attention

    bf16, cases = torch.bfloat16, {}
    torch.manual_seed(0)
    for batch, tokens, d in ((64, 64, 16), (16, 64, 64), (16, 256, 48), (16, 1024, 32)):
        q, k, v = (torch.randn(batch, 4, tokens, d).to(bf16).requires_grad_() for _ in range(3))
        key = f"attention B{batch} L{tokens} d{d} bf16"
        cases[f"{key} before"] = fwd_bwd(
            lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v), "bf16"
        )
        cases[f"{key} after"] = fwd_bwd(lambda q=q, k=k, v=v: attention(q, k, v), "bf16")
    for batch, ch, res in ((64, 32, 32), (64, 64, 16), (16, 64, 64), (16, 128, 32)):
        x = torch.randn(batch, ch, res, res).to(bf16, memory_format=torch.channels_last)
        x.requires_grad_()
        old, new = nn.GroupNorm(8, ch), GroupNorm(8, ch)
        key = f"groupnorm B{batch} C{ch} {res}px bf16 channels_last"
        cases[f"{key} before"] = fwd_bwd(lambda x=x, m=old: m(x), "bf16")
        cases[f"{key} after"] = fwd_bwd(lambda x=x, m=new: m(x), "bf16")
    case = TrainCase("utkface_cpu", "bf16", channels_last=True)
    device = torch.device("cpu")
    key = "utkface_cpu step 32px batch 64 bf16 channels_last"
    cases[f"{key} before"] = torch_kernels_step(TrainStep(case, 32, 64, device))
    cases[f"{key} after"] = TrainStep(case, 32, 64, device)
    return cases


def groupnorm_cases(batch: int, size: int) -> dict[str, Callable[[], None]]:
    import torch
    from torch import nn

    from benchmarks.bench_train import TrainCase, TrainStep
    from facediff.models.group_norm import GroupNorm

    cases: dict[str, Callable[[], Any]] = {}
    torch.manual_seed(0)
    shapes = [(batch, ch, res) for ch, res in ((64, size), (192, size), (128, size // 2))]
    shapes += [(batch, 256, size // 8), (64, 64, 32), (64, 64, 16)]  # last two: the CPU recipe
    for b, ch, res in shapes:
        x = torch.randn(b, ch, res, res).to(torch.bfloat16)
        nchw = x.clone().requires_grad_()
        nhwc = x.contiguous(memory_format=torch.channels_last).requires_grad_()
        plain, new = nn.GroupNorm(32, ch), GroupNorm(32, ch)
        old = GroupNorm(32, ch)
        old.forward = types.MethodType(fp32_group_norm_forward, old)  # type: ignore[method-assign]
        key = f"groupnorm B{b} C{ch} {res}px bf16"
        cases[f"{key} NCHW torch"] = fwd_bwd(lambda x=nchw, m=plain: m(x), "bf16")
        cases[f"{key} NHWC torch"] = fwd_bwd(lambda x=nhwc, m=plain: m(x), "bf16")
        cases[f"{key} NHWC before"] = fwd_bwd(lambda x=nhwc, m=old: m(x), "bf16")
        cases[f"{key} NHWC after"] = fwd_bwd(lambda x=nhwc, m=new: m(x), "bf16")
    device = torch.device("cpu")
    for model, b, res, fmts in (
        ("unet_attn", batch, size, ("contiguous", "cl")),
        ("diffusers_unet2d", batch, size, ("contiguous",)),
        ("utkface_cpu", 64, 32, ("cl",)),
    ):
        for fmt in fmts:
            try:
                step = TrainStep(
                    TrainCase(model, "bf16", channels_last=fmt == "cl"), res, b, device
                )
            except ImportError:  # diffusers: the optional bench extra
                continue
            key = f"{model} step {res}px batch {b} bf16 {fmt}"
            if fmt == "cl":
                cases[f"{key} before"] = fp32_norm_step(step)
                step = TrainStep(TrainCase(model, "bf16", channels_last=True), res, b, device)
                cases[f"{key} after"] = step
            else:
                cases[key] = step
    for model, b, res in (("unet_attn", 8, size), ("utkface_cpu", 32, 32)):
        key = f"{model} 5 sampling steps {res}px batch {b} bf16 guidance 3"
        cases[f"{key} before"] = sampling_case(model, res, b, channels_last=False)
        cases[f"{key} after"] = sampling_case(model, res, b, channels_last=True)
    return cases


def sampling_case(model: str, size: int, batch: int, channels_last: bool) -> Callable[[], None]:
    """Five DPM-Solver++ steps of `model` (random weights) with the network's input laid out by
    facediff's rule (`channels_last`) or contiguous."""
    import torch

    import facediff.diffusion.sampling as sampling
    from benchmarks.models import build_model
    from facediff.diffusion.objective import build_diffusion
    from facediff.diffusion.settings import SamplingSettings

    torch.manual_seed(0)
    net = build_model(model, size).eval()
    with torch.no_grad():  # no zero-initialised layer: the network's output is not constant
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    schedule, objective = build_diffusion({"num_steps": 500, "prediction": "v"})
    settings = SamplingSettings("dpmpp", 5, 3.0, 1.0, 0, "trailing", "bf16")
    y, x_T = torch.arange(batch) % 3, torch.randn(batch, 3, size, size)
    rule = sampling.network_layout

    def run() -> None:
        if not channels_last:
            sampling.network_layout = lambda *a: torch.contiguous_format  # type: ignore[assignment]
        try:
            g = torch.Generator().manual_seed(0)
            sampling.sample(net, schedule, objective, y, x_T, settings, generator=g)
        finally:
            sampling.network_layout = rule

    return run


def fp32_norm_step(step: Callable[[], None]) -> Callable[[], None]:
    """Run `step` with facediff's previous GroupNorm.forward (normalise in fp32)."""
    from facediff.models.group_norm import GroupNorm

    def run() -> None:
        fast = GroupNorm.forward
        GroupNorm.forward = fp32_group_norm_forward  # type: ignore[method-assign]
        try:
            step()
        finally:
            GroupNorm.forward = fast  # type: ignore[method-assign]

    return run


def unfolded_resblock_forward(self: Any, x: Any, emb: Any) -> Any:
    """ResBlock.forward before the scale-shift fold (kept for comparison only)."""
    import torch.nn.functional as F

    h = self.conv1(F.silu(self.norm1(x)))
    scale, shift = self.emb_proj(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
    h = self.norm2(h) * (1 + scale) + shift
    return self.skip(x) + self.conv2(self.dropout(F.silu(h)))


def adagn_cases(batch: int, size: int) -> dict[str, Callable[[], None]]:
    import torch

    from benchmarks.bench_train import TrainCase, TrainStep
    from facediff.models.group_norm import GroupNorm
    from facediff.models.layers import ResBlock

    cases: dict[str, Callable[[], Any]] = {}
    torch.manual_seed(0)
    norm = GroupNorm(32, 64)
    x = torch.randn(batch, 64, size, size).to(torch.bfloat16)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    scale, shift = (torch.randn(batch, 64).to(torch.bfloat16).requires_grad_() for _ in "ab")
    key = f"adaptive groupnorm B{batch} C64 {size}px bf16 cl"
    cases[f"{key} before"] = fwd_bwd(
        lambda: norm(x) * (1 + scale[:, :, None, None]) + shift[:, :, None, None], "bf16"
    )
    cases[f"{key} after"] = fwd_bwd(lambda: norm(x, scale, shift), "bf16")

    def unfolded(step: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            folded = ResBlock.forward
            ResBlock.forward = unfolded_resblock_forward  # type: ignore[method-assign]
            try:
                step()
            finally:
                ResBlock.forward = folded  # type: ignore[method-assign]

        return run

    device = torch.device("cpu")
    for model, b, res in (("unet_attn", batch, size), ("utkface_cpu", 64, 32)):
        key = f"{model} step {res}px batch {b} bf16 cl"
        case = TrainCase(model, "bf16", channels_last=True)
        cases[f"{key} before"] = unfolded(TrainStep(case, res, b, device))
        cases[f"{key} after"] = TrainStep(case, res, b, device)
    with contextlib.suppress(ImportError):  # diffusers: the optional bench extra
        cases[f"diffusers_unet2d step {size}px batch {batch} bf16 contiguous"] = TrainStep(
            TrainCase("diffusers_unet2d", "bf16"), size, batch, device
        )
    return cases


def dropout_cases(batch: int, size: int) -> dict[str, Callable[[], None]]:
    import torch
    from torch import nn

    from benchmarks.bench_train import TrainCase, TrainStep
    from facediff.models.layers import Dropout

    cases: dict[str, Callable[[], None]] = {}
    old, new = nn.Dropout(0.1), Dropout(0.1)
    for ch, res in ((64, size), (128, size // 2), (192, size // 4), (256, size // 8)):
        x = torch.randn(batch, ch, res, res).to(torch.bfloat16).requires_grad_()
        key = f"dropout 0.1 B{batch} C{ch} {res}px bf16"
        cases[f"{key} before"] = fwd_bwd(lambda x=x: old(x), "bf16")
        cases[f"{key} randint words"] = randint_words(fwd_bwd(lambda x=x: new(x), "bf16"))
        cases[f"{key} after"] = fwd_bwd(lambda x=x: new(x), "bf16")
    case, device = TrainCase("unet_attn", "bf16"), torch.device("cpu")
    key = f"unet_attn step {size}px batch {batch} bf16"
    cases[f"{key} before"] = torch_dropout_step(TrainStep(case, size, batch, device))
    cases[f"{key} randint words"] = randint_words(TrainStep(case, size, batch, device))
    cases[f"{key} after"] = TrainStep(case, size, batch, device)
    return cases


def randint_words(run_case: Callable[[], None]) -> Callable[[], None]:
    """Run `run_case` with facediff's dropout drawing its words by `torch.randint` over the
    int64 range (BENCHMARKS.md run 22's path) instead of `random_words` (run 29)."""
    import torch

    import facediff.models.layers as layers

    def draw(count: int) -> Any:
        return torch.randint(-(2**63), 2**63 - 1, (count,), dtype=torch.int64)

    def run() -> None:
        fast = layers.random_words
        layers.random_words = draw  # type: ignore[assignment]
        try:
            run_case()
        finally:
            layers.random_words = fast

    return run


def torch_dropout_step(step: Callable[[], None]) -> Callable[[], None]:
    """Run `step` with nn.Dropout's own forward in facediff's Dropout."""
    import torch

    import facediff.models.layers as layers

    def run() -> None:
        fast = layers.Dropout.forward
        layers.Dropout.forward = torch.nn.Dropout.forward  # type: ignore[method-assign]
        try:
            step()
        finally:
            layers.Dropout.forward = fast  # type: ignore[method-assign]

    return run


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    p = argparse.ArgumentParser(description="facediff micro-benchmarks")
    p.add_argument(
        "--only",
        default="attention,step,ops",
        help="any of attention,step,ops,lowp,groupnorm,adagn,dropout",
    )
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    sys.path.insert(0, str(ROOT))
    import torch

    from benchmarks.common import cpu_info, interleave, summarize

    only = set(args.only.split(","))
    cases: dict[str, Callable[[], Any]] = {}
    if "attention" in only:
        cases |= attention_cases(args.batch)
    if "step" in only:
        cases |= step_cases(args.batch, args.size)
    if "ops" in only:
        cases |= op_cases(args.batch)
    if "lowp" in only:
        cases |= lowp_cases()
    if "groupnorm" in only:
        cases |= groupnorm_cases(args.batch, args.size)
    if "adagn" in only:
        cases |= adagn_cases(args.batch, args.size)
    if "dropout" in only:
        cases |= dropout_cases(args.batch, args.size)
    times = interleave(cases, args.reps, args.warmup, torch.device("cpu"))
    cpu = cpu_info()
    print(f"# {cpu['model']}, flags {' '.join(cpu['flags'])}; no {' '.join(cpu['missing'])}")
    print(f"# batch {args.batch}, {args.reps} interleaved reps, ms median (min-max)")
    out = {}
    for key, secs in times.items():
        stat = summarize([s * 1e3 for s in secs])
        out[key] = stat
        line = f"{key}: {stat['median']:.1f} ms ({stat['min']:.1f}-{stat['max']:.1f})"
        if key.endswith(" after"):
            before = out.get(key[: -len("after")] + "before")
            if before:
                line += f"  speed-up {before['median'] / stat['median']:.2f}x"
        print(line)
    return out


if __name__ == "__main__":
    main()
