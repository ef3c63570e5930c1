"""Reading, validating and batching the contest's files (Jittor AI Challenge 2023, track 1).

Training set: `<root>/imgs/<stem>.jpg` + `<root>/labels/<stem>.png` (labels 0..28, 8- or 16-bit).
Test set: label PNGs in `--input_path` (or one `val_*_labels_resized/` under it) and
`label_to_img.json` naming each label's reference image in the training set's `imgs/`.
Pure numpy + Pillow; importing this module has no side effects. The data check over it is the
top-level command `python dataset.py <train root> [--test <test dir>]`.
"""
import collections
import io
import json
import struct
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .classes import NUM_CLASSES
from .imageio import to_unit

CONTEST_SIZE = (512, 384)  # (W, H) of every contest image, label and output
MAX_PIXELS = 25_000_000  # width x height of any image read, checked from its header before decoding (a contest
# image is 196,608; Pillow's own guard only fires past ~179 M, as a DecompressionBombError traceback)
IMAGE_EXTS = (".jpg", ".jpeg", ".png")
SHOW = 5  # how many offending names an error lists


class DataError(ValueError):
    """A contest file or folder that cannot be used; the message names it and says why."""


def _few(names):
    names = sorted(str(n) for n in names)
    more = f" ... and {len(names) - SHOW} more" if len(names) > SHOW else ""
    return ", ".join(names[:SHOW]) + more


def image_header(source):
    """(format, (W, H)) of an image file (a path or its bytes) from its header alone, or None when no format
    reads it. What Image.open does, without its decompression-bomb check: a bomb is measured, not raised."""
    fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else open(source, "rb")
    with fp:
        prefix = fp.read(16)
        Image.init()
        for fmt in Image.ID:
            factory, accept = Image.OPEN[fmt]
            result = accept(prefix) if accept else True
            if not result or isinstance(result, str):  # a str: the format, in a variant Pillow cannot read
                continue
            fp.seek(0)
            try:
                im = factory(fp, "")
                return im.format, im.size
            except (SyntaxError, IndexError, TypeError, ValueError, struct.error, OSError):
                continue
    return None


def check_pixels(name, size):
    """Refuse an image over MAX_PIXELS, naming it, its size and the limit."""
    if size[0] * size[1] > MAX_PIXELS:
        raise DataError(f"{name} is {size[0]}x{size[1]} = {size[0] * size[1]:,} pixels; the limit is {MAX_PIXELS:,}")


def _open(path):
    try:
        header = image_header(path)
        if header is not None:
            check_pixels(path, header[1])  # before decoding: an image bomb is refused, not decoded
        img = Image.open(path)
        img.load()  # decode now so that a truncated file fails here, with its name
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: not a readable image ({e})") from None
    return img


def _check_size(path, what, got, size):
    """True (with a warning) when a file is not `size` (W, H) and must be resized; size None: as it is."""
    if size is not None and got != tuple(size):
        warnings.warn(f"{path}: {what} is {got[0]}x{got[1]}, expected {size[0]}x{size[1]}; resized")
        return True
    return False


def read_label(path, size=CONTEST_SIZE):
    """Label PNG -> (H, W) uint8 class ids. Accepts I;16, I, L, P and RGB(A) with equal channels."""
    img = _open(path)
    if img.mode in ("RGB", "RGBA", "LA"):
        arr = np.asarray(img)[..., : 3 if img.mode != "LA" else 1]
        if arr.shape[-1] == 3 and not (np.array_equal(arr[..., 0], arr[..., 1])
                                       and np.array_equal(arr[..., 0], arr[..., 2])):
            raise DataError(f"{path}: label is {img.mode} with differing channels; "
                            "expected one class id per pixel (grayscale)")
        arr = arr[..., 0]
    elif img.mode == "P":
        arr = np.asarray(img)  # palette indices are the class ids
    elif img.mode in ("L", "I", "I;16", "I;16B", "I;16L"):
        arr = np.asarray(img)
    else:
        raise DataError(f"{path}: label mode {img.mode} is not a class-id image")
    arr = arr.astype(np.int64)
    if arr.min() < 0 or arr.max() >= NUM_CLASSES:
        bad = np.unique(arr[(arr < 0) | (arr >= NUM_CLASSES)])
        raise DataError(f"{path}: label values {bad[:SHOW].tolist()} outside 0..{NUM_CLASSES - 1}")
    arr = arr.astype(np.uint8)
    if _check_size(path, "label", (arr.shape[1], arr.shape[0]), size):
        arr = np.asarray(Image.fromarray(arr).resize(tuple(size), Image.NEAREST))
    return arr


