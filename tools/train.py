#!/usr/bin/python3
"""Train an xreg classifier on a folder dataset and export it to ONNX with its metadata.

    /usr/bin/python3 tools/train.py DATA --task body_part|implant|fracture --out OUTDIR
        [--arch xreg_compact|resnet50|resnet101|efficientnet_b0..b4|vit_b_16] [--weights FILE]
        [--size H[,W]] [--resize letterbox|stretch] [--mean M --std S | --mean-std-json F]
        [--epochs N] [--patience N] [--batch-size N] [--lr X] [--seed N] [--threads N]
        [--xregctl PATH] [--name NAME] [--version V] [--placeholder REASON] ...

DATA is the thesis's layout: DATA/train, DATA/validation, DATA/test, one folder per label, with
DICOM, PNG or JPEG files (tools/make-demo-dataset.py builds it from ../shared/data/xray). Every
image is read as xregd reads it (tools/xreg_dataset.py: PNG/JPEG through xreg_preprocess.py,
DICOM through `xregctl dicom-decode`), resized once to the model input, and kept in memory.

Training: cross-entropy with inverse-frequency class weights (n / (k * n_class), from the train
split); AdamW with a cosine schedule; early stopping on the validation loss (the same weighted
loss) with --patience epochs, keeping the best epoch's weights. Augmentation, train split only,
on the resized image before normalization: a random affine (rotation within +-10 degrees,
translation within 5%, scale 0.9-1.1, fill 0 like the letterbox padding) and a horizontal flip
with probability 0.5 (label-safe for all three tasks: no label depends on laterality; no
vertical flips, radiographs have an up). --no-augment turns both off, --no-hflip the flip.

Normalization: --mean/--std (one value or one per channel, pixels in [0,1]), or
--mean-std-json with the output of `xregctl mean-std --json` (same --size/--resize), or by
default the train split's pooled mean and std over every pixel of the resized inputs (the same
definition as `xregctl mean-std`).

Weights: from scratch unless --weights FILE gives a local torchvision state dict (ImageNet
weights cannot be downloaded here); the classifier head is always new.

Outputs in OUTDIR: model.onnx (opset --opset, dynamic batch, input "input" N x 3 x H x W,
output "logits", every metadata key of docs/models.md), probs/{train,validation,test}.csv
(file,label,prob_<class>...), metrics.json (per split: accuracy, log loss, kappa, per-class
precision/recall/F1, confusion matrix; AUC, sensitivity, specificity for binary tasks),
history.csv (per epoch losses), parity.json (when --xregctl is given: `xregctl nn-run` on test
inputs against PyTorch; a mismatch is an error, exit status 3).

Deterministic for a given --seed, --threads and dataset. Exit status: 0 done, 1 error, 2 usage,
3 exported but nn-run parity failed.
"""
import argparse
import csv
import json
import math
import os
import random
import shlex
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

ARCHS = ['xreg_compact', 'resnet50', 'resnet101', 'efficientnet_b0', 'efficientnet_b1',
         'efficientnet_b2', 'efficientnet_b3', 'efficientnet_b4', 'vit_b_16']
TASKS = ['body_part', 'implant', 'fracture']
BINARY_LABELS = ['absent', 'present']


def log(msg):
    print(f'train: {msg}', file=sys.stderr, flush=True)


