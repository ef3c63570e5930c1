"""PyTorch twins of the Jittor networks, for the side-by-side benchmark and its parity test only.

`UNet` mirrors jmodels.unet.UNet (guided-diffusion's `input_blocks` / `middle` / `output_blocks`
layout): same layers, same parameter names, same function, so one state dict loads into both.
The VAE's twin is diffusers' AutoencoderKL (`vae_twin`), whose names jmodels.vae follows. `build`
loads Jittor's weights strictly: a twin that no longer follows its network raises, never runs.
Never imported by the product: training and test.py need no PyTorch (tools/bench/bench.py and
tests/test_torch_twins.py run it in another Python, one with torch).
"""
import json
import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class SPADE(nn.Module):
    def __init__(self, channels, c):
        super().__init__()
        self.norm = nn.GroupNorm(c["norm_groups"], channels, eps=1e-6, affine=False)
        self.shared = nn.Conv2d(c["num_classes"], c["spade_hidden"], 3, padding=1)
        self.gamma = nn.Conv2d(c["spade_hidden"], channels, 3, padding=1)
        self.beta = nn.Conv2d(c["spade_hidden"], channels, 3, padding=1)

    def forward(self, x, mask):
        h = F.relu(self.shared(mask))
        return self.norm(x) * (1 + self.gamma(h)) + self.beta(h)


class ResBlock(nn.Module):
    def __init__(self, in_ch, out_ch, emb_dim, c):
        super().__init__()
        self.norm1, self.conv1 = SPADE(in_ch, c), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2, self.dropout = SPADE(out_ch, c), nn.Dropout(c["dropout"])
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x, emb, mask):
        h = self.conv1(F.silu(self.norm1(x, mask)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.conv2(self.dropout(F.silu(self.norm2(h, mask) * (1 + scale) + shift)))
        return (x if self.skip is None else self.skip(x)) + h


class SelfAttention(nn.Module):
    def __init__(self, channels, groups, head_dim):
        super().__init__()
        self.heads = channels // head_dim
        self.group_norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.to_q, self.to_k, self.to_v = (nn.Linear(channels, channels) for _ in range(3))
        self.to_out = nn.Sequential(nn.Linear(channels, channels))

    def forward(self, x):
        b, c, h, w = x.shape
        t = self.group_norm(x).reshape(b, c, h * w).transpose(1, 2)  # (B, HW, C)
        q, k, v = (f(t).reshape(b, h * w, self.heads, -1).transpose(1, 2) for f in (self.to_q, self.to_k, self.to_v))
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, h * w, c)
        return x + self.to_out(o).transpose(1, 2).reshape(b, c, h, w)


class Block(nn.Module):
    def __init__(self, in_ch, out_ch, emb_dim, c, attn):
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, emb_dim, c)
        self.attn = SelfAttention(out_ch, c["norm_groups"], c["head_dim"]) if attn else None

    def forward(self, x, emb, mask):
        x = self.res(x, emb, mask)
        return x if self.attn is None else self.attn(x)


class Downsample(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


def timestep_embedding(t, dim, max_period=10000):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], 1)


class UNet(nn.Module):
    """Mirror of jmodels.unet.UNet; `c` is UNetConfig.to_dict()."""

    def __init__(self, c):
        super().__init__()
        self.c, emb_dim, widths = c, 4 * c["ch"], [c["ch"] * m for m in c["ch_mult"]]
        self.time_embed = nn.Sequential(nn.Linear(c["ch"], emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.style_embed = nn.Sequential(nn.Linear(c["style_dim"], emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.input_blocks = nn.ModuleList([nn.Conv2d(c["in_channels"], widths[0], 3, padding=1)])
        skips, ch = [widths[0]], widths[0]
        for lvl, w in enumerate(widths):
            for _ in range(c["num_res_blocks"]):
                self.input_blocks.append(Block(ch, w, emb_dim, c, lvl in c["attn_levels"]))
                ch = w
                skips.append(ch)
            if lvl < len(widths) - 1:
                self.input_blocks.append(Downsample(ch))
                skips.append(ch)
        self.middle = nn.ModuleList([Block(ch, ch, emb_dim, c, True), Block(ch, ch, emb_dim, c, False)])
        self.output_blocks = nn.ModuleList()
        for lvl in reversed(range(len(widths))):
            for _ in range(c["num_res_blocks"] + 1):
                self.output_blocks.append(Block(ch + skips.pop(), widths[lvl], emb_dim, c, lvl in c["attn_levels"]))
                ch = widths[lvl]
            if lvl > 0:
                self.output_blocks.append(Upsample(ch))
        self.norm_out = nn.GroupNorm(c["norm_groups"], ch, eps=1e-6)
        self.conv_out = nn.Conv2d(ch, c["in_channels"], 3, padding=1)

    def forward(self, x, t, mask, style):
        emb = self.time_embed(timestep_embedding(t, self.c["ch"])) + self.style_embed(style)

        def mask_at(h):  # NEAREST by pixel-centre sampling, as the Jittor network
            s = mask.shape[2] // h.shape[2]
            return mask[:, :, s // 2::s, s // 2::s] if s > 1 else mask

        h, skips = x, []
        for block in self.input_blocks:
            h = block(h, emb, mask_at(h)) if isinstance(block, Block) else block(h)
            skips.append(h)
        for block in self.middle:
            h = block(h, emb, mask_at(h))
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], 1), emb, mask_at(h)) if isinstance(block, Block) else block(h)
        return self.conv_out(F.silu(self.norm_out(h)))


def vae_twin(c):
    """diffusers' AutoencoderKL in the shape of jmodels.vae's; `c` is VAEConfig.to_dict()."""
    from diffusers import AutoencoderKL
    n = len(c["ch_mult"])
    widths = tuple(c["ch"] * m for m in c["ch_mult"])
    return AutoencoderKL(in_channels=c["in_channels"], out_channels=c["in_channels"],
                         latent_channels=c["latent_channels"], block_out_channels=widths,
                         layers_per_block=c["num_res_blocks"], norm_num_groups=c["norm_groups"],
                         down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n)


def build(net, config, weights):
    """The twin of `net` ("vae" | "unet") for the Jittor config dict, holding the Jittor weights ({name: array}).
    Strict: a missing or unexpected name, or a shape that differs, raises with the list (torch's message)."""
    model = vae_twin(config) if net == "vae" else UNet(config)
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()}, strict=True)
    return model


def parity_outputs(src, dst):
    """For tests/test_torch_twins.py: the twin's outputs on the inputs of `src` (an .npz of `net`, `config`
    JSON, weights `w/<name>`, inputs `in/<i>`) written to `dst`: the UNet's prediction, or the VAE's
    posterior mean and log-variance of the images and the decoding of the latents."""
    with np.load(src) as f:
        net, config = str(f["net"]), json.loads(str(f["config"]))
        weights = {k[2:]: f[k] for k in f.files if k.startswith("w/")}
        args = [torch.from_numpy(f[f"in/{i}"]) for i in range(sum(k.startswith("in/") for k in f.files))]
    model = build(net, config, weights).eval()
    with torch.no_grad():
        if net == "unet":
            out = {"out": model(*args)}
        else:
            post = model.encode(args[0]).latent_dist
            out = {"mean": post.mean, "logvar": post.logvar, "decoded": model.decode(args[1]).sample}
    np.savez(dst, **{k: v.numpy() for k, v in out.items()})
