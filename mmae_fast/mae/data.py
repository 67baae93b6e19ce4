"""Training data whose order and augmentations are a function of (seed, step): resumable exactly.

    --data digits        sklearn's bundled digits (1797 8x8 images, 10 classes), upscaled, 3
                         channels, normalised; no download (the embedded default)
    --data imagefolder   --data-path DIR (ImageNet layout: DIR/train/<class>/*.jpg, or DIR/<class>/
                         ...), RandomResizedCrop(scale 0.2-1) + horizontal flip, as MAE;
                         pipeline "pil" (PIL + torchvision transforms in the loader workers) or
                         "gpu" (bytes from the workers, nvJPEG decode and batched augmentation on
                         the device: mmae_fast.mae.gpu_pipeline; its CPU fallback decodes with
                         PIL and augments in batch on the CPU)
    --data synthetic     Gaussian images, labels 0 (throughput runs)

Global batch ``b`` of step ``s`` (``b = batch_per_rank · world``): epoch ``e = s // (n // b)``
(the last incomplete batch is dropped), permutation ``randperm(n)`` seeded with ``(seed, e)``,
rows ``[(s mod spe)·b, +b)``; rank r takes its slice ``[r·batch_per_rank, +batch_per_rank)``.
Each image's augmentation is seeded by ``(seed, s, position in the global batch)``. So a
resumed run, or K ranks, see exactly the images of an uninterrupted single-process run.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

DATASETS = ("digits", "imagefolder", "synthetic")


def resolve_data(data: str | None, data_path: str | None) -> str:
    """The data set a run uses: ``--data`` as given; left out, ``imagefolder`` when
    ``--data-path`` names a folder, else ``digits``. A ``--data-path`` beside another data set
    is an error: it would be ignored."""
    if data is None:
        return "imagefolder" if data_path else "digits"
    if data_path and data != "imagefolder":
        raise ValueError(f"--data-path {data_path!r} is read only by --data imagefolder, not "
                         f"--data {data}: pass --data imagefolder (or leave --data out), or drop "
                         f"--data-path")
    return data
PIPELINES = ("auto", "gpu", "pil")
#: per-channel mean / std used for digits and image folders (ImageNet's)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _seed(*parts: int) -> int:
    """A 63-bit seed mixing integers (splitmix64-style), stable across processes."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


def generator(*parts: int) -> torch.Generator:
    """A CPU generator seeded from ``parts`` (e.g. seed, step)."""
    return torch.Generator().manual_seed(_seed(*parts))


def _normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def load_digits(img_size: int, split: str = "train", test_fraction: float = 0.2):
    """Digits as (images (n, 3, img_size, img_size) float32 normalised, labels (n,) int64).

    A fixed stratified split (every 5th image of each class goes to "test")."""
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    from sklearn.datasets import load_digits as _load
    bunch = _load()
    x = torch.tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0  # (n, 1, 8, 8) in [0, 1]
    y = torch.tensor(bunch.target, dtype=torch.int64)
    x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False)
    x = _normalise(x.clamp(0, 1).expand(-1, 3, -1, -1))
    if split != "all":
        every = round(1 / test_fraction)
        rank_in_class = torch.zeros_like(y)
        for c in y.unique():
            idx = (y == c).nonzero().flatten()
            rank_in_class[idx] = torch.arange(len(idx))
        test = rank_in_class % every == every - 1
        keep = test if split == "test" else ~test
        x, y = x[keep], y[keep]
    return x.contiguous(), y


