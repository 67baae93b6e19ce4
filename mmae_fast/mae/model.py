"""MAE / M-MAE model from timm building blocks (``PatchEmbed``, ``Block`` with fused SDPA).

    model(imgs)                        -> (mae_loss, cls)            imgs (B, 3, H, W)
    model(imgs, with_logits=True)      -> (mae_loss, cls, logits)    online linear head

``mae_loss``: norm-pix MSE on the masked patches (MAE); ``cls`` (B, width): the CLS token after
the encoder's final LayerNorm, the feature the regulariser takes. ``cls_norm``:

- ``"encoder"``: ``cls = norm(x)[:, 0]`` (one norm);
- ``"shared"``: ``cls = norm(norm(x)[:, 0])``, the encoder's own final norm applied a second time
  (same parameters), as the official M-MAE code; the exported encoder is unchanged;
- ``"separate"``: ``cls = norm2(norm(x)[:, 0])`` with a LayerNorm of its own (trained only by R
  and not exported; not the official code).

The online head sees the *detached* CLS feature: it monitors the representation and never trains
the encoder. ``head="linear"`` is the official plain ``nn.Linear``; ``head="bn-linear"`` puts
MAE's linear-probe ``BatchNorm1d(affine=False)`` in front of it.

Encoder parameter names follow timm's ``VisionTransformer`` (``patch_embed.proj``,
``cls_token``, ``pos_embed``, ``blocks.N.*``, ``norm``), so :func:`encoder_state_dict` loads into
``timm.create_model("vit_base_patch16_224")`` (see ``timm_name``) with no missing keys.
"""
from __future__ import annotations

import dataclasses
from functools import partial

import torch
import torch.nn as nn

from .timm_compat import timm  # noqa: F401 - the CPU-torch torchvision workaround first
from timm.layers import PatchEmbed  # noqa: E402
from timm.models.vision_transformer import Block  # noqa: E402

CLS_NORMS = ("encoder", "shared", "separate")
HEADS = ("linear", "bn-linear")


@dataclasses.dataclass(frozen=True)
class Preset:
    """Architecture of one MAE preset (official MAE values for the ViTs)."""
    img_size: int
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    decoder_embed_dim: int
    decoder_depth: int
    decoder_num_heads: int
    mlp_ratio: float = 4.0
    timm_name: str | None = None  # the timm model the encoder export loads into


PRESETS = {
    "vit_base_patch16": Preset(224, 16, 768, 12, 12, 512, 8, 16,
                               timm_name="vit_base_patch16_224"),
    "vit_large_patch16": Preset(224, 16, 1024, 24, 16, 512, 8, 16,
                                timm_name="vit_large_patch16_224"),
    "vit_huge_patch14": Preset(224, 14, 1280, 32, 16, 512, 8, 16,
                               timm_name="vit_huge_patch14_224"),
    # the CPU demo: 16x16 digits, 4x4 patches (16 tokens), 4-layer encoder of width 64
    "tiny": Preset(16, 4, 64, 4, 4, 32, 1, 4),
}


