"""The built-in demo data (layout, determinism) and the real contest files in ../shared/data."""
import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from jmodels import data as dataset
from jmodels.classes import CLASS_NAMES
from conftest import SHARED_DATA
from jmodels.demo_data import make_demo


def digest(folder):
    h = hashlib.sha1()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo(tmp_path_factory.mktemp("d") / "demo", n_train=6, n_test=3, seed=7)


def test_demo_has_the_contest_layout(demo):
    pairs = dataset.list_train_pairs(demo / "train")
    assert len(pairs) == 6
    for p in pairs:
        assert Image.open(p.label).mode == "I;16"
        img = Image.open(p.image)
        assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (512, 384))
    items = dataset.list_test_items(demo / "test", demo / "train")
    assert len(items) == 3
    assert {it.reference.parent for it in items} == {demo / "train/imgs"}
    mapping = json.loads((demo / "test/label_to_img.json").read_text())
    assert sorted(mapping) == sorted(f"{it.stem}.png" for it in items)
    assert sorted(p.name for p in (demo / "test").iterdir()) == ["label_to_img.json", "val_A_labels_resized"]


def test_demo_scenes_vary_in_layout_and_palette(demo):
    pairs = dataset.list_train_pairs(demo / "train")
    labels = [dataset.read_label(p.label) for p in pairs]
    classes = set(np.unique(np.concatenate([lab.ravel() for lab in labels])).tolist())
    assert {CLASS_NAMES.index(c) for c in ("sky", "grass")} <= classes and len(classes) >= 6
    for lab in labels:
        assert (lab[0] == CLASS_NAMES.index("sky")).mean() > 0.5  # sky on top
    sky_means = [dataset.read_image(p.image)[:40].reshape(-1, 3).mean(0) for p in pairs]
    assert np.ptp(np.array(sky_means), axis=0).max() > 40  # palettes differ between images


def test_demo_is_deterministic_and_refuses_to_overwrite(demo, tmp_path):
    again = make_demo(tmp_path / "again", n_train=6, n_test=3, seed=7)
    assert digest(again) == digest(demo)
    assert digest(make_demo(tmp_path / "other", n_train=6, n_test=3, seed=8)) != digest(demo)
    with pytest.raises(FileExistsError):
        make_demo(again, n_train=1, n_test=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "other"]  # no temp folders left


needs_shared = pytest.mark.skipif(not (SHARED_DATA / "contest").is_dir(), reason="../shared/data absent")


@needs_shared
def test_real_test_a_labels_are_16_bit_and_in_range():
    labels = dataset.find_test_labels(SHARED_DATA / "contest/test_A")
    assert len(labels) == 1000
    first = next(iter(labels.values()))
    assert Image.open(first).mode == "I;16"
    hist = dataset.class_histogram(list(labels.values())[:50])
    assert hist.sum() == 50 * 512 * 384 and hist[CLASS_NAMES.index("sky")] > 0


@needs_shared
def test_real_label_to_img_names_training_images_we_do_not_have():
    mapping, _ = dataset.read_label_to_img(SHARED_DATA / "contest/test_A")
    assert len(mapping) == 1000 and all(v.endswith(".jpg") for v in mapping.values())
    with pytest.raises(dataset.DataError, match=r"reference image\(s\) named in label_to_img\.json do not exist"):
        dataset.list_test_items(SHARED_DATA / "contest/test_A", SHARED_DATA / "gaugan_proxy")


@needs_shared
def test_real_stand_in_training_pairs_load():
    ds = dataset.PairDataset(SHARED_DATA / "gaugan_proxy", size=(128, 96))
    assert len(ds) == 700
    item = ds.load(0, np.random.default_rng(0))
    assert item["image"].shape == (3, 96, 128) and 0 <= item["label"].min() and item["label"].max() <= 28


@needs_shared
def test_real_2022_photos_are_resized_to_the_contest_size_with_a_warning():
    pair = dataset.list_train_pairs(SHARED_DATA / "real_photos_2022/train")[0]
    with pytest.warns(UserWarning, match=r"label is 1024x768, expected 512x384; resized"):
        lab = dataset.read_label(pair.label)
    big = np.asarray(Image.open(pair.label))
    np.testing.assert_array_equal(lab, big[1::2, 1::2])  # NEAREST at /2 takes pixel centres 2i+1
    with pytest.warns(UserWarning, match=r"image is 1024x768"):
        assert dataset.read_image(pair.image).shape == (384, 512, 3)
