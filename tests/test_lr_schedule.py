"""The learning-rate schedule: closed-form values, invalid arguments, and AdamW taking it per step with an
exact resume."""
import math

import numpy as np
import pytest

from jmodels.lr_schedule import lr_at
from jmodels.runtime import init_jittor

jt = init_jittor(seed=0)
from jmodels.optim import AdamW  # noqa: E402

BASE, WARMUP, TOTAL, FLOOR = 2e-4, 10, 110, 0.1


@pytest.mark.parametrize("step, expected", [
    (0, BASE * 1 / 11),                       # first update: a small non-zero rate
    (4, BASE * 5 / 11),                       # mid warm-up
    (9, BASE * 10 / 11),                      # last warm-up step
    (10, BASE),                               # end of warm-up: cos(0) = 1
    (35, BASE * (0.1 + 0.9 * 0.5 * (1 + math.sqrt(0.5)))),  # a quarter of the decay: cos(pi/4)
    (60, BASE * (0.1 + 0.9 * 0.5)),           # half the decay: cos(pi/2) = 0
    (110, BASE * 0.1),                        # end: the floor
    (10 ** 6, BASE * 0.1),                    # past the end: stays at the floor
])
def test_closed_form_values(step, expected):
    assert lr_at(step, BASE, WARMUP, TOTAL, FLOOR) == pytest.approx(expected, rel=1e-12)


def test_no_warmup_starts_at_base_and_floor_zero_ends_at_zero():
    assert lr_at(0, 1.0, 0, 4) == 1.0
    assert lr_at(2, 1.0, 0, 4) == pytest.approx(0.5, abs=1e-15)
    assert lr_at(4, 1.0, 0, 4) == 0.0


def test_floor_one_without_warmup_is_a_constant_rate():
    assert {lr_at(s, 3e-4, 0, 50, 1.0) for s in range(0, 80, 7)} == {3e-4}


def test_rises_through_warmup_then_never_rises():
    lrs = [lr_at(s, BASE, WARMUP, TOTAL, FLOOR) for s in range(TOTAL + 20)]
    assert all(a < b for a, b in zip(lrs[:WARMUP], lrs[1:WARMUP + 1]))
    assert all(a >= b for a, b in zip(lrs[WARMUP:], lrs[WARMUP + 1:]))
    assert max(lrs) == BASE and min(lrs) == lrs[0]


@pytest.mark.parametrize("args, match", [
    ((-1, 1e-3, 10, 100), "step"),
    ((1.5, 1e-3, 10, 100), "step"),
    ((True, 1e-3, 10, 100), "step"),
    ((0, 0.0, 10, 100), "base_lr"),
    ((0, float("nan"), 10, 100), "base_lr"),
    ((0, 1e-3, -1, 100), "warmup_steps"),
    ((0, 1e-3, 100, 100), "must exceed"),
    ((0, 1e-3, 10, 5), "must exceed"),
    ((0, 1e-3, 10, 100, 1.5), "floor"),
    ((0, 1e-3, 10, 100, -0.1), "floor"),
])
def test_invalid_arguments_raise(args, match):
    with pytest.raises(ValueError, match=match):
        lr_at(*args)


class Vector(jt.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = jt.array(np.array([1.0, -2.0, 0.5], np.float32))


C = np.array([3.0, -1.0, 2.0], np.float32)


def _train(model, opt, steps):
    """loss = c . w: a constant gradient, so m/c1 = g and v/c2 = g^2 and (eps 0) each update is -lr * sign(c)."""
    for step in steps:
        opt.lr = lr_at(step, 0.1, 2, 6, 0.2)
        opt.step((model.w * jt.array(C)).sum())


def test_adamw_reads_the_rate_set_before_each_step():
    model = Vector()
    opt = AdamW(model.named_parameters(), lr=123.0, eps=0.0)  # the constructor's rate is overwritten per step
    _train(model, opt, range(4))
    moved = 0.1 / 3 + 0.2 / 3 + 0.1 + 0.1 * (0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi / 4)))  # warm-up 2, decay 4
    np.testing.assert_allclose(model.w.numpy(), np.array([1.0, -2.0, 0.5]) - moved * np.sign(C), atol=1e-6)


def test_resume_with_the_schedule_is_exact():
    """8 steps straight == 3 steps, optimizer state saved and loaded into fresh objects, 5 more steps."""
    straight = Vector()
    opt = AdamW(straight.named_parameters(), lr=0.1, eps=1e-8)
    _train(straight, opt, range(8))
    first = Vector()
    opt_first = AdamW(first.named_parameters(), lr=0.1, eps=1e-8)
    _train(first, opt_first, range(3))
    resumed = Vector()
    resumed.w.update(jt.array(first.w.numpy()))
    opt_resumed = AdamW(resumed.named_parameters(), lr=0.1, eps=1e-8)
    opt_resumed.load_state(opt_first.state_arrays(), opt_first.state_meta())
    _train(resumed, opt_resumed, range(opt_resumed.t, 8))  # the step comes from the saved state
    np.testing.assert_array_equal(resumed.w.numpy(), straight.w.numpy())
