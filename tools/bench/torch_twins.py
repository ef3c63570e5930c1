"""PyTorch twin of jmodels.unet.UNet, for side-by-side benchmarks only (PyTorch is a dev extra).

Same layers, same parameter names and the same function as the Jittor network, so one state dict
loads into both (tools/bench/bench.py checks the outputs agree before timing). Never imported by
the product: training and test.py need no PyTorch.
"""
import math

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
        self.norm2, self.conv2 = SPADE(out_ch, c), nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x, emb, mask):
        h = self.conv1(F.silu(self.norm1(x, mask)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.conv2(F.silu(self.norm2(h, mask) * (1 + scale) + shift))
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
        t = self.group_norm(x).reshape(b, c, h * w).transpose(1, 2)
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


class Upsample(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class UNet(nn.Module):
    """Mirror of jmodels.unet.UNet; `c` is UNetConfig.to_dict()."""

    def __init__(self, c):
        super().__init__()
        self.c, emb_dim, widths = c, 4 * c["ch"], [c["ch"] * m for m in c["ch_mult"]]
        self.time_embed = nn.Sequential(nn.Linear(c["ch"], emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.style_embed = nn.Sequential(nn.Linear(c["style_dim"], emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.conv_in = nn.Conv2d(c["in_channels"], widths[0], 3, padding=1)
        self.down, self.downsample, skips, ch = nn.ModuleList(), nn.ModuleList(), [widths[0]], widths[0]
        for lvl, w in enumerate(widths):
            for _ in range(c["num_res_blocks"]):
                self.down.append(Block(ch, w, emb_dim, c, lvl in c["attn_levels"]))
                ch = w
                skips.append(ch)
            if lvl < len(widths) - 1:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
        self.mid = nn.ModuleList([Block(ch, ch, emb_dim, c, True), Block(ch, ch, emb_dim, c, False)])
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for lvl in reversed(range(len(widths))):
            for _ in range(c["num_res_blocks"] + 1):
                self.up.append(Block(ch + skips.pop(), widths[lvl], emb_dim, c, lvl in c["attn_levels"]))
                ch = widths[lvl]
            if lvl > 0:
                self.upsample.append(Upsample(ch))
        self.norm_out = nn.GroupNorm(c["norm_groups"], ch, eps=1e-6)
        self.conv_out = nn.Conv2d(ch, c["in_channels"], 3, padding=1)

    def forward(self, x, t, mask, style):
        half = self.c["ch"] // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
        args = t.float()[:, None] * freqs[None]
        emb = self.time_embed(torch.cat([torch.cos(args), torch.sin(args)], 1)) + self.style_embed(style)
        n, hs = self.c["num_res_blocks"], [self.conv_in(x)]

        def mask_at(h):
            s = mask.shape[2] // h
            return mask[:, :, s // 2::s, s // 2::s] if s > 1 else mask

        for lvl in range(len(self.c["ch_mult"])):
            for i in range(n):
                hs.append(self.down[lvl * n + i](hs[-1], emb, mask_at(hs[-1].shape[2])))
            if lvl < len(self.downsample):
                hs.append(self.downsample[lvl](hs[-1]))
        h = hs[-1]
        for block in self.mid:
            h = block(h, emb, mask_at(h.shape[2]))
        for j, block in enumerate(self.up):
            h = block(torch.cat([h, hs.pop()], 1), emb, mask_at(h.shape[2]))
            if (j + 1) % (n + 1) == 0 and (j + 1) // (n + 1) <= len(self.upsample):
                h = self.upsample[(j + 1) // (n + 1) - 1](h)
        return self.conv_out(F.silu(self.norm_out(h)))
