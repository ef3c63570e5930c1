"""An optional perceptual loss for stage 3: the L1 distance between VGG19 features of output and target
(conv5_4 before its ReLU, as ESRGAN takes them), with weights the user supplies: torchvision's
`vgg19-dcbb9e9d.pth` (or a .safetensors of it), read without PyTorch and without running code from the
file. Nothing is downloaded; without a file there is no perceptual term and the recipe works as it is.
Refs: Johnson et al. 2016 (perceptual losses); Wang et al. 2018 (ESRGAN: features before activation).
"""
import jittor as jt
from jittor import nn
from jittor.models.vgg import vgg19

from .checkpoint import CheckpointError, load_into
from .public_vae import read_any

CONV5_4 = 35  # torchvision's vgg19.features[:35] ends with conv5_4, before its ReLU
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's, what the weights were trained on


class VGGFeatures(nn.Module):
    """Frozen VGG19 features up to conv5_4 of images in [-1, 1] (normalised as ImageNet inside)."""

    def __init__(self, path):
        super().__init__()
        arrays = read_any(path)
        features = {k[len("features."):]: v for k, v in arrays.items() if k.startswith("features.")}
        if not features:
            raise CheckpointError(f"{path}: no `features.*` weights: not a torchvision VGG19 file")
        net = vgg19().features
        load_into(net, features, f"{path} [vgg19 features]")
        self.layers = nn.ModuleList([net[i] for i in range(CONV5_4)])
        for p in self.parameters():
            p.stop_grad()
        self._mean = jt.array(MEAN).reshape(1, 3, 1, 1).stop_grad()
        self._std = jt.array(STD).reshape(1, 3, 1, 1).stop_grad()

    def execute(self, x):
        h = ((x + 1) / 2 - self._mean) / self._std
        for layer in self.layers:
            h = layer(h)
        return h


def perceptual_loss(vgg, out, target):
    """Mean L1 between the features of `out` and of `target` (the target's held fixed)."""
    return (vgg(out) - vgg(target).detach()).abs().mean()
