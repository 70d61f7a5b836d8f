#!/usr/bin/python3
"""Export torchvision classifiers with random weights to ONNX, with PyTorch reference outputs.

The nn/ parity tests (tests/nn/test_models.py) and the speed benchmark (tests/bench/bench-nn.py)
use what this writes; nothing here downloads anything. Run it with /usr/bin/python3 (Debian's
torch 1.13 / torchvision 0.14 / onnx 1.12).

Layout under OUT (default /work/cache/models):
  OUT/<model>/ref/input-b<N>.f32, output-b<N>.f32  raw little-endian float32, NCHW / N x classes
  OUT/<model>/ref/ref.json                         shapes, seeds, top-1 margins, timings
  OUT/<model>/op<13|17>-<fold|nofold>/model.onnx   dynamic batch axis, xreg.* metadata_props
  OUT/<model>/op<13|17>-<fold|nofold>/manifest.json

Every output is keyed by a content hash (this file, torch/torchvision/onnx versions, the
variant's parameters): a variant or reference whose key matches is not rebuilt, so the test suite
can call this on every run.
"""
import argparse
import hashlib
import json
import os
import sys
import time

MODELS = {
    # name: (input size, batch used for the second reference)
    'resnet50': (224, 3),
    'resnet101': (224, 3),
    'efficientnet_b0': (224, 3),
    'efficientnet_b3': (300, 3),
    'vit_b_16': (224, 3),
    # small models built from the same torchvision blocks, for quick tests
    'tiny_resnet': (64, 3),
    'tiny_efficientnet': (64, 3),
    'tiny_vit': (32, 3),
}
FULL = ['resnet50', 'resnet101', 'efficientnet_b0', 'efficientnet_b3', 'vit_b_16']
TINY = ['tiny_resnet', 'tiny_efficientnet', 'tiny_vit']
OPSETS = [13, 17]
FOLDINGS = ['fold', 'nofold']
MEAN = '0.485,0.456,0.406'
STD = '0.229,0.224,0.225'
SEED = 20261127
CALIB_BATCHES = 4
CALIB_BATCH_SIZE = 8
FORMAT_VERSION = 1
MIN_REL_MARGIN = 2.5e-3
MARGIN_ATTEMPTS = 50


def log(msg):
    print(f'export-models: {msg}', file=sys.stderr, flush=True)


def build(name, num_classes):
    import torch.nn as nn
    import torchvision.models as tvm
    from torchvision.models.efficientnet import EfficientNet, MBConvConfig
    from torchvision.models.resnet import BasicBlock, ResNet
    from torchvision.models.vision_transformer import VisionTransformer

    if name in FULL:
        # weights=None: random init, no download
        return getattr(tvm, name)(weights=None, num_classes=num_classes)
    if name == 'tiny_resnet':
        return ResNet(BasicBlock, [1, 1, 1, 1], num_classes=num_classes)
    if name == 'tiny_efficientnet':
        setting = [MBConvConfig(1, 3, 1, 32, 16, 1), MBConvConfig(6, 3, 2, 16, 24, 2),
                   MBConvConfig(6, 5, 2, 24, 40, 1)]
        return EfficientNet(setting, dropout=0.2, num_classes=num_classes, last_channel=128)
    if name == 'tiny_vit':
        return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                 hidden_dim=32, mlp_dim=64, num_classes=num_classes)
    raise ValueError(name)


def num_classes_of(name):
    return 10 if name.startswith('tiny_') else 1000


def make_model(name, size):
    """The random-weight model, calibrated, in eval mode; deterministic for a given SEED."""
    import torch
    import torch.nn as nn

    torch.manual_seed(SEED)
    model = build(name, num_classes_of(name))
    if hasattr(model, 'class_token'):
        # torchvision zero-initialises the class token and the head: every logit would be 0.
        with torch.no_grad():
            nn.init.normal_(model.class_token, std=1.0)
            head = model.heads.head
            nn.init.normal_(head.weight, std=1.0 / head.in_features ** 0.5)
            nn.init.normal_(head.bias, std=0.1)
    # BatchNorm statistics from random batches (cumulative average), everything else in eval
    # mode (no dropout or stochastic depth), so activations keep a normal scale through depth.
    model.eval()
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    if bns:
        g = torch.Generator().manual_seed(SEED + 1)
        with torch.no_grad():
            for _ in range(CALIB_BATCHES):
                model(torch.randn(CALIB_BATCH_SIZE, 3, size, size, generator=g))
    model.eval()
    return model


