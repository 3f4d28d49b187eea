"""A small Emu: causal transformer over EVA-CLIP tokens + a decoder-only LM, CE + lambda * l2.

Sequence format (one packed row of the batch):

    <bos> text ... [IMG] z1 ... z32 [/IMG] text ... <eos> <bos> ...

z1..z32 are the causal transformer's outputs for one image (learned queries, causal
self-attention among them, cross-attention to the image's precomputed encoder tokens),
placed at the image's 32 "slot" positions. The LM reads embeddings, so a slot holds z
instead of a token embedding.

Losses, as Emu: next-token cross-entropy wherever the next position is text (predicting
[IMG] included; outputs at slot positions are ignored), and l2 regression of the next
visual embedding: [IMG] predicts z1, zk predicts z(k+1), against the z that was fed in,
detached; the z1 term (the only one predicted from text alone) is weighted by
model.image_start_weight (see config.py). The causal transformer's output is layer-normalised without a learned scale, so
the regression cannot be won by shrinking every z toward zero.

A packed row holds several samples; by default (model.attention "sample") each one sees only
itself (attention masked to its own sample, positions restarting at its <bos>), as a lone
sample does in generation. Without the mask ("row"), the hidden state at [IMG] mixes in
whatever sample came earlier in the row, and the text-to-image regression trained on that
noise barely forms (BENCHMARKS.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from emu_data.model.config import ModelConfig
from emu_data.model.tokenizer import BOS, PAD


@dataclass
class Batch:
    """Packed rows. slot_image[b, p] is the image (row of `features`) whose query
    slot_query[b, p] sits at position p, or -1 where p holds a token."""

    tokens: torch.Tensor        # [B, L] int64, PAD at slots
    slot_image: torch.Tensor    # [B, L] int64
    slot_query: torch.Tensor    # [B, L] int64
    features: torch.Tensor      # [N, T, E] float32: every image of the batch

    def to(self, device) -> "Batch":
        return Batch(*(t.to(device, non_blocking=True) for t in
                       (self.tokens, self.slot_image, self.slot_query, self.features)))


@dataclass
class Losses:
    loss: torch.Tensor
    text_ce: torch.Tensor
    visual_mse: torch.Tensor
    visual_cosine: torch.Tensor   # mean cosine of predicted and target embeddings (a metric, no gradient)
    text_targets: int
    visual_targets: int
    visual_weight: float          # visual_mse's denominator (its targets' weights summed): with
                                  # text_targets, what several processes need to add their losses up


class Attention(nn.Module):
    def __init__(self, width: int, heads: int, kv_width: int | None = None):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(kv_width or width, 2 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x, context=None, *, causal=False, mask=None, cache=None):
        """cache: (k, v) of earlier positions (self-attention only); returns (y, (k, v))."""
        q = self._split(self.q(x))
        k, v = (self._split(t) for t in self.kv(x if context is None else context).chunk(2, dim=-1))
        if cache is not None:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None)
        return self.out(y.transpose(1, 2).flatten(2)), (k, v)

    def _split(self, t):
        return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)


class Block(nn.Module):
    """Pre-norm block: causal self-attention, optional cross-attention, MLP."""

    def __init__(self, width: int, heads: int, mlp_ratio: int, context_width: int | None = None):
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(width), Attention(width, heads)
        self.cross = None
        if context_width is not None:
            self.ln_cross, self.cross = nn.LayerNorm(width), Attention(width, heads, context_width)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width))

    def forward(self, x, context=None, *, mask=None, cache=None):
        y, cache = self.attn(self.ln1(x), causal=True, mask=mask, cache=cache)
        x = x + y
        if self.cross is not None:
            x = x + self.cross(self.ln_cross(x), context)[0]
        return x + self.mlp(self.ln2(x)), cache


class CausalTransformer(nn.Module):
    """Learned queries -> (causal self-attention, cross-attention to the image, MLP) x depth -> LM width."""

    def __init__(self, encoder_shape: tuple[int, int], lm_width: int, config: ModelConfig):
        super().__init__()
        encoder_width = encoder_shape[-1]
        # Per-dimension standardisation of the encoder tokens with the training set's statistics
        # (set by `build`). Encoder features share a large constant part across images (position
        # embeddings, a random-init tower most of all); without this the queries first have to
        # learn to subtract it, and the LM learns its language prior long before it looks.
        self.register_buffer("feature_mean", torch.zeros(encoder_shape))
        self.register_buffer("feature_std", torch.ones(encoder_shape))
        self.queries = nn.Parameter(torch.randn(config.queries, config.ct_width) * 0.02)
        self.ln_context = nn.LayerNorm(encoder_width)
        self.blocks = nn.ModuleList(Block(config.ct_width, config.ct_heads, config.mlp_ratio, encoder_width)
                                    for _ in range(config.ct_depth))
        self.ln_out = nn.LayerNorm(config.ct_width)
        self.project = nn.Linear(config.ct_width, lm_width)

    def forward(self, features):
        context = self.ln_context((features - self.feature_mean) / self.feature_std)
        x = self.queries.expand(features.shape[0], -1, -1)
        for block in self.blocks:
            x = block(x, context)[0]
        z = self.project(self.ln_out(x))
        return F.layer_norm(z, z.shape[-1:])   # fixed scale: see the module docstring


class Emu(nn.Module):
    def __init__(self, config: ModelConfig, vocab_size: int, encoder_shape: tuple[int, int], max_len: int):
        super().__init__()
        self.config, self.max_len = config, max_len
        self.visual = CausalTransformer(tuple(encoder_shape), config.width, config)
        self.tok_emb = nn.Embedding(vocab_size, config.width)
        self.pos_emb = nn.Embedding(max_len, config.width)
        self.blocks = nn.ModuleList(Block(config.width, config.heads, config.mlp_ratio) for _ in range(config.depth))
        self.ln_f = nn.LayerNorm(config.width)
        self.regress = nn.Linear(config.width, config.width)   # hidden -> next visual embedding
        self.apply(_init)
        for name, p in self.named_parameters():  # GPT-2's scaled init of residual projections
            if name.endswith(("out.weight", "mlp.2.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * (config.depth + config.ct_depth)))

    # ---- building blocks (eval generates with these) ------------------------------------

    def inputs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """LM input embeddings with z at the slots, and z itself [N, Q, D]."""
        x = self.tok_emb(batch.tokens)
        z = self.visual(batch.features) if batch.features.shape[0] else x.new_zeros(0, self.config.queries, x.shape[-1])
        slots = batch.slot_image >= 0
        x = x.masked_scatter(slots.unsqueeze(-1), z[batch.slot_image[slots], batch.slot_query[slots]].to(x.dtype))
        return x, z

    def hidden(self, x, *, positions=None, mask=None, caches=None):
        """LM over input embeddings. positions default to 0..L-1; mask (bool, True = attend)
        replaces plain causal attention; caches continue earlier positions (generation)."""
        if positions is None:
            positions = torch.arange(x.shape[1], device=x.device).expand(x.shape[0], -1)
        x = x + self.pos_emb(positions.clamp(max=self.max_len - 1))
        new_caches = []
        for i, block in enumerate(self.blocks):
            x, cache = block(x, mask=mask, cache=None if caches is None else caches[i])
            new_caches.append(cache)
        return self.ln_f(x), new_caches

    def logits(self, h):
        return h @ self.tok_emb.weight.t()   # tied with the input embedding

    # ---- training objective --------------------------------------------------------------

    def forward(self, batch: Batch) -> Losses:
        x, z = self.inputs(batch)
        positions, mask = sample_layout(batch.tokens) if self.config.attention == "sample" else (None, None)
        h = self.hidden(x, positions=positions, mask=mask)[0][:, :-1]
        slot = batch.slot_image >= 0
        next_tokens, next_slot = batch.tokens[:, 1:], slot[:, 1:]
        text = ~slot[:, :-1] & ~next_slot & (next_tokens != PAD) & (next_tokens != BOS)
        text_ce = F.cross_entropy(self.logits(h[text]).float(), next_tokens[text]) if text.any() else h.sum() * 0
        query = batch.slot_query[:, 1:][next_slot]
        target = z[batch.slot_image[:, 1:][next_slot], query].detach()
        predicted = self.regress(h[next_slot]).float()
        visual_mse = _weighted_mse(predicted, target.float(), query, self.config.image_start_weight) \
            if next_slot.any() else h.sum() * 0
        cosine = F.cosine_similarity(predicted.detach(), target.float(), dim=-1).mean() if next_slot.any() \
            else h.new_zeros(())
        loss = text_ce + self.config.regression_weight * visual_mse
        starts = int((query == 0).sum())
        weight = starts * self.config.image_start_weight + (len(query) - starts)
        return Losses(loss, text_ce, visual_mse, cosine, int(text.sum()), len(query), float(weight))


def sample_layout(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions counted from each sample's <bos>, and the attention mask [B, 1, L, L] (True =
    attend) that keeps every packed sample to its own earlier positions. Padding after the last
    sample belongs to it (it is never a target)."""
    length = tokens.shape[1]
    starts = tokens == BOS
    sample = starts.cumsum(1)
    index = torch.arange(length, device=tokens.device).expand_as(tokens)
    first = torch.where(starts, index, torch.zeros_like(index)).cummax(1).values
    causal = torch.ones(length, length, dtype=torch.bool, device=tokens.device).tril()
    return index - first, (causal & (sample[:, :, None] == sample[:, None, :]))[:, None]


