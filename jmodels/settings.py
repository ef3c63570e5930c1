"""What one generation is asked to do: sampler, steps, strength, guidance, conditions, colour transfer,
refinement, candidates and seed, in one frozen, typed object checked once.

`GenerationSettings` is built from test.py's command line (`from_flags`), from a tuning result
(`<run>/test_flags.json`, `updated`) and from the studio's JSON (`updated` with the page's names), all
through the same checks: a value of the wrong type or out of its range is a `SettingsError` naming the
setting, the value and what it must be; each source words it for its user (a flag, a file, a request).
"""
import dataclasses
import math
from dataclasses import dataclass

from .conditioning import CONDITIONS
from .samplers import SAMPLERS

SAMPLER_NAMES = (*sorted(SAMPLERS), "consistency")  # consistency: the run's consistency student, DDIM steps

# name: (type, low, high), inclusive: the one place numeric settings are bounded (the studio's sliders too)
RANGES = {
    "steps": (int, 1, 100),
    "strength": (float, 0.05, 1.0),
    "guidance": (float, 1.0, 20.0),
    "color_transfer": (float, 0.0, 1.0),
    "color_per_class": (bool, 0, 1),
    "sr": (bool, 0, 1),
    "distilled": (bool, 0, 1),
    "candidates": (int, 1, 64),
    "seed": (int, 0, 2 ** 31 - 1),
}


class SettingsError(ValueError):
    """One setting that cannot be used: its name, the value given and what it must be."""

    def __init__(self, name, value, problem):
        super().__init__(f"{name} = {value!r}: {problem}")
        self.name, self.value, self.problem = name, value, problem

    def flag(self):
        """The command line's wording: `--steps 0: is not int in 1..100`."""
        return f"--{self.name} {fmt(self.value)}: {self.problem}"


@dataclass(frozen=True)
class GenerationSettings:
    sampler: str = "dpmpp_2m"        # jmodels.samplers.SAMPLERS, or consistency: DDIM with the consistency student
    steps: int = 20                  # sampler steps of the first pass (each refinement pass takes as many)
    strength: float = 0.8            # start: the reference's latent noised to this (1: pure noise)
    guidance: float = 2.0            # classifier-free guidance scale (1: the conditional model alone)
    guidance_band: tuple = ()        # (lo, hi]: guidance only where the noise level sigma_t is inside; (): all
    drop: tuple = ("mask", "style")  # conditions the unconditional branch drops
    without: tuple = ()              # ablation: conditions withheld from both branches
    color_transfer: float = 0.5      # Reinhard Lab transfer toward the reference, 0 (off) .. 1
    color_per_class: bool = True     # per class where the reference's label map has the class
    refine: tuple = ()               # refinement passes: the transferred output re-noised to each strength
    sr: bool = True                  # stage 3 (the run's sr/ckpt.npz) up to 512x384, when the run has it
    distilled: bool = True           # the guidance-distilled student (the run's distill/ckpt.npz), when it has one and
                                     # drop is what it learned (mask,style): one UNet call per step
    candidates: int = 1              # best of N samples per image, picked by the judge
    seed: int = 0                    # with each file name, seeds the image's noise

    def __post_init__(self):
        for name, (kind, low, high) in RANGES.items():
            value = getattr(self, name)
            if not (_is(value, kind) and low <= value <= high):
                raise SettingsError(name, value, f"is not {kind.__name__} in {low}..{high}")
        if self.sampler not in SAMPLER_NAMES:
            raise SettingsError("sampler", self.sampler, f"samplers are {', '.join(SAMPLER_NAMES)}")
        for name in ("drop", "without"):
            if not isinstance(getattr(self, name), tuple) or set(getattr(self, name)) - set(CONDITIONS):
                raise SettingsError(name, getattr(self, name), f"conditions are {' and '.join(CONDITIONS)}")
        band = self.guidance_band
        if not isinstance(band, tuple) or not (band == () or (len(band) == 2 and all(_is(v, float) for v in band)
                                                              and 0.0 <= band[0] < band[1])):
            raise SettingsError("guidance_band", band, "is () or two noise levels lo < hi, lo >= 0")
        if not isinstance(self.refine, tuple) or not all(_is(r, float) for r in self.refine):
            raise SettingsError("refine", self.refine, "strengths are numbers in (0, 1)")
        if not all(0.0 < r < 1.0 for r in self.refine):
            raise SettingsError("refine", self.refine, "each strength must be in (0, 1)")

    @classmethod
    def from_flags(cls, flags):
        """The settings among a parsed command line's values (test.py's, tune's); other keys are ignored."""
        values = {f.name: flags[f.name] for f in dataclasses.fields(cls) if f.name in flags}
        numbers = (("refine", "strengths are numbers in (0, 1)"), ("guidance_band", "noise levels are numbers"))
        for name, what in numbers:
            if name in values:  # the command line gives strings
                try:
                    values[name] = tuple(float(r) for r in values[name])
                except (TypeError, ValueError):
                    raise SettingsError(name, values[name], what) from None
        return cls(**values)

    def updated(self, values, allowed=None):
        """These settings with `values` ({name: JSON value}) over them, typed as strictly as JSON allows (a
        list for a tuple, an integer for a float); unknown names, and names outside `allowed`, raise."""
        allowed = NAMES if allowed is None else allowed
        if not isinstance(values, dict):
            raise SettingsError("settings", values, "must be a JSON object")
        unknown = sorted(set(values) - set(allowed))
        if unknown:
            raise SettingsError(unknown[0], values[unknown[0]], f"unknown setting; known: {', '.join(allowed)}")
        return dataclasses.replace(self, **{k: _typed(self, k, v) for k, v in values.items()})

    def as_json(self):
        """{name: value} with lists for tuples: what test_flags.json and the studio's JSON hold."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


NAMES = tuple(f.name for f in dataclasses.fields(GenerationSettings))
# what a tuning result (<run>/test_flags.json, tools/experiments/tune.py) may set
TUNED = ("sampler", "steps", "strength", "guidance", "guidance_band", "drop", "color_transfer", "color_per_class",
         "refine", "distilled", "candidates")


def _is(value, kind):
    """`value` is a `kind` as JSON gives one: bool only for bool, an integral non-bool number for int, any
    non-bool number for float (nan fails every range check)."""
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return kind is float or (math.isfinite(value) and value == int(value))


def _typed(base, name, value):
    default = getattr(base, name)
    if isinstance(default, tuple) and isinstance(value, list):
        return tuple(value)
    if isinstance(default, (int, float)) and not isinstance(default, bool) and _is(value, type(default)):
        return type(default)(value)
    return value  # anything else is checked, and refused, by __post_init__


def fmt(value):
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
