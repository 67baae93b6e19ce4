"""Evaluation of pretrained encoders (``mmae-eval``) and export (``mmae-export``).

    encoder.py   any training checkpoint / export -> timm ``VisionTransformer``
    data.py      digits and image-folder data sets, the protocols' transforms, loaders
    common.py    distributed set-up, MAE's lr schedule, seeding, epoch checkpoints, top-k
    linprobe.py  the official linear probe (LARS, BatchNorm + Linear on the CLS token)
    finetune.py  the official fine-tuning (layer decay, mixup/cutmix, RandAugment, EMA)
    monitor.py   quick monitors: AdamW probe, kNN, effective rank on streamed features
    cli.py       ``mmae-eval {linprobe,finetune,monitor}``

See docs/evaluation.md.
"""