def read_image(path, size=CONTEST_SIZE):
    """Image -> (H, W, 3) uint8 RGB. Grayscale and CMYK are converted, alpha dropped."""
    img = _open(path)
    if img.mode != "RGB":
        img = img.convert("RGBA").convert("RGB") if img.mode in ("P", "LA") else img.convert("RGB")
    if _check_size(path, "image", img.size, size):
        img = img.resize(tuple(size), Image.LANCZOS)
    return np.asarray(img)


def _files(folder, exts):
    return {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in exts}


def _need_dir(path, what):
    if not path.is_dir():
        raise DataError(f"{path}: {what} folder not found")


@dataclass(frozen=True)
class Pair:
    stem: str
    image: Path
    label: Path


def list_train_pairs(root):
    """`<root>/imgs/*.jpg` matched with `<root>/labels/*.png` by stem; every file must have its twin."""
    root = Path(root)
    _need_dir(root / "imgs", "training images")
    _need_dir(root / "labels", "training labels")
    imgs, labels = _files(root / "imgs", IMAGE_EXTS), _files(root / "labels", (".png",))
    if not imgs and not labels:
        raise DataError(f"{root}: no images in imgs/ and no PNG labels in labels/")
    if imgs.keys() - labels.keys():
        lone = imgs.keys() - labels.keys()
        raise DataError(f"{root / 'labels'}: {len(lone)} image(s) have no label: {_few(lone)}")
    if labels.keys() - imgs.keys():
        lone = labels.keys() - imgs.keys()
        raise DataError(f"{root / 'imgs'}: {len(lone)} label(s) have no image: {_few(lone)}")
    return [Pair(s, imgs[s], labels[s]) for s in sorted(imgs)]


def find_test_labels(input_path):
    """Label PNGs directly in `input_path`, or in its single `val_*_labels_resized/` folder."""
    input_path = Path(input_path)
    _need_dir(input_path, "test input")
    labels = _files(input_path, (".png",))
    if not labels:
        subs = sorted(p for p in input_path.glob("val_*_labels_resized") if p.is_dir())
        if len(subs) > 1:
            raise DataError(f"{input_path}: several label folders, pass one: {_few(p.name for p in subs)}")
        if subs:
            labels = _files(subs[0], (".png",))
    if not labels:
        raise DataError(f"{input_path}: no label PNGs here nor in a val_*_labels_resized/ folder")
    return labels


def _reference_dir(img_path):
    img_path = Path(img_path)
    _need_dir(img_path, "reference image")
    return img_path / "imgs" if (img_path / "imgs").is_dir() else img_path


def read_label_to_img(input_path, label_dir=None):
    """The test set's {label file name: reference image file name} mapping."""
    input_path = Path(input_path)
    places = [input_path / "label_to_img.json"]
    if label_dir is not None and Path(label_dir) != input_path:
        places.append(Path(label_dir) / "label_to_img.json")
    path = next((p for p in places if p.is_file()), None)
    if path is None:
        raise DataError(f"{places[0]}: label_to_img.json not found (looked in {_few(p.parent for p in places)})")
    try:
        # utf-8-sig: editors such as Notepad save a byte-order mark, which json.loads refuses
        mapping = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(mapping, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                for k, v in mapping.items()):
        raise DataError(f"{path}: expected one object of label file name -> image file name")
    leaving = {k: v for k, v in mapping.items() if _leaves_folder(v)}
    if leaving:
        raise DataError(f"{path}: {len(leaving)} reference name(s) leave the reference folder (imgs/): "
                        + _few(f"{k!r}: {v!r}" for k, v in leaving.items()))
    return mapping, path