class UsageError(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# models

def _compact_net_class():
    import torch.nn as nn

    def cbr(i, o, s):
        return [nn.Conv2d(i, o, 3, s, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]

    class Down(nn.Module):
        """A ResNet basic block that halves the resolution (projection shortcut)."""

        def __init__(self, i, o):
            super().__init__()
            self.body = nn.Sequential(*cbr(i, o, 2), nn.Conv2d(o, o, 3, 1, 1, bias=False),
                                      nn.BatchNorm2d(o))
            self.short = nn.Sequential(nn.Conv2d(i, o, 1, 2, bias=False), nn.BatchNorm2d(o))
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x):
            return self.relu(self.body(x) + self.short(x))

    class Net(nn.Sequential):
        """xreg_compact: a 10-layer ResNet (stem + 4 downsampling basic blocks, 24-192
        channels), ~0.9 M parameters, ~3.5 MB of float32. Dense 3x3 convolutions rather than
        depthwise ones: PyTorch trains them several times faster per FLOP on a CPU, which is
        what matters when training from scratch here."""

        def __init__(self, num_classes):
            super().__init__(*cbr(3, 24, 2), Down(24, 32), Down(32, 64), Down(64, 128),
                             Down(128, 192), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Dropout(0.3), nn.Linear(192, num_classes))
    return Net


def CompactNet(num_classes):
    return _compact_net_class()(num_classes)


def build_model(arch, num_classes, size):
    import torchvision.models as tvm

    if arch == 'xreg_compact':
        return CompactNet(num_classes)
    if arch == 'vit_b_16':
        return tvm.vit_b_16(weights=None, image_size=size)
    return getattr(tvm, arch)(weights=None)


def replace_head(model, arch, num_classes):
    import torch.nn as nn
    if arch.startswith('resnet'):
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    elif arch.startswith('efficientnet'):
        model.classifier[-1] = nn.Linear(model.classifier[-1].in_features, num_classes)
    elif arch == 'vit_b_16':
        model.heads.head = nn.Linear(model.heads.head.in_features, num_classes)


def load_weights(model, path):
    """A local state dict (e.g. torchvision's resnet50-*.pth); head tensors of another shape
    are left out. Returns (#loaded, #skipped)."""
    import torch
    sd = torch.load(path, map_location='cpu')
    if isinstance(sd, dict) and 'state_dict' in sd:
        sd = sd['state_dict']
    own = model.state_dict()
    ok = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in ok]
    if not ok:
        raise UsageError(f'--weights {path}: no tensor matches this architecture')
    model.load_state_dict(ok, strict=False)
    return len(ok), missing


# ---------------------------------------------------------------------------------------------
# data

def load_split(items, labels, spec, xregctl):
    """Preprocessed (not normalized) tensors of one split's files, with their label indices."""
    import dataclasses
    import torch
    import xreg_dataset as xd
    import xreg_preprocess as xp
    raw = dataclasses.replace(spec, normalize=False)
    xs, ys, paths = [], [], []
    for p, lab, _ in items:
        t = xd.decode_file(p, spec.channels, xregctl)
        xs.append(xp.preprocess_tensor(t, raw))
        ys.append(labels.index(lab))
        paths.append(p)
    x = torch.stack(xs) if xs else torch.zeros((0, spec.channels, spec.height, spec.width))
    return x, torch.tensor(ys, dtype=torch.long), paths


def augment(x, gen, hflip):
    """Random small affine + optional horizontal flip on a batch of un-normalized images."""
    import torch
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode
    out = torch.empty_like(x)
    h, w = x.shape[-2:]
    for i in range(x.shape[0]):
        r = torch.rand(5, generator=gen).tolist()
        angle = (r[0] * 2 - 1) * 10.0
        tx = int(round((r[1] * 2 - 1) * 0.05 * w))
        ty = int(round((r[2] * 2 - 1) * 0.05 * h))
        scale = 0.9 + 0.2 * r[3]
        img = TF.affine(x[i], angle=angle, translate=[tx, ty], scale=scale, shear=[0.0, 0.0],
                        interpolation=InterpolationMode.BILINEAR, fill=0.0)
        if hflip and r[4] < 0.5:
            img = TF.hflip(img)
        out[i] = img
    return out


def normalize(x, mean, std):
    import torch
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x - m) / s  # a true division, as torchvision's Normalize and nn-preproc.c


# ---------------------------------------------------------------------------------------------
# metrics (numpy; the same definitions xregctl eval uses: rows of the confusion matrix are the
# true class, columns the predicted one)

