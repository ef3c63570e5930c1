"""The learning rate as a pure function of the optimizer step: linear warm-up, then cosine decay to a floor.

Pure so that a resumed run gets the same rate as an uninterrupted one: the step comes from the
checkpoint, nothing else is stored. Set it before each update: `opt.lr = lr_at(run.step, ...)`.
Refs: Loshchilov & Hutter 2017 (SGDR, cosine); nanoGPT `train.py` get_lr; diffusers
`get_cosine_schedule_with_warmup`.
"""
import math
import numbers


def lr_at(step, base_lr, warmup_steps, total_steps, floor=0.0):
    """The rate of update number `step` (0-based: the updates done before it).

    Warm-up: base_lr * (step + 1) / (warmup_steps + 1) for step < warmup_steps. Starting at
    base_lr / (warmup + 1) rather than at 0 (diffusers starts at 0) follows nanoGPT: with AdamW a
    zero rate makes the first update a no-op that still costs a full step. The last warm-up step is
    just below base_lr and step `warmup_steps` is base_lr, so the curve rises without a jump.
    Decay: floor*base_lr + (1 - floor)*base_lr * (1 + cos(pi * p)) / 2, p = (step - warmup) / (total - warmup),
    reaching floor*base_lr at `total_steps` and staying there. warmup 0 and floor 1 is a constant rate."""
    _check(step, base_lr, warmup_steps, total_steps, floor)
    if step < warmup_steps:
        return base_lr * (step + 1) / (warmup_steps + 1)
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return base_lr * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def _check(step, base_lr, warmup_steps, total_steps, floor):
    for name, value in (("step", step), ("warmup_steps", warmup_steps), ("total_steps", total_steps)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    if not (isinstance(base_lr, numbers.Real) and math.isfinite(base_lr) and base_lr > 0):
        raise ValueError(f"base_lr must be a finite number > 0, got {base_lr!r}")
    if total_steps <= warmup_steps:
        raise ValueError(f"total_steps ({total_steps}) must exceed warmup_steps ({warmup_steps}): "
                         "the decay needs at least one step")
    if not (isinstance(floor, numbers.Real) and 0.0 <= floor <= 1.0):
        raise ValueError(f"floor is a fraction of base_lr in [0, 1], got {floor!r}")
