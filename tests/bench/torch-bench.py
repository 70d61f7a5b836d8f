#!/usr/bin/python3
"""PyTorch (Debian's, TorchScript-frozen) driver for bench-nn.py.

  torch-bench.py prepare MODEL --cache DIR
      builds the random-weight model exactly as tools/export-models.py does (same seed, same
      calibration), traces and freezes it, saves DIR/MODEL/torchscript-frozen.pt
  torch-bench.py bench MODEL --cache DIR --batch N --threads T --runs K [--warmup W]
      loads the frozen module and prints load_ms=, median_ms=, min_ms=, peak_rss_kb=

The bench runs in a process of its own, so its peak RSS is torch's import plus one frozen model.
"""
import argparse
import importlib.util
import json
import os
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]


def export_module():
    spec = importlib.util.spec_from_file_location('export_models', ROOT / 'tools' / 'export-models.py')
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def peak_rss_kb():
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmHWM:'):
                return int(line.split()[1])
    return -1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('mode', choices=['prepare', 'bench'])
    ap.add_argument('model')
    ap.add_argument('--cache', required=True)
    ap.add_argument('--batch', type=int, default=1)
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--runs', type=int, default=10)
    ap.add_argument('--warmup', type=int, default=2)
    args = ap.parse_args()

    import torch
    em = export_module()
    size = em.MODELS[args.model][0]
    path = pathlib.Path(args.cache) / args.model / 'torchscript-frozen.pt'
    stamp = path.with_suffix('.json')
    key = em.content_key('torchscript-frozen', args.model, size, em.SEED)
    if args.mode == 'prepare':
        if path.exists() and stamp.exists() and json.loads(stamp.read_text()).get('key') == key:
            return 0
        path.parent.mkdir(parents=True, exist_ok=True)
        model = em.make_model(args.model, size)
        with torch.no_grad():
            traced = torch.jit.trace(model, torch.zeros(2, 3, size, size))
            frozen = torch.jit.freeze(traced.eval())
        tmp = path.with_suffix('.tmp')
        torch.jit.save(frozen, str(tmp))
        os.replace(tmp, path)
        stamp.write_text(json.dumps({'key': key}) + '\n')
        return 0

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    t0 = time.monotonic()
    model = torch.jit.load(str(path)).eval()
    load_ms = (time.monotonic() - t0) * 1e3
    x = torch.randn(args.batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    times = []
    with torch.no_grad():
        for i in range(args.warmup + args.runs):
            a = time.perf_counter()
            model(x)
            if i >= args.warmup:
                times.append((time.perf_counter() - a) * 1e3)
    print(f'load_ms={load_ms:.1f}')
    print(f'median_ms={statistics.median(times):.3f}')
    print(f'min_ms={min(times):.3f}')
    print(f'peak_rss_kb={peak_rss_kb()}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