def auc_rank(scores, positive):
    """ROC AUC by the Mann-Whitney statistic with average ranks for ties; None if one class
    is empty."""
    import numpy as np
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(positive, dtype=bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return None
    order = np.argsort(s, kind='mergesort')
    ranks = np.empty(len(s))
    ss = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and ss[j + 1] == ss[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def compute_metrics(probs, y, labels, positive=None, threshold=0.5):
    import numpy as np
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    k = len(labels)
    n = len(y)
    out = {'n': n, 'labels': labels}
    if n == 0:
        return out
    if positive is not None:
        pi = labels.index(positive)
        pred = np.where(probs[:, pi] >= threshold, pi, 1 - pi)
    else:
        pred = probs.argmax(1)
    cm = np.zeros((k, k), dtype=np.int64)
    for t, p in zip(y, pred):
        cm[t, p] += 1
    out['accuracy'] = float((pred == y).mean())
    p_true = np.clip(probs[np.arange(n), y], 1e-15, 1.0)
    out['log_loss'] = float(-np.log(p_true).mean())
    po = np.trace(cm) / n
    pe = float((cm.sum(0) * cm.sum(1)).sum()) / (n * n)
    out['kappa'] = float((po - pe) / (1 - pe)) if pe < 1 else None
    per = {}
    for c, lab in enumerate(labels):
        tp = int(cm[c, c])
        fp = int(cm[:, c].sum() - tp)
        fn = int(cm[c, :].sum() - tp)
        prec = tp / (tp + fp) if tp + fp else None
        rec = tp / (tp + fn) if tp + fn else None
        f1 = 2 * prec * rec / (prec + rec) if prec and rec else (0.0 if prec is not None and
                                                                 rec is not None else None)
        per[lab] = {'precision': prec, 'recall': rec, 'f1': f1, 'support': int(cm[c].sum())}
    out['per_class'] = per
    out['confusion_matrix'] = cm.tolist()
    if positive is not None:
        pi = labels.index(positive)
        pos = y == pi
        tp = int(((pred == pi) & pos).sum())
        tn = int(((pred != pi) & ~pos).sum())
        out['threshold'] = threshold
        out['positive_label'] = positive
        out['sensitivity'] = tp / int(pos.sum()) if pos.any() else None
        out['specificity'] = tn / int((~pos).sum()) if (~pos).any() else None
        out['auc'] = auc_rank(probs[:, pi], pos)
    return out


def rounded(obj, nd=4):
    if isinstance(obj, float):
        return round(obj, nd)
    if isinstance(obj, dict):
        return {k: rounded(v, nd) for k, v in obj.items()}
    if isinstance(obj, list):
        return [rounded(v, nd) for v in obj]
    return obj


# ---------------------------------------------------------------------------------------------

def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split('\n\n', 1)[1])
    ap.add_argument('data', help='dataset root with train/, validation/, test/')
    ap.add_argument('--task', required=True, choices=TASKS)
    ap.add_argument('--out', required=True, help='output directory')
    ap.add_argument('--arch', default='xreg_compact', choices=ARCHS)
    ap.add_argument('--weights', help='local state dict to start from (e.g. ImageNet weights)')
    ap.add_argument('--labels', help='comma-separated output order (default: absent,present for '
                    'implant/fracture, else the sorted label folders of the train split)')
    ap.add_argument('--size', default='128', help='H or H,W (default 128; 224 for vit_b_16)')
    ap.add_argument('--resize', default='letterbox', choices=['letterbox', 'stretch'])
    ap.add_argument('--mean', help='one value or one per channel')
    ap.add_argument('--std', help='one value or one per channel')
    ap.add_argument('--mean-std-json', help='output of `xregctl mean-std --json`')
    ap.add_argument('--epochs', type=int, default=30)
    ap.add_argument('--max-steps', type=int, default=0, help='stop after N optimizer steps '
                    '(0: no limit; for tests)')
    ap.add_argument('--patience', type=int, default=5)
    ap.add_argument('--batch-size', type=int, default=32)
    ap.add_argument('--lr', type=float, default=None,
                    help='default 2e-3 from scratch, 2e-4 with --weights')
    ap.add_argument('--weight-decay', type=float, default=1e-4)
    ap.add_argument('--no-augment', action='store_true')
    ap.add_argument('--no-hflip', action='store_true')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--opset', type=int, default=17, choices=[13, 17])
    ap.add_argument('--threshold', type=float, default=0.5,
                    help='xreg.threshold for binary tasks (default 0.5)')
    ap.add_argument('--name', help='xreg.name (default: <task>-<arch>)')
    ap.add_argument('--version', help='xreg.version (default: <name>-seed<N>-<date>)')
    ap.add_argument('--placeholder', help='xreg.placeholder: why this model must not be trusted')
    ap.add_argument('--provenance', help='xreg.provenance data sources and licences (the '
                    'training command is appended)')
    ap.add_argument('--xregctl', help='xregctl binary: DICOM decoding and the nn-run parity check')
    ap.add_argument('--parity-samples', type=int, default=8)
    a = ap.parse_args(argv)
    if a.arch == 'vit_b_16' and a.size == '128':
        a.size = '224'
    try:
        hw = [int(v) for v in a.size.split(',')]
    except ValueError:
        ap.error(f'--size "{a.size}": expected H or H,W')
    if len(hw) == 1:
        hw = hw * 2
    if len(hw) != 2 or not all(16 <= v <= 1024 for v in hw):
        ap.error(f'--size "{a.size}": expected H or H,W, each 16..1024')
    a.hw = hw
    if a.arch == 'vit_b_16' and (hw[0] != hw[1] or hw[0] % 16):
        ap.error('vit_b_16 needs a square size divisible by 16')
    if (a.mean is None) != (a.std is None):
        ap.error('--mean and --std go together')
    if a.mean_std_json and a.mean is not None:
        ap.error('give --mean/--std or --mean-std-json, not both')
    return a


def mean_std_given(a):
    """(mean, std, source) as 3-lists from --mean/--std or --mean-std-json, else None."""
    if a.mean is not None:
        def vec(s, name):
            try:
                v = [float(x) for x in s.split(',')]
            except ValueError:
                raise UsageError(f'--{name} "{s}": expected comma-separated numbers')
            if len(v) == 1:
                v = v * 3
            if len(v) != 3 or not all(math.isfinite(x) for x in v):
                raise UsageError(f'--{name} "{s}": expected 1 or 3 finite numbers')
            return v
        m, s = vec(a.mean, 'mean'), vec(a.std, 'std')
        if not all(x > 0 for x in s):
            raise UsageError(f'--std "{a.std}": every value must be > 0')
        return m, s, 'given'
    if a.mean_std_json:
        try:
            with open(a.mean_std_json) as f:
                j = json.load(f)
            m, s = [float(v) for v in j['mean']], [float(v) for v in j['std']]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UsageError(f'--mean-std-json {a.mean_std_json}: {e} (expected the output of '
                             f'`xregctl mean-std --json`)')
        if 'input_size' in j and list(j['input_size']) != a.hw:
            log(f'warning: mean-std computed at {j["input_size"]}, model input is {a.hw}')
        if j.get('resize') and j['resize'] != a.resize:
            log(f'warning: mean-std computed with resize {j["resize"]}, model uses {a.resize}')
        if len(m) == 1:
            m, s = m * 3, s * 3
        if len(m) != 3 or len(s) != 3 or not all(v > 0 for v in s):
            raise UsageError(f'--mean-std-json {a.mean_std_json}: need 1 or 3 means and stds > 0')
        return m, s, f'xregctl mean-std ({a.mean_std_json})'
    return None


def evaluate(model, x, mean, std, batch):
    import torch
    model.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch):
            outs.append(model(normalize(x[i:i + batch], mean, std)))
    return torch.cat(outs) if outs else torch.zeros((0, 0))