def sincos_pos_embed(dim: int, grid: int, cls_token: bool = True) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding (grid² [+1], dim), as MAE: half the channels encode
    the column, half the row; each half is ``[sin(p·ω_k), cos(p·ω_k)]``,
    ``ω_k = 10000^(-k/(D/4))``. The CLS row (first) is zero."""
    if dim % 4:
        raise ValueError(f"embed_dim must be a multiple of 4 for 2-D sin-cos embeddings, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4.0))
    coords = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")

    def encode(pos):
        out = pos.reshape(-1, 1) * omega
        return torch.cat([out.sin(), out.cos()], dim=1)

    emb = torch.cat([encode(cols), encode(rows)], dim=1)  # (grid², dim); MAE's w-then-h order
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb], dim=0)
    return emb.float()


def kept_tokens(length: int, mask_ratio: float) -> int:
    """Patches the encoder keeps out of ``length``: ``int(length · (1 - mask_ratio))``."""
    return int(length * (1 - mask_ratio))


class MaskedAutoencoder(nn.Module):
    """MAE with a ViT encoder and decoder; see the module docstring for inputs and outputs."""

    def __init__(self, preset: Preset, *, img_size: int | None = None, in_chans: int = 3,
                 mask_ratio: float = 0.75, norm_pix_loss: bool = True, num_classes: int = 0,
                 cls_norm: str = "encoder", drop_path: float = 0.0, head: str = "linear"):
        super().__init__()
        if cls_norm not in CLS_NORMS:
            raise ValueError(f"cls_norm must be one of {CLS_NORMS}, got {cls_norm!r}")
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f"drop_path is a probability: give a value in [0, 1), got "
                             f"{drop_path}")
        img_size = img_size or preset.img_size
        if img_size % preset.patch_size:
            raise ValueError(f"img_size ({img_size}) must be a multiple of the patch size "
                             f"({preset.patch_size})")
        patches = (img_size // preset.patch_size) ** 2
        if kept_tokens(patches, mask_ratio) == patches:
            raise ValueError(f"mask_ratio {mask_ratio} masks none of the {patches} patches (the "
                             f"MAE loss is a mean over the masked ones); give a larger ratio")
        self.preset, self.img_size, self.in_chans = preset, img_size, in_chans
        self.mask_ratio, self.norm_pix_loss = mask_ratio, norm_pix_loss
        self.num_classes = num_classes
        self.cls_norm = cls_norm
        width, p = preset.embed_dim, preset.patch_size
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.patch_embed = PatchEmbed(img_size, p, in_chans, width)
        n = self.patch_embed.num_patches
        grid = img_size // p
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(sincos_pos_embed(width, grid)[None], requires_grad=False)
        block = partial(Block, mlp_ratio=preset.mlp_ratio, qkv_bias=True, norm_layer=norm)
        dpr = [x.item() for x in torch.linspace(0, drop_path, preset.depth)]
        self.blocks = nn.ModuleList(block(width, preset.num_heads, drop_path=dpr[i])
                                    for i in range(preset.depth))
        self.norm = norm(width)
        # "shared" calls self.norm again (not registered twice: one set of weights and keys)
        self.feat_norm = norm(width) if cls_norm == "separate" else None
        dw = preset.decoder_embed_dim
        self.decoder_embed = nn.Linear(width, dw)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dw))
        self.decoder_pos_embed = nn.Parameter(sincos_pos_embed(dw, grid)[None],
                                              requires_grad=False)
        self.decoder_blocks = nn.ModuleList(block(dw, preset.decoder_num_heads)
                                            for _ in range(preset.decoder_depth))
        self.decoder_norm = norm(dw)
        self.decoder_pred = nn.Linear(dw, p * p * in_chans)
        self.head = None
        if num_classes:
            bn = [nn.BatchNorm1d(width, affine=False, eps=1e-6)] if head == "bn-linear" else []
            self.head = nn.Sequential(*bn, nn.Linear(width, num_classes))
        self._init_weights()
        self.num_patches = n

    # ------------------------------------------------------------------ init (as MAE)
    def _init_weights(self):
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.head is not None:
            nn.init.trunc_normal_(self.head[-1].weight, std=0.01)

    # ------------------------------------------------------------------ pieces
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, L, p²C), patches in row-major order, pixels (p, p, C)."""
        p, (b, c, h, w) = self.preset.patch_size, imgs.shape
        x = imgs.reshape(b, c, h // p, p, w // p, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)

    def random_masking(self, x: torch.Tensor, noise: torch.Tensor | None = None):
        """Keep ``(1 - mask_ratio)·L`` tokens per sample, those with the smallest ``noise``.
        x (B, L, D) -> (kept (B, K, D), mask (B, L) with 1 = removed, ids_restore (B, L))."""
        b, length, dim = x.shape
        keep = kept_tokens(length, self.mask_ratio)
        if noise is None:
            noise = torch.rand(b, length, device=x.device)
        elif noise.shape != (b, length):
            raise ValueError(f"noise must have shape {(b, length)}, got {tuple(noise.shape)}")
        ids_shuffle = torch.argsort(noise.to(x.device), dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :keep]
        kept = torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, dim))
        mask = torch.ones(b, length, device=x.device)
        mask[:, :keep] = 0
        return kept, torch.gather(mask, 1, ids_restore), ids_restore

    def forward_encoder(self, imgs: torch.Tensor, noise: torch.Tensor | None = None,
                        mask: bool = True):
        """Tokens after the encoder norm (B, 1 + K, width); with ``mask=False`` all L patches."""
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:]
        m = ids_restore = None
        if mask:
            x, m, ids_restore = self.random_masking(x, noise)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), m, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """(B, 1 + K, width) -> pixel predictions (B, L, p²C)."""
        x = self.decoder_embed(latent)
        b, length = ids_restore.shape
        tokens = torch.cat([x[:, 1:], self.mask_token.expand(b, length + 1 - x.shape[1], -1)], 1)
        tokens = torch.gather(tokens, 1, ids_restore[..., None].expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1], tokens], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def mae_loss(self, imgs, pred, mask) -> torch.Tensor:
        """Mean over masked patches of the per-patch MSE; targets normalised per patch if
        ``norm_pix_loss`` (mean 0, variance 1, eps 1e-6 as MAE)."""
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        per_patch = ((pred.float() - target.float()) ** 2).mean(-1)
        return (per_patch * mask).sum() / mask.sum()

    def cls_feature(self, latent: torch.Tensor) -> torch.Tensor:
        """(B, 1 + K, width) encoder output (after ``norm``) -> the CLS feature (B, width)."""
        cls = latent[:, 0]
        if self.cls_norm == "shared":
            return self.norm(cls)
        return cls if self.feat_norm is None else self.feat_norm(cls)

    def features(self, imgs: torch.Tensor) -> torch.Tensor:
        """CLS features (B, width) of whole images (no masking): for probes and export checks."""
        latent, _, _ = self.forward_encoder(imgs, mask=False)
        return self.cls_feature(latent)

    def forward(self, imgs: torch.Tensor, noise: torch.Tensor | None = None,
                with_logits: bool = False):
        latent, mask, ids_restore = self.forward_encoder(imgs, noise)
        pred = self.forward_decoder(latent, ids_restore)
        loss = self.mae_loss(imgs, pred, mask)
        cls = self.cls_feature(latent)
        if not with_logits:
            return loss, cls
        if self.head is None:
            raise ValueError("with_logits=True needs an online head; build the model with "
                             "num_classes > 0")
        return loss, cls, self.head(cls.detach())


