"""dataset.py: reading every label format, the bad inputs that must raise, aligned augmentation, batching."""
import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from jmodels import data as dataset
from jmodels.data import DataError
from conftest import bomb_png, save_label

LAB = np.arange(384 * 512).reshape(384, 512) % 29  # every class, known per pixel


@pytest.mark.parametrize("mode", ["I;16", "L", "P", "RGB", "I"])
def test_label_formats_read_the_same_ids(tmp_path, mode):
    path = tmp_path / "l.png"
    if mode == "I":
        Image.fromarray(LAB.astype(np.int32), "I").save(path)
    else:
        save_label(LAB, path, mode)
    got = dataset.read_label(path)
    assert got.dtype == np.uint8 and got.shape == (384, 512)
    np.testing.assert_array_equal(got, LAB)


def test_label_value_above_28_names_the_file_and_value(tmp_path):
    lab = np.zeros((384, 512), int)
    lab[5, 7] = 31
    save_label(lab, tmp_path / "bad.png")
    with pytest.raises(DataError, match=r"bad\.png: label values \[31\] outside 0\.\.28"):
        dataset.read_label(tmp_path / "bad.png")


def test_truncated_png_raises(tmp_path):
    save_label(LAB, tmp_path / "l.png")
    data = (tmp_path / "l.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.png: not a readable image"):
        dataset.read_label(tmp_path / "cut.png")


def test_non_image_png_raises(tmp_path):
    (tmp_path / "text.png").write_text("not a png")
    with pytest.raises(DataError, match=r"text\.png: not a readable image"):
        dataset.read_label(tmp_path / "text.png")


@pytest.mark.parametrize("size, read", [((30000, 30000), dataset.read_label), ((30000, 30000), dataset.read_image),
                                        ((5001, 5000), dataset.read_image)])
def test_image_bombs_are_refused_from_their_header_naming_the_file(tmp_path, size, read):
    """Over 25 Mpx: refused before decoding (Pillow's own guard raised DecompressionBombError, a traceback, only
    past ~179 Mpx; between the two the pixels were decoded)."""
    (tmp_path / "bomb.png").write_bytes(bomb_png(*size))
    pixels = f"{size[0]}x{size[1]} = {size[0] * size[1]:,} pixels; the limit is 25,000,000"
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'bomb.png'} is {pixels}")):
        read(tmp_path / "bomb.png")


def test_test_py_names_a_bomb_among_its_inputs_before_any_network_work(tmp_path, train_dir):
    from conftest import entry
    (tmp_path / "test").mkdir()
    (tmp_path / "test/bomb.png").write_bytes(bomb_png(30000, 30000))
    (tmp_path / "test/label_to_img.json").write_text(json.dumps({"bomb.png": "s0.jpg"}))
    with pytest.raises(SystemExit, match=re.escape("bomb.png is 30000x30000 = 900,000,000 pixels; the limit is")):
        entry.main(["--input_path", str(tmp_path / "test"), "--img_path", str(train_dir), "--output_path",
                    str(tmp_path / "out"), "--run", str(tmp_path / "no_run_needed")])


def test_rgb_label_with_differing_channels_raises(tmp_path):
    rgb = np.stack([LAB, LAB, LAB], -1).astype(np.uint8)
    rgb[0, 0, 1] += 1
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    with pytest.raises(DataError, match=r"rgb\.png: label is RGB with differing channels"):
        dataset.read_label(tmp_path / "rgb.png")


def test_wrong_size_label_warns_and_resizes_nearest(tmp_path):
    small = np.repeat(np.repeat(LAB[:192:2, :256:2], 4, 0), 4, 1)[:, :]  # 384x512 from 96x128 blocks
    lab = small[::2, ::2]  # 192x256: each 2x2 block is one class
    save_label(lab, tmp_path / "half.png")
    with pytest.warns(UserWarning, match=r"half\.png: label is 256x192, expected 512x384; resized"):
        got = dataset.read_label(tmp_path / "half.png")
    np.testing.assert_array_equal(got, np.repeat(np.repeat(lab, 2, 0), 2, 1))


