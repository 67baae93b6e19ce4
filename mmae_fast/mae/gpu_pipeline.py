"""Image-folder batches decoded and augmented on the training device, in batch.

Workers only read files: JPEG bytes travel to the main process, which decodes the whole batch
with nvJPEG (``torchvision.io.decode_jpeg(list, device="cuda")``) and applies MAE's
augmentation on the device: RandomResizedCrop(scale 0.2-1, ratio 3/4-4/3, bicubic,
antialiased) + horizontal flip + normalisation. Files that are not JPEG (PNG, ...) are decoded
by PIL in the worker; on the CPU every file is (this is the pipeline's CPU fallback, the same
crops and flips).

Determinism: image ``i`` of a batch gets its crop box and flip from ``random.Random(seed_i)``
with ``seed_i`` = ``StepBatches.sample_seeds(step)[i]`` (a function of (seed, step, position)),
computed on the host from the decoded size: a resumed run sees the same crops.

A file that cannot be decoded stops the run with ``BadImage`` naming it (never a hang: workers
return the error instead of raising it).
"""
from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F

from .errors import RankLocalError

JPEG_MAGIC = b"\xff\xd8\xff"


class BadImage(RankLocalError):
    """An image file that cannot be decoded; the message names it (a ValueError)."""


def crop_box(seed: int, height: int, width: int, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)):
    """RandomResizedCrop's box and a flip for one image: ``(top, left, h, w, flip)``.

    Up to 10 draws of (area fraction ~ U(scale), log aspect ~ U(log ratio)); the first box that
    fits is used, else the largest centred box within ``ratio``. Flip with probability 1/2."""
    rng = random.Random(seed)
    area, log_ratio = height * width, (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top, left = rng.randint(0, height - h), rng.randint(0, width - w)
            return top, left, h, w, rng.random() < 0.5
    if width / height < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif width / height > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w, rng.random() < 0.5


def augment(images, seeds, size: int, mean, std) -> torch.Tensor:
    """uint8 images [(3, H_i, W_i)] (one device) -> float32 (B, 3, size, size): crop, bicubic
    resize (antialiased), flip, ``(x/255 - mean)/std``."""
    device = images[0].device
    out = torch.empty(len(images), 3, size, size, device=device)
    for i, (img, seed) in enumerate(zip(images, seeds)):
        top, left, h, w, flip = crop_box(seed, img.shape[-2], img.shape[-1])
        crop = img[:, top:top + h, left:left + w]
        if flip:
            crop = crop.flip(-1)
        out[i] = F.interpolate(crop[None].float(), size=(size, size), mode="bicubic",
                               antialias=True, align_corners=False)[0]
    m = torch.as_tensor(mean, dtype=torch.float32).view(1, 3, 1, 1).to(device)
    s = torch.as_tensor(std, dtype=torch.float32).view(1, 3, 1, 1).to(device)
    return (out.clamp_(0, 255) / 255 - m) / s


def _pil_pixels(path: str) -> torch.Tensor:
    from PIL import Image
    import numpy as np
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


class FileReader(torch.utils.data.Dataset):
    """Item ``(index, seed)`` -> ``(kind, payload, label, path)``: kind "jpeg" (raw bytes, uint8
    1-D), "pixels" (uint8 (3, H, W)), "ready" (already augmented: float32 (3, S, S), when
    ``augment_args = (size, mean, std)`` is given: the CPU fallback augments in the workers, in
    parallel) or "error" (payload: the reason)."""

    def __init__(self, samples, raw_jpeg: bool, augment_args=None):
        self.samples, self.raw_jpeg, self.augment_args = samples, raw_jpeg, augment_args

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, item):
        index, seed = item
        path, label = self.samples[index]
        try:
            with open(path, "rb") as f:
                raw = f.read()
            if self.raw_jpeg and raw.startswith(JPEG_MAGIC):
                return "jpeg", torch.frombuffer(bytearray(raw), dtype=torch.uint8), label, path
            pixels = _pil_pixels(path)
            if self.augment_args is not None:
                return "ready", augment([pixels], [seed], *self.augment_args)[0], label, path
            return "pixels", pixels, label, path
        except Exception as exc:  # noqa: BLE001 - reported by the main process, naming the file
            return "error", f"{type(exc).__name__}: {exc}".splitlines()[0][:200], label, path


def decode(items, device: torch.device) -> list[torch.Tensor]:
    """Worker items -> uint8 (3, H, W) images on ``device``; BadImage names a bad file."""
    for kind, payload, _, path in items:
        if kind == "error":
            raise BadImage(f"{path}: not a decodable image ({payload}); remove or replace it")
    images = [None] * len(items)
    jpeg = [i for i, it in enumerate(items) if it[0] == "jpeg"]
    if jpeg:
        from torchvision.io import ImageReadMode, decode_jpeg
        try:
            decoded = decode_jpeg([items[i][1] for i in jpeg], mode=ImageReadMode.RGB,
                                  device=device)
        except RuntimeError:
            decoded = []
            for i in jpeg:  # one by one: nvJPEG rejects some valid files (CMYK/YCCK, unusual
                try:        # chroma subsampling): those go through PIL; only PIL's failure is bad
                    decoded += decode_jpeg([items[i][1]], mode=ImageReadMode.RGB, device=device)
                except RuntimeError as exc:
                    try:
                        decoded.append(_pil_pixels(items[i][3]).to(device))
                    except Exception:  # noqa: BLE001 - any PIL failure: the file is bad
                        raise BadImage(f"{items[i][3]}: not a decodable JPEG "
                                       f"({str(exc)[:120]}); remove or replace it") from None
        for i, img in zip(jpeg, decoded):
            images[i] = img
    for i, (kind, payload, _, _) in enumerate(items):
        if kind == "pixels":
            images[i] = payload.to(device, non_blocking=True)
    return images


def _collate(items):
    return items


class DeviceImageFolder:
    """Batches of an ImageNet-layout folder, decoded and augmented on ``device`` (see module
    doc); ``steps`` gives the rows and seeds of each step (``mmae_fast.mae.data.StepBatches``)."""

    def __init__(self, samples, steps, img_size: int, device, workers: int, mean, std):
        self.samples, self.steps, self.img_size = samples, steps, img_size
        self.device, self.workers, self.mean, self.std = torch.device(device), workers, mean, std
        on_cpu = self.device.type == "cpu"
        self.reader = FileReader(samples, raw_jpeg=self.device.type == "cuda",
                                 augment_args=(img_size, mean, std) if on_cpu else None)
        self._iter, self._next_step = None, None

    def batch(self, step: int):
        if self._iter is None or step != self._next_step:
            self._iter = iter(torch.utils.data.DataLoader(
                self.reader, batch_sampler=self.steps.loader_batches(step),
                num_workers=self.workers, collate_fn=_collate,
                pin_memory=self.device.type == "cuda"))
        self._next_step = step + 1
        items = next(self._iter)
        labels = torch.tensor([it[2] for it in items], dtype=torch.int64)
        if all(it[0] == "ready" for it in items):  # the CPU fallback: augmented by the workers
            return torch.stack([it[1] for it in items]), labels
        images = decode(items, self.device)
        seeds = self.steps.sample_seeds(step)
        if not torch.is_tensor(self.mean):  # once: the constants live on the device
            self.mean, self.std = (torch.tensor(v, device=self.device) for v in (self.mean,
                                                                               self.std))
        return augment(images, seeds, self.img_size, self.mean, self.std), labels
