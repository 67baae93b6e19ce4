"""Data for the evaluation protocols: PIL-image data sets, the official transforms, loaders.

    --data digits        sklearn's digits (8x8, 10 classes) as PIL images; the trainer's fixed
                         split (every 5th image of each class is "val")
    --data imagefolder   --data-path DIR with DIR/train/<class>/* and DIR/val/<class>/*

Transforms (MAE's ``main_linprobe.py`` / ``util/datasets.py``, ImageNet mean/std):

- linear probe, train: ``RandomResizedCrop(s, bicubic)`` + horizontal flip;
- fine-tuning, train: timm ``create_transform`` (RandomResizedCrop, flip, RandAugment
  ``rand-m9-mstd0.5-inc1``, random erasing 0.25 ``pixel`` mode, bicubic);
- evaluation: ``Resize(int(s / 0.875), bicubic)`` + ``CenterCrop(s)`` (256 -> 224 at s = 224).

Training loaders use a plain ``DistributedSampler`` (shuffled by ``(seed, epoch)``, last
incomplete batch dropped); evaluation shards the set as ``rank::world`` with no padding, so the
summed counts are exactly those of one process.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from ..mae.timm_compat import timm  # noqa: F401 - torchvision import workaround first
from torchvision import datasets, transforms  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CROP_PCT = 224 / 256
DATASETS = ("digits", "imagefolder")


class DigitsImages(torch.utils.data.Dataset):
    """sklearn digits as 8x8 RGB PIL images (grey levels 0..16 scaled to 0..255).

    Split as the trainer's ``data.load_digits``: within each class, every 5th image (rank in
    class ≡ 4 mod 5) is the held-out ("val") split."""

    def __init__(self, split: str, transform=None):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        from sklearn.datasets import load_digits
        bunch = load_digits()
        y = np.asarray(bunch.target)
        rank_in_class = np.zeros_like(y)
        for c in np.unique(y):
            idx = np.flatnonzero(y == c)
            rank_in_class[idx] = np.arange(len(idx))
        keep = (rank_in_class % 5 == 4) == (split == "val")
        self.images = np.round(np.asarray(bunch.images)[keep] * (255 / 16)).astype(np.uint8)
        self.targets = y[keep].tolist()
        self.classes = [str(c) for c in range(10)]
        self.transform = transform

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        from PIL import Image
        img = Image.fromarray(self.images[i]).convert("RGB")
        return (self.transform(img) if self.transform else img), self.targets[i]


def check_data(data: str | None, data_path: str | None) -> str:
    """The data set to evaluate on (``mmae_fast.mae.data.resolve_data``); clear errors for a bad
    ``--data`` / ``--data-path`` (a missing train or val folder)."""
    from ..mae.data import resolve_data
    data = resolve_data(data, data_path)
    if data not in DATASETS:
        raise ValueError(f"--data must be one of {DATASETS}, got {data!r}")
    if data == "digits":
        return data
    if not data_path:
        raise ValueError("--data imagefolder needs --data-path DIR (DIR/train/<class>/*, "
                         "DIR/val/<class>/*)")
    for split in ("train", "val"):
        if not os.path.isdir(os.path.join(data_path, split)):
            raise ValueError(f"--data-path {data_path!r} has no {split}/ folder: evaluation "
                             f"needs DIR/train/<class>/* and DIR/val/<class>/* (ImageNet "
                             f"layout); point --data-path at such a folder")
    return data


class NamedImageFolder(datasets.ImageFolder):
    """``ImageFolder`` whose item is ``(None, message)`` for a file that cannot be decoded, the
    message naming the file: loader workers return it (``collate_named`` passes it on) and the
    main process raises it (``CheckedLoader``), one line, where a worker's exception would
    reach the user as the loader's traceback."""

    def __getitem__(self, index):
        path, label = self.samples[index]
        try:
            img = self.loader(path)
        except Exception as exc:  # noqa: BLE001 - any decoding failure names the file
            return None, bad_image_message(path, exc)
        return (self.transform(img) if self.transform else img), label


def bad_image_message(path: str, exc: BaseException) -> str:
    """One line naming ``path``, why it failed (the exception's first line) and the fix."""
    reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
    return f"{path}: not a decodable image ({reason}); remove or replace it"


def collate_named(items):
    """``default_collate`` of ``(image, label)`` items, or ``(None, message)`` of the first
    item that is a bad file's message."""
    for x, y in items:
        if x is None:
            return None, y
    return torch.utils.data.default_collate(items)


class CheckedLoader:
    """Iterate ``loader`` (built with ``collate_named``) as ``(images, labels)``; a bad file's
    message is raised as ``BadImage``. ``len`` and ``sampler`` are the loader's."""

    def __init__(self, loader):
        self.loader, self.sampler = loader, loader.sampler

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        from ..mae.gpu_pipeline import BadImage
        for x, y in self.loader:
            if x is None:
                raise BadImage(y)
            yield x, y


def image_paths(ds) -> list[str]:
    """The files of the items of ``ds`` (an image folder or ``Subset``s of one; none for
    in-memory data)."""
    if isinstance(ds, torch.utils.data.Subset):
        paths = image_paths(ds.dataset)
        return [paths[i] for i in ds.indices] if paths else []
    return [path for path, _ in getattr(ds, "samples", [])]


class _Decode(torch.utils.data.Dataset):
    """Item i: None once ``paths[i]`` decodes, else the message naming it."""

    def __init__(self, paths, loader):
        self.paths, self.loader = paths, loader

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            self.loader(self.paths[i])
        except Exception as exc:  # noqa: BLE001
            return bad_image_message(self.paths[i], exc)
        return None


