#!/usr/bin/python3
"""Speed and memory of xreg's ONNX engine against onnxruntime-node and PyTorch (issue 3).

In one invocation, on the same machine: xreg (`xregctl nn-bench`), onnxruntime-node (CPU, npm)
and Debian's PyTorch (TorchScript-frozen) run resnet50, efficientnet_b0 and vit_b_16 at 224x224:
median latency at batch 1 and images/s at batch 8, with 1 and 2 threads. Each measurement is a
process of its own (warm-up runs, then timed runs: --runs-b1/--runs-b8, more where needed to
time --min-seconds; median); the engines are interleaved
(rotating order) over --rounds rounds and the figure is the median over rounds, so slow phases
of a shared machine hit every engine alike. Peak resident memory comes from wait4()'s ru_maxrss
of each engine's process at resnet50 batch 8. The machine's fp32 matrix-multiply peak is
oneDNN's sgemm on a large square product (tests/bench/sgemm-peak.c), measured each round too.

    meson test -C build --benchmark --suite bench nn --verbose      (or run this file directly:)
    XREGCTL=build/daemon/xregctl XREG_SGEMM_PEAK=build/tests/nn/sgemm-peak \\
        /usr/bin/python3 tests/bench/bench-nn.py [--rounds 3] [--engines xreg,ort,torch] ...

Prints a table with speed ratios against onnxruntime (>1: faster than onnxruntime) and the
share of the sgemm peak; --json FILE also writes every figure. Not a pass/fail test: the issue's
targets are printed as met / NOT met for the reader.
"""
import argparse
import json
import os
import pathlib
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(os.environ.get('XREG_SOURCE_ROOT', pathlib.Path(__file__).resolve().parents[2]))
BENCH = ROOT / 'tests' / 'bench'
BUILD = pathlib.Path(os.environ.get('XREG_BUILD_ROOT', ROOT / 'build'))
ENGINES = ['xreg', 'ort', 'torch']
NAMES = {'xreg': 'xreg', 'ort': 'onnxruntime', 'torch': 'pytorch-ts'}
TARGETS = {  # the targets: xreg speed / onnxruntime speed at 2 threads
    'resnet50': 1.0, 'vit_b_16': 1.0, 'efficientnet_b0': 1.3,
}


def log(msg):
    print(f'bench-nn: {msg}', file=sys.stderr, flush=True)


def parse_kv(text):
    """key=value lines (ort-node.js, torch-bench.py, sgemm-peak), plus xregctl nn-bench's
    'latency: median X ms, ...' and 'peak RSS: X MiB' lines."""
    kv = {m.group(1): float(m.group(2))
          for m in re.finditer(r'^\s*([a-z_]+)=([-+0-9.eE]+)\s*$', text, re.M)}
    m = re.search(r'^latency: median ([0-9.]+) ms', text, re.M)
    if m and 'median_ms' not in kv:
        kv['median_ms'] = float(m.group(1))
    m = re.search(r'^peak RSS: ([0-9.]+) MiB', text, re.M)
    if m and 'peak_rss_kb' not in kv:
        kv['peak_rss_kb'] = float(m.group(1)) * 1024
    return kv


def run_measured(cmd, env, timeout=1800):
    """Runs cmd, returns (returncode, stdout, stderr, ru_maxrss in kB)."""
    with tempfile.TemporaryFile(mode='w+') as err:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env, text=True)
        t0 = time.monotonic()
        out = p.stdout.read()
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        if time.monotonic() - t0 > timeout:
            log(f'warning: {cmd[0]} took {time.monotonic() - t0:.0f}s')
        err.seek(0)
        return p.returncode, out, err.read(), ru.ru_maxrss