def content_key(*parts):
    import onnx
    import torch
    import torchvision
    h = hashlib.sha256()
    with open(os.path.abspath(__file__), 'rb') as f:
        h.update(f.read())
    for p in (FORMAT_VERSION, torch.__version__, torchvision.__version__, onnx.__version__) + parts:
        h.update(repr(p).encode() + b'\0')
    return h.hexdigest()[:24]


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_json(path, obj):
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(obj, f, indent=1)
        f.write('\n')
    os.replace(tmp, path)


def save_f32(path, tensor):
    import numpy as np
    arr = tensor.detach().numpy().astype('<f4', copy=False)
    tmp = path + '.tmp'
    arr.tofile(tmp)
    os.replace(tmp, path)


def references(name, model, size, batch2, refdir):
    import numpy as np
    import torch
    key = content_key('ref', name, size, batch2, SEED)
    meta = read_json(os.path.join(refdir, 'ref.json'))
    if meta and meta.get('key') == key and all(
            os.path.exists(os.path.join(refdir, c[k])) for c in meta['cases'] for k in ('input', 'output')):
        return meta, False
    os.makedirs(refdir, exist_ok=True)
    cases = []
    t0 = time.monotonic()
    for i, batch in enumerate((1, batch2)):
        # Inputs whose top-1 margin exceeds twice the parity tolerance (1e-3 * max|y|), so an
        # engine within tolerance cannot flip a near-tie: the top-1 check then tests the engine,
        # not luck. Random models often have near-ties; try a few seeds.
        for attempt in range(MARGIN_ATTEMPTS):
            seed = SEED + 10 + i + 100 * attempt
            x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
            with torch.no_grad():
                y = model(x)
            top2 = torch.topk(y, 2, dim=1).values
            margin = (top2[:, 0] - top2[:, 1]).min().item()
            if margin >= MIN_REL_MARGIN * y.abs().max().item():
                break
        else:
            raise RuntimeError(f'{name}: no input among {MARGIN_ATTEMPTS} seeds has a top-1 margin '
                               f'of {MIN_REL_MARGIN} * max|y| at batch {batch}')
        inp, out = f'input-b{batch}.f32', f'output-b{batch}.f32'
        save_f32(os.path.join(refdir, inp), x)
        save_f32(os.path.join(refdir, out), y)
        cases.append({'batch': batch, 'input': inp, 'output': out,
                      'input_shape': list(x.shape), 'output_shape': list(y.shape),
                      'input_seed': seed, 'max_abs_output': y.abs().max().item(),
                      'output_std': y.std().item(), 'min_top1_margin': margin,
                      'top1': y.argmax(1).tolist()})
    # Multiply-add work per image (convolutions, matmuls) for the benchmark's share of peak.
    with torch.no_grad(), torch.profiler.profile(with_flops=True) as prof:
        model(torch.zeros(1, 3, size, size))
    gflop = sum(e.flops for e in prof.key_averages()) / 1e9
    meta = {'key': key, 'model': name, 'size': size, 'gflop_per_image': round(gflop, 4), 'weight_seed': SEED, 'calibration_seed': SEED + 1,
            'calibration': f'{CALIB_BATCHES} batches of {CALIB_BATCH_SIZE} N(0,1) images',
            'input_distribution': 'N(0,1) per element (a normalised image scale)',
            'reference_seconds': round(time.monotonic() - t0, 2), 'cases': cases,
            'torch': torch.__version__}
    write_json(os.path.join(refdir, 'ref.json'), meta)
    return meta, True