def _leaves_folder(name):
    """True for a reference name that is empty, absolute or climbs with '..'.

    Judged on the name alone: a symlink inside imgs/ is followed wherever it points, since the
    folder's owner put it there (a training folder linked to data kept elsewhere is a usual layout).
    """
    posix = name.replace("\\", "/")  # a name written on Windows separates with backslashes
    parts = Path(posix).parts
    return not parts or posix.startswith("/") or ".." in parts


@dataclass(frozen=True)
class TestItem:
    stem: str
    label: Path
    reference: Path


def list_test_items(input_path, img_path):
    """Every test label with its reference image; all names are checked before anything is read."""
    labels = find_test_labels(input_path)
    mapping, json_path = read_label_to_img(input_path, next(iter(labels.values())).parent)
    by_name = {p.name: p for p in labels.values()}
    unknown = mapping.keys() - by_name.keys()
    if unknown:
        raise DataError(f"{json_path}: {len(unknown)} entry(ies) name a label that is not in "
                        f"{next(iter(by_name.values())).parent}: {_few(unknown)}")
    unmapped = by_name.keys() - mapping.keys()
    if unmapped:
        raise DataError(f"{json_path}: {len(unmapped)} label(s) have no reference: {_few(unmapped)}")
    ref_dir = _reference_dir(img_path)
    missing = {mapping[n] for n in by_name if not (ref_dir / mapping[n]).is_file()}
    if missing:
        raise DataError(f"{ref_dir}: {len(missing)} reference image(s) named in {json_path.name} "
                        f"do not exist: {_few(missing)}")
    return [TestItem(Path(n).stem, by_name[n], ref_dir / mapping[n]) for n in sorted(by_name)]


