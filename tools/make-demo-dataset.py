#!/usr/bin/python3
"""Build the thesis's folder layout for the demo models from ../shared/data/xray/labels.csv.

    /usr/bin/python3 tools/make-demo-dataset.py [--data ../shared/data/xray] [--out DIR]
        [--seed N] [--tasks body_part,implant,fracture] [--copy] [--no-implant-proxy]

writes OUT/<task>/{train,validation,test}/<label>/<file> (symlinks unless --copy) and
OUT/<task>/manifest.json (every file used with its source and licence, what was excluded and
why), and prints per-class counts per
split and what was excluded and why.

Licence rule (docs: models/README.md): only rows whose `license_as_stated` gives an *image*
licence that permits redistributing derived work (CC BY, CC BY-SA, MIT) may train a committed
model. A repository's code licence ("repo MIT (code); image licence not stated") is not an
image licence; "not stated", "none stated", "unknown" and "research use" are excluded.

Splits are by source image: every file is keyed by its source (repository + source path, with
Roboflow's ".rf.<hash>" augmentation suffix removed), and a source lands in exactly one split for
every task (the same radiograph is listed under several tasks). Assignment is stratified by the
source's first label and seeded, so it is reproducible.

Task labels: implant and fracture are written as absent/present (the xreg.labels of those
tasks); body_part labels are the registry's xreg.body_part_map keys.

Implant proxy (default on, --no-implant-proxy to drop it): the licensed implant data has 447
"present" films (UCI shoulder arthroplasties, one source) and only 7 "absent" ones (paediatric
DDH pelvises). To give the demo model an absent class of the same kind of film, the Roboflow
upper-limb films labelled fracture "no" (no box; MURA-normal-like, where hardware would have made
them abnormal) are added as implant "absent" with a *proxy* label, which the manifest records.
They are not implant-verified: models/README.md says so and the model carries xreg.placeholder.
"""
import argparse
import collections
import csv
import json
import os
import random
import re
import shutil
import sys

SPLITS = ('train', 'validation', 'test')
FRACTIONS = (0.70, 0.15, 0.15)
TASK_DIRS = {'bodypart': 'body_part', 'implant': 'implant', 'fracture': 'fracture'}
BINARY = {'yes': 'present', 'no': 'absent'}


def licence_verdict(lic):
    """(allowed, reason) for a license_as_stated value."""
    s = lic.strip()
    low = s.lower()
    # A code licence with the image licence stated as missing is not an image licence.
    if 'image licence not stated' in low or 'licence not stated' in low or \
            'license not stated' in low:
        return False, 'image licence not stated (only the repository code licence is)'
    for bad in ('research use', 'not stated', 'none stated', 'unknown', 'no explicit licence'):
        if low.startswith(bad) or (bad in low and not re.search(r'cc by|mit\b', low)):
            return False, f'licence "{s}": {bad}'
    if re.match(r'^(mednist: )?cc by(-sa)? [0-9.]+', low) or low.startswith('cc by'):
        return True, s
    if re.match(r'^mit\b', low):
        return True, s
    return False, f'licence "{s}" not recognised as CC BY / CC BY-SA / MIT'


def source_key(row):
    base = row['source_path']
    # Roboflow exports name augmented copies <source>.rf.<hash>.<ext>: same source, same split.
    base = re.sub(r'\.rf\.[0-9a-f]+(\.[A-Za-z0-9]+)$', '', base)
    return row['source_repo'] + ':' + base


