"""Stage 3 (jmodels/sr.py, train_sr.py): shapes, the label steering locally, an untrained network being the
bilinear upsampling, successive 2x passes, the degradation's determinism, exact resume, strict loading,
the pipeline with and without the stage (--sr 0 gives the bytes of a run without it)."""
import hashlib

import numpy as np
import pytest

from conftest import entry, tiny_run
from helpers import jt, perturbed
from jmodels import checkpoint, pipeline
from jmodels.checkpoint import CheckpointError
from jmodels.data import DataError
from jmodels.demo_data import make_demo
from jmodels.sr import SRConfig, SRPairs, SuperResolution, degrade, one_hot, upscale
from jmodels.vae import AutoencoderKL, VAEConfig

import train_sr  # noqa: E402  (an entry script: its state and step are what the tests drive)

TINY = SRConfig(ch=8, lr_blocks=1, hr_blocks=1, sft_hidden=8)
CFG = dict(train_sr.DEFAULTS, ch=8, lr_blocks=1, hr_blocks=1, sft_hidden=8, batch_size=2, disc_ndf=8, disc_layers=2,
           disc_start=2, size=(64, 48), lr=1e-3)


def tiny_sr(seed=3):
    model = SuperResolution(TINY)
    checkpoint.load_into(model, perturbed(model, seed, sigma=0.1), "perturbed")
    return model


def tiny_vae():
    jt.set_global_seed(0)
    return AutoencoderKL(VAEConfig(ch=8, ch_mult=(1, 2, 2, 2), num_res_blocks=1, norm_groups=4))


def test_shapes_and_an_untrained_network_is_bilinear():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (2, 3, 12, 16)).astype(np.float32)
    label = one_hot(rng.integers(0, 29, (2, 24, 32)))
    y = SuperResolution(TINY)(jt.array(x), jt.array(label)).numpy()
    assert y.shape == (2, 3, 24, 32)
    bilinear = jt.nn.interpolate(jt.array(x), size=(24, 32), mode="bilinear", align_corners=False).numpy()
    np.testing.assert_array_equal(y, bilinear)
    with pytest.raises(AssertionError, match=r"label must be one-hot \(B, 29, 2H, 2W\)"):
        SuperResolution(TINY)(jt.array(x), jt.array(label[:, :, :12, :16]))


def test_a_label_change_changes_the_output_there_and_only_near_there():
    rng = np.random.default_rng(1)
    model = tiny_sr()
    x = jt.array(rng.uniform(-1, 1, (1, 3, 24, 32)).astype(np.float32))
    ids = np.full((1, 48, 64), 12)
    changed = ids.copy()
    changed[:, 20:28, 28:36] = 5  # a patch of trees in grass
    diff = np.abs(model(x, jt.array(one_hot(changed))).numpy() - model(x, jt.array(one_hot(ids))).numpy()).max(1)[0]
    assert diff[20:28, 28:36].min() > 1e-4
    # receptive field of the label: 2 res-block convs and the label branch's 2 convs per level, the low level
    # at half resolution, the upsampling conv and the tail: under 16 pixels from the patch
    far = np.ones_like(diff, bool)
    far[20 - 16:28 + 16, 28 - 16:36 + 16] = False
    assert diff[far].max() == 0.0 and (diff > 0).sum() > 64