class StepBatches:
    """Batches as a function of the step: ``batch(step) -> (images, labels)`` for this rank."""

    def __init__(self, n: int, batch_per_rank: int, *, seed: int, rank: int = 0, world: int = 1):
        self.n, self.b, self.seed, self.rank, self.world = n, batch_per_rank, seed, rank, world
        self.global_batch = batch_per_rank * world
        if self.global_batch > n:
            raise ValueError(f"the global batch ({self.global_batch} = batch {batch_per_rank} x "
                             f"{world} ranks) exceeds the data set size ({n}); lower --batch")
        self.steps_per_epoch = n // self.global_batch
        self._perm_epoch, self._perm = None, None

    def indices(self, step: int) -> torch.Tensor:
        """Data-set indices of this rank's rows of global batch ``step``."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        if epoch != self._perm_epoch:
            self._perm = torch.randperm(self.n, generator=generator(self.seed, 1, epoch))
            self._perm_epoch = epoch
        start = pos * self.global_batch + self.rank * self.b
        return self._perm[start:start + self.b]

    def sample_seeds(self, step: int) -> list[int]:
        """Augmentation seed of each of this rank's rows (by global position in the batch)."""
        first = self.rank * self.b
        return [_seed(self.seed, 2, step, first + i) for i in range(self.b)]

    def plan(self) -> StepBatches:
        """A plain copy (rows and seeds of every step, nothing else). What a DataLoader holds
        must not hold the loader's owner: such a cycle is freed by the cycle collector, which
        can clear the loader's queues first and so stall each worker's shutdown 5 s."""
        return StepBatches(self.n, self.b, seed=self.seed, rank=self.rank, world=self.world)

    def loader_batches(self, start: int):
        """A DataLoader's batch sampler: ``[(index, seed), ...]`` of steps ``start``,
        ``start + 1``, ... (of a ``plan()`` copy)."""
        plan = self.plan()
        return (list(zip(plan.indices(s).tolist(), plan.sample_seeds(s)))
                for s in range(start, 1 << 62))


class TensorData(StepBatches):
    """An in-memory data set (digits); images are used as stored (no augmentation)."""

    def __init__(self, images, labels, batch_per_rank, **kw):
        super().__init__(len(images), batch_per_rank, **kw)
        self.images, self.labels, self.num_classes = images, labels, int(labels.max()) + 1

    def batch(self, step: int):
        idx = self.indices(step)
        return self.images[idx], self.labels[idx]


class SyntheticData(StepBatches):
    """Gaussian images, label 0: each step's batch drawn from a (seed, step) generator."""

    num_classes = 1

    def __init__(self, img_size: int, batch_per_rank: int, **kw):
        super().__init__(1 << 30, batch_per_rank, **kw)
        self.img_size = img_size

    def batch(self, step: int):
        g = generator(self.seed, 3, step)
        full = torch.randn(self.global_batch, 3, self.img_size, self.img_size, generator=g)
        x = full[self.rank * self.b:(self.rank + 1) * self.b]
        return x, torch.zeros(len(x), dtype=torch.int64)


class _SeededImages(torch.utils.data.Dataset):
    """ImageFolder items indexed by (index, seed): the seed fixes the random augmentation.
    A file that fails to decode comes back as ``(None, reason, path)`` (reported by the main
    process, naming the file: a worker exception would bury it in a traceback)."""

    def __init__(self, folder, transform):
        self.folder, self.transform = folder, transform

    def __len__(self):
        return len(self.folder)

    def __getitem__(self, item):
        index, seed = item
        path, label = self.folder.samples[index]
        try:
            img = self.folder.loader(path)
        except Exception as exc:  # noqa: BLE001
            return None, f"{type(exc).__name__}: {exc}".splitlines()[0][:200], path
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(img), label, path


def _collate_checked(items):
    """Stack ``(image, label, path)`` items -> ``(images, labels, None)``, or ``(None, None,
    message)`` naming the first bad file. It runs in the loader workers, so it never raises:
    the main process raises the message (``_checked``), one line, where an exception raised
    here would come back as the loader's "Caught ... in DataLoader worker" traceback."""
    for img, reason, path in items:
        if img is None:
            return None, None, f"{path}: not a decodable image ({reason}); remove or replace it"
    return torch.stack([it[0] for it in items]), torch.tensor([it[1] for it in items]), None


def _checked(batch):
    """``_collate_checked``'s result in the main process: ``(images, labels)`` or BadImage."""
    images, labels, bad = batch
    if bad is not None:
        from .gpu_pipeline import BadImage
        raise BadImage(bad)
    return images, labels


