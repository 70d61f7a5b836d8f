"""The training side's preprocessing: the exact tensors xregd feeds a model, made with PIL and
torchvision (Debian's python3-torch 1.13 / python3-torchvision 0.14, run with /usr/bin/python3).

nn/nn-image.h implements the same pipeline in C; tests/unit/nn/test_preproc_parity.py checks that
both agree within 1e-5 (in practice to a few float32 ulps). Training and export tools must build
their inputs with this module (or `XregPreprocess` as a torchvision transform), so that a model
sees in training what it will see in production:

    from xreg_preprocess import PreprocSpec, XregPreprocess
    spec = PreprocSpec.from_metadata({"xreg.input_size": "224,224", "xreg.channels": "3",
                                      "xreg.mean": "0.5", "xreg.std": "0.25",
                                      "xreg.resize": "letterbox"})
    tf = XregPreprocess(spec)            # path or PIL image -> float32 tensor C x H x W
    x = tf("knee.png")

Pipeline (each step as in nn-image.h):
1. load_image: PIL decode; 8-bit samples / 255 (ToTensor); 16-bit gray PNG (PIL mode "I") / 65535;
   alpha dropped; palettes looked up; colour -> RGB, or PIL's convert("L") luma for a 1-channel
   model; gray kept as one channel.
2. resize: torchvision.transforms.functional.resize(bilinear, antialias=True) on the float tensor
   (aten upsample_bilinear2d_aa). "stretch" goes to H x W; "letterbox" to the size from
   geometry() and is pasted at (top, left) on a zero canvas.
3. a 1-channel image is repeated to 3 channels for a 3-channel model.
4. torchvision Normalize: (x - mean) / std per channel (skipped when spec.normalize is False).
"""
from __future__ import annotations

import dataclasses
import io
import os
from typing import List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

MODEL_DIM_MAX = 8192  # XR_IMAGE_MODEL_DIM_MAX in common/xr-limits.h
GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N")


@dataclasses.dataclass
class PreprocSpec:
    height: int = 224
    width: int = 224
    channels: int = 3
    mean: Tuple[float, ...] = (0.0, 0.0, 0.0)
    std: Tuple[float, ...] = (1.0, 1.0, 1.0)
    resize: str = "stretch"  # "stretch" | "letterbox"
    normalize: bool = True

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str]) -> "PreprocSpec":
        """From ONNX metadata_props (the xreg.* keys of docs/models.md); ValueError if malformed."""
        if "xreg.input_size" not in meta:
            raise ValueError('model metadata has no "xreg.input_size"')
        parts = meta["xreg.input_size"].split(",")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise ValueError(f'invalid "xreg.input_size": "{meta["xreg.input_size"]}"')
        h, w = int(parts[0]), int(parts[1])
        ch = meta.get("xreg.channels", "3")
        if ch not in ("1", "3"):
            raise ValueError(f'invalid "xreg.channels": "{ch}"')
        c = int(ch)

        def vec(key: str, default: float) -> Tuple[float, ...]:
            if key not in meta:
                return (default,) * c
            v = [float(x) for x in meta[key].split(",")]
            if len(v) == 1:
                v = v * c
            if len(v) != c or not all(np.isfinite(v)):
                raise ValueError(f'invalid "{key}": "{meta[key]}"')
            return tuple(v)

        spec = cls(height=h, width=w, channels=c, mean=vec("xreg.mean", 0.0),
                   std=vec("xreg.std", 1.0), resize=meta.get("xreg.resize", "stretch"))
        spec.validate()
        return spec

    def validate(self) -> None:
        if not (1 <= self.height <= MODEL_DIM_MAX and 1 <= self.width <= MODEL_DIM_MAX):
            raise ValueError(f"input size {self.height}x{self.width} out of range")
        if self.channels not in (1, 3):
            raise ValueError(f"channels {self.channels} must be 1 or 3")
        if self.resize not in ("stretch", "letterbox"):
            raise ValueError(f'resize "{self.resize}" must be "stretch" or "letterbox"')
        if len(self.mean) != self.channels or len(self.std) != self.channels or \
                not all(s > 0 for s in self.std):
            raise ValueError("mean/std need one value per channel and std > 0")

    def to_metadata(self) -> dict:
        """The xreg.* preprocessing keys for an exported model."""
        return {
            "xreg.input_size": f"{self.height},{self.width}",
            "xreg.channels": str(self.channels),
            "xreg.mean": ",".join(repr(float(m)) for m in self.mean),
            "xreg.std": ",".join(repr(float(s)) for s in self.std),
            "xreg.resize": self.resize,
        }


def geometry(spec: PreprocSpec, w: int, h: int) -> Tuple[int, int, int, int]:
    """(resized height, resized width, top, left) of a w x h image in the model input; integer
    arithmetic, the same as nn_preproc_geometry."""
    H, W = spec.height, spec.width
    rh, rw = H, W
    if spec.resize == "letterbox":
        if H * w <= W * h:
            rw = (2 * w * H + h) // (2 * h)
        else:
            rh = (2 * h * W + w) // (2 * w)
        rw = min(max(rw, 1), W)
        rh = min(max(rh, 1), H)
    return rh, rw, (H - rh) // 2, (W - rw) // 2


