"""``mmae-export``: timm-loadable encoder weights from any checkpoint.

    mmae-export runs/vitb/checkpoint-last.pt                       # -> runs/vitb/encoder-export.*
    mmae-export runs/vitb/checkpoint-last.pt -o vitb.safetensors --no-head

Input: a training checkpoint at any step (after ``--stop-after``, with ``--no-export``, or
mid-run), a trainer export, or a ``mmae-eval finetune`` checkpoint. Output: the encoder in timm
``VisionTransformer`` names (float32; ``.safetensors``, or a ``torch.save`` state dict for
``.pt``/``.pth``) and a JSON sidecar beside it (same stem): ``timm_name`` and ``timm_kwargs``
for ``timm.create_model``. The trainer's online head (``head.0.*`` Linear, or BN + Linear folded
into one Linear) or a fine-tuned head is included unless ``--no-head``. Loading::

    import json
    import mmae_fast.mae.timm_compat  # only where torchvision does not match torch (see module)
    import timm
    cfg = json.load(open("vitb.json"))
    kw = cfg["timm_kwargs"]
    model = timm.create_model(cfg["timm_name"], pretrained=True, **kw,
                              pretrained_cfg_overlay=dict(file="vitb.safetensors",
                                                          num_classes=kw["num_classes"]))
"""
from __future__ import annotations

import json
import os
import sys

import torch

from ..mae import errors

#: the timm model whose defaults ``timm_kwargs`` fully override (presets without a timm name)
CARRIER = "vit_base_patch16_224"


def sidecar_path(path: str) -> str:
    return os.path.splitext(path)[0] + ".json"


def export(checkpoint: str, output: str | None = None, *, head: bool = True,
           num_heads: int | None = None) -> dict:
    """Write the encoder of ``checkpoint`` to ``output`` (+ JSON sidecar); returns
    {path, sidecar, timm_name, timm_kwargs, keys}."""
    from .encoder import load_encoder
    state, info = load_encoder(checkpoint, num_heads=num_heads, head=head)
    output = output or os.path.join(os.path.dirname(os.path.abspath(checkpoint)),
                                    "encoder-export.safetensors")
    if not output.endswith((".safetensors", ".pt", ".pth")):
        raise ValueError(f"--output {output!r}: end it in .safetensors, .pt or .pth")
    if os.path.abspath(output) == os.path.abspath(checkpoint):
        raise ValueError("--output would overwrite the input checkpoint; choose another path")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    name = info["timm_name"] or CARRIER
    kwargs = info["kwargs"]
    if output.endswith(".safetensors"):
        from safetensors.torch import save_file
        save_file(state, output, metadata={"format": "pt", "timm_name": name,
                                           "timm_kwargs": json.dumps(kwargs)})
    else:
        torch.save(state, output)
    meta = {"timm_name": name, "timm_kwargs": kwargs, "source": os.path.abspath(checkpoint),
            "source_kind": info["kind"], "head": bool(kwargs["num_classes"])}
    with open(sidecar_path(output), "w") as f:
        json.dump(meta, f, indent=1)
    return {"path": output, "sidecar": sidecar_path(output), "timm_name": name,
            "timm_kwargs": kwargs, "keys": len(state)}


def main(argv=None) -> int:
    p = errors.OneLineParser(prog="mmae-export", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="training checkpoint (any step), trainer export, or "
                                      "mmae-eval finetune checkpoint")
    p.add_argument("-o", "--output", help="output file (.safetensors, .pt, .pth); default "
                                          "<checkpoint dir>/encoder-export.safetensors")
    p.add_argument("--no-head", dest="head", action="store_false",
                   help="export the encoder only (timm num_classes=0)")
    p.add_argument("--num-heads", type=int, help="only for inputs without a preset name")
    args = p.parse_args(argv)
    try:
        res = export(args.checkpoint, args.output, head=args.head, num_heads=args.num_heads)
    except ValueError as exc:
        p.error(str(exc))
    except OSError as exc:  # reading the input is checked by load_encoder: this is the output
        where = exc.filename or args.output or "the default output path"
        p.error(f"--output: cannot write {where!r} ({exc.strerror or exc}); give -o a path in "
                f"a writable directory")
    print(f"wrote {res['path']} ({res['keys']} tensors) and {res['sidecar']}: "
          f"timm.create_model({res['timm_name']!r}, **timm_kwargs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
