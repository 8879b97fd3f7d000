"""Non-finite steps are skipped (weights, optimizer state and EMA untouched), counted, logged,
and stop training after K in a row; checkpoints never hold NaN weights."""

import csv
import math
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from facediff.checkpoint import load_checkpoint
from facediff.lightning.ema import EMA
from facediff.lightning.module import DiffusionModule
from facediff.lightning.nonfinite import NonFiniteGuard, NonFiniteTrainingError
from facediff.lightning.training import run


class StepProbe(Callback):
    """After every optimizer step: raw weights, EMA weights, AdamW state; and the (clipped)
    gradient norm each step leaves behind."""

    def __init__(self) -> None:
        self.after: dict[int, dict[str, dict[str, torch.Tensor]]] = {}
        self.grad_norms: list[float] = []

    def on_before_zero_grad(self, trainer, pl_module, optimizer):
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if grads:  # the previous step's gradients, after clipping
            self.grad_norms.append(float(torch.nn.utils.get_total_norm(grads)))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        ema = next(c for c in trainer.callbacks if isinstance(c, EMA))
        optimizer = trainer.optimizers[0]
        adam = {
            f"{i}.{k}": v.clone()
            for i, p in enumerate(pl_module.parameters())
            for k, v in optimizer.state.get(p, {}).items()
        }
        self.after[trainer.global_step] = {
            "raw": {k: v.clone() for k, v in pl_module.state_dict().items()},
            "ema": {k: v.clone() for k, v in ema._average_model.state_dict().items()},
            "adam": adam,
        }


def with_callback(monkeypatch, callback: Callback) -> None:
    original = L.Trainer.__init__

    def init(self, *args, callbacks=None, **kwargs):
        original(self, *args, callbacks=[*(callbacks or []), callback], **kwargs)

    monkeypatch.setattr(L.Trainer, "__init__", init)


def nan_loss_at(monkeypatch, bad_step) -> None:
    """Make training_step's loss NaN whenever `bad_step(global_step)` holds."""
    original = DiffusionModule.training_step

    def training_step(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)
        return loss * float("nan") if bad_step(self.trainer.global_step) else loss

    monkeypatch.setattr(DiffusionModule, "training_step", training_step)