def pil_to_tensor01(im: Image.Image, channels: int = 3) -> torch.Tensor:
    """A PIL image as xreg decodes it: float32 C x H x W in [0,1]; C is 1 for gray sources (and
    for every source when channels == 1), else 3."""
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        a = np.array(im, dtype=np.int32)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ValueError(f"mode {im.mode} image has values outside 0..65535")
        return torch.from_numpy(a).to(torch.float32).div(65535)[None]
    if im.mode in ("CMYK", "F") or im.mode.startswith("I;"):
        raise ValueError(f"unsupported image mode {im.mode}")
    if im.mode in GRAY_MODES:
        im = im.convert("L") if im.mode != "L" else im
    elif channels == 1:
        im = im.convert("L")
    elif im.mode != "RGB":
        im = im.convert("RGB")
    return TF.to_tensor(im)


def load_image(src: Union[str, os.PathLike, bytes], channels: int = 3) -> torch.Tensor:
    """Decode a PNG or JPEG file (or its bytes) as nn_image_read_file does."""
    f = io.BytesIO(src) if isinstance(src, bytes) else src
    with Image.open(f) as im:
        if im.format not in ("PNG", "JPEG"):
            # xreg reads PNG and JPEG only (and DICOM); a dataset must not train on more.
            raise ValueError(f"{im.format} image: xreg reads PNG and JPEG files only")
        im.load()
        return pil_to_tensor01(im, channels)


def preprocess_tensor(t: torch.Tensor, spec: PreprocSpec) -> torch.Tensor:
    """Steps 2-4 on a decoded C x H x W float tensor in [0,1]."""
    if t.dtype != torch.float32 or t.dim() != 3 or t.shape[0] not in (1, 3):
        raise ValueError("expected a float32 tensor of shape (1|3, H, W)")
    if t.shape[0] == 3 and spec.channels == 1:
        raise ValueError("3-channel image for a 1-channel model: load it with channels=1")
    c, h, w = t.shape
    rh, rw, top, left = geometry(spec, w, h)
    r = TF.resize(t, [rh, rw], interpolation=InterpolationMode.BILINEAR, antialias=True)
    if (rh, rw) != (spec.height, spec.width):
        canvas = torch.zeros((c, spec.height, spec.width), dtype=torch.float32)
        canvas[:, top:top + rh, left:left + rw] = r
        r = canvas
    if c == 1 and spec.channels == 3:
        r = r.repeat(3, 1, 1)
    if spec.normalize:
        r = TF.normalize(r, list(spec.mean), list(spec.std))
    return r.contiguous()


def preprocess_file(src: Union[str, os.PathLike, bytes], spec: PreprocSpec) -> torch.Tensor:
    return preprocess_tensor(load_image(src, spec.channels), spec)


class XregPreprocess:
    """torchvision-style transform: path, bytes or PIL image -> model input tensor.

    Augmentations that work on PIL images go before it; tensor ones after it only if they are
    also applied by xregd (none are: keep them out of the evaluation pipeline)."""

    def __init__(self, spec: PreprocSpec):
        spec.validate()
        self.spec = spec

    def __call__(self, x) -> torch.Tensor:
        if isinstance(x, Image.Image):
            return preprocess_tensor(pil_to_tensor01(x, self.spec.channels), self.spec)
        return preprocess_file(x, self.spec)

    def __repr__(self) -> str:
        return f"XregPreprocess({self.spec})"


def dataset_mean_std(paths: Sequence[str], spec: PreprocSpec) -> Tuple[List[float], List[float]]:
    """Reference for `xregctl mean-std`: per-channel mean and population std over every pixel of
    every preprocessed (not normalized) image, accumulated in float64."""
    s = dataclasses.replace(spec, normalize=False)
    n = 0
    s1 = np.zeros(s.channels)
    s2 = np.zeros(s.channels)
    for p in paths:
        x = preprocess_file(p, s).numpy().astype(np.float64).reshape(s.channels, -1)
        n += x.shape[1]
        s1 += x.sum(1)
        s2 += (x * x).sum(1)
    mean = s1 / n
    return mean.tolist(), np.sqrt(np.maximum(s2 / n - mean * mean, 0)).tolist()


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description="preprocess one image as xregd does; writes .npy")
    ap.add_argument("image")
    ap.add_argument("out")
    ap.add_argument("-m", "--meta", action="append", default=[], metavar="KEY=VALUE")
    a = ap.parse_args()
    meta = dict(kv.split("=", 1) for kv in a.meta)
    np.save(a.out, preprocess_file(a.image, PreprocSpec.from_metadata(meta)).numpy())
