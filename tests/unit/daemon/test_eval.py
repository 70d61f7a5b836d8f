"""xregctl eval / compare against independent references.

- statistics on random probabilities (csv: candidates) against scikit-learn (accuracy, log
  loss, kappa, per-class and macro precision/recall/F1, confusion matrix, ROC, AUC), scipy
  (Wilson intervals) and a straightforward DeLong 1988 implementation written here;
- degenerate inputs: clear errors or defined values (JSON null, "n/a"), never NaN;
- eval over a folder with a small model trained here (PyTorch, a few hundred steps on generated
  images) vs PyTorch on the same preprocessing and vs the same statistics in Python on the same
  probabilities; the PNG plots exist and decode;
- compare: the ranking rule on one common test set.
"""
import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats
from sklearn import metrics as skm

XREGCTL = os.environ['XREGCTL']
MODELS = os.environ['XREG_CLASSIFIER_MODELS']
ROOT = os.environ['XREG_SOURCE_ROOT']
sys.path.insert(0, os.path.join(ROOT, 'tools'))
sys.path.insert(0, os.path.dirname(__file__))


def run(*args, check=True):
    r = subprocess.run([XREGCTL, *map(str, args)], capture_output=True, text=True, timeout=300)
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


def delong_reference(y, s):
    """DeLong, DeLong & Clarke-Pearson 1988: AUC and its variance from the placement values,
    computed directly from the m x n kernel (no ranks)."""
    x = s[y == 1]
    z = s[y == 0]
    m, n = len(x), len(z)
    psi = (x[:, None] > z[None, :]).astype(float) + 0.5 * (x[:, None] == z[None, :])
    auc = psi.mean()
    v10 = psi.mean(axis=1)
    v01 = psi.mean(axis=0)
    s10 = ((v10 - auc) ** 2).sum() / (m - 1)
    s01 = ((v01 - auc) ** 2).sum() / (n - 1)
    return auc, s10 / m + s01 / n


