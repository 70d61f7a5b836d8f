"""Tiny self-describing ONNX classifiers with known behaviour, and images that steer them.

Every model reads one gray channel at 16 x 16 (stretch, mean 0, std 1) and looks only at the mean
brightness m of its input (global average pool -> linear), so a test knows what each image gets:

    body part  labels chest,pelvis_hip   logits (10 - 20 m, 20 m - 10): bright -> pelvis_hip
    implant    labels absent,present     logits (0, 20 m - 10):         bright -> present
    fracture   labels absent,present     logits (0, 12 - 20 m):         dark -> present

bright_image()/dark_image() write CR objects whose decoded pixels (default percentile window)
have a mean of about 0.9 / 0.1. The models carry every xreg.* key of docs/models.md
(contracts6), so classifier_load accepts them; `version` changes the weights slightly (a new
sha256) without changing any decision. Needs /usr/bin/python3 with torch and onnx (Debian).
"""

from __future__ import annotations

import hashlib
import pathlib

import numpy as np

import dicomgen

TASKS = ("body_part", "implant", "fracture")
LABELS = {"body_part": "chest,pelvis_hip", "implant": "absent,present", "fracture": "absent,present"}
# (weight, bias) per output, applied to m
WEIGHTS = {
    "body_part": ([-20.0, 20.0], [10.0, -10.0]),
    "implant": ([0.0, 20.0], [0.0, -10.0]),
    "fracture": ([0.0, -20.0], [0.0, 12.0]),
}


def export(task: str, path: pathlib.Path, *, version: str = "1", name: str | None = None,
           threshold: str | None = None, placeholder: str | None = None) -> pathlib.Path:
    import onnx
    import torch

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(1, 2)

        def forward(self, x):
            return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))

    net = Net().eval()
    w, b = WEIGHTS[task]
    scale = 1.0 + 0.01 * (int(hashlib.sha256(version.encode()).hexdigest(), 16) % 7)
    with torch.no_grad():
        net.fc.weight.copy_(torch.tensor([[w[0] * scale], [w[1] * scale]]))
        net.fc.bias.copy_(torch.tensor([b[0] * scale, b[1] * scale]))
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.onnx.export(net, torch.zeros(2, 1, 16, 16), str(tmp), opset_version=13,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    m = onnx.load(str(tmp))
    meta = {
        "xreg.task": task, "xreg.name": name or f"tiny-{task}", "xreg.version": version,
        "xreg.labels": LABELS[task], "xreg.output": "logits", "xreg.input_size": "16,16",
        "xreg.channels": "1", "xreg.mean": "0", "xreg.std": "1", "xreg.resize": "stretch",
        "xreg.provenance": "hand-set weights: tests only",
    }
    if task != "body_part":
        meta["xreg.positive_label"] = "present"
        if threshold is not None:
            meta["xreg.threshold"] = threshold
    if placeholder:
        meta["xreg.placeholder"] = placeholder
    del m.metadata_props[:]
    for k, v in meta.items():
        e = m.metadata_props.add()
        e.key, e.value = k, v
    onnx.save(m, str(tmp))
    tmp.replace(path)
    return path


def probabilities(task: str, mean: float, version: str = "1") -> list[float]:
    """What the model gives for an input of mean brightness `mean` (float64 softmax)."""
    w, b = WEIGHTS[task]
    scale = 1.0 + 0.01 * (int(hashlib.sha256(version.encode()).hexdigest(), 16) % 7)
    z = np.array([w[0] * scale * mean + b[0] * scale, w[1] * scale * mean + b[1] * scale])
    e = np.exp(z - z.max())
    return list(e / e.sum())


def sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def image(path: pathlib.Path, bright: bool, *, study_instance_uid: str | None = None,
          body_part: str = "", patient_id: str = "XRT-CLS", instance_number: int = 1,
          rows: int = 64, columns: int = 64, seed: int = 0,
          fraction: float | None = None) -> dicomgen.GeneratedFile:
    """A CR object: 90% of pixels at 4000 and 10% at 0 (bright) or the other way round (dark);
    the default window maps them to 1 and 0, so the decoded mean is 0.9 or 0.1 (or `fraction`)."""
    ds = dicomgen.make_dataset("CR", study_instance_uid=study_instance_uid, patient_id=patient_id,
                               body_part=body_part, rows=rows, columns=columns, bits_stored=12,
                               instance_number=instance_number, seed=seed)
    if not body_part:
        del ds.BodyPartExamined
    rng = np.random.default_rng(seed)
    hi = rng.random((rows, columns)) < (fraction if fraction is not None else 0.9 if bright else 0.1)
    px = np.where(hi, 4000, 0).astype("<u2")
    ds.PixelData = px.tobytes()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dicomgen.write(ds, path)
    return dicomgen.info(path)


def decoded_mean(bright: bool, rows: int = 64, columns: int = 64, seed: int = 0) -> float:
    """The mean the model sees (16 x 16 antialiased resize keeps the mean of a 0/1 image up to
    its border weighting; close enough for the decisions here, not for exact probabilities)."""
    rng = np.random.default_rng(seed)
    hi = rng.random((rows, columns)) < (0.9 if bright else 0.1)
    return float(hi.mean())
