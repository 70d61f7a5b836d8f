#!/usr/bin/python3
"""Predicted-class counts of a model over image folders, through xregctl nn-run.

    /usr/bin/python3 tools/probe-model.py MODEL.onnx 'GLOB' ['GLOB'...] [--xregctl PATH]

For out-of-distribution probes of the demo models (models/README.md): files outside the
training data, e.g. rows whose licence forbids training but not measuring. PNG/JPEG only,
preprocessed by tools/xreg_preprocess.py from the model's own metadata.
"""
import argparse
import glob
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('model')
    ap.add_argument('globs', nargs='+')
    ap.add_argument('--xregctl', default=os.path.join(root, 'build', 'daemon', 'xregctl'))
    a = ap.parse_args()
    import numpy as np
    import onnx
    import torch
    import xreg_preprocess as xp
    meta = {p.key: p.value for p in onnx.load(a.model).metadata_props}
    spec = xp.PreprocSpec.from_metadata(meta)
    labels = meta['xreg.labels'].split(',')
    for pat in a.globs:
        files = sorted(glob.glob(pat))
        if not files:
            print(f'{pat}: no file')
            continue
        x = torch.stack([xp.preprocess_file(f, spec) for f in files])
        with tempfile.TemporaryDirectory() as d:
            x.numpy().astype('<f4').tofile(os.path.join(d, 'in.f32'))
            subprocess.run([a.xregctl, 'nn-run', a.model, '--input', os.path.join(d, 'in.f32'),
                            '--output', os.path.join(d, 'out.f32')], check=True,
                           capture_output=True)
            y = np.fromfile(os.path.join(d, 'out.f32'), dtype='<f4').reshape(len(files), -1)
        pred = y.argmax(1)
        counts = {lab: int((pred == i).sum()) for i, lab in enumerate(labels)}
        print(f'{pat}: n={len(files)} predicted {counts}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