def test_successive_passes_are_the_network_applied_twice_with_the_label_at_each_size():
    from PIL import Image
    rng = np.random.default_rng(2)
    model = tiny_sr()
    images = rng.integers(0, 256, (3, 12, 16, 3), dtype=np.uint8)
    labels = [rng.integers(0, 29, (48, 64)) for _ in range(3)]
    out = upscale(model, images, labels, (64, 48))
    assert out.shape == (3, 48, 64, 3) and out.dtype == np.uint8
    x = images
    for size in ((32, 24), (64, 48)):
        lab = one_hot([np.asarray(Image.fromarray(lb.astype(np.uint8)).resize(size, Image.NEAREST)) for lb in labels])
        with jt.no_grad():
            y = model(jt.array(x.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1), jt.array(lab)).numpy()
        x = ((y.clip(-1, 1) + 1) * 127.5 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(out, x)
    np.testing.assert_array_equal(upscale(model, images[:1], labels[:1], (64, 48)), out[:1])  # batch-independent
    with pytest.raises(ValueError, match="16x12 does not double to 48x36"):
        upscale(model, images, labels, (48, 36))


def test_the_degradation_is_deterministic_per_image_and_quantised():
    rng = np.random.default_rng(3)
    lr = rng.uniform(-1, 1, (4, 3, 16, 24)).astype(np.float32)
    vae = tiny_vae()

    def gens(seed):
        return [np.random.default_rng([seed, k]) for k in range(4)]
    a = degrade(lr, gens(0), vae, 0.5, p_vae=0.5, noise=4.0)
    np.testing.assert_array_equal(a, degrade(lr, gens(0), vae, 0.5, p_vae=0.5, noise=4.0))
    halves = np.concatenate([degrade(lr[:2], gens(0)[:2], vae, 0.5, 0.5, 4.0),
                             degrade(lr[2:], gens(0)[2:], vae, 0.5, 0.5, 4.0)])
    np.testing.assert_allclose(a, halves, atol=1 / 127.5 + 1e-6)  # how a batch is cut: at most one 8-bit level
    assert not np.array_equal(a, degrade(lr, gens(1), vae, 0.5, p_vae=0.5, noise=4.0))
    clean = degrade(lr, gens(0), vae, 0.5, p_vae=0.0, noise=0.0)
    np.testing.assert_array_equal(clean, np.round((lr + 1) * 127.5).astype(np.uint8).astype(np.float32) / 127.5 - 1)
    through = degrade(lr, gens(0), vae, 0.5, p_vae=1.0, noise=0.0)
    assert np.abs(through - clean).mean() > 0.05  # the autoencoder's round trip changed them


def test_training_pairs_and_photos_too_small_for_the_stage(train_dir, tmp_path):
    pairs = SRPairs(train_dir, (64, 48), p_native=0.5)
    item = pairs.load(0, np.random.default_rng(0))
    assert item["hr"].shape == (3, 48, 64) and item["lr"].shape == (3, 24, 32) and item["label"].shape == (48, 64)
    again = pairs.load(0, np.random.default_rng(0))
    assert all(np.array_equal(item[k], again[k]) for k in item)
    with pytest.raises(DataError, match=r"s0.jpg: 512x384 is smaller than twice the super-resolution stage's"):
        SRPairs(train_dir, (512, 384))
    with pytest.raises(ValueError, match="multiples of 16"):
        SRPairs(train_dir, (72, 48))


def test_resume_gives_the_same_next_steps_as_an_uninterrupted_run(train_dir, tmp_path):
    pairs = SRPairs(train_dir, (64, 48))
    batches = [{k: np.stack([pairs.load(i % 3, np.random.default_rng([s, i]))[k] for i in range(2)])
                for k in ("hr", "lr", "label")} for s in range(5)]

    def new_run():
        jt.sync_all()
        jt.set_global_seed(0)
        run = train_sr.new_state(CFG, train_sr.sr_config(CFG), tiny_vae(), 0.5)
        jt.sync_all()
        return run
    straight = new_run()
    expected = [train_sr.train_step(straight, [b]) for b in batches]
    assert expected[-1]["d"] > 0 and expected[0]["g"] == 0.0  # the GAN started at step 2
    first = new_run()
    for b in batches[:3]:
        train_sr.train_step(first, [b])
    first.save(tmp_path / "ckpt.npz")
    resumed = new_run()
    jt.set_global_seed(99)
    resumed.load(tmp_path / "ckpt.npz")
    assert resumed.step == 3 and [train_sr.train_step(resumed, [b]) for b in batches[3:]] == expected[3:]
    for a, b in zip(straight.ema.twin.parameters(), resumed.ema.twin.parameters()):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def sr_checkpoint(path, config=TINY, scale=0.5, kind="sr"):
    weights = perturbed(SuperResolution(config), 4, sigma=0.1)
    return checkpoint.save(path, {"kind": kind, "step": 1, "config": config.to_dict(), "latent_scale": scale},
                           model=weights, ema=weights)


def test_the_pipeline_loads_the_stage_strictly_and_names_the_file(tmp_path):
    run = tiny_run(tmp_path / "run")  # generates at 64x48: three 2x passes to 512x384
    assert pipeline.load(run).sr is None and "no stage 3" in pipeline.load(run).describe()
    sr_checkpoint(run / "sr/ckpt.npz", SRConfig(ch=8, lr_blocks=1, hr_blocks=1, sft_hidden=8, num_classes=30))
    with pytest.raises(CheckpointError, match=r"sr/ckpt.npz: trained for 30 classes, the labels have 29"):
        pipeline.load(run)
    meta, groups = checkpoint.load(sr_checkpoint(run / "sr/ckpt.npz"))
    checkpoint.save(run / "sr/ckpt.npz", meta, model=groups["model"], ema={k: v for k, v in groups["ema"].items()
                                                                          if not k.startswith("tail.")})
    with pytest.raises(CheckpointError, match=r"sr/ckpt.npz \[ema\]: weights do not match the model"):
        pipeline.load(run)
    sr_checkpoint(run / "sr/ckpt.npz", scale=0.25)
    with pytest.raises(CheckpointError, match=r"sr/ckpt.npz: trained on latents scaled by 0.25"):
        pipeline.load(run)
    (run / "sr/ckpt.npz").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="sr/ckpt.npz: not a checkpoint"):
        pipeline.load(run)
    sr_checkpoint(run / "sr/ckpt.npz")
    assert "stage 3:" in pipeline.load(run).describe() and "3 pass(es)" in pipeline.load(run).describe()
    odd = tiny_run(tmp_path / "odd", size=(48, 32))
    sr_checkpoint(odd / "sr/ckpt.npz")
    with pytest.raises(CheckpointError, match="cannot take 48x32 to 512x384"):
        pipeline.load(odd)


def digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.jpg"))}


def test_test_py_with_the_stage_and_with_sr_0(tmp_path):
    demo = make_demo(tmp_path / "demo", n_train=2, n_test=3, seed=1)
    run = tiny_run(tmp_path / "run")

    def generate(out, *extra):
        assert entry.main(["--input_path", str(demo / "test"), "--img_path", str(demo / "train"), "--output_path",
                           str(out), "--run", str(run), "--steps", "2", "--zip", "0", *extra]) == 0
        return digests(out)
    without = generate(tmp_path / "without")
    sr_checkpoint(run / "sr/ckpt.npz")
    off = generate(tmp_path / "off", "--sr", "0")
    assert off == without  # --sr 0: the bytes of a run without the stage
    on = generate(tmp_path / "on", "--batch_size", "1")
    assert set(on) == set(without) and all(on[k] != without[k] for k in on)
    assert generate(tmp_path / "on3", "--batch_size", "3") == on  # byte-identical across batch sizes


def test_the_native_resolution_measure_cuts_full_resolution_crops_and_its_sanity_rows(tmp_path):
    from helpers import tiny_judge
    from jmodels.eval.results import native_crops, native_fd, native_sanity
    from jmodels.segmenter import load_judge
    image = np.arange(48 * 64 * 3, dtype=np.int64).reshape(48, 64, 3) % 251
    crops = native_crops([image.astype(np.uint8)], (16, 12))
    assert crops.shape == (16, 12, 16, 3)
    np.testing.assert_array_equal(crops[5], image[12:24, 16:32].astype(np.uint8))  # row by row
    judge = load_judge(tiny_judge(tmp_path / "judge.npz"))  # judges 64x48 crops
    rng = np.random.default_rng(5)
    photos = np.stack([np.repeat(np.repeat(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8), 8, 0), 8, 1)
                       + rng.integers(0, 30, (192, 256, 3), dtype=np.uint8) for _ in range(3)])
    assert native_fd(judge, photos, photos) == pytest.approx(0.0, abs=1e-6)
    rows = native_sanity(judge, photos, photos, tiny_sr(), [np.full((192, 256), 12)] * 3)
    assert list(rows) == ["real photos", "4x down, bicubic up", "2x down, bicubic up", "4x down, stage 3 up"]
    assert rows["real photos"] == pytest.approx(0.0, abs=1e-6)
    assert rows["4x down, bicubic up"] > rows["2x down, bicubic up"] > 1e-3  # texture lost grows with the factor


