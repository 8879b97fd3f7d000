"""EMA update semantics (the checkpoint/resume side is in test_training.py)."""

import pickle

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from facediff.lightning.ema import EMA, EMADecay


def test_decay_schedule():
    fn = EMADecay(decay=0.995, start_step=3)
    assert [fn.decay_at(n) for n in range(5)] == [0.0, 0.0, 0.0, 0.995, 0.995]
    warm = EMADecay(decay=0.999, start_step=0, warmup=True)
    assert warm.decay_at(0) == pytest.approx(0.1)
    assert warm.decay_at(10) == pytest.approx(11 / 20)
    assert warm.decay_at(10**6) == 0.999


def test_update_is_an_exponential_moving_average_after_the_start_step():
    model = nn.Linear(3, 2)
    avg = AveragedModel(model, multi_avg_fn=EMADecay(decay=0.9, start_step=2), use_buffers=True)
    history = []
    for _ in range(5):
        with torch.no_grad():
            model.weight.add_(1.0)
        history.append(model.weight.detach().clone())
        avg.update_parameters(model)
    # Updates 0 and 1 copy the raw weights; 2, 3 and 4 are EMA steps with decay 0.9.
    expected = history[1]
    for w in history[2:]:
        expected = 0.9 * expected + 0.1 * w
    torch.testing.assert_close(avg.module.weight, expected)


def test_callback_is_picklable_for_ddp_spawn():
    ema = EMA(decay=0.99, start_step=10, warmup=True)
    clone = pickle.loads(pickle.dumps(ema))
    assert clone._kwargs["multi_avg_fn"].decay_at(11) == pytest.approx(min(0.99, 2 / 11))


@pytest.mark.parametrize("kwargs", [{"decay": 1.0}, {"decay": -0.1}, {"start_step": -1}])
def test_bad_ema_config(kwargs):
    with pytest.raises(ValueError, match=r"callbacks\.ema"):
        EMA(**kwargs)
