"""jmodels/presets.py: every preset is a valid command line of its training script, the architectures it
names are what those flags build, and run.sh's reader prints them or refuses an unknown scale."""
import subprocess
import sys

import pytest

import train_ldm
import train_sr
import train_vae
from jmodels import cli
from jmodels.presets import PRESETS, architecture, flags

SCRIPTS = {"vae": train_vae, "ldm": train_ldm, "sr": train_sr}


@pytest.mark.parametrize("scale", sorted(PRESETS))
@pytest.mark.parametrize("stage", ["vae", "ldm", "sr"])
def test_each_preset_parses_with_its_script_and_names_its_architecture(scale, stage):
    parsed = cli.parse(SCRIPTS[stage].DEFAULTS, flags(scale, stage).split())
    arch = architecture(scale, stage)
    assert arch == {k: tuple(parsed[k]) if isinstance(parsed[k], tuple) else parsed[k] for k in arch}
    assert all(parsed[k] != SCRIPTS[stage].DEFAULTS[k] or str(v) == str(parsed[k])
               for k, v in PRESETS[scale][stage].items())


@pytest.mark.parametrize("scale", sorted(PRESETS))
def test_the_distillation_stages_parse_after_the_ldm_flags(scale):
    for stage in ("distill", "steps", "consistency"):
        parsed = cli.parse(train_ldm.DEFAULTS, (flags(scale, "ldm") + " " + flags(scale, stage)).split())
        assert parsed["max_steps"] == PRESETS[scale][stage]["max_steps"] < PRESETS[scale]["ldm"].get("max_steps", 1500)
        assert parsed["cache_latents"] == (scale != "demo")  # the ldm stage's data flags still hold


def test_the_full_unet_is_the_readmes_and_demo_is_the_scripts_defaults():
    assert architecture("full", "ldm") == dict(ch=128, ch_mult=(1, 2, 3, 4), num_res_blocks=2, attn_levels=(2, 3),
                                               head_dim=64, spade_hidden=128, norm_groups=32)
    assert architecture("full", "vae") == dict(ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2, norm_groups=32)
    assert flags("demo", "vae") == "" and flags("demo", "ldm") == ""
    assert flags("small", "vae") == "--max_steps 4000 --disc_start 2001 --sample_every 500 --ckpt_every 500"


def test_run_sh_reads_the_flags_and_an_unknown_scale_stops():
    out = subprocess.run([sys.executable, "-m", "jmodels.presets", "full", "ldm"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.split()[:2] == ["--size", "512,384"]
    bad = subprocess.run([sys.executable, "-m", "jmodels.presets", "huge", "vae"], capture_output=True, text=True)
    assert bad.returncode == 1 and "SCALE=huge: one of demo, small, full" in bad.stderr