def test_wrong_size_image_warns_and_converts_modes(tmp_path):
    Image.new("CMYK", (640, 480), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    with pytest.warns(UserWarning, match=r"cmyk\.jpg: image is 640x480, expected 512x384"):
        got = dataset.read_image(tmp_path / "cmyk.jpg")
    assert got.shape == (384, 512, 3) and got.dtype == np.uint8
    assert abs(int(got[..., 0].mean()) - 255) <= 2 and got[..., 1:].mean() < 3  # red
    Image.new("RGBA", (512, 384), (10, 20, 30, 0)).save(tmp_path / "a.png")
    assert dataset.read_image(tmp_path / "a.png")[0, 0].tolist() == [10, 20, 30]
    Image.new("L", (512, 384), 77).save(tmp_path / "g.png")
    assert dataset.read_image(tmp_path / "g.png")[0, 0].tolist() == [77, 77, 77]


def test_train_pairs_and_their_errors(train_dir):
    pairs = dataset.list_train_pairs(train_dir)
    assert [p.stem for p in pairs] == ["s0", "s1", "s2"]
    (train_dir / "labels" / "notes.txt").write_text("ignored")  # non-PNG files are ignored
    assert len(dataset.list_train_pairs(train_dir)) == 3
    (train_dir / "labels" / "s1.png").rename(train_dir / "s1.png")
    with pytest.raises(DataError, match=r"labels: 1 image\(s\) have no label: s1"):
        dataset.list_train_pairs(train_dir)
    (train_dir / "s1.png").rename(train_dir / "labels" / "s1.png")
    (train_dir / "imgs" / "s2.jpg").unlink()
    with pytest.raises(DataError, match=r"imgs: 1 label\(s\) have no image: s2"):
        dataset.list_train_pairs(train_dir)


def test_empty_and_missing_folders_raise(tmp_path):
    with pytest.raises(DataError, match="imgs: training images folder not found"):
        dataset.list_train_pairs(tmp_path)
    (tmp_path / "imgs").mkdir()
    (tmp_path / "labels").mkdir()
    with pytest.raises(DataError, match="no images in imgs/ and no PNG labels"):
        dataset.list_train_pairs(tmp_path)
    with pytest.raises(DataError, match="no label PNGs here nor in a val_"):
        dataset.find_test_labels(tmp_path)


def make_test_dir(root, train_dir, nested=True):
    labels = root / "val_A_labels_resized" if nested else root
    labels.mkdir(parents=True, exist_ok=True)
    for i in range(4):
        save_label(LAB, labels / f"t{i}.png")
    (labels / "readme.txt").write_text("ignored")
    mapping = {f"t{i}.png": f"s{i % 3}.jpg" for i in range(4)}
    (root / "label_to_img.json").write_text(json.dumps(mapping))
    return mapping


@pytest.mark.parametrize("nested", [True, False])
def test_test_items_resolve_labels_and_references(tmp_path, train_dir, nested):
    make_test_dir(tmp_path / "test", train_dir, nested)
    items = dataset.list_test_items(tmp_path / "test", train_dir)
    assert [(it.stem, it.reference.name) for it in items] == [("t0", "s0.jpg"), ("t1", "s1.jpg"),
                                                              ("t2", "s2.jpg"), ("t3", "s0.jpg")]
    # references may also stand directly in --img_path
    assert dataset.list_test_items(tmp_path / "test", train_dir / "imgs")[1].reference == train_dir / "imgs/s1.jpg"


def test_label_to_img_errors(tmp_path, train_dir):
    test = tmp_path / "test"
    mapping = make_test_dir(test, train_dir)
    (test / "label_to_img.json").unlink()
    with pytest.raises(DataError, match=r"label_to_img\.json: label_to_img\.json not found"):
        dataset.list_test_items(test, train_dir)
    (test / "label_to_img.json").write_text("{not json")
    with pytest.raises(DataError, match=r"label_to_img\.json: not valid JSON"):
        dataset.list_test_items(test, train_dir)
    (test / "label_to_img.json").write_text(json.dumps(dict(mapping, **{"zz.png": "s0.jpg"})))
    with pytest.raises(DataError, match=r"1 entry\(ies\) name a label that is not in .*: zz\.png"):
        dataset.list_test_items(test, train_dir)
    del mapping["t3.png"]
    (test / "label_to_img.json").write_text(json.dumps(mapping))
    with pytest.raises(DataError, match=r"1 label\(s\) have no reference: t3\.png"):
        dataset.list_test_items(test, train_dir)
    missing = {f"t{i}.png": f"gone{i}.jpg" for i in range(4)}
    (test / "label_to_img.json").write_text(json.dumps(missing))
    with pytest.raises(DataError, match=r"4 reference image\(s\) named in label_to_img\.json do not exist: "
                                        r"gone0\.jpg, gone1\.jpg, gone2\.jpg, gone3\.jpg"):
        dataset.list_test_items(test, train_dir)


def test_label_to_img_with_a_byte_order_mark_reads(tmp_path, train_dir):
    mapping = make_test_dir(tmp_path / "test", train_dir)
    (tmp_path / "test/label_to_img.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(mapping).encode())
    assert dataset.read_label_to_img(tmp_path / "test")[0] == mapping
    assert [it.reference.name for it in dataset.list_test_items(tmp_path / "test", train_dir)] == \
        ["s0.jpg", "s1.jpg", "s2.jpg", "s0.jpg"]


@pytest.mark.parametrize("name", ["../s0.jpg", "imgs/../../s0.jpg", "..\\s0.jpg", "/etc/hostname", "", "."])
def test_reference_names_that_leave_imgs_are_refused_naming_the_entry(tmp_path, train_dir, name):
    mapping = make_test_dir(tmp_path / "test", train_dir)
    shutil.copy(train_dir / "imgs/s0.jpg", tmp_path / "s0.jpg")  # the climb would find a file
    mapping["t2.png"] = name
    (tmp_path / "test/label_to_img.json").write_text(json.dumps(mapping))
    entry = re.escape(f"'t2.png': {name!r}")
    with pytest.raises(DataError, match=r"label_to_img\.json: 1 reference name\(s\) leave the reference "
                                        r"folder \(imgs/\): " + entry + "$"):
        dataset.list_test_items(tmp_path / "test", train_dir)


def test_reference_names_inside_imgs_and_symlinks_there_are_followed(tmp_path, train_dir):
    """A subfolder of imgs/ is inside it; a symlink in imgs/ is the folder owner's choice, followed."""
    mapping = make_test_dir(tmp_path / "test", train_dir)
    (train_dir / "imgs/sub").mkdir()
    shutil.copy(train_dir / "imgs/s1.jpg", train_dir / "imgs/sub/x.jpg")
    (tmp_path / "elsewhere.jpg").symlink_to(train_dir / "imgs/s2.jpg")
    (train_dir / "imgs/linked.jpg").symlink_to(tmp_path / "elsewhere.jpg")
    mapping.update({"t1.png": "sub/x.jpg", "t2.png": "./linked.jpg"})
    (tmp_path / "test/label_to_img.json").write_text(json.dumps(mapping))
    items = dataset.list_test_items(tmp_path / "test", train_dir)
    assert items[1].reference == train_dir / "imgs/sub/x.jpg"
    assert items[2].reference == train_dir / "imgs/linked.jpg"
    np.testing.assert_array_equal(dataset.read_image(items[2].reference),
                                  dataset.read_image(train_dir / "imgs/s2.jpg"))


def test_two_label_folders_is_ambiguous(tmp_path):
    for name in ("val_A_labels_resized", "val_B_labels_resized"):
        (tmp_path / name).mkdir()
        save_label(LAB, tmp_path / name / "x.png")
    with pytest.raises(DataError, match="several label folders"):
        dataset.find_test_labels(tmp_path)


def test_augmentation_keeps_image_and_label_aligned():
    """Colour each class with its own flat colour: after zoom, crop and flip, every pixel away
    from class borders must still show its label's colour, and labels only hold original ids."""
    palette = np.random.default_rng(1).integers(0, 256, (29, 3)).astype(np.uint8)
    lab = np.repeat(np.repeat(np.arange(6 * 8).reshape(6, 8) % 29, 64, 0), 64, 1).astype(np.uint8)
    img = palette[lab]
    for seed in range(8):
        rng = np.random.default_rng(seed)
        im2, lab2 = dataset.augment_pair(img, lab, (128, 96), rng)
        assert im2.shape == (96, 128, 3) and lab2.shape == (96, 128)
        assert set(np.unique(lab2)) <= set(np.unique(lab))
        inner = np.ones_like(lab2, bool)  # pixels 2 away from any border (the bicubic kernel's reach)
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                inner &= np.roll(lab2, (dy, dx), (0, 1)) == lab2
        inner[[0, 1, -2, -1]] = inner[:, [0, 1, -2, -1]] = False
        assert inner.mean() > 0.3
        err = np.abs(im2[inner].astype(int) - palette[lab2[inner]].astype(int)).max()
        assert err <= 2, f"seed {seed}: image and label misaligned (max colour error {err})"


def test_augmentation_flips_both_or_neither():
    lab = LAB.astype(np.uint8)
    img = np.stack([lab * 8, lab, 255 - lab * 8], -1).astype(np.uint8)
    seen = set()
    for seed in range(8):
        im2, lab2 = dataset.augment_pair(img, lab, (512, 384), np.random.default_rng(seed), max_zoom=1.0)
        flipped = np.array_equal(lab2, lab[:, ::-1])
        assert flipped or np.array_equal(lab2, lab)
        np.testing.assert_array_equal(im2, img[:, ::-1] if flipped else img)
        seen.add(flipped)
    assert seen == {True, False}


def test_pair_dataset_ranges_and_determinism(train_dir):
    ds = dataset.PairDataset(train_dir, size=(128, 96))
    a = ds.load(1, np.random.default_rng(5))
    b = ds.load(1, np.random.default_rng(5))
    assert a["image"].shape == (3, 96, 128) and a["image"].dtype == np.float32
    assert a["label"].shape == (96, 128) and a["label"].dtype == np.int32
    assert -1.0 <= a["image"].min() and a["image"].max() <= 1.0
    np.testing.assert_array_equal(a["image"], b["image"])
    plain = dataset.PairDataset(train_dir, size=(128, 96), augment=False).load(0)
    ref = dataset.read_label(train_dir / "labels/s0.png")[2::4, 2::4]  # NEAREST at /4: pixel centres 4i+2
    np.testing.assert_array_equal(plain["label"], ref)


class Items:
    """A dataset whose item i is its index and the first draw of its rng."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def load(self, i, rng):
        return {"index": np.int64(i), "draw": np.float64(rng.random())}


def test_loader_shards_by_rank_and_resumes_exactly():
    one = dataset.BatchLoader(Items(23), batch_size=4, seed=3)
    assert len(one) == 5
    full = [b["index"].tolist() for b in one.epoch(2)]
    assert sorted(sum(full, [])) == sorted(set(sum(full, [])))  # no repeats within an epoch
    ranks = [dataset.BatchLoader(Items(23), 4, seed=3, rank=r, world_size=2, workers=1) for r in (0, 1)]
    halves = [[b["index"].tolist() for b in loader.epoch(2)] for loader in ranks]
    assert [h0 + h1 for h0, h1 in zip(*halves)] == full
    stream = one.forever()
    first = [next(stream)["draw"].tolist() for _ in range(12)]
    resumed = one.forever(start_step=7)
    assert [next(resumed)["draw"].tolist() for _ in range(5)] == first[7:]
    assert full != [b["index"].tolist() for b in one.epoch(3)]  # each epoch reshuffles


def test_loader_rejects_bad_batch_sizes():
    with pytest.raises(ValueError, match="does not divide among 3 processes"):
        dataset.BatchLoader(Items(10), 4, world_size=3)
    with pytest.raises(ValueError, match="cannot fill one batch"):
        dataset.BatchLoader(Items(3), 4)


def test_split_is_deterministic_and_disjoint(train_dir):
    for i in range(3, 10):
        shutil.copy(train_dir / "imgs/s0.jpg", train_dir / f"imgs/s{i}.jpg")
        shutil.copy(train_dir / "labels/s0.png", train_dir / f"labels/s{i}.png")
    train, held = dataset.split_stems(train_dir, 0.2)
    assert len(held) == 2 and len(train) == 8 and not set(train) & set(held)
    assert dataset.split_stems(train_dir, 0.2) == (train, held)
