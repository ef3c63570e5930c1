"""Stage 3: a 2x super-resolution network that the label map steers, applied successively (128x96 -> 256x192
-> 512x384) so that every output has texture at the contest's size.

`execute(x, label)`: x (B, 3, h, w) an image in [-1, 1]; label (B, C, 2h, 2w) one-hot at the output size
(all zeros: no label). Its features at both resolutions are modulated by the label through a spatial
feature transform (a per-pixel scale and shift predicted from condition features of the label map, computed
once per resolution; no normalisation: the image's own statistics carry its colours), so the label tells
the upsampler which texture belongs where.
The output is a bilinear 2x of x plus a learned residual whose last conv starts at zero: an untrained
network is the bilinear upsampling. Fully convolutional: trained on crops, applied to whole images.
Refs: Wang et al. 2018 (SFT-GAN, "Recovering realistic texture in image super-resolution by deep spatial
feature transform"); Park et al. 2019 (SPADE); Wang et al. 2018 (ESRGAN: no normalisation in SR bodies).
"""
from dataclasses import dataclass

import jittor as jt
import numpy as np
from jittor import nn
from PIL import Image

from .checkpoint import SavedConfig
from .classes import NUM_CLASSES
from .imageio import to_uint8, to_unit
from .layers import upsample_nearest
from .unet import zero_module


@dataclass(frozen=True)
class SRConfig(SavedConfig):
    ch: int = 64               # feature width
    lr_blocks: int = 4         # SFT res-blocks at the input resolution (most of the work, at 1/4 the pixels)
    hr_blocks: int = 1         # SFT res-blocks after the upsampling (texture at the output resolution)
    sft_hidden: int = 32       # width of the label's condition features
    num_classes: int = NUM_CLASSES