def _weighted_mse(predicted, target, query, start_weight: float):
    """Mean squared error per target, the z1 targets (query 0) weighted by start_weight."""
    weight = torch.where(query == 0, start_weight, 1.0).to(predicted.dtype)
    return ((predicted - target).pow(2).mean(-1) * weight).sum() / weight.sum().clamp(min=1e-8)


def _init(module):
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)


def build(config: ModelConfig, vocab_size: int, feature_stats: tuple, max_len: int, seed: int) -> Emu:
    """The model at its seeded initialisation: the same seed gives the same untrained model.
    feature_stats: (mean, std) of the training features, each [tokens, width]."""
    mean, std = (torch.as_tensor(a, dtype=torch.float32) for a in feature_stats)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Emu(config, vocab_size, tuple(mean.shape), max_len)
    model.visual.feature_mean.copy_(mean)
    model.visual.feature_std.copy_(std)
    return model


def flops_per_token(model: Emu, tokens_per_row: int, encoder_tokens: int, images_per_token: float) -> float:
    """Training FLOPs per LM position (6 x params touched + attention), for MFU."""
    c = model.config
    lm = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("blocks", "regress")))
    lm += model.tok_emb.weight.numel()   # the tied output projection
    ct = sum(p.numel() for p in model.visual.parameters())
    attention = 12 * c.depth * c.width * tokens_per_row / 2
    ct_per_image = 6 * ct * c.queries + 12 * c.ct_depth * c.ct_width * c.queries * encoder_tokens
    return 6 * lm + attention + images_per_token * ct_per_image
