"""Readers for the trackers' own files, for tests/test_*_tracking.py: TensorBoard's
EventAccumulator, and the records of an offline wandb run (its ``run-*.wandb`` file, parsed
with wandb's protobuf classes)."""
from __future__ import annotations

import glob
import json
import math
import os
import struct


def tensorboard_scalars(logdir) -> dict:
    """{tag: {step: value}} of every scalar event under ``logdir`` (TensorBoard's reader)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def _records(path):
    """The protobuf records of a ``.wandb`` file: a 7-byte header (``:W&B``, magic, version),
    then LevelDB-log blocks of 32 KiB whose chunks (4-byte CRC, 2-byte length, 1-byte type:
    1 full, 2 first, 3 middle, 4 last) carry serialised ``wandb_internal_pb2.Record``s."""
    from wandb.proto import wandb_internal_pb2 as pb
    data = open(path, "rb").read()
    assert data[:4] == b":W&B", f"{path}: not a wandb datastore"
    pos, block, chunk = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer: zero padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(chunk)
            chunk = b""
            yield record


def wandb_offline_run(output_dir) -> dict:
    """The one offline run under ``<output_dir>/wandb/``: {"dir", "history": {step: {key:
    value}}, "config": {key: value}, "files": [paths under files/]}."""
    runs = glob.glob(os.path.join(str(output_dir), "wandb", "offline-run-*"))
    assert len(runs) == 1, runs
    (wandb_file,) = glob.glob(os.path.join(runs[0], "run-*.wandb"))
    history, config = {}, {}
    for r in _records(wandb_file):
        kind = r.WhichOneof("record_type")
        if kind == "history":
            row = {i.key or "/".join(i.nested_key): json.loads(i.value_json)
                   for i in r.history.item}
            history.setdefault(r.history.step.num, {}).update(row)
        elif kind in ("run", "config"):  # the run record carries the initial config
            for i in (r.run.config if kind == "run" else r.config).update:
                config[i.key or "/".join(i.nested_key)] = json.loads(i.value_json)
    files = [os.path.relpath(p, os.path.join(runs[0], "files"))
             for p in glob.glob(os.path.join(runs[0], "files", "**", "*"), recursive=True)
             if os.path.isfile(p)]
    return {"dir": runs[0], "history": history, "config": config, "files": files}


def numeric(row: dict) -> dict:
    """The scalar entries of a JSONL row a tracker must carry (numbers, not None or bool)."""
    return {k: v for k, v in row.items() if isinstance(v, (int, float))
            and not isinstance(v, bool) and math.isfinite(v)}