class Condition(nn.Module):
    """SFT-GAN's condition network: features of the one-hot label map, computed once per resolution and
    shared by every SFT layer there (two 3x3 convs)."""

    def __init__(self, c: SRConfig):
        super().__init__()
        self.conv1 = nn.Conv2d(c.num_classes, c.sft_hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(c.sft_hidden, c.sft_hidden, 3, padding=1)

    def execute(self, label):
        return nn.leaky_relu(self.conv2(nn.leaky_relu(self.conv1(label), 0.1)), 0.1)


class SFT(nn.Module):
    """Spatial feature transform: x * (1 + gamma) + beta, gamma and beta 1x1 convs of the condition features;
    zero-initialised, so it starts as the identity."""

    def __init__(self, channels, c: SRConfig):
        super().__init__()
        self.gamma = zero_module(nn.Conv2d(c.sft_hidden, channels, 1))
        self.beta = zero_module(nn.Conv2d(c.sft_hidden, channels, 1))

    def execute(self, x, cond):
        return x * (1 + self.gamma(cond)) + self.beta(cond)


class SFTBlock(nn.Module):
    """SFT-LeakyReLU-Conv twice, residual (SFT-GAN's residual block)."""

    def __init__(self, c: SRConfig):
        super().__init__()
        self.sft1, self.conv1 = SFT(c.ch, c), nn.Conv2d(c.ch, c.ch, 3, padding=1)
        self.sft2, self.conv2 = SFT(c.ch, c), nn.Conv2d(c.ch, c.ch, 3, padding=1)

    def execute(self, x, cond):
        h = self.conv1(nn.leaky_relu(self.sft1(x, cond), 0.1))
        return x + self.conv2(nn.leaky_relu(self.sft2(h, cond), 0.1))


class SuperResolution(nn.Module):
    def __init__(self, c: SRConfig = SRConfig()):
        super().__init__()
        self.config = c
        self.head = nn.Conv2d(3, c.ch, 3, padding=1)
        self.cond_lr, self.cond_hr = Condition(c), Condition(c)
        self.lr_blocks = nn.ModuleList([SFTBlock(c) for _ in range(c.lr_blocks)])
        self.up = nn.Conv2d(c.ch, c.ch, 3, padding=1)
        self.hr_blocks = nn.ModuleList([SFTBlock(c) for _ in range(c.hr_blocks)])
        self.tail = zero_module(nn.Conv2d(c.ch, 3, 3, padding=1))

    def execute(self, x, label):
        b, _, h, w = x.shape
        assert label.shape == (b, self.config.num_classes, 2 * h, 2 * w), \
            f"label must be one-hot (B, {self.config.num_classes}, 2H, 2W) for x {tuple(x.shape)}, got {tuple(label.shape)}"
        cond = self.cond_lr(label[:, :, ::2, ::2])  # the label nearest-resized, as SPADE resizes label maps
        f = self.head(x)
        for block in self.lr_blocks:
            f = block(f, cond)
        f = nn.leaky_relu(self.up(upsample_nearest(f)), 0.1)
        cond = self.cond_hr(label)
        for block in self.hr_blocks:
            f = block(f, cond)
        return nn.interpolate(x, size=(2 * h, 2 * w), mode="bilinear", align_corners=False) + self.tail(f)


def one_hot(labels, num_classes=NUM_CLASSES):
    """(B, H, W) class ids -> (B, C, H, W) float32 one-hot, as numpy."""
    return np.eye(num_classes, dtype=np.float32)[np.asarray(labels, np.int64)].transpose(0, 3, 1, 2)


def upscale(model, images, labels, out_size, chunk=2):
    """(B, h, w, 3) uint8 images -> (B, H, W, 3) uint8 at `out_size` (W, H) by successive 2x passes of
    `model`, each steered by the label maps (B, H', W') resized (nearest) to that pass's output size. Every
    pass doubles both sides; `out_size` must be the input size times a power of two."""
    images = np.asarray(images)
    (h, w), (W, H) = images.shape[1:3], out_size
    passes = int(round(np.log2(W / w)))
    if passes < 0 or (w << passes, h << passes) != (W, H):
        raise ValueError(f"{w}x{h} does not double to {W}x{H}: the stage upscales by powers of two")
    x = images
    for _ in range(passes):
        size = (2 * x.shape[2], 2 * x.shape[1])
        lab = one_hot([np.asarray(Image.fromarray(np.asarray(lb, np.uint8)).resize(size, Image.NEAREST))
                       for lb in labels])
        x = np.concatenate([_run(model, x[i:i + chunk], lab[i:i + chunk]) for i in range(0, len(x), chunk)])
    return x


def _run(model, images_uint8, label):
    with jt.no_grad():
        return to_uint8(model(jt.array(to_unit(images_uint8)), jt.array(label)).numpy())


# ---- training pairs that look like test-time inputs ---------------------------------------------------

class SRPairs:
    """Training pairs for the stage: (hr (3, H, W) in [-1, 1], lr (3, H/2, W/2) in [-1, 1], label (H, W)), crops
    of the training size `size` (W, H). A crop is cut from the photo at its own resolution with probability
    `p_native` (texture as the last pass, 256x192 -> 512x384, must make it), else from the photo halved (as
    the first pass, 128x96 -> 256x192, sees a scene); then a random horizontal flip. lr is hr downscaled 2x
    (bicubic), clean: `degrade` adds what stages 1 and 2 do to a generated image. Photos smaller than twice
    `size` stop here, the first one named."""

    def __init__(self, root, size, stems=None, p_native=0.5):
        from .data import DataError, list_train_pairs
        pairs = [p for p in list_train_pairs(root) if stems is None or p.stem in set(stems)]
        if size[0] % 16 or size[1] % 16:
            raise ValueError(f"size {size[0]}x{size[1]}: sides must be multiples of 16 (the half size feeds the VAE)")
        for p in pairs:
            with Image.open(p.image) as im:
                if im.size[0] < 2 * size[0] or im.size[1] < 2 * size[1]:
                    raise DataError(f"{p.image}: {im.size[0]}x{im.size[1]} is smaller than twice the super-resolution "
                                    f"stage's training size {size[0]}x{size[1]} (crops are cut from it halved too)")
        self.pairs, self.size, self.p_native = pairs, tuple(size), p_native

    def __len__(self):
        return len(self.pairs)

    def load(self, i, rng=None):
        from .data import read_image, read_label
        pair, (w, h) = self.pairs[i], self.size
        rng = rng or np.random.default_rng(i)
        image, label = _fit_label(read_image(pair.image, size=None), read_label(pair.label, size=None))
        if rng.random() >= self.p_native:  # the photo halved: a scene as the first pass sees one
            half = (image.shape[1] // 2, image.shape[0] // 2)
            image = np.asarray(Image.fromarray(image).resize(half, Image.BICUBIC))
            label = np.asarray(Image.fromarray(label).resize(half, Image.NEAREST))
        y0, x0 = rng.integers(0, image.shape[0] - h + 1), rng.integers(0, image.shape[1] - w + 1)
        image, label = image[y0:y0 + h, x0:x0 + w], label[y0:y0 + h, x0:x0 + w]
        if rng.random() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        image, label = np.ascontiguousarray(image), np.ascontiguousarray(label)
        lr = np.asarray(Image.fromarray(image).resize((w // 2, h // 2), Image.BICUBIC))
        return {"hr": to_unit(image), "lr": to_unit(lr), "label": label.astype(np.int32), "index": np.int64(i)}


def _fit_label(image, label):
    """The label map at its photo's size (a contest label is the photo's size; other releases resize)."""
    if label.shape != image.shape[:2]:
        label = np.asarray(Image.fromarray(label).resize((image.shape[1], image.shape[0]), Image.NEAREST))
    return image, label


def degrade(lr, rngs, vae=None, scale=1.0, p_vae=1.0, noise=0.0):
    """Training inputs degraded as a generated image is (B, 3, h, w) in [-1, 1] -> the same, quantised to 8 bits
    as every test-time input is. Image k, drawing from rngs[k] (one generator per image, so the draws do not
    depend on how a batch is cut among processes), goes with probability `p_vae` through the autoencoder's
    round trip (posterior mean, decoded: its blur and artefacts, as a stage-2 sample is decoded), then gets
    Gaussian noise of a standard deviation uniform in [0, noise] (in 8-bit levels)."""
    from .generate import decode, encode_mean
    out = np.array(lr, np.float32)
    through = np.array([r.random() < p_vae for r in rngs], bool)
    sigma = [r.uniform(0.0, noise) / 127.5 for r in rngs]
    if vae is not None and through.any():
        out[through] = decode(vae, encode_mean(vae, out[through], scale), scale)
    out = out + np.stack([s * r.standard_normal(out.shape[1:]) for s, r in zip(sigma, rngs)]).astype(np.float32)
    return to_unit(to_uint8(out))