def export_onnx(model, path, hw, opset, props):
    import onnx
    import torch
    model.eval()
    dummy = torch.zeros(2, 3, hw[0], hw[1])
    tmp = path + '.tmp'
    torch.onnx.export(model, dummy, tmp, opset_version=opset, do_constant_folding=True,
                      input_names=['input'], output_names=['logits'],
                      dynamic_axes={'input': {0: 'batch'}, 'logits': {0: 'batch'}})
    m = onnx.load(tmp)
    del m.metadata_props[:]
    for k, v in props.items():
        e = m.metadata_props.add()
        e.key, e.value = k, v
    onnx.checker.check_model(m)
    onnx.save(m, tmp)
    os.replace(tmp, path)
    return sorted({n.op_type for n in m.graph.node})


def nn_run_parity(xregctl, onnx_path, x_norm, ref_logits):
    """Run xregctl nn-run on x_norm (N x 3 x H x W) and compare with PyTorch's logits."""
    import numpy as np
    with tempfile.TemporaryDirectory(prefix='xreg-train-') as d:
        inp, outp = os.path.join(d, 'in.f32'), os.path.join(d, 'out.f32')
        x_norm.numpy().astype('<f4').tofile(inp)
        p = subprocess.run([xregctl, 'nn-run', onnx_path, '--input', inp, '--output', outp],
                           capture_output=True, text=True)
        if p.returncode != 0:
            return {'ok': False, 'error': f'xregctl nn-run exit {p.returncode}: '
                                          f'{p.stderr.strip()}'}
        got = np.fromfile(outp, dtype='<f4')
    ref = ref_logits.numpy().astype(np.float64)
    if got.size != ref.size:
        return {'ok': False, 'error': f'nn-run wrote {got.size} values, expected {ref.size}'}
    got = got.reshape(ref.shape).astype(np.float64)
    diff = float(np.abs(got - ref).max())
    scale = float(np.abs(ref).max())
    top1 = int((got.argmax(1) == ref.argmax(1)).sum())
    ok = diff <= 1e-3 * max(scale, 1.0) and top1 == ref.shape[0]
    return {'ok': ok, 'n': int(ref.shape[0]), 'max_abs_diff': diff, 'max_abs_logit': scale,
            'top1_agree': top1, 'bound': 'max|a-b| <= 1e-3 * max(max|ref|, 1), same top-1'}


