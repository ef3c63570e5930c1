"""jmodels.vae against diffusers' AutoencoderKL (fixture from tests/fixtures/make_vae_fixture.py), weight import, KL."""
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jmodels.runtime import init_jittor

jt = init_jittor(seed=0)
from jmodels import checkpoint  # noqa: E402
from jmodels.vae import AutoencoderKL, VAEConfig, kl_divergence  # noqa: E402
from jmodels import public_vae  # noqa: E402
from helpers import write_safetensors  # noqa: E402
import weight_fuzz  # noqa: E402

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


def subprocess_readers(*args):
    """tests/weight_fuzz.py in its own process (a reader that crashes fails the test, not the run): stdout."""
    out = subprocess.run([sys.executable, str(Path(__file__).parent / "weight_fuzz.py"), *args], capture_output=True,
                         text=True, timeout=300, env=dict(os.environ, FORCE_CPU="1"))
    assert out.returncode == 0, (out.returncode, out.stdout[-2000:], out.stderr[-2000:])
    return out.stdout


VIEWS = [  # [offset, size, stride] over a storage of 4 floats, and what the reader must say
    ([0, [1000], [1]], "refused: .*view0.ckpt: tensor x: offset 0, size \\[1000\\] and stride \\[1\\] reach past its "
                       "storage 0 of 4 FloatStorage values"),  # before: 966 values of the process's memory
    ([0, [100_000_000], [1]], "refused: .*tensor x: .*reach past its storage"),  # before: a segmentation fault
    ([3, [2], [1]], "refused: .*tensor x: .*reach past its storage"),
    ([0, [2, 2], [3, 1]], "refused: .*tensor x: .*reach past its storage"),
    ([5, [0], [1]], "refused: .*tensor x: .*reach past its storage"),
    ([-1, [2], [1]], "refused: .*tensor x: .*are not a tensor's"),
    ([0, [2], [-1]], "refused: .*tensor x: .*are not a tensor's"),
    ([0, [2, 3], [1]], "refused: .*tensor x: .*are not a tensor's"),
    ([0, [0, 2 ** 62, 2 ** 62], [1, 1, 1]], "refused: .*tensor x: .*are not a tensor's"),
    ([1, [3], [1]], "read: \\[2.0, 3.0, 4.0\\]"),
    ([0, [2, 2], [1, 2]], "read: \\[\\[1.0, 3.0\\], \\[2.0, 4.0\\]\\]"),
    ([3, [], []], "read: 4.0"),
    ([4, [0, 5], [5, 1]], "read: \\[\\]"),
]


def test_crafted_torch_tensors_are_refused_naming_the_file_and_key():
    lines = subprocess_readers("--views", json.dumps([v for v, _ in VIEWS])).splitlines()
    assert len(lines) == len(VIEWS), lines
    for line, (view, want) in zip(lines, VIEWS):
        assert re.match(want, line), (view, line)

def test_crafted_torch_pickles_and_storages_are_refused(tmp_path):
    path = tmp_path / "bad.ckpt"
    good = weight_fuzz.torch_pickle({"x": ("0", "FloatStorage", 0, (4,), (1,), 4)})
    path.write_bytes(weight_fuzz.torch_zip(good, {}))  # the storage file is missing
    with pytest.raises(checkpoint.CheckpointError, match="bad.ckpt: storage 0: KeyError"):
        public_vae.read_torch(path)
    path.write_bytes(weight_fuzz.torch_zip(good, {"0": b"\0" * 7}))  # not whole floats
    with pytest.raises(checkpoint.CheckpointError, match="bad.ckpt: tensor x: storage 0 holds 7 bytes"):
        public_vae.read_torch(path)
    path.write_bytes(weight_fuzz.torch_zip(good[:-5], {"0": b"\0" * 16}))  # the pickle cut short
    with pytest.raises(checkpoint.CheckpointError, match="bad.ckpt: archive/data.pkl is not a readable PyTorch pickle"):
        public_vae.read_torch(path)
    named = good.replace(b"ctorch\nFloatStorage\n", weight_fuzz._str("EvilStorage"))  # a type by a name of its own
    path.write_bytes(weight_fuzz.torch_zip(named, {"0": b"\0" * 16}))
    with pytest.raises(checkpoint.CheckpointError, match="storage 0 has unsupported type 'EvilStorage'"):
        public_vae.read_torch(path)


def _st(tmp_path, header, body=b"\0" * 16):
    path = tmp_path / "crafted.safetensors"
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + body)
    return path


@pytest.mark.parametrize("entry, why", [
    ({"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}, "not a range inside the 16 bytes"),
    ({"dtype": "F32", "shape": [4], "data_offsets": [-4, 12]}, "not a range inside"),
    ({"dtype": "F32", "shape": [4], "data_offsets": [12, 4]}, "not a range inside"),
    ({"dtype": "F32", "shape": [2 ** 62, 2 ** 62], "data_offsets": [0, 16]}, "holding under"),
    ({"dtype": "F32", "shape": [0, 2 ** 62, 2 ** 62], "data_offsets": [0, 0]}, "holding under"),
    ({"dtype": "F32", "shape": [-1], "data_offsets": [0, 16]}, "not a list of sizes >= 0"),
    ({"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}, "needs 12 bytes, data_offsets give 16"),
    ({"dtype": "Q99", "shape": [4], "data_offsets": [0, 16]}, "unsupported dtype 'Q99'"),
    ({"dtype": ["F32"], "shape": [4], "data_offsets": [0, 16]}, "unsupported dtype"),
    ([1, 2], "its header entry is not an object"),
])
def test_crafted_safetensors_entries_are_refused_naming_the_file_and_key(tmp_path, entry, why):
    with pytest.raises(checkpoint.CheckpointError, match=f"crafted.safetensors: tensor w: .*{why}"):
        public_vae.read_safetensors(_st(tmp_path, {"w": entry}))


def test_crafted_safetensors_files_are_refused(tmp_path):
    overlap = {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]},
               "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}
    with pytest.raises(checkpoint.CheckpointError, match="tensor b: its bytes overlap those of a"):
        public_vae.read_safetensors(_st(tmp_path, overlap))
    with pytest.raises(checkpoint.CheckpointError, match="its header is not JSON"):
        public_vae.read_safetensors(_st(tmp_path, b"{not json"))
    with pytest.raises(checkpoint.CheckpointError, match="its header is not JSON"):
        public_vae.read_safetensors(_st(tmp_path, b"\xff\xfe\xfd"))
    with pytest.raises(checkpoint.CheckpointError, match="not a JSON object"):
        public_vae.read_safetensors(_st(tmp_path, b"[1]"))
    path = tmp_path / "short.safetensors"
    path.write_bytes(struct.pack("<Q", 2 ** 63) + b"{}")
    with pytest.raises(checkpoint.CheckpointError, match="short.safetensors: .*header length runs past the end"):
        public_vae.read_safetensors(path)


def test_fuzzed_weight_files_only_read_as_arrays_or_are_refused():
    """A seeded fuzz of both readers (truncations, byte flips, extreme integers, crafted tensor views) in its
    own process: a crash fails this test instead of ending the test run."""
    out = subprocess_readers("--seed", "0", "--cases", "400")
    assert re.search(r"^400 cases: \d+ read as arrays, \d+ refused with CheckpointError$", out, re.M), out
