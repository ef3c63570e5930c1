"""jmodels.vae against diffusers' AutoencoderKL (fixture from tests/fixtures/make_vae_fixture.py), weight import, KL."""
from pathlib import Path

import numpy as np
import pytest

from jmodels.runtime import init_jittor

jt = init_jittor(seed=0)
from jmodels import checkpoint  # noqa: E402
from jmodels.vae import AutoencoderKL, VAEConfig, kl_divergence  # noqa: E402
from jmodels import public_vae  # noqa: E402
from helpers import write_safetensors  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
TINY = VAEConfig(ch=8, ch_mult=(1, 2, 2, 2), num_res_blocks=1, norm_groups=4)


@pytest.fixture(scope="module")
def reference():
    with np.load(FIXTURES / "vae_diffusers.npz") as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def vae(reference):
    weights = public_vae.to_ours({k[2:]: v for k, v in reference.items() if k.startswith("w/")})
    return checkpoint.load_into(AutoencoderKL(TINY), weights, "diffusers fixture")


def test_encoder_matches_diffusers(vae, reference):
    mean, logvar = vae.encode(jt.array(reference["x"]))
    np.testing.assert_allclose(mean.numpy(), reference["mean"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(logvar.numpy(), reference["logvar"], atol=1e-4, rtol=0)
    assert np.abs(reference["mean"]).max() > 0.1  # the comparison is not between near-zeros


def test_decoder_matches_diffusers(vae, reference):
    dec = vae.decode(jt.array(reference["z"])).numpy()
    assert dec.shape == (2, 3, 32, 48)
    np.testing.assert_allclose(dec, reference["dec"], atol=1e-4, rtol=0)
    assert np.abs(reference["dec"]).std() > 0.1


def test_sides_must_be_multiples_of_8():
    with pytest.raises(AssertionError, match="image sides 30x48 must be multiples of 8"):
        AutoencoderKL(TINY).encode(jt.zeros((1, 3, 30, 48)))


def test_kl_closed_form():
    mean = jt.array(np.array([[[[1.0]], [[0.0]]]], np.float32))  # (1, 2, 1, 1)
    logvar = jt.array(np.array([[[[0.0]], [[np.log(2.0)]]]], np.float32))
    # 0.5 * (1 + 1 - 1 - 0) + 0.5 * (0 + 2 - 1 - log 2)
    assert float(kl_divergence(mean, logvar)) == pytest.approx(0.5 + 0.5 * (1 - np.log(2)), abs=1e-6)


def test_strict_load_lists_every_mismatch(reference):
    weights = public_vae.to_ours({k[2:]: v for k, v in reference.items() if k.startswith("w/")})
    del weights["encoder.conv_in.bias"]
    weights["extra.weight"] = np.zeros(3, np.float32)
    weights["decoder.conv_out.weight"] = np.zeros((3, 8, 1, 1), np.float32)
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.load_into(AutoencoderKL(TINY), weights, "bad.npz")
    msg = str(e.value)
    assert "bad.npz: weights do not match" in msg
    assert "missing (1): encoder.conv_in.bias" in msg and "unexpected (1): extra.weight" in msg
    assert "decoder.conv_out.weight: expected (3, 8, 3, 3), got (3, 8, 1, 1)" in msg


@pytest.mark.parametrize("ldm,ours", [
    ("first_stage_model.encoder.down.1.block.0.nin_shortcut.weight", "encoder.down_blocks.1.resnets.0.conv_shortcut.weight"),
    ("first_stage_model.encoder.down.2.downsample.conv.bias", "encoder.down_blocks.2.downsamplers.0.conv.bias"),
    ("first_stage_model.decoder.up.3.block.2.norm2.weight", "decoder.up_blocks.0.resnets.2.norm2.weight"),
    ("first_stage_model.decoder.up.1.upsample.conv.weight", "decoder.up_blocks.2.upsamplers.0.conv.weight"),
    ("first_stage_model.encoder.mid.block_2.conv1.bias", "encoder.mid_block.resnets.1.conv1.bias"),
    ("first_stage_model.decoder.mid.attn_1.proj_out.bias", "decoder.mid_block.attentions.0.to_out.0.bias"),
    ("first_stage_model.decoder.mid.attn_1.norm.weight", "decoder.mid_block.attentions.0.group_norm.weight"),
    ("first_stage_model.encoder.norm_out.bias", "encoder.conv_norm_out.bias"),
    ("first_stage_model.quant_conv.weight", "quant_conv.weight"),
    ("encoder.mid_block.attentions.0.query.weight", "encoder.mid_block.attentions.0.to_q.weight"),
    ("vae.decoder.conv_norm_out.weight", "decoder.conv_norm_out.weight"),
])
def test_public_key_names_map_to_ours(ldm, ours):
    assert list(public_vae.to_ours({ldm: np.zeros(2)})) == [ours]


def test_attention_1x1_convs_become_linears_and_loss_keys_are_dropped():
    out = public_vae.to_ours({"first_stage_model.encoder.mid.attn_1.q.weight": np.ones((4, 4, 1, 1)),
                                  "first_stage_model.loss.discriminator.main.0.weight": np.ones(3)})
    assert {k: v.shape for k, v in out.items()} == {"encoder.mid_block.attentions.0.to_q.weight": (4, 4)}


def test_safetensors_reader_round_trip(tmp_path):
    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1.5, -2], np.float16)}
    write_safetensors(tmp_path / "t.safetensors", tensors)
    got = public_vae.read_safetensors(tmp_path / "t.safetensors")
    for k, v in tensors.items():
        np.testing.assert_array_equal(got[k], v)
        assert got[k].dtype == v.dtype


def test_public_file_loads_strictly_for_fine_tuning(tmp_path, reference):
    public = {f"vae.{k[2:]}": v for k, v in reference.items() if k.startswith("w/")}
    write_safetensors(tmp_path / "vae.safetensors", public)
    config, state = public_vae.load_public_vae(tmp_path / "vae.safetensors", TINY.to_dict())
    assert config == TINY.to_dict() and len(state) == 180
    np.testing.assert_array_equal(state["encoder.conv_in.weight"], reference["w/encoder.conv_in.weight"])
    with pytest.raises(checkpoint.CheckpointError, match=r"shape mismatch \(\d+\): "):
        public_vae.load_public_vae(tmp_path / "vae.safetensors")  # the SD-size config expects wider tensors


def test_torch_pickle_read_without_torch():
    state = public_vae.read_torch(FIXTURES / "tiny_torch.ckpt")
    np.testing.assert_array_equal(state["first_stage_model.quant_conv.bias"], np.arange(8.0))
    np.testing.assert_array_equal(state["first_stage_model.post_quant_conv.weight"][:, :, 0, 0], np.eye(4))
