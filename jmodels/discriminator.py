"""The patch discriminator of stages 1 and 3 and its losses: hinge loss and latent-diffusion's adaptive weight.

Stage 3 (super-resolution) uses it too, with feature matching. Refs: Isola et al. 2017 (PatchGAN,
`NLayerDiscriminator`); Wang et al. 2018 (pix2pixHD, feature matching); Esser et al. 2021 (taming transformers,
adaptive weight, eq. 7); Rombach et al. 2022 (`LPIPSWithDiscriminator`).
"""
import jittor as jt
from jittor import init, nn

from .parallel import mean_over_ranks


class NLayerDiscriminator(nn.Module):
    """Conv(4x4, stride 2) stack ending in one logit per overlapping patch: (B, 3, H, W) -> (B, 1, h, w)."""

    def __init__(self, in_channels=3, ndf=64, n_layers=3):
        super().__init__()
        layers = [nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=False),
                       nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        for m in self.main:
            if isinstance(m, nn.Conv2d):
                init.gauss_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                init.gauss_(m.weight, 1.0, 0.02)
                init.constant_(m.bias, 0.0)

    def execute(self, x):
        return self.main(x)

    def features(self, x):
        """The activations after each LeakyReLU, then the logits: the targets of feature matching (Wang et al.
        2018, pix2pixHD, eq. 4)."""
        feats = []
        for m in self.main:
            x = m(x)
            if isinstance(m, nn.LeakyReLU):
                feats.append(x)
        return feats + [x]


def feature_matching(fake, real):
    """Mean L1 between the discriminator's features of fakes and of the real images (held fixed)."""
    return sum((f - r.detach()).abs().mean() for f, r in zip(fake[:-1], real[:-1])) / (len(fake) - 1)


def hinge_d_loss(logits_real, logits_fake):
    return 0.5 * (nn.relu(1.0 - logits_real).mean() + nn.relu(1.0 + logits_fake).mean())


# Values per image of the 256x256 crops latent-diffusion's autoencoders were trained on (its configs'
# `resolution: 256`): where its clamp on the adaptive weight was the operating point.
LDM_VALUES = 3 * 256 * 256


def adaptive_weight(nll, g_loss, last_layer, max_weight=1e4, values_per_image=None):
    """||grad nll|| / ||grad g_loss|| at the decoder's last layer, so neither loss drowns the other, clamped.

    nll is a per-image sum, as latent-diffusion's, so the ratio grows with the pixels summed and sits at the
    clamp, where the GAN term weighs max_weight / values_per_image against the mean L1: a weight that
    depends on the resolution (docs/vae_gan_weight.md). With `values_per_image` (C*H*W of one image) the
    clamp is max_weight * values_per_image / LDM_VALUES, latent-diffusion's balance at 256x256 at any size;
    None keeps latent-diffusion's fixed clamp. Under MPI the gradients are those of the global batch
    (averaged over ranks), as in one process."""
    if values_per_image is not None:
        if values_per_image <= 0:
            raise ValueError(f"values_per_image must be > 0 (C*H*W of one image), got {values_per_image!r}")
        max_weight = max_weight * values_per_image / LDM_VALUES
    g_nll = mean_over_ranks(jt.grad(nll, last_layer, retain_graph=True))
    g_gan = mean_over_ranks(jt.grad(g_loss, last_layer, retain_graph=True))
    w = g_nll.sqr().sum().sqrt() / (g_gan.sqr().sum().sqrt() + 1e-4)
    return w.clamp(0.0, max_weight).stop_grad()