class ImageFolderData(StepBatches):
    """ImageNet-layout folder with MAE's augmentation; batches loaded by a DataLoader."""

    def __init__(self, root: str, img_size: int, batch_per_rank: int, *, workers: int = 8,
                 pipeline: str = "pil", device="cpu", **kw):
        from . import timm_compat  # noqa: F401 - torchvision beside a CPU-only torch
        from torchvision import datasets, transforms
        train = os.path.join(root, "train")
        try:
            folder = datasets.ImageFolder(train if os.path.isdir(train) else root)
        except FileNotFoundError as exc:
            raise ValueError(f"--data-path {root!r}: {exc} (an ImageNet layout: "
                             f"DIR/train/<class>/<image>)") from None
        if pipeline not in PIPELINES:
            raise ValueError(f"--data-pipeline must be one of {PIPELINES}, got {pipeline!r}")
        device = torch.device(device)
        if pipeline == "auto":
            pipeline = "gpu" if device.type == "cuda" else "pil"
        self.pipeline = pipeline
        tf = transforms.Compose([
            transforms.RandomResizedCrop(img_size, scale=(0.2, 1.0),
                                         interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.RandomHorizontalFlip(), transforms.ToTensor(),
            transforms.Normalize(MEAN, STD)])
        super().__init__(len(folder), batch_per_rank, **kw)
        self.num_classes = len(folder.classes)
        self.dataset, self.workers = _SeededImages(folder, tf), workers
        self._iter, self._next_step = None, None
        self._device_pipe = None
        if pipeline == "gpu":
            from .gpu_pipeline import DeviceImageFolder
            self._device_pipe = DeviceImageFolder(folder.samples, self.plan(), img_size, device,
                                                  workers, MEAN, STD)

    def batch(self, step: int):
        if self._device_pipe is not None:
            return self._device_pipe.batch(step)
        if self._iter is None or step != self._next_step:
            loader = torch.utils.data.DataLoader(
                self.dataset, batch_sampler=self.loader_batches(step), num_workers=self.workers,
                collate_fn=_collate_checked, pin_memory=torch.cuda.is_available(),
                persistent_workers=False)
            self._iter = iter(loader)
        self._next_step = step + 1
        return _checked(next(self._iter))


def build(name: str, *, img_size: int, batch_per_rank: int, seed: int, rank: int = 0,
          world: int = 1, data_path: str | None = None, workers: int = 8,
          pipeline: str = "auto", device="cpu"):
    """The training data of ``--data name`` (see the module docstring); ``pipeline`` and
    ``device`` choose the image-folder pipeline ("auto": "gpu" on CUDA, else "pil")."""
    if name not in DATASETS:
        raise ValueError(f"--data must be one of {DATASETS}, got {name!r}")
    kw = dict(seed=seed, rank=rank, world=world)
    if name == "imagefolder":
        if not data_path:
            raise ValueError("--data imagefolder needs --data-path DIR (ImageNet layout)")
        if not os.path.isdir(data_path):
            raise ValueError(f"--data-path {data_path!r} is not a directory")
        return ImageFolderData(data_path, img_size, batch_per_rank, workers=workers,
                               pipeline=pipeline, device=device, **kw)
    if name == "synthetic":
        return SyntheticData(img_size, batch_per_rank, **kw)
    images, labels = load_digits(img_size, "train")
    return TensorData(images, labels, batch_per_rank, **kw)


def eval_arrays(name: str, img_size: int, data_path: str | None = None, max_images: int = 10000):
    """(train images, train labels, test images, test labels) for probing frozen features.

    digits: the fixed split. imagefolder: DIR/train and DIR/val, resize + centre crop, at most
    ``max_images`` each (evenly spaced)."""
    if name == "digits":
        return (*load_digits(img_size, "train"), *load_digits(img_size, "test"))
    if name != "imagefolder":
        raise ValueError(f"evaluation needs --data digits or imagefolder, got {name!r}")
    if not data_path or not os.path.isdir(os.path.join(data_path, "val")):
        raise ValueError("--data imagefolder evaluation needs --data-path DIR with DIR/train and "
                         "DIR/val")
    from . import timm_compat  # noqa: F401 - torchvision beside a CPU-only torch
    from torchvision import datasets, transforms
    tf = transforms.Compose([transforms.Resize(int(img_size * 256 / 224)),
                             transforms.CenterCrop(img_size), transforms.ToTensor(),
                             transforms.Normalize(MEAN, STD)])
    out = []
    for split in ("train", "val"):
        folder = datasets.ImageFolder(os.path.join(data_path, split), tf)
        idx = torch.linspace(0, len(folder) - 1, min(max_images, len(folder))).long().tolist()
        xs, ys = zip(*(folder[i] for i in idx))
        out += [torch.stack(xs), torch.tensor(ys)]
    return tuple(out)