class Engine:
    def __init__(self, name, args):
        self.name, self.args, self.available, self.why = name, args, True, ''

    def command(self, model, model_path, size, batch, threads, runs):
        a = self.args
        if self.name == 'xreg':
            return [a.xregctl, 'nn-bench', str(model_path), '--batch', str(batch),
                    '--threads', str(threads), '--runs', str(runs)]
        if self.name == 'ort':
            return ['node', str(BENCH / 'ort-node.js'), 'bench', str(model_path), f'3,{size},{size}',
                    '--batch', str(batch), '--threads', str(threads), '--runs', str(runs),
                    '--warmup', str(a.warmup)]
        return ['/usr/bin/python3', str(BENCH / 'torch-bench.py'), 'bench', model, '--cache',
                str(a.models_dir), '--batch', str(batch), '--threads', str(threads),
                '--runs', str(runs), '--warmup', str(a.warmup)]

    def env(self, threads):
        e = dict(os.environ)
        e['OMP_NUM_THREADS'] = str(threads)  # oneDNN (xreg, sgemm) and OpenBLAS under torch
        if self.name == 'ort':
            e['NODE_PATH'] = str(self.args.node_dir / 'node_modules')
        return e


def check_engines(args, engines):
    for e in engines:
        if e.name == 'xreg':
            if not args.xregctl or not os.access(args.xregctl, os.X_OK):
                e.available, e.why = False, 'XREGCTL not set or not executable'
                continue
            r = subprocess.run([args.xregctl, 'nn-bench', '--help'], capture_output=True, text=True)
            if r.returncode != 0 or 'nn-bench' not in r.stdout + r.stderr:
                e.available, e.why = False, 'this xregctl has no nn-bench subcommand'
        elif e.name == 'ort':
            r = subprocess.run(['bash', str(BENCH / 'setup-onnxruntime-node.sh'), str(args.node_dir)])
            if r.returncode != 0:
                e.available, e.why = False, 'onnxruntime-node could not be installed (see above)'
        elif e.name == 'torch':
            for m in args.models:
                r = subprocess.run(['/usr/bin/python3', str(BENCH / 'torch-bench.py'), 'prepare', m,
                                    '--cache', str(args.models_dir)], capture_output=True, text=True)
                if r.returncode != 0:
                    e.available, e.why = False, f'torch-bench prepare {m} failed: {r.stderr[-500:]}'
                    break
        if not e.available:
            log(f'!!! {NAMES[e.name]} is NOT measured: {e.why}')


