"""jmodels/settings.py: one typed, bounded object for generation, read the same way from the command line,
a tuning result and the studio's JSON; every bad value refused with its name, value and what it must be."""
import dataclasses
import math

import pytest

from jmodels.settings import NAMES, RANGES, TUNED, GenerationSettings, SettingsError


def test_defaults_are_test_pys_and_round_trip_through_json():
    s = GenerationSettings()
    assert (s.sampler, s.steps, s.strength, s.guidance, s.drop, s.color_transfer, s.refine, s.candidates) == \
        ("dpmpp_2m", 20, 0.8, 2.0, ("mask", "style"), 0.5, (), 1)
    other = GenerationSettings(steps=7, drop=("mask",), refine=(0.3, 0.2), seed=5)
    assert GenerationSettings().updated(other.as_json()) == other
    assert other.as_json()["refine"] == [0.3, 0.2] and set(TUNED) <= set(NAMES)
    with pytest.raises(dataclasses.FrozenInstanceError):
        other.steps = 3


@pytest.mark.parametrize("name", sorted(RANGES))
def test_each_range_holds_its_ends_and_refuses_past_them(name):
    kind, low, high = RANGES[name]
    for ok in (low, high):
        assert getattr(GenerationSettings(**{name: kind(ok)}), name) == ok
    past = [True] if kind is bool else [low - 1 if kind is int else low - 0.01, high + 1]
    for bad in past + ([] if kind is bool else [math.nan]):
        if kind is bool:
            bad = 1  # an int is not a bool
        with pytest.raises(SettingsError, match=rf"^{name} = .*: is not {kind.__name__} in {low}\.\.{high}$"):
            GenerationSettings(**{name: bad})


def test_types_are_strict_as_json_gives_them():
    for name, value in (("steps", 2.5), ("steps", True), ("seed", "1"), ("guidance", "high")):
        with pytest.raises(SettingsError) as e:
            GenerationSettings().updated({name: value})
        assert (e.value.name, e.value.value) == (name, value)
    assert GenerationSettings().updated({"steps": 3.0}).steps == 3  # an integral float is an int
    assert GenerationSettings().updated({"guidance": 3}).guidance == 3.0 and \
        isinstance(GenerationSettings().updated({"guidance": 3}).guidance, float)


def test_conditions_samplers_and_refinement_are_checked():
    with pytest.raises(SettingsError, match=r"^drop = \('colour',\): conditions are mask and style$"):
        GenerationSettings(drop=("colour",))
    with pytest.raises(SettingsError, match="without = .*: conditions are mask and style"):
        GenerationSettings().updated({"without": ["mask", "x"]})
    with pytest.raises(SettingsError, match="sampler = 'euler': samplers are ddim, dpmpp_2m, consistency"):
        GenerationSettings(sampler="euler")
    with pytest.raises(SettingsError, match=r"refine = \(1.5,\): each strength must be in \(0, 1\)"):
        GenerationSettings(refine=(1.5,))
    assert GenerationSettings.from_flags({"refine": ("0.3", "0.2"), "steps": 4, "zip": True}).refine == (0.3, 0.2)
    with pytest.raises(SettingsError, match="strengths are numbers in"):
        GenerationSettings.from_flags({"refine": ("x",)})


def test_unknown_and_disallowed_names_are_refused_and_each_source_words_it():
    with pytest.raises(SettingsError, match="batch_size = 4: unknown setting; known: sampler, steps"):
        GenerationSettings().updated({"batch_size": 4}, allowed=TUNED)
    with pytest.raises(SettingsError, match="seed = 3: unknown setting"):
        GenerationSettings().updated({"seed": 3}, allowed=TUNED)  # a tuning result never sets the seed
    with pytest.raises(SettingsError) as e:
        GenerationSettings(steps=0)
    assert e.value.flag() == "--steps 0: is not int in 1..100"
    with pytest.raises(SettingsError) as e:
        GenerationSettings(drop=("colour",))
    assert e.value.flag() == "--drop colour: conditions are mask and style"