def check_images(ds, *, workers: int = 0) -> None:
    """Decode every image file of ``ds`` once (in ``workers`` loader workers) before a long
    run reads it: ``BadImage`` naming the first file that fails."""
    from torchvision.datasets.folder import default_loader
    from ..mae.gpu_pipeline import BadImage
    paths = image_paths(ds)
    if not paths:
        return
    loader = torch.utils.data.DataLoader(_Decode(paths, default_loader), batch_size=64,
                                         num_workers=workers, collate_fn=list)
    for messages in loader:
        bad = [m for m in messages if m is not None]
        if bad:
            raise BadImage(bad[0])


def dataset(data: str, split: str, transform, data_path: str | None = None):
    """The ``split`` ("train" or "val") of ``--data`` with ``transform`` applied; an image
    folder's undecodable file comes as ``(None, message)`` (``NamedImageFolder``)."""
    check_data(data, data_path)
    if data == "digits":
        return DigitsImages(split, transform)
    try:
        return NamedImageFolder(os.path.join(data_path, split), transform)
    except FileNotFoundError as exc:  # a class folder without images
        raise ValueError(f"--data-path {data_path!r}: {exc}") from None


def num_classes(ds) -> int:
    return len(ds.classes)


def same_classes(train, val) -> int:
    """The class count, after checking that val/ has train/'s class folders (ImageFolder numbers
    classes by sorted folder name per split: a missing one would shift every label)."""
    if list(train.classes) != list(val.classes):
        missing = sorted(set(train.classes) ^ set(val.classes))
        raise ValueError(f"--data-path: train/ and val/ must hold the same class folders; they "
                         f"differ in {missing[:10]}")
    return len(train.classes)


def evenly(ds, max_images: int | None):
    """``ds`` itself, or ``max_images`` evenly spaced items of it (an explicit cap)."""
    if max_images is None or max_images >= len(ds):
        return ds
    if max_images < 1:
        raise ValueError(f"--max-images must be >= 1, got {max_images}")
    idx = torch.linspace(0, len(ds) - 1, max_images).round().long().unique().tolist()
    sub = torch.utils.data.Subset(ds, idx)
    sub.classes = ds.classes
    return sub


# ----------------------------------------------------------------------------- transforms
def eval_transform(size: int):
    """``Resize(int(size / 0.875), bicubic)`` + ``CenterCrop(size)`` + normalise."""
    return transforms.Compose([
        transforms.Resize(int(size / CROP_PCT), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(size), transforms.ToTensor(), transforms.Normalize(MEAN, STD)])


def linprobe_transform(size: int):
    """MAE's linear-probe training transform: RandomResizedCrop (bicubic) + flip."""
    return transforms.Compose([
        transforms.RandomResizedCrop(size, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(), transforms.ToTensor(), transforms.Normalize(MEAN, STD)])


def finetune_transform(size: int, *, auto_augment: str | None, re_prob: float):
    """MAE's fine-tuning training transform through timm ``create_transform``."""
    from timm.data import create_transform
    tf = create_transform(input_size=size, is_training=True, color_jitter=None,
                          auto_augment=auto_augment or None, interpolation="bicubic",
                          re_prob=re_prob, re_mode="pixel", re_count=1, mean=MEAN, std=STD)
    _patch_posterize(tf)
    return tf


def _posterize(img, bits_to_keep, **_):
    """timm's ``posterize`` with Pillow < 13's result for 0 bits (a black image): Pillow 13
    raises for ``bits < 1``, which timm's ``PosterizeIncreasing`` reaches at magnitude 10
    (``rand-m9-mstd0.5`` draws it)."""
    from PIL import Image, ImageOps
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def _patch_posterize(tf) -> None:
    """Route the posterize ops of timm's RandAugment inside ``tf`` through :func:`_posterize`."""
    from timm.data import auto_augment as aa
    for t in getattr(tf, "transforms", []):
        for op in getattr(t, "ops", []):
            if getattr(op, "aug_fn", None) is aa.posterize:
                op.aug_fn = _posterize


# ----------------------------------------------------------------------------- loaders
def train_loader(ds, batch_per_rank: int, *, seed: int, rank: int, world: int, workers: int):
    """Shuffled, ``drop_last`` loader over a plain ``DistributedSampler`` (call
    ``loader.sampler.set_epoch(e)`` each epoch)."""
    if batch_per_rank * world > len(ds):
        raise ValueError(f"the global batch ({batch_per_rank * world} per step) exceeds the "
                         f"{len(ds)} training images; lower --batch")
    sampler = torch.utils.data.DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True,
                                                  seed=seed, drop_last=True)
    return CheckedLoader(torch.utils.data.DataLoader(
        ds, batch_size=batch_per_rank, sampler=sampler, num_workers=workers, drop_last=True,
        collate_fn=collate_named, pin_memory=torch.cuda.is_available(),
        persistent_workers=False))


def eval_shard(ds, *, rank: int, world: int):
    """This rank's shard ``rank::world`` of ``ds``."""
    return torch.utils.data.Subset(ds, list(range(rank, len(ds), world)))


def eval_loader(ds, batch_per_rank: int, *, rank: int, world: int, workers: int):
    """This rank's shard ``rank::world`` of ``ds`` in order, no padding, no dropping."""
    return CheckedLoader(torch.utils.data.DataLoader(
        eval_shard(ds, rank=rank, world=world), batch_size=batch_per_rank, shuffle=False,
        num_workers=workers, collate_fn=collate_named, pin_memory=torch.cuda.is_available()))