def test_sr_report_scores_both_rows_on_the_same_noise_and_writes_its_sheet(tmp_path):
    from PIL import Image

    from helpers import tiny_judge
    from tools.data import holdout_test
    from tools.eval import sr_report
    demo = make_demo(tmp_path / "demo", n_train=6, n_test=1, seed=4)
    data = demo / "train"
    stems = sorted(p.stem for p in (data / "imgs").iterdir())[:3]
    holdout_test.write(data, stems, tmp_path / "test", seed=0)
    run = tiny_run(tmp_path / "run", data=str(data), holdout=0.5, seed=0)
    sr_checkpoint(run / "sr/ckpt.npz")
    judge = tiny_judge(tmp_path / "judge.npz", data=data)
    other = tmp_path / "copy.npz"  # the same file elsewhere: its row must equal stage 3's
    other.write_bytes((run / "sr/ckpt.npz").read_bytes())
    argv = ["--run", str(run), "--data", str(data), "--test", str(tmp_path / "test"), "--judge", str(judge),
            "--judge2", str(judge), "--batch_size", "2", "--compare", str(other)]
    assert sr_report.main(argv) == 0
    text = (run / "sr_report.md").read_text()
    rows = {line.split(" | ")[0][2:]: line for line in text.splitlines() if line.startswith("| ")}
    assert {"stage 3", "--sr 0 (Lanczos)", "stage 3 minus --sr 0 (paired)", "real photos",
            "4x down, bicubic up", "2x down, bicubic up", "4x down, stage 3 up"} <= set(rows)

    def means(row):
        return [float(c.split(" ± ")[0]) for c in rows[row].split(" | ")[1:4]]
    diff = np.subtract(means("stage 3"), means("--sr 0 (Lanczos)"))
    np.testing.assert_allclose(means("stage 3 minus --sr 0 (paired)"), diff, atol=2e-4)  # 4-decimal rounding
    assert means("stage 3")[1] == means("stage 3")[2]  # the same judge twice: the same accuracies
    assert rows[f"stage 3: {other}"].split(" | ")[1:] == rows["stage 3"].split(" | ")[1:]
    with Image.open(run / "sr_crops.png") as im:
        assert im.size[1] > 3 * 96 and im.size[0] > 3 * 128
    with pytest.raises(SystemExit, match="sr/ckpt.npz not found: run.sh's sr stage makes it"):
        (run / "sr/ckpt.npz").unlink()
        sr_report.main(argv)


def test_the_perceptual_term_reads_user_weights_strictly_and_compares_vgg_features(tmp_path):
    from jittor.models.vgg import vgg19

    from helpers import write_safetensors
    from jmodels.checkpoint import state_arrays
    from jmodels.perceptual import CONV5_4, VGGFeatures, perceptual_loss
    net = vgg19().features
    arrays = {f"features.{k}": v for k, v in state_arrays(net).items()}
    write_safetensors(tmp_path / "vgg19.safetensors", {**arrays, "classifier.0.bias": np.zeros(4, np.float32)})
    vgg = VGGFeatures(tmp_path / "vgg19.safetensors")
    rng = np.random.default_rng(6)
    x, y = (jt.array(rng.uniform(-1, 1, (1, 3, 32, 48)).astype(np.float32)) for _ in range(2))
    h = (((x + 1) / 2) - jt.array([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)) / jt.array(
        [0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
    for i in range(CONV5_4):  # torchvision's features[:35], ImageNet-normalised input
        h = net[i](h)
    np.testing.assert_allclose(vgg(x).numpy(), h.numpy(), rtol=1e-4, atol=1e-5)
    assert vgg(x).shape == (1, 512, 2, 3)
    assert perceptual_loss(vgg, x, x).item() == 0.0 and perceptual_loss(vgg, x, y).item() > 0
    cfg = dict(CFG, vgg=str(tmp_path / "vgg19.safetensors"))
    run = train_sr.new_state(cfg, train_sr.sr_config(cfg), tiny_vae(), 0.5)
    batch = {"hr": rng.uniform(-1, 1, (2, 3, 48, 64)).astype(np.float32), "lr": rng.uniform(-1, 1, (2, 3, 24, 32))
             .astype(np.float32), "label": rng.integers(0, 29, (2, 48, 64))}
    assert train_sr.train_step(run, [batch])["perceptual"] > 0  # the term is in the generator's loss
    write_safetensors(tmp_path / "partial.safetensors", {k: v for k, v in arrays.items() if k != "features.34.bias"})
    with pytest.raises(CheckpointError, match=r"partial.safetensors \[vgg19 features\]"):
        VGGFeatures(tmp_path / "partial.safetensors")
    write_safetensors(tmp_path / "other.safetensors", {"encoder.conv_in.weight": np.zeros(3, np.float32)})
    with pytest.raises(CheckpointError, match="other.safetensors: no `features.\\*` weights"):
        VGGFeatures(tmp_path / "other.safetensors")
