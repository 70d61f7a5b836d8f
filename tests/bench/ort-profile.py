#!/usr/bin/python3
"""Sum up an onnxruntime profile written by `ort-node.js bench ... --profile PREFIX`: time per
op type and the slowest nodes, per run, in the form of XREG_NN_PROFILE's, so the two engines can
be compared op by op (docs/nn.md "Profile").

    /usr/bin/python3 tests/bench/ort-profile.py PREFIX_<date>.json [--top N]
"""
import argparse
import collections
import json
import sys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('profile')
    ap.add_argument('--top', type=int, default=20, help='slowest nodes to list')
    a = ap.parse_args()
    try:
        with open(a.profile, encoding='utf-8') as f:
            events = json.load(f)
    except (OSError, ValueError) as e:
        print(f'ort-profile: {a.profile}: {e}', file=sys.stderr)
        return 1
    runs = sum(1 for e in events if e.get('name') == 'model_run')
    nodes = [e for e in events if e.get('cat') == 'Node' and e.get('name', '').endswith('_kernel_time')]
    if not runs or not nodes:
        print(f'ort-profile: {a.profile}: no runs or no node timings', file=sys.stderr)
        return 1
    per_op, count, per_node = collections.defaultdict(float), collections.Counter(), collections.defaultdict(float)
    for e in nodes:
        op = e['args'].get('op_name', '?')
        per_op[op] += e['dur']
        count[op] += 1
        shape = 'x'.join(str(d) for t in e['args'].get('output_type_shape', [])[:1] for d in next(iter(t.values())))
        per_node[(e['name'][:-len('_kernel_time')], op, shape)] += e['dur']
    total = sum(per_op.values())
    print(f'onnxruntime profile: {runs} runs, {total / runs / 1000:.3f} ms per run in nodes')
    for op, us in sorted(per_op.items(), key=lambda x: -x[1]):
        print(f'  {op:22s} {count[op] // runs:4d} nodes {us / runs / 1000:9.3f} ms {100 * us / total:5.1f}%')
    for (name, op, shape), us in sorted(per_node.items(), key=lambda x: -x[1])[:a.top]:
        print(f'  {us / runs / 1000:9.3f} ms  {op:14s} {shape:18s} {name}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
