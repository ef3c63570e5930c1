"""The KL autoencoder of stage 1: Stable Diffusion's architecture, 8x downsampling, 4 latent channels.

512x384 images map to 4x48x64 latents. The posterior is a diagonal Gaussian; `encode` returns its
mean and log-variance, `decode` maps latents back to images in [-1, 1] (not clamped).
Refs: Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models";
diffusers `AutoencoderKL` (names and function match it, tests/test_vae.py checks to 1e-4).
"""
from dataclasses import dataclass

import jittor as jt
from jittor import nn

from .checkpoint import SavedConfig
from .layers import GroupNorm, PaddedDownsample, ResnetBlock, SelfAttention, Upsample


@dataclass(frozen=True)
class VAEConfig(SavedConfig):
    in_channels: int = 3
    latent_channels: int = 4
    ch: int = 128  # width of the first level
    ch_mult: tuple = (1, 2, 4, 4)  # width multipliers per level; len - 1 halvings
    num_res_blocks: int = 2
    norm_groups: int = 32

    @property
    def factor(self):
        return 2 ** (len(self.ch_mult) - 1)



class MidBlock(nn.Module):
    def __init__(self, channels, groups):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, groups) for _ in range(2)])
        self.attentions = nn.ModuleList([SelfAttention(channels, groups)])

    def execute(self, x):
        return self.resnets[1](self.attentions[0](self.resnets[0](x)))


class Level(nn.Module):
    """The ResNet blocks of one resolution, then an optional resampler."""

    def __init__(self, in_ch, out_ch, n_blocks, groups, resample=None):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(in_ch if i == 0 else out_ch, out_ch, groups)
                                      for i in range(n_blocks)])
        self.resample = resample
        if resample == "down":
            self.downsamplers = nn.ModuleList([PaddedDownsample(out_ch)])
        elif resample == "up":
            self.upsamplers = nn.ModuleList([Upsample(out_ch)])

    def execute(self, x):
        for r in self.resnets:
            x = r(x)
        if self.resample == "down":
            x = self.downsamplers[0](x)
        elif self.resample == "up":
            x = self.upsamplers[0](x)
        return x


class Encoder(nn.Module):
    def __init__(self, c: VAEConfig):
        super().__init__()
        widths = [c.ch * m for m in c.ch_mult]
        self.conv_in = nn.Conv2d(c.in_channels, widths[0], 3, padding=1)
        self.down_blocks = nn.ModuleList([
            Level(widths[max(i - 1, 0)], w, c.num_res_blocks, c.norm_groups,
                  "down" if i < len(widths) - 1 else None) for i, w in enumerate(widths)])
        self.mid_block = MidBlock(widths[-1], c.norm_groups)
        self.conv_norm_out = GroupNorm(c.norm_groups, widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], 2 * c.latent_channels, 3, padding=1)

    def execute(self, x):
        h = self.conv_in(x)
        for level in self.down_blocks:
            h = level(h)
        h = self.mid_block(h)
        return self.conv_out(nn.silu(self.conv_norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, c: VAEConfig):
        super().__init__()
        widths = [c.ch * m for m in reversed(c.ch_mult)]
        self.conv_in = nn.Conv2d(c.latent_channels, widths[0], 3, padding=1)
        self.mid_block = MidBlock(widths[0], c.norm_groups)
        self.up_blocks = nn.ModuleList([
            Level(widths[max(i - 1, 0)], w, c.num_res_blocks + 1, c.norm_groups,
                  "up" if i < len(widths) - 1 else None) for i, w in enumerate(widths)])
        self.conv_norm_out = GroupNorm(c.norm_groups, widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], c.in_channels, 3, padding=1)

    def execute(self, z):
        h = self.mid_block(self.conv_in(z))
        for level in self.up_blocks:
            h = level(h)
        return self.conv_out(nn.silu(self.conv_norm_out(h)))


class AutoencoderKL(nn.Module):
    def __init__(self, config: VAEConfig = VAEConfig()):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quant_conv = nn.Conv2d(2 * config.latent_channels, 2 * config.latent_channels, 1)
        self.post_quant_conv = nn.Conv2d(config.latent_channels, config.latent_channels, 1)

    def encode(self, x):
        """(B, 3, H, W) in [-1, 1] -> posterior mean and log-variance, each (B, 4, H/8, W/8)."""
        f = self.config.factor
        assert x.ndim == 4 and x.shape[1] == self.config.in_channels, f"expected (B, 3, H, W), got {x.shape}"
        assert x.shape[2] % f == 0 and x.shape[3] % f == 0, \
            f"image sides {x.shape[2]}x{x.shape[3]} must be multiples of {f}"
        moments = self.quant_conv(self.encoder(x))
        mean, logvar = jt.chunk(moments, 2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z):
        """(B, 4, h, w) latents -> (B, 3, h*8, w*8) images, nominally in [-1, 1]."""
        return self.decoder(self.post_quant_conv(z))

    def execute(self, x, noise=None):
        """Reconstruction, posterior mean and log-variance. The latent is the posterior sample
        mean + std * noise when `noise` (B, 4, H/8, W/8) is given, else the mean. The caller draws
        the noise, so that training decides how it is seeded (jmodels/parallel.py)."""
        mean, logvar = self.encode(x)
        z = posterior_sample(mean, logvar, noise) if noise is not None else mean
        return self.decode(z), mean, logvar

    def last_layer(self):
        """The weight the adaptive GAN weight is measured on (latent-diffusion's `get_last_layer`)."""
        return self.decoder.conv_out.weight


def posterior_sample(mean, logvar, noise):
    """z = mean + std * noise, the reparameterised draw from N(mean, exp(logvar)) (Kingma & Welling 2014)."""
    return mean + (0.5 * logvar).exp() * noise


def kl_divergence(mean, logvar):
    """KL(N(mean, exp(logvar)) || N(0, 1)) summed over latent elements, averaged over the batch."""
    return 0.5 * (mean.sqr() + logvar.exp() - 1.0 - logvar).sum() / mean.shape[0]