def all_finite(state: dict) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_nan_step_changes_nothing_is_logged_and_training_goes_on(tiny_cfg, monkeypatch):
    probe = StepProbe()
    with_callback(monkeypatch, probe)
    nan_loss_at(monkeypatch, lambda step: step == 3)  # the 4th optimizer step
    cfg = tiny_cfg(
        "trainer.max_steps=6",
        "trainer.max_epochs=-1",
        "trainer.log_every_n_steps=1",
        "trainer.gradient_clip_val=0.01",
        "logger=csv",
        "callbacks.sample_grid=null",
    )
    run(cfg)
    after = probe.after
    assert sorted(after) == [1, 2, 3, 4, 5, 6]
    for part in ("raw", "ema", "adam"):
        assert same(after[4][part], after[3][part]), part  # the skipped step changed nothing
        assert not same(after[5][part], after[4][part]), part  # the next one trains again
    # Gradient clipping still applies to every step that was taken.
    assert probe.grad_norms and max(probe.grad_norms) <= 0.01 * (1 + 1e-4)

    out = Path(cfg.paths.output_dir)
    rows = list(csv.DictReader(next(out.rglob("metrics.csv")).open()))
    skipped = {int(r["step"]): float(r["train/skipped_steps"])
               for r in rows if r.get("train/skipped_steps")}  # fmt: skip
    assert skipped[2] == 0 and skipped[3] == 1 and skipped[5] == 1, skipped
    # The gradient norm before clipping, logged at every step: NaN at the skipped one.
    norms = {int(r["step"]): float(r["train/grad_norm"]) for r in rows if r.get("train/grad_norm")}
    assert sorted(norms) == [0, 1, 2, 3, 4, 5] and math.isnan(norms.pop(3)), norms
    assert all(0.01 < n < math.inf for n in norms.values()), norms  # unclipped
    ckpt = load_checkpoint(out / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 6
    assert all_finite(ckpt["state_dict"]) and all_finite(ckpt["current_model_state"])
    assert ckpt["callbacks"]["NonFiniteGuard"] == {"skipped_steps": 1, "consecutive": 0}


def test_k_nan_steps_in_a_row_stop_training_with_a_clear_error(tiny_cfg, monkeypatch):
    nan_loss_at(monkeypatch, lambda step: step >= 5)
    cfg = tiny_cfg(
        "trainer.max_epochs=3",
        "trainer.limit_train_batches=4",  # epoch 0 (steps 0-3) ends well and writes last.ckpt
        "callbacks.nonfinite_guard.max_consecutive=3",
        "callbacks.sample_grid=null",
    )
    with pytest.raises(NonFiniteTrainingError, match="max_consecutive=3") as err:
        run(cfg)
    assert "at step 7" in str(err.value) and "optim.optimizer.lr" in str(err.value)
    ckpt = load_checkpoint(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 4
    assert all_finite(ckpt["state_dict"]) and all_finite(ckpt["current_model_state"])


def fake_trainer(scaler: bool) -> SimpleNamespace:
    return SimpleNamespace(
        precision_plugin=SimpleNamespace(scaler=object() if scaler else None),
        world_size=1,
        global_step=0,
        checkpoint_callback=None,
    )


def one_step(guard: NonFiniteGuard, trainer, loss: float, grad: float) -> bool:
    """Run the guard over one step with this loss and gradient; True if the grads survived."""
    param = torch.nn.Parameter(torch.ones(3))
    param.grad = torch.full((3,), grad)
    optimizer = torch.optim.SGD([param], lr=0.1)
    module = SimpleNamespace(log=lambda *args, **kwargs: None)
    guard.on_before_backward(trainer, module, torch.tensor(loss))
    guard.on_before_optimizer_step(trainer, module, optimizer)
    return param.grad is not None


def test_grad_scaler_skips_are_not_failures_but_nan_losses_are():
    guard = NonFiniteGuard(max_consecutive=2)
    amp = fake_trainer(scaler=True)
    for _ in range(5):  # fp16 overflow in the first steps: the scaler's business, never a stop
        assert not one_step(guard, amp, loss=1.0, grad=float("inf"))
        assert guard.skipped_last_step and guard.skipped_steps == 0
    assert one_step(guard, amp, loss=1.0, grad=1.0) and not guard.skipped_last_step
    assert not one_step(guard, amp, loss=float("nan"), grad=float("nan"))
    assert guard.skipped_steps == 1
    with pytest.raises(NonFiniteTrainingError, match="2 optimizer steps"):
        one_step(guard, amp, loss=float("inf"), grad=1.0)

    plain = NonFiniteGuard(max_consecutive=2)  # 32-true / bf16-mixed: no scaler
    assert not one_step(plain, fake_trainer(scaler=False), loss=1.0, grad=float("nan"))
    assert plain.skipped_steps == 1 and plain.consecutive == 1
    assert one_step(plain, fake_trainer(scaler=False), loss=1.0, grad=1.0)
    assert plain.consecutive == 0 and plain.skipped_steps == 1


@pytest.mark.parametrize("value", [0, -1, 2.5, True])
def test_max_consecutive_must_be_a_positive_int(value):
    with pytest.raises(ValueError, match=r"callbacks\.nonfinite_guard\.max_consecutive"):
        NonFiniteGuard(max_consecutive=value)


def test_checkpoints_with_nonfinite_raw_or_ema_weights_are_refused():
    guard, ema = NonFiniteGuard(), EMA()
    module, average = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    ema._average_model = average
    trainer = SimpleNamespace(callbacks=[guard, ema], global_step=7)
    guard.on_save_checkpoint(trainer, module, {})  # finite: written
    with torch.no_grad():
        average.bias[1] = float("nan")
    with pytest.raises(
        NonFiniteTrainingError, match=r"the EMA average has non-finite values in \['bias'\]"
    ):
        guard.on_save_checkpoint(trainer, module, {})
    with torch.no_grad():
        average.bias[1] = 0.0
        module.weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteTrainingError, match=r"step 7: the model .*\['weight'\]"):
        guard.on_save_checkpoint(trainer, module, {})