def export_variant(name, model, size, opset, folding, vdir, ref_meta):
    import onnx
    import torch
    key = content_key('variant', name, size, opset, folding, SEED, ref_meta['key'])
    man = read_json(os.path.join(vdir, 'manifest.json'))
    if man and man.get('key') == key and os.path.exists(os.path.join(vdir, 'model.onnx')):
        return man, False
    os.makedirs(vdir, exist_ok=True)
    path = os.path.join(vdir, 'model.onnx')
    tmp = path + '.tmp'
    t0 = time.monotonic()
    # A batch of 2 for tracing so no shape is specialised to 1. Autograd stays enabled: the ViT
    # export fails under torch.no_grad(). Without folding, TrainingMode.PRESERVE (the model is
    # in eval mode) also skips the exporter's eval peephole, which would fuse BatchNormalization
    # into the convolutions: nofold leaves BatchNormalization and the shape chains to xreg.
    dummy = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(SEED + 2))
    torch.onnx.export(model, dummy, tmp, opset_version=opset,
                      do_constant_folding=(folding == 'fold'),
                      training=(torch.onnx.TrainingMode.EVAL if folding == 'fold'
                                else torch.onnx.TrainingMode.PRESERVE),
                      input_names=['input'], output_names=['logits'],
                      dynamic_axes={'input': {0: 'batch'}, 'logits': {0: 'batch'}})
    t_export = time.monotonic() - t0
    m = onnx.load(tmp)
    n = num_classes_of(name)
    props = {
        'xreg.task': 'test',
        'xreg.labels': ','.join(f'class{i}' for i in range(n)),
        'xreg.input_size': f'{size},{size}',
        'xreg.channels': '3',
        'xreg.mean': MEAN,
        'xreg.std': STD,
        'xreg.resize': 'stretch',
        'xreg.version': f'random-{name}-seed{SEED}',
    }
    del m.metadata_props[:]
    for k, v in props.items():
        e = m.metadata_props.add()
        e.key, e.value = k, v
    onnx.checker.check_model(m)
    onnx.save(m, tmp)
    os.replace(tmp, path)
    ops = sorted({node.op_type for node in m.graph.node})
    man = {
        'key': key, 'model': name, 'opset': opset, 'constant_folding': folding == 'fold',
        'file': 'model.onnx', 'bytes': os.path.getsize(path),
        'input': {'name': 'input', 'shape': ['batch', 3, size, size]},
        'output': {'name': 'logits', 'shape': ['batch', n]},
        'ops': ops, 'nodes': len(m.graph.node),
        'references': [{'batch': c['batch'], 'input': os.path.join('..', 'ref', c['input']),
                        'output': os.path.join('..', 'ref', c['output'])} for c in ref_meta['cases']],
        'weight_seed': SEED, 'export_seconds': round(t_export, 2),
        'total_seconds': round(time.monotonic() - t0, 2),
        'torch': torch.__version__,
    }
    write_json(os.path.join(vdir, 'manifest.json'), man)
    return man, True


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split('\n\n', 1)[1])
    ap.add_argument('--out', default='/work/cache/models', help='output directory')
    ap.add_argument('--models', default=','.join(FULL),
                    help=f'comma-separated, or "all", "full", "tiny" (known: {", ".join(MODELS)})')
    ap.add_argument('--opsets', default='13,17', help='comma-separated ONNX opsets')
    ap.add_argument('--folding', default='fold,nofold', help='fold, nofold or both')
    ap.add_argument('--variants', default=None,
                    help='explicit list model:opset:fold|nofold,... (overrides the three above)')
    ap.add_argument('--threads', type=int, default=0, help='torch threads (0: torch default)')
    ap.add_argument('--list', action='store_true', help='print the variants and exit')
    args = ap.parse_args()

    if args.variants:
        variants = []
        for v in args.variants.split(','):
            mname, op, fold = v.split(':')
            variants.append((mname, int(op), fold))
    else:
        sel = {'all': FULL + TINY, 'full': FULL, 'tiny': TINY}.get(args.models)
        names = sel or [m for m in args.models.split(',') if m]
        variants = [(m, int(op), f) for m in names for op in args.opsets.split(',')
                    for f in args.folding.split(',')]
    for m, op, f in variants:
        if m not in MODELS:
            ap.error(f'unknown model {m!r} (known: {", ".join(MODELS)})')
        if not 11 <= op <= 17:
            ap.error(f'opset {op} outside 11..17')
        if f not in FOLDINGS:
            ap.error(f'folding {f!r}: expected fold or nofold')
    if args.list:
        for m, op, f in variants:
            print(f'{m}/op{op}-{f}')
        return 0

    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    summary = []
    models = {}
    for m, op, f in variants:
        size, batch2 = MODELS[m]
        if m not in models:
            t0 = time.monotonic()
            model = make_model(m, size)
            t_build = time.monotonic() - t0
            ref, made = references(m, model, size, batch2, os.path.join(args.out, m, 'ref'))
            models[m] = (model, ref)
            log(f'{m}: model {t_build:.1f}s, references ' +
                (f'{ref["reference_seconds"]:.1f}s' if made else 'cached'))
        model, ref = models[m]
        man, made = export_variant(m, model, size, op, f, os.path.join(args.out, m, f'op{op}-{f}'), ref)
        log(f'{m}/op{op}-{f}: ' + (f'exported in {man["total_seconds"]:.1f}s, {man["nodes"]} nodes, '
                                   f'{man["bytes"] / 1e6:.1f} MB' if made else 'cached'))
        summary.append({'variant': f'{m}/op{op}-{f}', 'made': made, 'seconds': man['total_seconds']})
    print(json.dumps(summary))
    return 0


if __name__ == '__main__':
    sys.exit(main())