def preflight(a):
    """Everything that can be refused before torch is imported (seconds saved per error):
    the layout, the labels, the files, the xregctl need, the mean/std arguments."""
    import xreg_dataset as xd
    if a.xregctl and not os.access(a.xregctl, os.X_OK):
        raise UsageError(f'--xregctl {a.xregctl}: not an executable')
    for s in xd.SPLITS:
        if not os.path.isdir(os.path.join(a.data, s)):
            raise UsageError(f'{a.data}: no {s}/ folder (expected {a.data}/train, '
                             f'{a.data}/validation, {a.data}/test, one folder per label)')
    train_labels = sorted(d for d in os.listdir(os.path.join(a.data, 'train'))
                          if os.path.isdir(os.path.join(a.data, 'train', d)))
    if a.labels:
        labels = a.labels.split(',')
    elif a.task in ('implant', 'fracture'):
        labels = BINARY_LABELS
    else:
        labels = train_labels
    if len(labels) < 2 or len(set(labels)) != len(labels) or \
            any(not lab or lab != lab.lower() or ',' in lab for lab in labels):
        raise UsageError(f'labels {labels}: need 2 or more distinct lower-case names')
    if a.task in ('implant', 'fracture') and labels != BINARY_LABELS:
        raise UsageError(f'task {a.task}: labels must be absent,present (got {",".join(labels)})')
    listing = {}
    for s in xd.SPLITS:
        items, skipped = xd.list_split(a.data, s)
        for p in skipped:
            log(f'{s}: skipped {p} (not PNG, JPEG or DICOM)')
        for p, lab, kind in items:
            if lab not in labels:
                raise UsageError(f'{p}: label folder "{lab}" is not among the labels '
                                 f'{",".join(labels)}')
            if kind == 'dicom' and not a.xregctl:
                raise UsageError(f'{p}: DICOM input needs --xregctl (xregctl dicom-decode)')
        listing[s] = items
    have = {lab for _, lab, _ in listing['train']}
    if not listing['train']:
        raise UsageError(f'{a.data}/train has no PNG, JPEG or DICOM file')
    if have != set(labels):
        raise UsageError(f'train split has no image of {",".join(sorted(set(labels) - have))}')
    return labels, listing, mean_std_given(a)