def create_model(name: str, img_size: int | None = None, **kwargs) -> MaskedAutoencoder:
    """An MAE of preset ``name`` (one of :data:`PRESETS`); kwargs go to MaskedAutoencoder."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {tuple(PRESETS)}")
    return MaskedAutoencoder(PRESETS[name], img_size=img_size, **kwargs)


# ---------------------------------------------------------------------- export to timm
ENCODER_PREFIXES = ("cls_token", "pos_embed", "patch_embed.", "blocks.", "norm.")


def encoder_state_dict(model: MaskedAutoencoder, head: bool = True) -> dict[str, torch.Tensor]:
    """The encoder in timm ``VisionTransformer`` names (contiguous float32 copies).

    With ``head`` and an online head, the head is exported as timm's ``head`` Linear (a
    ``bn-linear`` head's eval-mode BatchNorm folded in: ``W' = W/√(var+eps)``,
    ``b' = b - W'·mean``), so ``timm.create_model(timm_name, num_classes=model.num_classes)``
    loads it strictly; without one, load into ``num_classes=0``. ``cls_norm="shared"`` reuses
    ``norm`` (nothing extra to export); ``"separate"``'s extra norm has no timm slot and is not
    exported. (timm applies one norm before its head; the head was trained on ``features()``.)
    """
    state = {k: v.detach().float().contiguous().clone() for k, v in model.state_dict().items()
             if k.startswith(ENCODER_PREFIXES)}
    if head and model.head is not None:
        lin = model.head[-1]
        w, b = lin.weight.detach().float(), lin.bias.detach().float()
        if len(model.head) == 2:
            bn = model.head[0]
            w = w * (bn.running_var.float() + bn.eps).rsqrt()
            b = b - w @ bn.running_mean.float()
        state["head.weight"] = w.contiguous().clone()
        state["head.bias"] = b.contiguous().clone()
    return state


def timm_kwargs(model: MaskedAutoencoder, head: bool = True) -> dict:
    """kwargs for ``timm.create_model(...)`` / ``VisionTransformer(...)`` matching the export."""
    p = model.preset
    return dict(img_size=model.img_size, patch_size=p.patch_size, embed_dim=p.embed_dim,
                depth=p.depth, num_heads=p.num_heads, mlp_ratio=p.mlp_ratio, qkv_bias=True,
                num_classes=model.num_classes if head and model.head is not None else 0)


def export_encoder(model: MaskedAutoencoder, path, head: bool = True) -> dict:
    """Write :func:`encoder_state_dict` to ``path`` (safetensors); returns the state dict."""
    from safetensors.torch import save_file
    state = encoder_state_dict(model, head)
    meta = {"format": "pt", "preset_timm_name": model.preset.timm_name or "",
            "num_classes": str(timm_kwargs(model, head)["num_classes"])}
    save_file(state, str(path), metadata=meta)
    return state


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
