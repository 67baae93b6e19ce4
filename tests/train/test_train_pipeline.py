"""The GPU image pipeline (its CPU fallback here): MAE's augmentation in batch, determinism in
(seed, step), corrupt files named."""
import math
import os

import pytest
import torch

from mmae_fast import train
from mmae_fast.mae import data
from mmae_fast.mae.timm_compat import timm  # noqa: F401 - torchvision on a CPU torch
from mmae_fast.mae.gpu_pipeline import BadImage, FileReader, augment, crop_box


def _folder(root, per_class=5, fmt="JPEG"):
    from PIL import Image
    g = torch.Generator().manual_seed(0)
    ext = {"JPEG": "jpg", "PNG": "png"}[fmt]
    for c in ("a", "b"):
        os.makedirs(root / "train" / c, exist_ok=True)
        for i in range(per_class):
            h, w = 20 + 3 * i, 28 - 2 * i
            px = (torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(px).save(root / "train" / c / f"{i}.{ext}", fmt)
    return root


def test_crop_box_is_mae_random_resized_crop():
    boxes = [crop_box(seed, 60, 80) for seed in range(400)]
    assert boxes == [crop_box(seed, 60, 80) for seed in range(400)]  # a function of the seed
    for top, left, h, w, _ in boxes:
        assert 0 <= top <= 60 - h and 0 <= left <= 80 - w
        assert 0.2 * 4800 * 0.9 <= h * w <= 4800 and 3 / 4 * 0.85 <= w / h <= 4 / 3 * 1.15
    flips = sum(b[4] for b in boxes)
    assert 150 < flips < 250
    areas = [h * w / 4800 for _, _, h, w, _ in boxes]
    assert min(areas) < 0.3 and max(areas) > 0.9  # the whole scale range is drawn
    # a 1 x 10 strip admits no box in the ratio range: the centred fallback
    assert crop_box(0, 1, 10)[:4] == (0, 4, 1, 1)


def test_augment_matches_torchvision_resized_crop_flip_normalise(gen):
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF
    imgs = [(torch.rand(3, 30 + 7 * i, 41 - 5 * i, generator=gen) * 255).to(torch.uint8)
            for i in range(4)]
    seeds = [11, 12, 13, 14]
    out = augment(imgs, seeds, 16, data.MEAN, data.STD)
    assert out.shape == (4, 3, 16, 16) and out.dtype == torch.float32
    for img, seed, got in zip(imgs, seeds, out):
        top, left, h, w, flip = crop_box(seed, *img.shape[1:])
        ref = TF.resized_crop(img.float(), top, left, h, w, [16, 16],
                              interpolation=InterpolationMode.BICUBIC, antialias=True)
        ref = TF.hflip(ref) if flip else ref
        ref = TF.normalize(ref.clamp(0, 255) / 255, data.MEAN, data.STD)
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_gpu_pipeline_fallback_is_a_function_of_seed_and_step(tmp_path, fmt):
    root = _folder(tmp_path / "imgs", fmt=fmt)
    kw = dict(img_size=16, seed=3, data_path=str(root), workers=0, pipeline="gpu",
              device="cpu")
    seq = data.build("imagefolder", batch_per_rank=4, **kw)
    b0, b1 = seq.batch(0), seq.batch(1)
    fresh = data.build("imagefolder", batch_per_rank=4, **kw).batch(1)  # a resumed run
    assert torch.equal(fresh[0], b1[0]) and torch.equal(fresh[1], b1[1])
    assert not torch.equal(b0[0], b1[0]) and b0[0].shape == (4, 3, 16, 16)
    # rank 1 of 2 sees the second half of the 1-process batch, augmented identically
    half = data.build("imagefolder", batch_per_rank=2, rank=1, world=2, **kw).batch(1)
    assert torch.equal(half[0], b1[0][2:]) and torch.equal(half[1], b1[1][2:])
    other = data.build("imagefolder", batch_per_rank=4, **(kw | {"seed": 4})).batch(1)
    assert not torch.equal(other[0], b1[0])
    assert math.isclose(float(b1[0].mean()), 0.0, abs_tol=1.0)  # normalised
    # the workers' augmentation (the CPU fallback) = the device path's batched augment()
    reader = FileReader(seq._device_pipe.samples, raw_jpeg=False)
    pixels = [reader[(i, 0)][1] for i in seq.indices(1).tolist()]
    torch.testing.assert_close(b1[0], augment(pixels, seq.sample_seeds(1), 16, data.MEAN,
                                              data.STD))


def test_reader_sends_jpeg_bytes_and_decodes_the_rest(tmp_path):
    jpg, png = _folder(tmp_path / "j"), _folder(tmp_path / "p", fmt="PNG")
    samples = [(str(jpg / "train/a/0.jpg"), 0), (str(png / "train/a/0.png"), 0)]
    raw = FileReader(samples, raw_jpeg=True)
    kind, payload, _, _ = raw[(0, 1)]
    assert kind == "jpeg" and payload.dtype == torch.uint8 and payload.dim() == 1
    assert bytes(payload[:3].tolist()) == b"\xff\xd8\xff"
    kind, payload, _, _ = raw[(1, 1)]
    assert kind == "pixels" and payload.shape == (3, 20, 28)
    assert FileReader(samples, raw_jpeg=False)[(0, 1)][0] == "pixels"


@pytest.mark.parametrize("pipeline, workers, damage", [
    ("gpu", 0, "junk"), ("pil", 0, "junk"), ("gpu", 1, "junk"),
    # the CPU defaults: PIL in loader workers (an exception raised in a worker comes back as
    # "Caught BadImage in DataLoader worker process 0" and the worker's traceback)
    ("pil", 2, "junk"), ("pil", 2, "truncated")])
def test_a_corrupt_file_is_named_never_a_hang(tmp_path, capsys, pipeline, workers, damage):
    root = _folder(tmp_path / "imgs", per_class=2)
    bad = root / "train" / "b" / "broken.jpg"
    if damage == "junk":
        bad.write_bytes(b"\xff\xd8\xff this is not a JPEG")
    else:  # a real JPEG cut in half
        whole = (root / "train" / "a" / "0.jpg").read_bytes()
        bad.write_bytes(whole[: len(whole) // 2])
    kw = dict(img_size=16, seed=0, data_path=str(root), workers=workers, pipeline=pipeline,
              device="cpu", batch_per_rank=5)
    with pytest.raises(BadImage, match=f"{bad}: not a decodable image"):
        data.build("imagefolder", **kw).batch(0)  # one batch holds all 5 files
    rc = train.main(["--data", "imagefolder", "--data-path", str(root), "--workers", str(workers),
                     "--data-pipeline", pipeline, "--batch", "5", "--steps", "1", "--device",
                     "cpu", "--no-progress", "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and str(bad) in err, err
    assert err.startswith(f"mmae-train: error: {bad}: not a decodable image"), err


def test_train_with_the_gpu_pipeline_fallback(tmp_path):
    root = _folder(tmp_path / "imgs")
    res = train.train(train.parse_args(
        ["--data", "imagefolder", "--data-path", str(root), "--workers", "0", "--batch", "4",
         "--data-pipeline", "gpu", "--steps", "2", "--no-progress", "--no-plot", "--no-export",
         "--device", "cpu", "--output-dir", str(tmp_path / "run")]))
    assert len(res["losses"]) == 2 and all(math.isfinite(v) for v in res["losses"])


def test_bench_data_runs_and_writes_rows(tmp_path, capsys):
    import importlib.util
    import json
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    spec = importlib.util.spec_from_file_location("bench_data", os.path.join(root, "bench",
                                                                             "data.py"))
    bench_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_data)
    bench_data.main(["--images", "8", "--batch", "4", "--batches", "1", "--workers", "0",
                     "--img-size", "16", "--device", "cpu", "--folder", str(tmp_path / "jpeg"),
                     "--out", str(tmp_path / "out")])
    (path,) = (tmp_path / "out").glob("*/data-*.json")
    rows = json.loads(path.read_text())["results"]
    assert [r["pipeline"] for r in rows] == ["pil", "gpu"]
    assert all(r["status"] == "ok" and r["img_per_s"] > 0 for r in rows)
    assert len(list((tmp_path / "jpeg").glob("train/*/*.jpg"))) == 8
    assert "img/s" in capsys.readouterr().out


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_nvjpeg_pipeline_matches_the_cpu_fallback(tmp_path):
    """Same crops and flips on the GPU (nvJPEG decode, batched augmentation); pixels may differ
    by the decoders' rounding (IDCT), so compare loosely, and exactly across two GPU runs."""
    root = _folder(tmp_path / "imgs")
    kw = dict(img_size=16, seed=3, data_path=str(root), workers=0, pipeline="gpu",
              batch_per_rank=4)
    gpu = data.build("imagefolder", device="cuda", **kw).batch(1)
    again = data.build("imagefolder", device="cuda", **kw).batch(1)
    cpu = data.build("imagefolder", device="cpu", **kw).batch(1)
    assert gpu[0].is_cuda and torch.equal(gpu[0], again[0])
    assert torch.equal(gpu[1], cpu[1])
    assert (gpu[0].cpu() - cpu[0]).abs().mean() < 0.05


def test_a_jpeg_the_device_decoder_rejects_goes_through_pil(tmp_path, monkeypatch):
    """nvJPEG rejects some valid JPEGs (CMYK/YCCK, unusual chroma subsampling): such a file is
    decoded by PIL instead of stopping the run; a file PIL cannot read either is still named."""
    import torchvision.io

    from mmae_fast.mae import gpu_pipeline

    jpg = _folder(tmp_path / "j")
    samples = [(str(jpg / "train/a/0.jpg"), 0), (str(jpg / "train/a/1.jpg"), 0)]
    items = [FileReader(samples, raw_jpeg=True)[(i, 1)] for i in range(2)]
    def real(data):  # a stand-in decoder (torchvision's image extension needs a matching torch)
        import io

        import numpy as np
        from PIL import Image
        return [torch.from_numpy(np.asarray(Image.open(io.BytesIO(bytes(d.tolist())))
                                            .convert("RGB")).copy()).permute(2, 0, 1)
                for d in data]

    def picky(data, *args, **kwargs):  # rejects any batch holding the first file
        if any(torch.equal(d, items[0][1]) for d in data):
            raise RuntimeError("unsupported chroma subsampling")
        return real(data)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", picky)
    images = gpu_pipeline.decode(items, torch.device("cpu"))
    assert [tuple(im.shape) for im in images] == [(3, 20, 28), (3, 23, 26)]
    assert torch.equal(images[1], real([items[1][1]])[0])
    broken = ("jpeg", items[0][1], 0, str(tmp_path / "gone.jpg"))  # PIL cannot open it either
    with pytest.raises(BadImage, match="gone.jpg"):
        gpu_pipeline.decode([broken, items[1]], torch.device("cpu"))