def main(argv):
    a = parse_args(argv)
    t_start = time.monotonic()
    labels, listing, given_ms = preflight(a)
    positive = 'present' if a.task in ('implant', 'fracture') else None
    xregctl = a.xregctl

    import numpy as np
    import torch
    import torch.nn as nn
    import xreg_dataset as xd
    import xreg_preprocess as xp

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    random.seed(a.seed)
    np.random.seed(a.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)

    spec = xp.PreprocSpec(height=a.hw[0], width=a.hw[1], channels=3, resize=a.resize)
    t0 = time.monotonic()
    data = {}
    for s in xd.SPLITS:
        data[s] = load_split(listing[s], labels, spec, xregctl)
        counts = {lab: int((data[s][1] == i).sum()) for i, lab in enumerate(labels)}
        log(f'{s}: {len(data[s][2])} images {counts}')
    t_load = time.monotonic() - t0
    xtr, ytr, _ = data['train']
    n_per = torch.bincount(ytr, minlength=len(labels)).double()
    class_w = (n_per.sum() / (len(labels) * n_per)).float()
    if given_ms:
        mean, std, ms_src = given_ms
    else:  # the train split's, defined as `xregctl mean-std` does (pooled over every pixel)
        xx = xtr.double().transpose(0, 1).reshape(3, -1)
        mean, std = xx.mean(1).tolist(), xx.std(1, unbiased=False).tolist()
        ms_src = 'train split'
    log(f'mean {["%.4f" % v for v in mean]} std {["%.4f" % v for v in std]} ({ms_src}); '
        f'class weights {[round(v, 3) for v in class_w.tolist()]}')

    model = build_model(a.arch, len(labels), a.hw[0])
    if a.weights:
        n_ok, missing = load_weights(model, a.weights)
        log(f'--weights: {n_ok} tensors loaded, new: {", ".join(missing) or "none"}')
    replace_head(model, a.arch, len(labels))
    lr = a.lr if a.lr is not None else (2e-4 if a.weights else 2e-3)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=a.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(a.epochs, 1))
    crit = nn.CrossEntropyLoss(weight=class_w)
    gen = torch.Generator().manual_seed(a.seed)
    xva, yva, _ = data['validation']

    os.makedirs(a.out, exist_ok=True)
    history = []
    best = (math.inf, -1, None)
    steps = 0
    t_train0 = time.monotonic()
    for epoch in range(a.epochs):
        model.train()
        perm = torch.randperm(xtr.shape[0], generator=gen)
        tot, n_seen = 0.0, 0
        te = time.monotonic()
        for i in range(0, len(perm), a.batch_size):
            idx = perm[i:i + a.batch_size]
            if len(idx) < 2:  # BatchNorm needs 2 samples
                continue
            xb = xtr[idx]
            if not a.no_augment:
                xb = augment(xb, gen, not a.no_hflip)
            loss = crit(model(normalize(xb, mean, std)), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += loss.item() * len(idx)
            n_seen += len(idx)
            steps += 1
            if a.max_steps and steps >= a.max_steps:
                break
        sched.step()
        if xva.shape[0]:
            vloss = crit(evaluate(model, xva, mean, std, 64), yva).item()
        else:
            vloss = tot / max(n_seen, 1)
        history.append({'epoch': epoch + 1, 'train_loss': tot / max(n_seen, 1), 'val_loss': vloss,
                        'lr': opt.param_groups[0]['lr'], 'seconds': time.monotonic() - te})
        log(f'epoch {epoch + 1}: train loss {tot / max(n_seen, 1):.4f}, validation loss '
            f'{vloss:.4f} ({time.monotonic() - te:.0f} s)')
        if vloss < best[0]:
            best = (vloss, epoch + 1, {k: v.clone() for k, v in model.state_dict().items()})
        elif epoch + 1 - best[1] >= a.patience:
            log(f'early stop: no validation improvement for {a.patience} epochs')
            break
        if a.max_steps and steps >= a.max_steps:
            break
    t_train = time.monotonic() - t_train0
    if best[2] is not None:
        model.load_state_dict(best[2])
    log(f'best epoch {best[1]} (validation loss {best[0]:.4f}); {steps} steps in {t_train:.0f} s')

    # probabilities and metrics per split
    metrics = {'task': a.task, 'arch': a.arch, 'labels': labels, 'best_epoch': best[1],
               'epochs_run': len(history), 'steps': steps,
               'seconds': {'load': round(t_load, 1), 'train': round(t_train, 1)}, 'splits': {}}
    os.makedirs(os.path.join(a.out, 'probs'), exist_ok=True)
    logits_of = {}
    for s in xd.SPLITS:
        x, y, paths = data[s]
        logits = evaluate(model, x, mean, std, 64)
        logits_of[s] = logits
        probs = torch.softmax(logits, 1).numpy() if x.shape[0] else np.zeros((0, len(labels)))
        with open(os.path.join(a.out, 'probs', f'{s}.csv'), 'w', newline='') as f:
            w = csv.writer(f)
            w.writerow(['file', 'label'] + [f'prob_{lab}' for lab in labels])
            for p, yi, pr in zip(paths, y.tolist(), probs):
                w.writerow([os.path.relpath(p, a.data), labels[yi]] + [f'{v:.6g}' for v in pr])
        metrics['splits'][s] = compute_metrics(probs, y.numpy(), labels, positive, a.threshold)
        m = metrics['splits'][s]
        if m['n']:
            extra = f', AUC {m["auc"]:.3f}' if positive and m.get('auc') is not None else ''
            log(f'{s}: accuracy {m["accuracy"]:.3f}, log loss {m["log_loss"]:.3f}, '
                f'kappa {m["kappa"] if m["kappa"] is None else round(m["kappa"], 3)}{extra}')

    # export
    name = a.name or f'{a.task.replace("_", "-")}-{a.arch}'
    version = a.version or f'{name}-seed{a.seed}-{time.strftime("%Y%m%d")}'
    shown = list(argv)
    for opt in ('--provenance', '--placeholder'):  # already in their own keys: keep one line short
        if opt in shown[:-1]:
            shown[shown.index(opt) + 1] = '...'
    cmd = 'tools/train.py ' + ' '.join(shlex.quote(v) for v in shown)
    prov = (a.provenance + '; ' if a.provenance else '') + f'trained with: {cmd}'
    test_m = metrics['splits']['test']
    xmetrics = {'split': 'test', 'n': test_m['n']}
    for k in ('accuracy', 'log_loss', 'kappa', 'auc', 'sensitivity', 'specificity',
              'threshold'):
        if k in test_m:
            xmetrics[k] = test_m[k]
    if 'per_class' in test_m:
        xmetrics['per_class'] = test_m['per_class']
        xmetrics['confusion_matrix'] = test_m['confusion_matrix']
    props = {'xreg.task': a.task, 'xreg.labels': ','.join(labels)}
    props.update(xp.PreprocSpec(height=a.hw[0], width=a.hw[1], channels=3, mean=tuple(mean),
                                std=tuple(std), resize=a.resize).to_metadata())
    props.update({'xreg.version': version, 'xreg.name': name, 'xreg.output': 'logits'})
    if positive:
        props['xreg.positive_label'] = positive
        props['xreg.threshold'] = repr(float(a.threshold))
    if a.placeholder:
        props['xreg.placeholder'] = ' '.join(a.placeholder.split())
    props['xreg.provenance'] = ' '.join(prov.split())
    props['xreg.metrics'] = json.dumps(rounded(xmetrics), separators=(',', ':'))
    onnx_path = os.path.join(a.out, 'model.onnx')
    ops = export_onnx(model, onnx_path, a.hw, a.opset, props)
    metrics['onnx'] = {'file': 'model.onnx', 'bytes': os.path.getsize(onnx_path), 'ops': ops,
                       'opset': a.opset, 'metadata': props}
    metrics['mean'], metrics['std'], metrics['mean_std_source'] = mean, std, ms_src
    log(f'exported {onnx_path} ({os.path.getsize(onnx_path) / 1e6:.2f} MB, ops {" ".join(ops)})')

    rc = 0
    if xregctl:
        xs, _, _ = data['test'] if data['test'][0].shape[0] else data['validation']
        k = min(a.parity_samples, xs.shape[0])
        xn = normalize(xs[:k], mean, std)
        with torch.no_grad():
            model.eval()
            ref = model(xn)
        par = nn_run_parity(xregctl, onnx_path, xn, ref)
        with open(os.path.join(a.out, 'parity.json'), 'w') as f:
            json.dump(par, f, indent=1)
        metrics['parity'] = par
        if par['ok']:
            log(f'nn-run parity: {par["n"]} inputs, max|diff| {par["max_abs_diff"]:.2e} '
                f'(max|logit| {par["max_abs_logit"]:.2f}), top-1 {par["top1_agree"]}/{par["n"]}')
        else:
            log(f'nn-run parity FAILED: {par}')
            rc = 3
    metrics['seconds']['total'] = round(time.monotonic() - t_start, 1)
    with open(os.path.join(a.out, 'history.csv'), 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=['epoch', 'train_loss', 'val_loss', 'lr', 'seconds'])
        w.writeheader()
        w.writerows(history)
    with open(os.path.join(a.out, 'metrics.json'), 'w') as f:
        json.dump(metrics, f, indent=1)
        f.write('\n')
    return rc


if __name__ == '__main__':
    try:
        sys.exit(main(sys.argv[1:]))
    except UsageError as e:
        log(f'error: {e}')
        sys.exit(2)
    except (OSError, ValueError, RuntimeError) as e:
        log(f'error: {e}')
        sys.exit(1)
