"""A compact segmentation network: the offline stand-in for the organisers' SegFormer judge.
In the model package because test.py's best-of-N (`--candidates`) picks with it; tools/ trains it
(train_segmenter.py) and scores with it (evaluate.py, report.py).

An encoder-decoder with skips (4 levels of two 3x3 convs with GroupNorm and SiLU), 29-class logits
at the input resolution. Small enough to train on a CPU in minutes; its own held-out accuracy is
the ceiling of the mask-accuracy term it reports.
Ref: Ronneberger et al. 2015 (U-Net).
"""
from dataclasses import dataclass

import jittor as jt
import numpy as np
from jittor import nn

from . import checkpoint
from .checkpoint import SavedConfig
from .classes import NUM_CLASSES
from .imageio import to_unit
from .layers import GroupNorm, upsample_nearest


@dataclass(frozen=True)
class SegmenterConfig(SavedConfig):
    num_classes: int = NUM_CLASSES
    ch: int = 32
    ch_mult: tuple = (1, 2, 4, 8)
    norm_groups: int = 8

    @property
    def factor(self):
        return 2 ** (len(self.ch_mult) - 1)


class ConvBlock(nn.Module):
    def __init__(self, in_ch, out_ch, groups):
        super().__init__()
        self.conv1, self.norm1 = nn.Conv2d(in_ch, out_ch, 3, padding=1), GroupNorm(groups, out_ch)
        self.conv2, self.norm2 = nn.Conv2d(out_ch, out_ch, 3, padding=1), GroupNorm(groups, out_ch)

    def execute(self, x):
        return nn.silu(self.norm2(self.conv2(nn.silu(self.norm1(self.conv1(x))))))


class Segmenter(nn.Module):
    def __init__(self, config: SegmenterConfig = SegmenterConfig()):
        super().__init__()
        c = self.config = config
        widths = [c.ch * m for m in c.ch_mult]
        self.down = nn.ModuleList([ConvBlock(3 if i == 0 else widths[i - 1], w, c.norm_groups)
                                   for i, w in enumerate(widths)])
        self.up = nn.ModuleList([ConvBlock(widths[i + 1] + widths[i], widths[i], c.norm_groups)
                                 for i in reversed(range(len(widths) - 1))])
        self.head = nn.Conv2d(widths[0], c.num_classes, 1)

    def encode(self, x):
        """(B, 3, H, W) in [-1, 1] -> the down path's outputs, finest first; sides multiples of the factor."""
        f = self.config.factor
        assert x.shape[2] % f == 0 and x.shape[3] % f == 0, f"image sides {x.shape[2]}x{x.shape[3]} must be multiples of {f}"
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else nn.pool(x, 2, "maximum", stride=2))
            skips.append(x)
        return skips

    def features(self, x):
        """(B, 3, H, W) in [-1, 1] -> (B, C) the bottleneck averaged over space: the pooled features of a
        Fréchet distance (as FID pools Inception's last block)."""
        return self.encode(x)[-1].mean(dims=(2, 3))

    def execute(self, x):
        """(B, 3, H, W) in [-1, 1] -> (B, 29, H, W) logits; sides must be multiples of the factor."""
        skips = self.encode(x)
        x = skips.pop()
        for block in self.up:
            x = block(jt.concat([upsample_nearest(x), skips.pop()], dim=1))
        return self.head(x)


def _batched(fn, images_uint8, batch_size):
    out = []
    with jt.no_grad():
        for i in range(0, len(images_uint8), batch_size):
            out.append(fn(jt.array(to_unit(images_uint8[i:i + batch_size]))).numpy())
    return np.concatenate(out)


def predict(model, images_uint8, batch_size=16):
    """(N, H, W, 3) uint8 -> (N, H, W) predicted class ids."""
    return _batched(lambda x: model(x).argmax(1)[0], images_uint8, batch_size)


def pooled_features(model, images_uint8, batch_size=16):
    """(N, H, W, 3) uint8 -> (N, C) float64 pooled bottleneck features (Segmenter.features)."""
    return _batched(model.features, images_uint8, batch_size).astype(np.float64)


def load_judge(path):
    """A trained judge and its input size (W, H)."""
    meta, groups = checkpoint.load(path)
    if meta.get("kind") != "judge":
        raise checkpoint.CheckpointError(f"{path}: not a judge checkpoint (tools/eval/train_segmenter.py makes one)")
    model = checkpoint.load_into(Segmenter(SegmenterConfig.from_dict(meta["config"])), groups["model"], str(path))
    model.eval()
    return model, tuple(meta["size"]), meta
