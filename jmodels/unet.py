"""The stage-2 denoiser: a UNet over VAE latents that follows the label map pixel by pixel (SPADE)
and takes the reference's style as a vector added to the timestep embedding.

`execute(x_t, t, mask, style, w=None)`: x_t (B, 4, h, w) latents; t (B,) integer timesteps; mask
(B, 29, H, W) one-hot label map at any multiple of (h, w) (all zeros = no mask, for guidance);
style (B, style_dim) from `jmodels.conditioning.style_features` (all zeros = no style); w (B,) the
guidance scale, only for a guidance-distilled student (`guidance_embed`, `jmodels.distill`): embedded
like the timestep and added to its embedding through a zero-initialised layer, so a student made from
its teacher starts as the teacher's conditional model at every w.
The mask enters every res-block through spatially-adaptive GroupNorm, resized with NEAREST to
each level. Output convs are zero-initialised, so training starts from a zero prediction.
Refs: Park et al. 2019 (SPADE); Wang et al. 2022 (SDM, semantic diffusion); Dhariwal & Nichol 2021
(scale-shift norm, the ADM UNet).
"""
import math
from dataclasses import dataclass

import jittor as jt
from jittor import init, nn

from .checkpoint import SavedConfig
from .classes import NUM_CLASSES
from .layers import GroupNorm, RowLinear, SelfAttention, Upsample


@dataclass(frozen=True)
class UNetConfig(SavedConfig):
    in_channels: int = 4
    ch: int = 128
    ch_mult: tuple = (1, 2, 3, 4)
    num_res_blocks: int = 2
    attn_levels: tuple = (2, 3)  # levels (0 = full latent resolution) with self-attention
    head_dim: int = 64
    num_classes: int = NUM_CLASSES
    style_dim: int = 79
    spade_hidden: int = 128
    norm_groups: int = 32
    dropout: float = 0.0
    guidance_embed: bool = False  # a guidance-distilled student: takes the guidance scale w as an input

    @property
    def factor(self):
        return 2 ** (len(self.ch_mult) - 1)


def timestep_embedding(t, dim, max_period=10000):
    """Sinusoidal embedding of integer timesteps (B,) -> (B, dim) (Vaswani et al. 2017)."""
    half = dim // 2
    freqs = jt.exp(-math.log(max_period) * jt.arange(half).float32() / half)
    args = t.float32().reshape(-1, 1) * freqs.reshape(1, -1)
    return jt.concat([jt.cos(args), jt.sin(args)], dim=1)


W_EMBED_SCALE = 100.0  # guidance scales 1..10 embedded like timesteps 100..1000 (Meng et al. 2023: Fourier features)


def zero_module(m):
    for p in m.parameters():
        init.constant_(p, 0.0)
    return m


class SPADE(nn.Module):
    """GroupNorm without affine, then a per-pixel scale and shift predicted from the label map."""

    def __init__(self, channels, c: UNetConfig):
        super().__init__()
        self.norm = GroupNorm(c.norm_groups, channels, eps=1e-6, affine=False)
        self.shared = nn.Conv2d(c.num_classes, c.spade_hidden, 3, padding=1)
        self.gamma = zero_module(nn.Conv2d(c.spade_hidden, channels, 3, padding=1))
        self.beta = zero_module(nn.Conv2d(c.spade_hidden, channels, 3, padding=1))

    def execute(self, x, mask):
        h = nn.relu(self.shared(mask))
        return self.norm(x) * (1 + self.gamma(h)) + self.beta(h)


class ResBlock(nn.Module):
    """SPADE-SiLU-Conv, scale-shift from the embedding, SPADE-SiLU-Conv(zero init), residual."""

    def __init__(self, in_ch, out_ch, emb_dim, c: UNetConfig):
        super().__init__()
        self.norm1 = SPADE(in_ch, c)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = RowLinear(emb_dim, 2 * out_ch)
        self.norm2 = SPADE(out_ch, c)
        self.dropout = nn.Dropout(c.dropout)
        self.conv2 = zero_module(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def execute(self, x, emb, mask):
        h = self.conv1(nn.silu(self.norm1(x, mask)))
        scale, shift = jt.chunk(self.emb(nn.silu(emb)).reshape(emb.shape[0], -1, 1, 1), 2, dim=1)
        h = self.norm2(h, mask) * (1 + scale) + shift
        h = self.conv2(self.dropout(nn.silu(h)))
        return (x if self.skip is None else self.skip(x)) + h


class Block(nn.Module):
    """One res-block, optionally followed by self-attention."""

    def __init__(self, in_ch, out_ch, emb_dim, c, attn):
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, emb_dim, c)
        self.attn = SelfAttention(out_ch, c.norm_groups, c.head_dim) if attn else None

    def execute(self, x, emb, mask):
        x = self.res(x, emb, mask)
        return x if self.attn is None else self.attn(x)


