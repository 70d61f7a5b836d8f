#!/usr/bin/python3
"""Coefficients of nn/nn-simd.h's exp_neg_avx2: a degree-5 polynomial p with p(0) = 1 fitted
to exp on [-ln2/2, ln2/2] for least maximum relative error (Lawson's iteratively reweighted
least squares), then rounded to float32. Prints them and the maximum relative error of the
float32 Horner evaluation."""
import numpy as np

DEGREE = 5
half = np.log(2) / 2
r = np.linspace(-half, half, 20001)
f = np.exp(r)
v = np.vander(r, DEGREE + 1, increasing=True)[:, 1:]  # r .. r^5; p(0) = 1 is fixed
w = np.ones_like(r)
for _ in range(300):
    sw = np.sqrt(w) / f
    c, *_ = np.linalg.lstsq(v * sw[:, None], (f - 1) * sw, rcond=None)
    e = np.abs(v @ c + 1 - f) / f
    w = w * e
    w /= w.sum()
c32 = np.concatenate([[1.0], c]).astype(np.float32)
r32 = r.astype(np.float32)
p = np.full_like(r32, c32[DEGREE])
for i in range(DEGREE - 1, -1, -1):
    p = (p * r32 + c32[i]).astype(np.float32)
print("coefficients c0..c5:", ", ".join(repr(float(x)) for x in c32))
print(f"max relative error: fit {np.max(e):.3g}, float32 Horner "
      f"{np.max(np.abs(p.astype(np.float64) - f) / f):.3g}")
