"""FID: the Fréchet distance in closed form, and the Inception features with random weights."""
import numpy as np
import pytest

from tools.fid import frechet_distance, statistics


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
    from jmodels.inception import FIDInceptionV3
    from tools.fid import features
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
    from jmodels.inception import FIDInceptionV3
    from test_vae import write_safetensors
    from tools.fid import features, load_fid_inception
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