def write_csvs(tmp, keys, truth_labels, labels, probs):
    t = tmp / 'truth.csv'
    with open(t, 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(['key', 'label'])
        for k, l in zip(keys, truth_labels):
            w.writerow([k, l])
    p = tmp / 'preds.csv'
    with open(p, 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(['key'] + labels)
        for k, row in zip(keys, probs):
            w.writerow([k] + [repr(float(v)) for v in row])
    return t, p


def no_nan(obj):
    if isinstance(obj, float):
        assert math.isfinite(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            no_nan(v)
    elif isinstance(obj, list):
        for v in obj:
            no_nan(v)


def f32(p):
    """What xregctl holds: float32 probabilities."""
    return np.asarray(p, dtype=np.float32).astype(np.float64)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_binary_vs_sklearn(tmp_path, seed):
    rng = np.random.default_rng(seed)
    n = 150 + 40 * seed
    y = (rng.random(n) < 0.35).astype(int)
    # informative scores, rounded to 2 decimals so there are many ties
    s = np.clip(np.round(1 / (1 + np.exp(-(rng.normal(size=n) + 1.2 * (2 * y - 1)))), 2),
                0.0, 1.0)
    probs = np.stack([1 - s, s], axis=1)
    labels = ['absent', 'present']
    keys = [f'1.2.3.{i}' for i in range(n)]
    t, p = write_csvs(tmp_path, keys, [labels[v] for v in y], labels, probs)
    thr = 0.4
    r = run('eval', '--truth', t, f'csv:{p}', '--labels', 'absent,present', '--positive',
            'present', '--threshold', thr, '--json', '--out', tmp_path / 'out')
    j = json.loads(r.stdout)
    no_nan(j)
    P = f32(probs)
    sp = P[:, 1]
    pred = (sp >= thr).astype(int)
    assert j['n'] == n
    assert j['accuracy'] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
    assert j['log_loss'] == pytest.approx(skm.log_loss(y, P, eps=1e-15, labels=[0, 1]), abs=1e-6)
    assert j['cohen_kappa'] == pytest.approx(skm.cohen_kappa_score(y, pred), abs=1e-9)
    assert j['confusion_matrix']['counts'] == skm.confusion_matrix(y, pred).tolist()
    pr, rc, f1, sup = skm.precision_recall_fscore_support(y, pred, labels=[0, 1], zero_division=0)
    for i, l in enumerate(labels):
        c = j['per_class'][l]
        assert c['support'] == sup[i]
        assert c['precision'] == pytest.approx(pr[i], abs=1e-12)
        assert c['recall'] == pytest.approx(rc[i], abs=1e-12)
        assert c['f1'] == pytest.approx(f1[i], abs=1e-12)
    mp, mr, mf, _ = skm.precision_recall_fscore_support(y, pred, average='macro', zero_division=0)
    assert j['macro']['precision'] == pytest.approx(mp, abs=1e-12)
    assert j['macro']['f1'] == pytest.approx(mf, abs=1e-12)
    b = j['binary']
    auc_ref, var_ref = delong_reference(y, sp)
    assert b['auc'] == pytest.approx(skm.roc_auc_score(y, sp), abs=1e-12)
    assert b['auc'] == pytest.approx(auc_ref, abs=1e-12)
    assert b['auc_se'] == pytest.approx(math.sqrt(var_ref), rel=1e-9)
    z = scipy.stats.norm.ppf(0.975)
    assert b['auc_ci95'][0] == pytest.approx(max(0, auc_ref - z * math.sqrt(var_ref)), abs=1e-9)
    assert b['auc_ci95'][1] == pytest.approx(min(1, auc_ref + z * math.sqrt(var_ref)), abs=1e-9)
    # Wilson intervals at the threshold (scipy's binomtest)
    at = b['at_threshold']
    tp = int(((pred == 1) & (y == 1)).sum())
    tn = int(((pred == 0) & (y == 0)).sum())
    ci = scipy.stats.binomtest(tp, int((y == 1).sum())).proportion_ci(0.95, method='wilson')
    assert at['sensitivity'] == pytest.approx(tp / (y == 1).sum())
    assert at['sensitivity_ci95'] == pytest.approx([ci.low, ci.high], abs=1e-9)
    ci = scipy.stats.binomtest(tn, int((y == 0).sum())).proportion_ci(0.95, method='wilson')
    assert at['specificity_ci95'] == pytest.approx([ci.low, ci.high], abs=1e-9)
    # ROC and Youden's optimum (highest threshold among the maxima of tpr - fpr)
    fpr, tpr, th = skm.roc_curve(y, sp, drop_intermediate=False)
    roc = np.array([[r[1], r[2]] for r in b['roc']])
    np.testing.assert_allclose(roc[:, 0], fpr, atol=1e-12)
    np.testing.assert_allclose(roc[:, 1], tpr, atol=1e-12)
    jv = tpr - fpr
    best = int(np.argmax(jv))  # first = highest threshold
    yo = b['youden']
    assert yo['threshold'] == pytest.approx(th[best], abs=1e-7)
    assert yo['youden_j'] == pytest.approx(jv[best], abs=1e-12)
    # reliability: 10 bins of p(present)
    bins = np.minimum((sp * 10).astype(int), 9)
    ece = sum((bins == k).sum() / n * abs(y[bins == k].mean() - sp[bins == k].mean())
              for k in range(10) if (bins == k).any())
    assert j['reliability']['ece'] == pytest.approx(ece, abs=1e-9)
    for f in ('metrics.json', 'predictions.csv', 'report.txt', 'roc.png', 'confusion.png',
              'reliability.png'):
        assert (tmp_path / 'out' / f).stat().st_size > 0


def test_multiclass_vs_sklearn(tmp_path):
    rng = np.random.default_rng(7)
    n, k = 240, 4
    labels = ['chest', 'knee', 'hand', 'skull']
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
    P = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y[:5] = 3  # make sure every class is present
    keys = [f'img/{i}.png' for i in range(n)]
    t, p = write_csvs(tmp_path, keys, [labels[v] for v in y], labels, P)
    j = json.loads(run('eval', '--truth', t, f'csv:{p}', '--labels', ','.join(labels),
                       '--json').stdout)
    no_nan(j)
    Pf = f32(P)
    pred = Pf.argmax(1)
    assert 'binary' not in j
    assert j['accuracy'] == pytest.approx(skm.accuracy_score(y, pred))
    assert j['log_loss'] == pytest.approx(skm.log_loss(y, Pf, eps=1e-15, labels=range(k)),
                                          abs=1e-6)
    assert j['cohen_kappa'] == pytest.approx(skm.cohen_kappa_score(y, pred), abs=1e-9)
    assert j['confusion_matrix']['counts'] == skm.confusion_matrix(y, pred,
                                                                   labels=range(k)).tolist()
    pr, rc, f1, _ = skm.precision_recall_fscore_support(y, pred, labels=range(k), zero_division=0)
    for i, l in enumerate(labels):
        assert j['per_class'][l]['f1'] == pytest.approx(f1[i], abs=1e-12)
        assert j['per_class'][l]['recall'] == pytest.approx(rc[i], abs=1e-12)
    mp, mr, mf, _ = skm.precision_recall_fscore_support(y, pred, average='macro', zero_division=0)
    assert (j['macro']['precision'], j['macro']['recall'], j['macro']['f1']) == \
        pytest.approx((mp, mr, mf), abs=1e-12)
    # one-vs-rest AUC per class with its DeLong CI, and the ROC points
    z = scipy.stats.norm.ppf(0.975)
    for i, l in enumerate(labels):
        c = j['per_class'][l]
        yi = (y == i).astype(int)
        auc, var = delong_reference(yi, Pf[:, i])
        assert c['auc_ovr'] == pytest.approx(skm.roc_auc_score(yi, Pf[:, i]), abs=1e-12)
        assert c['auc_ovr_ci95'] == pytest.approx(
            [max(0, auc - z * math.sqrt(var)), min(1, auc + z * math.sqrt(var))], abs=1e-9)
        fpr, tpr, _ = skm.roc_curve(yi, Pf[:, i], drop_intermediate=False)
        roc = np.array([[q[1], q[2]] for q in c['roc_ovr']])
        np.testing.assert_allclose(roc, np.stack([fpr, tpr], 1), atol=1e-12)
    conf = Pf.max(1)
    bins = np.minimum((conf * 10).astype(int), 9)
    ok = (pred == y)
    ece = sum((bins == b).sum() / n * abs(ok[bins == b].mean() - conf[bins == b].mean())
              for b in range(10) if (bins == b).any())
    assert j['reliability']['ece'] == pytest.approx(ece, abs=1e-9)


def test_degenerate(tmp_path):
    labels = ['absent', 'present']
    # one class only: AUC and specificity undefined (null), kappa undefined, no NaN anywhere
    keys = [f'1.2.{i}' for i in range(4)]
    P = np.array([[0.2, 0.8], [0.4, 0.6], [0.1, 0.9], [0.3, 0.7]])
    t, p = write_csvs(tmp_path, keys, ['present'] * 4, labels, P)
    r = run('eval', '--truth', t, f'csv:{p}', '--labels', 'absent,present', '--positive',
            'present', '--json')
    j = json.loads(r.stdout)
    no_nan(j)
    assert j['binary']['auc'] is None and j['binary']['auc_ci95'] == [None, None]
    assert j['binary']['at_threshold']['specificity'] is None
    assert j['cohen_kappa'] is None
    txt = run('eval', '--truth', t, f'csv:{p}', '--labels', 'absent,present', '--positive',
              'present').stdout
    assert 'nan' not in txt.lower()
    assert 'undefined: the ground truth has only one class' in txt
    assert 'kappa undefined' in txt
    # all correct, ties everywhere
    t, p = write_csvs(tmp_path, keys, ['absent', 'present', 'absent', 'present'], labels,
                      np.array([[1, 0], [0, 1], [1, 0], [0, 1]]))
    j = json.loads(run('eval', '--truth', t, f'csv:{p}', '--labels', 'absent,present',
                       '--positive', 'present', '--json').stdout)
    no_nan(j)
    assert j['accuracy'] == 1 and j['cohen_kappa'] == 1 and j['binary']['auc'] == 1
    assert j['log_loss'] == pytest.approx(0, abs=1e-12)
    # probabilities that do not sum to 1: an error naming the sample
    t, p = write_csvs(tmp_path, keys, ['absent'] * 4, labels,
                      np.array([[0.5, 0.5], [0.5, 0.9], [1, 0], [1, 0]]))
    r = run('eval', '--truth', t, f'csv:{p}', '--labels', 'absent,present', check=False)
    assert r.returncode == 1 and 'sample 1: probabilities sum to 1.4' in r.stderr
    # a truth label the model does not have
    t, p = write_csvs(tmp_path, keys, ['absent', 'maybe', 'absent', 'absent'], labels, P)
    r = run('eval', '--truth', t, f'csv:{p}', '--labels', 'absent,present', check=False)
    assert r.returncode == 1 and '"maybe"' in r.stderr and 'absent, present' in r.stderr
    # no matching predictions / empty truth
    t2, _ = write_csvs(tmp_path / '..', ['9.9.9'], ['absent'], labels, P[:1])
    r = run('eval', '--truth', t2, f'csv:{p}', '--labels', 'absent,present', check=False)
    assert r.returncode == 1 and 'none of the 1 ground-truth rows has a prediction' in r.stderr
    (tmp_path / 'empty.csv').write_text('key,label\n')
    r = run('eval', '--truth', tmp_path / 'empty.csv', f'csv:{p}', '--labels', 'absent,present',
            check=False)
    assert r.returncode == 1 and 'no ground-truth rows' in r.stderr
    # a spreadsheet export: UTF-8 BOM, CRLF, no header
    (tmp_path / 'bom.csv').write_bytes(b'\xef\xbb\xbf' + b''.join(
        f'{k},absent\r\n'.encode() for k in keys))
    j = json.loads(run('eval', '--truth', tmp_path / 'bom.csv', f'csv:{p}', '--labels',
                       'absent,present', '--json').stdout)
    assert j['n'] == 4
    # UID rows cannot be run through a model: say so
    r = run('eval', '--truth', t2, os.path.join(MODELS, 'good-implant.onnx'), check=False)
    assert r.returncode == 1 and 'use registry:NAME' in r.stderr
    # usage
    assert run('eval', f'csv:{p}', check=False).returncode == 2
    assert run('eval', '--truth', t, check=False).returncode == 2


# ---------------------------------------------------------------------------------------------
# A small trained model over a folder

def make_dataset(root, n_per, seed):
    """absent/ present/ PNGs (40x48 gray noise; 'present' has a bright disc: an 'implant')."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    for lab in ('absent', 'present'):
        os.makedirs(root / lab, exist_ok=True)
        for i in range(n_per):
            a = rng.normal(90, 25, (40, 48))
            if lab == 'present':
                cy, cx, r = rng.integers(10, 30), rng.integers(10, 38), rng.integers(4, 9)
                yy, xx = np.mgrid[:40, :48]
                a[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] += rng.uniform(60, 140)
            Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), 'L').save(
                root / lab / f'{lab}-{i:03d}.png')


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    import torch
    import make_test_models as mtm
    import xreg_preprocess as xp
    d = tmp_path_factory.mktemp('trained')
    make_dataset(d / 'train', 60, 1)
    make_dataset(d / 'test', 25, 2)
    meta = dict(mtm.IMPLANT)
    meta.update({'xreg.name': 'disc-detector', 'xreg.version': 'test-1',
                 'xreg.output': 'logits', 'xreg.input_size': '32,32', 'xreg.channels': '1',
                 'xreg.mean': '0.4', 'xreg.std': '0.2', 'xreg.resize': 'letterbox',
                 'xreg.threshold': '0.5'})
    del meta['xreg.placeholder']
    spec = xp.PreprocSpec.from_metadata(meta)
    xs, ys = [], []
    for lab, v in (('absent', 0), ('present', 1)):
        for f in sorted(os.listdir(d / 'train' / lab)):
            xs.append(xp.preprocess_file(str(d / 'train' / lab / f), spec))
            ys.append(v)
    X, Y = torch.stack(xs), torch.tensor(ys)
    torch.manual_seed(3)
    net = mtm.Tiny(1, 2)
    opt = torch.optim.Adam(net.parameters(), lr=0.03)
    for _ in range(150):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(X), Y)
        loss.backward()
        opt.step()
    net.eval()
    path = str(d / 'disc.onnx')
    mtm.export(net, (1, 2, False, 32, 32), meta, path)
    # a second, worse candidate: the same net after 5 steps only
    torch.manual_seed(3)
    net2 = mtm.Tiny(1, 2)
    opt = torch.optim.Adam(net2.parameters(), lr=0.03)
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net2(X), Y).backward()
        opt.step()
    net2.eval()
    meta2 = dict(meta, **{'xreg.name': 'disc-early', 'xreg.version': 'test-0'})
    path2 = str(d / 'disc-early.onnx')
    mtm.export(net2, (1, 2, False, 32, 32), meta2, path2)
    return {'dir': d, 'model': path, 'model2': path2, 'net': net, 'spec': spec, 'xp': xp}


def read_preds(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return rows


def test_eval_folder_matches_python(trained, tmp_path):
    import torch
    out = tmp_path / 'out'
    test_dir = trained['dir'] / 'test'
    r = run('eval', '--data', test_dir, trained['model'], '--out', out)
    assert 'AUC:' in r.stdout and 'Youden' in r.stdout
    j = json.load(open(out / 'metrics.json'))
    no_nan(j)
    assert j['n'] == 50 and j['model']['name'] == 'disc-detector'
    rows = read_preds(out / 'predictions.csv')
    assert len(rows) == 50
    # the probabilities are PyTorch's on the same preprocessing
    xp, spec, net = trained['xp'], trained['spec'], trained['net']
    paths = [r_['key'] for r_ in rows]
    with torch.no_grad():
        X = torch.stack([xp.preprocess_file(p, spec) for p in paths])
        want = torch.softmax(net(X).double(), 1).numpy()
    got = np.array([[float(r_['absent']), float(r_['present'])] for r_ in rows])
    np.testing.assert_allclose(got, want, atol=1e-4)
    # and the statistics are the Python ones on those probabilities
    y = np.array([1 if r_['truth'] == 'present' else 0 for r_ in rows])
    s = f32(got[:, 1])
    pred = (s >= 0.5).astype(int)
    assert j['accuracy'] == pytest.approx(skm.accuracy_score(y, pred))
    assert j['log_loss'] == pytest.approx(skm.log_loss(y, f32(got), eps=1e-15), abs=1e-6)
    assert j['cohen_kappa'] == pytest.approx(skm.cohen_kappa_score(y, pred), abs=1e-9)
    assert j['binary']['auc'] == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    auc, var = delong_reference(y, s)
    assert j['binary']['auc_se'] == pytest.approx(math.sqrt(var), rel=1e-9, abs=1e-12)
    assert j['accuracy'] > 0.8, 'the trained model should have learnt the disc'
    # PNGs are valid images of a sensible size
    from PIL import Image
    for f in ('roc.png', 'confusion.png', 'reliability.png'):
        with open(out / f, 'rb') as fh:
            assert fh.read(8) == b'\x89PNG\r\n\x1a\n'
        im = Image.open(out / f)
        im.verify()
        im = Image.open(out / f)
        assert im.size[0] >= 300 and im.size[1] >= 300
        # not blank: more than a couple of colours
        assert len(im.convert('RGB').getcolors(1 << 20)) > 5
    # the predictions CSV is a valid candidate itself: same metrics
    j2 = json.loads(run('eval', '--data', test_dir, f'csv:{out / "predictions.csv"}',
                        '--labels', 'absent,present', '--positive', 'present', '--json').stdout)
    assert j2['log_loss'] == pytest.approx(j['log_loss'], abs=1e-7)
    assert j2['binary']['auc'] == pytest.approx(j['binary']['auc'], abs=1e-12)
    # tools/train.py's probs/<split>.csv (file relative to the dataset root, label, prob_<l>)
    # works as a candidate over the folder and as the ground truth itself
    probs_csv = tmp_path / 'test.csv'
    root = trained['dir']
    with open(probs_csv, 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(['file', 'label', 'prob_absent', 'prob_present'])
        for r_ in rows:
            w.writerow([os.path.relpath(r_['key'], root), r_['truth'], r_['absent'],
                        r_['present']])
    for truth in (['--data', test_dir], ['--truth', probs_csv]):
        j3 = json.loads(run('eval', *truth, f'csv:{probs_csv}', '--labels', 'absent,present',
                            '--positive', 'present', '--json').stdout)
        assert j3['n'] == 50
        assert j3['log_loss'] == pytest.approx(j['log_loss'], abs=1e-7)
    # the thesis's split layout given whole: a hint
    r = run('eval', '--data', root, trained['model'], check=False)
    assert r.returncode == 1 and f'pass --data {root}/test' in r.stderr


def test_eval_folder_unreadable(trained, tmp_path):
    import shutil
    d = tmp_path / 'ds'
    shutil.copytree(trained['dir'] / 'test', d)
    (d / 'present' / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'\x00' * 20)
    (d / 'absent' / 'notes.txt').write_text('not an image')
    r = run('eval', '--data', d, trained['model'], '--json')
    j = json.loads(r.stdout)
    assert j['n'] == 50 and j['n_unreadable'] == 1 and j['n_skipped'] == 1
    assert 'broken.png' in r.stderr
    r = run('eval', '--data', d, trained['model'], '--strict', check=False)
    assert r.returncode == 1 and 'broken.png' in r.stderr
    # a label folder the model does not know
    os.makedirs(d / 'unknown')
    (d / 'unknown' / 'x.png').write_bytes((d / 'absent' / 'absent-000.png').read_bytes())
    r = run('eval', '--data', d, trained['model'], check=False)
    assert r.returncode == 1 and '"unknown"' in r.stderr


def test_compare(trained, tmp_path):
    out = tmp_path / 'cmp'
    test_dir = trained['dir'] / 'test'
    r = run('compare', '--data', test_dir, trained['model2'], trained['model'], '--out', out)
    assert 'ranking: lowest log loss first' in r.stdout
    j = json.load(open(out / 'compare.json'))
    names = [m['name'] for m in j['models']]
    lls = [m['log_loss'] for m in j['models']]
    assert lls == sorted(lls)
    assert names[0] == 'disc-detector'
    assert j['n'] == 50
    # each model's eval equals its own eval run
    single = json.loads(run('eval', '--data', test_dir, trained['model2'], '--json').stdout)
    assert j['models'][1]['log_loss'] == pytest.approx(single['log_loss'], abs=1e-12)
    assert (out / 'roc.png').stat().st_size > 0
    assert (out / '01-disc-detector' / 'metrics.json').exists()
    assert (out / '02-disc-early' / 'roc.png').exists()
    # models of different tasks cannot be ranked together
    r = run('compare', '--data', test_dir, trained['model'],
            os.path.join(MODELS, 'good-body.onnx'), check=False)
    assert r.returncode == 1