def assign_splits(groups, seed):
    """groups: {key: stratum}. Per stratum, shuffle the sorted keys with the seed and cut at
    70/15/15, rounding so that each split gets at least one source when the stratum has 3."""
    by = collections.defaultdict(list)
    for k, s in groups.items():
        by[s].append(k)
    out = {}
    for s in sorted(by):
        keys = sorted(by[s])
        random.Random(f'{seed}:{s}').shuffle(keys)
        n = len(keys)
        n_test = max(1, round(n * FRACTIONS[2])) if n >= 3 else 0
        n_val = max(1, round(n * FRACTIONS[1])) if n >= 3 else 0
        for i, k in enumerate(keys):
            out[k] = 'test' if i < n_test else 'validation' if i < n_test + n_val else 'train'
    return out


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split('\n\n', 1)[1])
    ap.add_argument('--data', default=os.path.join(root, '..', 'shared', 'data', 'xray'))
    ap.add_argument('--out', default=os.path.join(root, 'build', 'demo-dataset'))
    ap.add_argument('--seed', type=int, default=6)
    ap.add_argument('--tasks', default='body_part,implant,fracture')
    ap.add_argument('--copy', action='store_true', help='copy files instead of symlinking')
    ap.add_argument('--no-implant-proxy', action='store_true',
                    help='do not add fracture-"no" films as proxy implant-absent examples')
    a = ap.parse_args()
    tasks = [t for t in a.tasks.split(',') if t]
    for t in tasks:
        if t not in TASK_DIRS.values():
            ap.error(f'unknown task {t!r} (body_part, implant, fracture)')
    csv_path = os.path.join(a.data, 'labels.csv')
    if not os.path.exists(csv_path):
        print(f'make-demo-dataset: {csv_path} not found (the shared data is not on this machine)',
              file=sys.stderr)
        return 1
    with open(csv_path, newline='') as f:
        rows = list(csv.DictReader(f))

    excluded = collections.Counter()
    used = []  # (task, label, row, proxy)
    for r in rows:
        task = TASK_DIRS.get(r['task'])
        if task is None:
            excluded[(r['task'], r['label'], f'unknown task {r["task"]!r}')] += 1
            continue
        ok, why = licence_verdict(r['license_as_stated'])
        if not ok:
            excluded[(task, r['label'], f'{r["original_dataset"][:60]}: {why}')] += 1
            continue
        label = r['label']
        if task != 'body_part':
            if label not in BINARY:
                excluded[(task, label, f'label {label!r} is not yes/no')] += 1
                continue
            label = BINARY[label]
        used.append((task, label, r, False))
        if task == 'fracture' and label == 'absent' and not a.no_implant_proxy:
            used.append(('implant', 'absent', r, True))

    # One split per source, over every task; stratum = the first (task, label) seen in CSV order.
    strata = {}
    for task, label, r, _ in used:
        strata.setdefault(source_key(r), f'{task}/{label}')
    split_of = assign_splits(strata, a.seed)

    counts = collections.defaultdict(collections.Counter)
    manifest = {'seed': a.seed, 'data': os.path.abspath(a.data), 'fractions': FRACTIONS,
                'implant_proxy': not a.no_implant_proxy, 'files': [], 'excluded': []}
    made = set()
    for t in tasks:
        d = os.path.join(a.out, t)
        if os.path.isdir(d):
            shutil.rmtree(d)
    for task, label, r, proxy in used:
        if task not in tasks:
            continue
        split = split_of[source_key(r)]
        src = os.path.abspath(os.path.join(a.data, r['file']))
        name = os.path.basename(r['file'])
        dst_dir = os.path.join(a.out, task, split, label)
        dst = os.path.join(dst_dir, name)
        if dst in made:  # same name from two sources: keep both
            stem, ext = os.path.splitext(name)
            dst = os.path.join(dst_dir, f'{stem}_{len(made)}{ext}')
        made.add(dst)
        os.makedirs(dst_dir, exist_ok=True)
        if a.copy:
            shutil.copyfile(src, dst)
        else:
            os.symlink(src, dst)
        counts[task][(split, label)] += 1
        manifest['files'].append({'task': task, 'split': split, 'label': label,
                                  'file': os.path.relpath(dst, a.out), 'source': r['file'],
                                  'source_key': source_key(r), 'licence': r['license_as_stated'],
                                  'original_dataset': r['original_dataset'],
                                  'proxy_label': proxy})
    for (task, label, why), n in sorted(excluded.items()):
        manifest['excluded'].append({'task': task, 'label': label, 'reason': why, 'files': n})
    for task in tasks:  # one manifest per task folder, so per-task runs do not clash
        mt = dict(manifest, task=task, files=[f for f in manifest['files'] if f['task'] == task],
                  excluded=[e for e in manifest['excluded'] if e['task'] == task])
        os.makedirs(os.path.join(a.out, task), exist_ok=True)
        with open(os.path.join(a.out, task, 'manifest.json'), 'w') as f:
            json.dump(mt, f, indent=1)

    for task in tasks:
        labels = sorted({lab for (_, lab) in counts[task]})
        print(f'{task}:')
        print(f'  {"label":<12}' + ''.join(f'{s:>11}' for s in SPLITS) + f'{"total":>8}')
        for lab in labels:
            n = [counts[task][(s, lab)] for s in SPLITS]
            print(f'  {lab:<12}' + ''.join(f'{x:>11}' for x in n) + f'{sum(n):>8}')
        proxies = sum(1 for f in manifest['files'] if f['task'] == task and f['proxy_label'])
        if proxies:
            print(f'  ({proxies} "absent" files are proxy labels: fracture-"no" films, '
                  f'not implant-verified)')
    print('excluded (licence does not permit redistributing derived work, or unusable label):')
    for e in manifest['excluded']:
        print(f'  {e["files"]:>4} {e["task"]}/{e["label"]}: {e["reason"]}')
    # The check that matters: no source in two splits.
    seen = {}
    for f in manifest['files']:
        prev = seen.setdefault(f['source_key'], f['split'])
        if prev != f['split']:
            print(f'make-demo-dataset: internal error: {f["source_key"]} in {prev} and '
                  f'{f["split"]}', file=sys.stderr)
            return 1
    print(f'wrote {a.out} ({len(manifest["files"])} files, {len(seen)} sources, seed {a.seed})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
