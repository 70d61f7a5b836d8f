#!/usr/bin/python3
"""Small self-describing ONNX classifiers for the classifier/model-info/eval tests.

    make_test_models.py OUTDIR [STAMP]

writes OUTDIR/<name>.onnx for every entry of MODELS (good ones and ones with one metadata
problem each), plus OUTDIR/ref-<name>.f32 (an input batch of 3, float32 NCHW) and
OUTDIR/ref-<name>.probs (the 3 x n_labels probabilities PyTorch gives for it). Deterministic:
fixed seeds, so the build regenerates the same files. Run with /usr/bin/python3 (Debian torch).
"""
import hashlib
import os
import sys

import numpy as np
import onnx
import torch
from PIL import Image


class Tiny(torch.nn.Module):
    """conv -> relu -> global average pool -> linear: a few hundred weights."""

    def __init__(self, channels, n_out, softmax=False):
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, 8, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(8, n_out)
        self.softmax = softmax

    def forward(self, x):
        x = torch.relu(self.conv(x))
        x = torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1)
        x = self.fc(x)
        return torch.softmax(x, dim=1) if self.softmax else x


BODY = {
    'xreg.task': 'body_part', 'xreg.name': 'test-body-part', 'xreg.version': '1.0-test',
    'xreg.labels': 'chest,knee,hand', 'xreg.output': 'logits', 'xreg.input_size': '32,32',
    'xreg.channels': '1', 'xreg.mean': '0.5', 'xreg.std': '0.25', 'xreg.resize': 'letterbox',
    'xreg.provenance': 'random weights (torch seed 1), tests only',
    'xreg.metrics': '{"chest": {"recall": 0.5}, "n": 3}',
}
IMPLANT = {
    'xreg.task': 'implant', 'xreg.name': 'test-implant', 'xreg.version': '1.0-test',
    'xreg.labels': 'absent,present', 'xreg.positive_label': 'present',
    'xreg.threshold': '0.3', 'xreg.output': 'probabilities', 'xreg.input_size': '24,20',
    'xreg.channels': '3', 'xreg.mean': '0.485,0.456,0.406', 'xreg.std': '0.229,0.224,0.225',
    'xreg.resize': 'stretch',
    'xreg.placeholder': 'random weights: tests only',
}


def without(d, key):
    return {k: v for k, v in d.items() if k != key}


def with_(d, **kv):
    e = dict(d)
    e.update({k.replace('__', '.'): v for k, v in kv.items()})
    return e


# name -> (base spec, metadata, model shape (channels, n_out, softmax, H, W))
MODELS = {
    'good-body': (BODY, (1, 3, False, 32, 32)),
    'good-implant': (IMPLANT, (3, 2, True, 24, 20)),
    'bad-no-task': (without(BODY, 'xreg.task'), (1, 3, False, 32, 32)),
    'bad-task': (with_(BODY, xreg__task='organ'), (1, 3, False, 32, 32)),
    'bad-label-count': (with_(BODY, xreg__labels='chest,knee,hand,skull'),
                        (1, 3, False, 32, 32)),
    'bad-body-label': (with_(BODY, xreg__labels='chest,knee,toe'), (1, 3, False, 32, 32)),
    'bad-dup-label': (with_(BODY, xreg__labels='chest,knee,chest'), (1, 3, False, 32, 32)),
    'bad-no-name': (without(BODY, 'xreg.name'), (1, 3, False, 32, 32)),
    'bad-output': (with_(BODY, xreg__output='scores'), (1, 3, False, 32, 32)),
    'bad-no-input-size': (without(BODY, 'xreg.input_size'), (1, 3, False, 32, 32)),
    'bad-input-size': (with_(BODY, xreg__input_size='64,64'), (1, 3, False, 32, 32)),
    'bad-channels': (with_(BODY, xreg__channels='3'), (1, 3, False, 32, 32)),
    'bad-std': (with_(BODY, xreg__std='0'), (1, 3, False, 32, 32)),
    'bad-metrics': (with_(BODY, xreg__metrics='{"auc": 0.9,'), (1, 3, False, 32, 32)),
    'bad-body-threshold': (with_(BODY, xreg__threshold='0.5'), (1, 3, False, 32, 32)),
    'bad-threshold': (with_(IMPLANT, xreg__threshold='1.5'), (3, 2, True, 24, 20)),
    'bad-no-positive': (without(IMPLANT, 'xreg.positive_label'), (3, 2, True, 24, 20)),
    'bad-positive': (with_(IMPLANT, xreg__positive_label='yes'), (3, 2, True, 24, 20)),
    'bad-binary-labels': (with_(IMPLANT, xreg__labels='no,yes', xreg__positive_label='yes'),
                          (3, 2, True, 24, 20)),
    'bad-multi': (without(without(IMPLANT, 'xreg.task'), 'xreg.version'), (3, 2, True, 24, 20)),
}


def export(model, shape, meta, path):
    c, n, sm, h, w = shape
    dummy = torch.zeros(2, c, h, w)
    tmp = path + '.tmp'
    torch.onnx.export(model, dummy, tmp, opset_version=13, input_names=['input'],
                      output_names=['probabilities' if sm else 'logits'],
                      dynamic_axes={'input': {0: 'batch'},
                                    ('probabilities' if sm else 'logits'): {0: 'batch'}})
    m = onnx.load(tmp)
    del m.metadata_props[:]
    for k, v in meta.items():
        e = m.metadata_props.add()
        e.key, e.value = k, v
    onnx.save(m, tmp)
    os.replace(tmp, path)


def make(out, stamp=None):
    os.makedirs(out, exist_ok=True)
    nets = {}
    for name, (meta, shape) in MODELS.items():
        c, n, sm, h, w = shape
        if shape not in nets:
            torch.manual_seed(1)
            nets[shape] = Tiny(c, n, sm).eval()
        net = nets[shape]
        export(net, shape, meta, os.path.join(out, name + '.onnx'))
        if name.startswith('good-'):
            g = torch.Generator().manual_seed(2)
            x = torch.randn(3, c, h, w, generator=g) * 2
            with torch.no_grad():
                y = net(x)
                p = y if sm else torch.softmax(y.double(), dim=1)
            x.numpy().astype('<f4').tofile(os.path.join(out, f'ref-{name}.f32'))
            p.numpy().astype('<f4').tofile(os.path.join(out, f'ref-{name}.probs'))
    for name in MODELS:
        with open(os.path.join(out, name + '.onnx'), 'rb') as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        with open(os.path.join(out, name + '.sha256'), 'w') as f:
            f.write(digest + '\n')
    # a 40x30 gray PNG, value 128 with a brighter left half (for classifier_prepare_file)
    a = np.full((30, 40), 128, np.uint8)
    a[:, :20] = 200
    Image.fromarray(a, 'L').save(os.path.join(out, 'gray.png'))
    with open(os.path.join(out, 'not-an-image.txt'), 'w') as f:
        f.write('hello\n' * 40)
    # a stamp the build depends on
    with open(stamp or os.path.join(out, 'stamp'), 'w') as f:
        f.write('\n'.join(sorted(MODELS)) + '\n')


if __name__ == '__main__':
    if len(sys.argv) not in (2, 3):
        sys.exit('usage: make_test_models.py OUTDIR [STAMP]')
    torch.set_num_threads(1)
    make(sys.argv[1], sys.argv[2] if len(sys.argv) == 3 else None)