class Downsample(nn.Module):
    """Stride-2 3x3 conv (the ADM UNet's, symmetric padding: latent sides divide exactly)."""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def execute(self, x):
        return self.conv(x)


class UNet(nn.Module):
    """guided-diffusion's layout: `input_blocks` (the input conv, res-blocks and downsamplers, each
    output kept as a skip), `middle`, and `output_blocks` (res-blocks that each take one skip, and
    upsamplers) walked in order with a skip stack."""

    def __init__(self, config: UNetConfig = UNetConfig()):
        super().__init__()
        c = self.config = config
        emb_dim = 4 * c.ch
        widths = [c.ch * m for m in c.ch_mult]
        self.time_embed = nn.Sequential(RowLinear(c.ch, emb_dim), nn.SiLU(), RowLinear(emb_dim, emb_dim))
        self.style_embed = nn.Sequential(RowLinear(c.style_dim, emb_dim), nn.SiLU(), RowLinear(emb_dim, emb_dim))
        if c.guidance_embed:
            self.w_embed = nn.Sequential(RowLinear(c.ch, emb_dim), nn.SiLU(), zero_module(RowLinear(emb_dim, emb_dim)))
        self.input_blocks = nn.ModuleList([nn.Conv2d(c.in_channels, widths[0], 3, padding=1)])
        skips, ch = [widths[0]], widths[0]
        for lvl, w in enumerate(widths):
            for _ in range(c.num_res_blocks):
                self.input_blocks.append(Block(ch, w, emb_dim, c, lvl in c.attn_levels))
                ch = w
                skips.append(ch)
            if lvl < len(widths) - 1:
                self.input_blocks.append(Downsample(ch))
                skips.append(ch)
        self.middle = nn.ModuleList([Block(ch, ch, emb_dim, c, True), Block(ch, ch, emb_dim, c, False)])
        self.output_blocks = nn.ModuleList()
        for lvl in reversed(range(len(widths))):
            for _ in range(c.num_res_blocks + 1):
                self.output_blocks.append(Block(ch + skips.pop(), widths[lvl], emb_dim, c, lvl in c.attn_levels))
                ch = widths[lvl]
            if lvl > 0:
                self.output_blocks.append(Upsample(ch))
        self.norm_out = GroupNorm(c.norm_groups, ch)
        self.conv_out = zero_module(nn.Conv2d(ch, c.in_channels, 3, padding=1))

    def check_inputs(self, x, t, mask, style, w_scale):
        c, (b, _, h, w) = self.config, x.shape
        assert x.ndim == 4 and x.shape[1] == c.in_channels, f"x_t must be (B, {c.in_channels}, h, w), got {x.shape}"
        assert h % c.factor == 0 and w % c.factor == 0, f"latent sides {h}x{w} must be multiples of {c.factor}"
        assert tuple(t.shape) == (b,), f"t must be (B,) = ({b},), got {t.shape}"
        assert mask.ndim == 4 and mask.shape[0] == b and mask.shape[1] == c.num_classes, \
            f"mask must be one-hot (B, {c.num_classes}, H, W), got {mask.shape}"
        assert mask.shape[2] % h == 0 and mask.shape[3] % w == 0 and mask.shape[2] // h == mask.shape[3] // w, \
            f"mask {mask.shape[2]}x{mask.shape[3]} is not a whole multiple of the latent {h}x{w}"
        assert tuple(style.shape) == (b, c.style_dim), f"style must be (B, {c.style_dim}), got {style.shape}"
        if c.guidance_embed:
            assert w_scale is not None and tuple(w_scale.shape) == (b,), \
                f"a guidance-distilled UNet needs w (B,) = ({b},), got {None if w_scale is None else w_scale.shape}"
        else:
            assert w_scale is None, "w is the input of a guidance-distilled UNet; this one guides by two calls"

    def execute(self, x, t, mask, style, w=None):
        self.check_inputs(x, t, mask, style, w)
        emb = self.time_embed(timestep_embedding(t, self.config.ch)) + self.style_embed(style)
        if w is not None:
            emb = emb + self.w_embed(timestep_embedding(w * W_EMBED_SCALE, self.config.ch))
        masks = {}

        def mask_at(h):  # the label map at h's resolution: NEAREST by pixel-centre sampling, cached
            side = h.shape[2]
            if side not in masks:
                s = mask.shape[2] // side
                masks[side] = mask[:, :, s // 2::s, s // 2::s] if s > 1 else mask
            return masks[side]

        h, skips = x, []
        for block in self.input_blocks:
            h = block(h, emb, mask_at(h)) if isinstance(block, Block) else block(h)
            skips.append(h)
        for block in self.middle:
            h = block(h, emb, mask_at(h))
        for block in self.output_blocks:
            if isinstance(block, Block):
                h = block(jt.concat([h, skips.pop()], dim=1), emb, mask_at(h))
            else:
                h = block(h)
        return self.conv_out(nn.silu(self.norm_out(h)))