def augment_pair(image, label, size, rng, max_zoom=1.25, flip=None):
    """Same random zoom-crop and horizontal flip for image (H,W,3) and label (H,W).

    Zoom picks a crop of 1/z of each side (z uniform in [1, max_zoom]); the crop is resized to
    `size` (W, H): image with bicubic, label with NEAREST only, so class ids are never blended.
    `flip`: True or False to decide, None to flip with probability 1/2.
    """
    h, w = label.shape
    z = rng.uniform(1.0, max_zoom)
    cw, ch = int(round(w / z)), int(round(h / z))
    x0, y0 = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
    box = (x0, y0, x0 + cw, y0 + ch)
    image = np.asarray(Image.fromarray(image).resize(tuple(size), Image.BICUBIC, box=box))
    label = np.asarray(Image.fromarray(label).resize(tuple(size), Image.NEAREST, box=box))
    if flip is None:
        flip = rng.random() < 0.5
    if flip:
        image, label = image[:, ::-1], label[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(label)


def resize_pair(image, label, size):
    """Deterministic resize to `size` (W, H): image bicubic, label NEAREST."""
    if (label.shape[1], label.shape[0]) == tuple(size):
        return image, label
    return (np.asarray(Image.fromarray(image).resize(tuple(size), Image.BICUBIC)),
            np.asarray(Image.fromarray(label).resize(tuple(size), Image.NEAREST)))


class PairDataset:
    """Training pairs as arrays: image (3, H, W) float32 in [-1, 1], label (H, W) int32.

    `size` is the training resolution (W, H); files are read at the contest size and resized.
    Augmentation draws from the rng it is given, so a loader controls all randomness.
    """

    def __init__(self, root, size=CONTEST_SIZE, augment=True, stems=None, max_zoom=1.25):
        pairs = list_train_pairs(root)
        if stems is not None:
            keep = set(stems)
            pairs = [p for p in pairs if p.stem in keep]
        self.pairs, self.size, self.augment, self.max_zoom = pairs, tuple(size), augment, max_zoom

    def __len__(self):
        return len(self.pairs)

    def load(self, i, rng=None, flip=False):
        """Item i; with augmentation the rng draws zoom and flip (`flip` is then ignored)."""
        pair = self.pairs[i]
        image, label = read_image(pair.image), read_label(pair.label)
        if self.augment:
            flip = bool(rng.random() < 0.5)
            image, label = augment_pair(image, label, self.size, rng, self.max_zoom, flip)
        else:
            image, label = resize_pair(image, label, self.size)
            if flip:
                image, label = image[:, ::-1], label[:, ::-1]
        return {"image": to_unit(image), "label": np.ascontiguousarray(label, np.int32),  # image (3, H, W) in [-1, 1]
                "index": np.int64(i), "flip": np.bool_(flip)}


def split_stems(root, holdout, seed=0):
    """Deterministic train / held-out split of a training folder's stems (held-out fraction `holdout`)."""
    stems = [p.stem for p in list_train_pairs(root)]
    order = np.random.default_rng(seed).permutation(len(stems))
    n_out = int(round(len(stems) * holdout))
    if holdout > 0 and n_out == 0:
        n_out = 1
    out = sorted(stems[i] for i in order[:n_out])
    return sorted(set(stems) - set(out)), out


class BatchLoader:
    """Batches of a dataset, shuffled per epoch from a seed, sharded by rank, read ahead by threads.

    The global batch of `batch_size` items is cut into `world_size` equal slices and rank r
    takes slice r, so N processes together see exactly the batches one process would. Item i of
    epoch e is augmented with the rng seeded by (seed, e, i): the data does not depend on the
    number of workers, processes or where a resumed run starts (`epoch(e, start=k)`).
    """

    def __init__(self, dataset, batch_size, seed=0, shuffle=True, rank=0, world_size=1,
                 workers=2, prefetch=2):
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} does not divide among {world_size} processes")
        if len(dataset) < batch_size:
            raise ValueError(f"{len(dataset)} items cannot fill one batch of {batch_size}")
        self.dataset, self.batch_size, self.seed, self.shuffle = dataset, batch_size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.workers, self.prefetch = max(1, workers), max(1, prefetch)

    def __len__(self):
        return len(self.dataset) // self.batch_size  # full batches only: every step is the same size

    def indices(self, epoch):
        """This rank's item indices of every batch of `epoch`, as a (len, batch_size/world_size) array."""
        n = len(self) * self.batch_size
        order = (np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))
                 if self.shuffle else np.arange(len(self.dataset)))
        per = self.batch_size // self.world_size
        return order[:n].reshape(len(self), self.world_size, per)[:, self.rank]

    def _load(self, epoch, i):
        return self.dataset.load(int(i), np.random.default_rng([self.seed, epoch, int(i)]))

    def epoch(self, epoch, start=0):
        """Yield the batches of `epoch` from batch `start` on, as dicts of stacked arrays."""
        batches = self.indices(epoch)[start:]
        with ThreadPoolExecutor(self.workers) as pool:
            pending = collections.deque()
            for idx in batches:
                pending.append([pool.submit(self._load, epoch, i) for i in idx])
                if len(pending) > self.prefetch:
                    yield collate([f.result() for f in pending.popleft()])
            while pending:
                yield collate([f.result() for f in pending.popleft()])

    def forever(self, start_step=0):
        """Endless batches; step k of the stream is the same whatever `start_step` a run resumes at."""
        epoch, start = divmod(start_step, len(self))
        while True:
            yield from self.epoch(epoch, start)
            epoch, start = epoch + 1, 0


def collate(items):
    return {k: np.stack([it[k] for it in items]) for k in items[0]}


def class_histogram(label_paths):
    """Pixel count of each class over the given label files, checking each one."""
    counts = np.zeros(NUM_CLASSES, np.int64)
    for p in label_paths:
        counts += np.bincount(read_label(p).ravel(), minlength=NUM_CLASSES)
    return counts