def sgemm_peak(args, threads):
    if not args.sgemm:
        return None
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    r = subprocess.run([args.sgemm, str(args.sgemm_n)], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        log(f'sgemm-peak failed: {r.stderr.strip()}')
        return None
    return parse_kv(r.stdout).get('gflops')


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split('\n\n', 1)[1])
    ap.add_argument('--models', default='resnet50,efficientnet_b0,vit_b_16')
    ap.add_argument('--engines', default=','.join(ENGINES), help='xreg, ort, torch')
    ap.add_argument('--threads', default='1,2')
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--runs-b1', type=int, default=15, help='timed runs per process at batch 1 (at least)')
    ap.add_argument('--runs-b8', type=int, default=5, help='timed runs per process at batch 8 (at least)')
    ap.add_argument('--min-seconds', type=float, default=1.0,
                    help='more timed runs where needed so each process times at least this long '
                         '(estimated from the figures so far): a 10 ms model timed 15 times is '
                         'at the mercy of one slow phase of a shared machine')
    ap.add_argument('--warmup', type=int, default=2)
    ap.add_argument('--variant', default='op17-fold', help='which export the ONNX engines run')
    ap.add_argument('--models-dir', default=os.environ.get('XREG_NN_MODELS', str(BUILD / 'tests' / 'nn' / 'models')))
    ap.add_argument('--node-dir', default=os.environ.get('XREG_BENCH_NODE', str(BUILD / 'bench-node')))
    ap.add_argument('--xregctl', default=os.environ.get('XREGCTL', str(BUILD / 'daemon' / 'xregctl')))
    ap.add_argument('--sgemm', default=os.environ.get('XREG_SGEMM_PEAK', str(BUILD / 'tests' / 'nn' / 'sgemm-peak')))
    ap.add_argument('--sgemm-n', type=int, default=2048)
    ap.add_argument('--json', help='write every figure to this file')
    args = ap.parse_args()
    args.models = [m for m in args.models.split(',') if m]
    args.threads = [int(t) for t in args.threads.split(',')]
    args.models_dir = pathlib.Path(args.models_dir)
    args.node_dir = pathlib.Path(args.node_dir)
    if args.sgemm and not os.access(args.sgemm, os.X_OK):
        log(f'!!! no sgemm-peak at {args.sgemm} (meson builds it with the benchmarks): no peak figures')
        args.sgemm = None

    t_start = time.monotonic()
    spec = ','.join(f'{m}:{args.variant[2:4]}:{args.variant.split("-")[1]}' for m in args.models)
    r = subprocess.run(['/usr/bin/python3', str(ROOT / 'tools' / 'export-models.py'), '--out',
                        str(args.models_dir), '--variants', spec], stdout=subprocess.DEVNULL)
    if r.returncode != 0:
        log('tools/export-models.py failed')
        return 1
    info = {}
    for m in args.models:
        ref = json.loads((args.models_dir / m / 'ref' / 'ref.json').read_text())
        info[m] = {'size': ref['size'], 'gflop': ref['gflop_per_image'],
                   'path': args.models_dir / m / args.variant / 'model.onnx'}

    engines = [Engine(n, args) for n in args.engines.split(',') if n]
    check_engines(args, engines)
    live = [e for e in engines if e.available]
    if not live:
        log('no engine to measure')
        return 1

    samples = {}   # (engine, model, threads, batch) -> [median ms per round]
    rss = {}       # engine -> max ru_maxrss kB at resnet50 batch 8, most threads
    peaks = {t: [] for t in args.threads}
    loads = []     # 1-minute load average before each measurement: other work skews the figures
    for rnd in range(args.rounds):
        for t in args.threads:
            g = sgemm_peak(args, t)
            if g:
                peaks[t].append(g)
        order = live[rnd % len(live):] + live[:rnd % len(live)]
        for m in args.models:
            for t in args.threads:
                for batch in (1, 8):
                    runs = args.runs_b1 if batch == 1 else args.runs_b8
                    # expected ms per run: what any engine measured so far, else the sgemm peak
                    seen = [v for (n, mm, tt, bb), vs in samples.items()
                            if (mm, tt, bb) == (m, t, batch) for v in vs]
                    est = (statistics.median(seen) if seen else
                           info[m]['gflop'] * batch * 1000.0 / (0.5 * peaks[t][-1]) if peaks[t] else None)
                    if est:
                        runs = min(500, max(runs, int(args.min_seconds * 1000.0 / est + 0.999)))
                    for e in order:
                        cmd = e.command(m, info[m]['path'], info[m]['size'], batch, t, runs)
                        loads.append(os.getloadavg()[0])
                        rc, out, err, maxrss = run_measured(cmd, e.env(t))
                        kv = parse_kv(out)
                        if rc != 0 or 'median_ms' not in kv:
                            log(f'{NAMES[e.name]} {m} t{t} b{batch} failed (exit {rc}): '
                                f'{(err or out).strip()[-600:]}')
                            continue
                        samples.setdefault((e.name, m, t, batch), []).append(kv['median_ms'])
                        if m == 'resnet50' and batch == 8 and t == max(args.threads):
                            rss[e.name] = max(rss.get(e.name, 0), maxrss)
                        log(f'round {rnd + 1}/{args.rounds} {NAMES[e.name]:<11} {m:<15} t{t} b{batch}: '
                            f'{kv["median_ms"]:.1f} ms, rss {maxrss / 1024:.0f} MB')

    def med(e, m, t, b):
        s = samples.get((e, m, t, b))
        return statistics.median(s) if s else None

    peak = {t: (statistics.median(p) if p else None) for t, p in peaks.items()}
    names = [e.name for e in engines]
    lines = []
    head = (f'{"model":<16}{"thr":>4} {"metric":<9}' + ''.join(f'{NAMES[n]:>12}' for n in names) +
            ''.join(f'{NAMES[n] + "/ort":>16}' for n in names if n != 'ort') +
            ''.join(f'{"%peak " + NAMES[n]:>18}' for n in names))
    lines.append(head)
    lines.append('-' * len(head))
    results = []
    for m in args.models:
        for t in args.threads:
            for b in (1, 8):
                ms = {n: med(n, m, t, b) for n in names}
                if b == 1:
                    val = {n: ms[n] for n in names}
                    metric, fmt = 'b1 ms', '{:>12.1f}'
                else:
                    val = {n: (8000.0 / ms[n] if ms[n] else None) for n in names}
                    metric, fmt = 'b8 img/s', '{:>12.2f}'
                ratio = {n: (ms['ort'] / ms[n] if ms.get('ort') and ms[n] else None) for n in names}
                pk = {n: (100.0 * info[m]['gflop'] * b * 1000.0 / ms[n] / peak[t]
                          if ms[n] and peak.get(t) else None) for n in names}
                row = f'{m:<16}{t:>4} {metric:<9}'
                row += ''.join(fmt.format(val[n]) if val[n] else f'{"n/a":>12}' for n in names)
                row += ''.join(f'{ratio[n]:>16.2f}' if ratio[n] else f'{"n/a":>16}'
                               for n in names if n != 'ort')
                row += ''.join(f'{pk[n]:>17.0f}%' if pk[n] else f'{"n/a":>18}' for n in names)
                lines.append(row)
                results.append({'model': m, 'threads': t, 'batch': b, 'median_ms': ms,
                                'speed_vs_ort': ratio, 'percent_of_sgemm_peak': pk,
                                'rounds': {n: samples.get((n, m, t, b), []) for n in names}})
    print()
    print(f'nn benchmark: {args.rounds} rounds, at least {args.runs_b1}/{args.runs_b8} timed runs and '
          f'{args.min_seconds:g} s per process at batch 1/8, ONNX variant {args.variant}, {os.cpu_count()} CPUs, '
          f'{time.monotonic() - t_start:.0f}s')
    ncpu = os.cpu_count() or 1
    if loads:
        print(f'load average during the run: median {statistics.median(loads):.1f}, max {max(loads):.1f} '
              f'on {ncpu} CPUs' + ('  !!! the machine was busy: absolute figures are pessimistic, '
                                   'OpenMP engines (xreg, pytorch) suffer most at 2 threads'
                                   if statistics.median(loads) > ncpu + 0.5 else ''))
    print('sgemm peak (oneDNN, N=%d): ' % args.sgemm_n +
          ', '.join(f'{t} thread{"s" if t > 1 else ""} {peak[t]:.1f} GFLOP/s' if peak[t] else f'{t}: n/a'
                    for t in args.threads))
    print('GFLOP per image: ' + ', '.join(f'{m} {info[m]["gflop"]:.2f}' for m in args.models))
    print('\n'.join(lines))
    print()
    print(f'peak RSS at resnet50 batch 8, {max(args.threads)} thread(s) (ru_maxrss of the engine\'s process):')
    for n in names:
        if n in rss:
            vs = f' ({rss[n] / rss["ort"]:.2f}x onnxruntime)' if 'ort' in rss and n != 'ort' else ''
            print(f'  {NAMES[n]:<12} {rss[n] / 1024:8.0f} MB{vs}')
        else:
            print(f'  {NAMES[n]:<12}      n/a')
    for e in engines:
        if not e.available:
            print(f'  !!! {NAMES[e.name]} not measured: {e.why}')
    if 'xreg' in names and 'ort' in names:
        print('\nissue targets (2 threads):')
        t = 2 if 2 in args.threads else max(args.threads)
        for m, goal in TARGETS.items():
            if m not in args.models:
                continue
            for b in (1, 8):
                x, o = med('xreg', m, t, b), med('ort', m, t, b)
                xs, os_ = samples.get(('xreg', m, t, b), []), samples.get(('ort', m, t, b), [])
                per_round = [a / c for a, c in zip(os_, xs)]
                spread = (f', rounds {min(per_round):.2f}-{max(per_round):.2f}'
                          if len(per_round) > 1 else '')
                if x and o:
                    print(f'  {m} b{b}: xreg/onnxruntime {o / x:.2f} (target >= {goal}{spread}) '
                          f'{"met" if o / x >= goal else "NOT met"}')
                else:
                    print(f'  {m} b{b}: n/a')
        if 'xreg' in rss and 'ort' in rss:
            print(f'  resnet50 b8 peak RSS: {rss["xreg"] / 1024:.0f} MB vs {rss["ort"] / 1024:.0f} MB '
                  f'{"met" if rss["xreg"] <= rss["ort"] else "NOT met"}')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'results': results, 'peak_rss_kb': rss, 'sgemm_gflops': peak,
                       'gflop_per_image': {m: info[m]['gflop'] for m in args.models},
                       'rounds': args.rounds, 'load_averages': loads}, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
