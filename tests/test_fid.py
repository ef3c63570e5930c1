"""FID: the Fréchet distance in closed form, the Inception features with random weights, and both against
pytorch-fid 0.3.0 on the same random weights (tests/fixtures/fid_pytorch.npz, tests/fixtures/make_fid_fixture.py)."""
from pathlib import Path

import numpy as np
import pytest

from jmodels.eval.fid import frechet_distance, statistics


def test_frechet_distance_of_known_gaussians():
    mu1, mu2 = np.array([0.0, 1.0]), np.array([3.0, -1.0])
    s1, s2 = np.diag([1.0, 4.0]), np.diag([9.0, 1.0])
    # diagonal covariances: |mu1 - mu2|^2 + sum (s1 + s2 - 2 sqrt(s1 s2))
    expected = 13.0 + (1 + 9 - 2 * 3) + (4 + 1 - 2 * 2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, abs=1e-9)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(expected, abs=1e-9)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)


def test_inception_features_give_zero_against_themselves_and_symmetric_distances():
    from jmodels.runtime import init_jittor
    init_jittor(seed=0)
    from jmodels.eval.inception import FIDInceptionV3
    from jmodels.eval.fid import features
    model = FIDInceptionV3()
    model.eval()
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (4, 48, 64, 3), dtype=np.uint8)
    b = (a // 2).astype(np.uint8)
    fa, fb = features(model, a, batch_size=2), features(model, b, batch_size=4)
    assert fa.shape == (4, 2048)
    np.testing.assert_allclose(features(model, a[:1]), fa[:1], rtol=1e-5, atol=1e-5)  # batch-independent
    ma, sa = statistics(fa)
    mb, sb = statistics(fb)
    assert abs(frechet_distance(ma, sa, ma, sa)) < 1e-3
    d = frechet_distance(ma, sa, mb, sb)
    assert d > 0 and d == pytest.approx(frechet_distance(mb, sb, ma, sa), rel=1e-6)


def test_weights_file_loads_strictly_without_the_classifier(tmp_path):
    from jmodels.runtime import init_jittor
    init_jittor(seed=0)
    from jmodels.eval.inception import FIDInceptionV3
    from helpers import write_safetensors
    from jmodels.eval.fid import features, load_fid_inception
    model = FIDInceptionV3()
    model.eval()
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    state["fc.weight"] = np.zeros((1008, 2048), np.float32)  # the public file carries its classifier
    write_safetensors(tmp_path / "fid.safetensors", state)
    loaded = load_fid_inception(tmp_path / "fid.safetensors")
    img = np.random.default_rng(1).integers(0, 256, (1, 40, 40, 3), dtype=np.uint8)
    np.testing.assert_allclose(features(loaded, img), features(model, img), rtol=1e-6, atol=1e-6)
    del state["Mixed_7c.branch_pool.bn.running_var"]
    write_safetensors(tmp_path / "bad.safetensors", state)
    from jmodels.checkpoint import CheckpointError
    with pytest.raises(CheckpointError, match=r"missing \(1\): Mixed_7c.branch_pool.bn.running_var"):
        load_fid_inception(tmp_path / "bad.safetensors")


FIXTURE = Path(__file__).parent / "fixtures" / "fid_pytorch.npz"


def test_features_and_fid_equal_pytorch_fids_on_the_same_weights():
    """pytorch-fid's InceptionV3 (its own FIDInceptionA..E code, weights regenerated from the fixture's seed
    by numpy) read 4 images at 512x384 and 4 at 96x72 from PNG files: our features equal its 2048-d
    features to 1e-4 and our FID of the two sets equals its calculate_frechet_distance to 1e-3."""
    from jmodels.runtime import init_jittor
    init_jittor(seed=0)
    from jmodels.eval.fid import features, fid_inception_from_state, frechet_distance, statistics
    from jmodels.eval.inception import FIDInceptionV3
    from fixtures.make_fid_fixture import random_fid_state, read_png, weights_digest
    ref = np.load(FIXTURE)
    state = random_fid_state({k: tuple(v.shape) for k, v in FIDInceptionV3().state_dict().items()}, int(ref["seed"]))
    assert weights_digest(state) == str(ref["digest"]), "numpy drew other weights from the seed than the fixture's"
    model = fid_inception_from_state(state, "random FID Inception")
    ours, theirs = {}, {}
    for k in "ab":
        images = [read_png(ref[name]) for name in sorted(n for n in ref.files if n.startswith(f"png_{k}"))]
        ours[k], theirs[k] = features(model, images, batch_size=len(images)), ref[f"features_{k}"].astype(np.float64)
        assert ours[k].shape == (4, 2048) and np.abs(theirs[k]).max() > 1.0  # features of order one
        np.testing.assert_allclose(ours[k], theirs[k], rtol=0, atol=1e-4)
    fid = float(ref["fid"])
    assert frechet_distance(*statistics(ours["a"]), *statistics(ours["b"])) == pytest.approx(fid, abs=1e-3)
    # their features through our Fréchet distance: the same formula, so the same number to sqrtm's rounding.
    # sqrtm of this rank-3 product of 2048x2048 covariances rounds differently with the BLAS's kernels and
    # thread count: 11.4870584 on 2 threads, 11.4870586 on 1, 11.4870600 where the fixture was made (1.4e-7
    # relative); an absolute 1e-6 passed on one machine and failed on another. The formula's mistakes move it by
    # far more (a dropped eps offset, a missing factor 2: whole units).
    assert frechet_distance(*statistics(theirs["a"]), *statistics(theirs["b"])) == pytest.approx(fid, rel=1e-6)
