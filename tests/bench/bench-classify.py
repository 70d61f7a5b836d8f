#!/usr/bin/python3
"""Images/s through the whole daemon with classification: C-STORE in -> registry row out.

Exact command lines (from the repository root, after `meson setup build && meson compile -C build`):

    # what `meson test -C build --benchmark classify` runs:
    XREGD=build/daemon/xregd XREGCTL=build/daemon/xregctl XREG_SOURCE_ROOT=$PWD \\
        tests/with-postgres.sh /usr/bin/python3 tests/bench/bench-classify.py

    # a real architecture's inference cost (random weights, nothing downloaded):
    ... tests/bench/bench-classify.py --arch resnet18

    # other sizes and settings; machine-readable summary on the last line:
    ... tests/bench/bench-classify.py --files 200 --rows 2048 --columns 2048 --workers 2 \\
        --threads 1 --batch 8 --runs 3 --json

Models: models/body-part.onnx, models/implant.onnx and models/fracture.onnx (the committed demo
models) when all three exist, else three tiny models exported here (tests/integration/
classify_models.py: 16 x 16 input, a linear layer; they measure the pipeline around inference,
not inference). The output says which. models.fracture.body_parts is "*" so that the fracture
model runs on every image (the worst case; the default runs it on pelvis/hip only).

What it does: generates N CR objects (12-bit, --rows x --columns, uncompressed), sends them over
--parallel storescu associations (TCP_NODELAY=1 for storescu; xregd disables Nagle itself) to
xregd on a fresh database, and times until every object is acknowledged and until every object
has its implant prediction in the registry (the last model written per object), taking the median
of --runs runs. The same run without models gives the registration-only rate for comparison.
Per-model batch latency and image counts come from xregd's /metrics.

Exit status: 0 when every object was classified, 1 otherwise, 77 (meson's skip) when XREGD or the
PostgreSQL harness is missing, or torch for the tiny models, and CI is not "true".
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import shutil
import statistics
import sys
import time
import urllib.request

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "integration"))

import xregtest  # noqa: E402
from xregtest import CI, SOURCE_ROOT, Postgres, StorescuBatch, Unavailable, Xregd, free_port, migrate  # noqa: E402

DEMO = {"body_part": "body-part.onnx", "implant": "implant.onnx", "fracture": "fracture.onnx"}


def skip(message: str) -> None:
    print(f"bench-classify: {message}", file=sys.stderr)
    sys.exit(1 if CI else 77)


def export_arch(arch: str, base: pathlib.Path) -> dict:
    """torchvision `arch` with random weights (nothing downloaded) at 224 x 224, 3 channels,
    exported once per task with the xreg.* metadata: inference cost of a real architecture."""
    import onnx
    import torch
    import torchvision

    import classify_models as cm

    out = {}
    for task in cm.TASKS:
        labels = cm.LABELS[task].split(",")
        torch.manual_seed(1)
        net = getattr(torchvision.models, arch)(weights=None, num_classes=len(labels)).eval()
        path = base / "models" / f"{arch}-{task}.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.onnx.export(net, torch.zeros(1, 3, 224, 224), str(path), opset_version=13,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        m = onnx.load(str(path))
        meta = {"xreg.task": task, "xreg.name": f"{arch}-{task}", "xreg.version": "random",
                "xreg.labels": cm.LABELS[task], "xreg.output": "logits", "xreg.input_size": "224,224",
                "xreg.channels": "3", "xreg.mean": "0.485,0.456,0.406", "xreg.std": "0.229,0.224,0.225",
                "xreg.resize": "letterbox", "xreg.placeholder": "random weights: benchmark only"}
        if task != "body_part":
            meta["xreg.positive_label"] = "present"
        del m.metadata_props[:]
        for k, v in meta.items():
            e = m.metadata_props.add()
            e.key, e.value = k, v
        onnx.save(m, str(path))
        out[task] = path
    return out


def pick_models(base: pathlib.Path, arch: str | None = None) -> tuple[dict, str]:
    if arch:
        return export_arch(arch, base), (f"torchvision {arch} with RANDOM weights at 224x224, 3 channels, "
                                         "one per task (inference cost of a real architecture)")
    demo = {t: SOURCE_ROOT / "models" / f for t, f in DEMO.items()}
    if all(p.is_file() for p in demo.values()):
        return demo, "demo models from models/ (" + ", ".join(p.name for p in demo.values()) + ")"
    try:
        import classify_models as cm

        tiny = {t: cm.export(t, base / "models" / f"{t}.onnx") for t in cm.TASKS}
    except ImportError as e:
        skip(f"no demo models in models/ and torch/onnx missing for the tiny ones ({e})")
    return tiny, "TINY test models (16x16 input, one linear layer): models/*.onnx not present"


def make_files(base: pathlib.Path, n: int, rows: int, columns: int):
    import classify_models as cm

    return [cm.image(base / "files" / f"{i}.dcm", bright=i % 2 == 0, rows=rows, columns=columns, seed=i,
                     instance_number=i + 1) for i in range(n)]


def metrics(d: Xregd) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{d.metrics_port}/metrics", timeout=5) as r:
        return r.read().decode()


def run_once(files, base: pathlib.Path, pg: Postgres, args, models: dict | None) -> dict:
    db = pg.create_database()
    cfg = {"pipeline": {"workers": args.workers, "threads_per_worker": args.threads,
                        "batch_max": args.batch, "batch_wait_ms": args.wait_ms},
           "log": {"level": "notice"}}
    if models:
        cfg["models"] = {"body_part": {"path": str(models["body_part"])},
                         "implant": {"path": str(models["implant"])},
                         "fracture": {"path": str(models["fracture"]), "body_parts": "*"}}
    d = Xregd(base / "xregd", port=free_port(), conninfo=db.conninfo, **cfg)
    try:
        migrate(d)
        d.start(timeout=300)
        n = len(files)
        sql = ("SELECT count(DISTINCT p.instance_ref) FROM xreg.prediction p WHERE p.task = 'implant'"
               if models else "SELECT count(*) FROM xreg.instance")
        t0 = time.monotonic()
        batch = StorescuBatch(d.port, [f.path for f in files], parallel=args.parallel,
                              workdir=base / "scu", debug=False, nodelay=True)
        acked_s = None
        done_s = None
        deadline = t0 + 1800
        while done_s is None:
            if acked_s is None and all(p.poll() is not None for p in batch.procs):
                acked_s = time.monotonic() - t0
            if db.scalar(sql) >= n:
                done_s = time.monotonic() - t0
            d.check_alive()
            if time.monotonic() > deadline:
                raise SystemExit(f"bench-classify: only {db.scalar(sql)} of {n} done after 1800 s\n{d.log_tail()}")
            time.sleep(0.02)
        run = batch.wait(60)
        if acked_s is None:
            acked_s = time.monotonic() - t0
        if len(run.succeeded()) != n:
            raise SystemExit(f"bench-classify: xregd acknowledged {len(run.succeeded())} of {n}\n"
                             f"{run.describe_failures()}")
        per_model = {}
        text = metrics(d)
        for m in re.finditer(r'xreg_inference_seconds_sum\{model="([^"]+)"\} ([0-9.e+-]+)', text):
            name = m.group(1)
            cnt = re.search(rf'xreg_inference_seconds_count\{{model="{re.escape(name)}"\}} ([0-9.e+-]+)', text)
            imgs = re.search(rf'xreg_inferences_total\{{model="{re.escape(name)}"\}} ([0-9.e+-]+)', text)
            per_model[name] = {"batches": float(cnt.group(1)) if cnt else 0.0,
                               "images": float(imgs.group(1)) if imgs else 0.0,
                               "seconds": float(m.group(2))}
        stages = {}
        for m in re.finditer(r'xreg_stage_seconds_sum\{stage="([^"]+)"\} ([0-9.e+-]+)', text):
            cnt = re.search(rf'xreg_stage_seconds_count\{{stage="{m.group(1)}"\}} ([0-9.e+-]+)', text)
            if cnt and float(cnt.group(1)):
                stages[m.group(1)] = float(m.group(2)) / float(cnt.group(1))
        issues = db.scalar("SELECT count(*) FROM xreg.classification_issue") if models else 0
        rc = d.stop()
        if rc != 0:
            raise SystemExit(f"bench-classify: xregd exited with {rc}\n{d.log_tail()}")
        if issues:
            raise SystemExit(f"bench-classify: {issues} objects could not be classified\n{d.log_tail()}")
        return {"acked_s": acked_s, "done_s": done_s, "per_model": per_model, "stages": stages}
    finally:
        d.close()
        db.close()
        pg.drop_database(db.name)
        shutil.rmtree(base / "xregd", ignore_errors=True)
        shutil.rmtree(base / "scu", ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=48)
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--columns", type=int, default=1024)
    ap.add_argument("--parallel", type=int, default=2, help="storescu associations")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="pipeline.threads_per_worker")
    ap.add_argument("--batch", type=int, default=8, help="pipeline.batch_max")
    ap.add_argument("--wait-ms", type=int, default=20, help="pipeline.batch_wait_ms")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--arch", help="instead of models/: a torchvision architecture with random weights "
                    "for all three tasks (e.g. resnet18, efficientnet_b0)")
    ap.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    args = ap.parse_args()
    if not os.environ.get("XREGD") or not os.environ.get("XREGCTL"):
        skip("XREGD/XREGCTL not set (meson passes the built programs)")
    for k in ("XREGD", "XREGCTL"):  # xregd runs in its own folder: a relative path would break
        os.environ[k] = os.path.abspath(os.environ[k])
    try:
        pg = Postgres()
    except (Unavailable, ImportError) as e:
        skip(str(e))
    base = xregtest.short_tempdir("xrbc-")
    try:
        models, which = pick_models(base, args.arch)
        files = make_files(base, args.files, args.rows, args.columns)
        print(f"models: {which}")
        print(f"{len(files)} CR objects, {args.rows}x{args.columns} 12-bit uncompressed "
              f"({files[0].size / 1024:.0f} KiB each); {args.parallel} storescu associations (TCP_NODELAY=1)")
        print(f"xregd: {args.workers} workers x {args.threads} threads, batch_max {args.batch}, "
              f"batch_wait_ms {args.wait_ms}; fracture model on every image; {os.cpu_count()} CPUs")
        res_models, res_plain = [], []
        for i in range(args.runs):
            res_models.append(run_once(files, base, pg, args, models))
            res_plain.append(run_once(files, base, pg, args, None))
            print(f"run {i + 1}/{args.runs}: classified {len(files) / res_models[-1]['done_s']:7.1f} images/s   "
                  f"registration only {len(files) / res_plain[-1]['done_s']:7.1f} images/s", flush=True)
        n = len(files)
        cls = n / statistics.median(r["done_s"] for r in res_models)
        ack = n / statistics.median(r["acked_s"] for r in res_models)
        plain = n / statistics.median(r["done_s"] for r in res_plain)
        print()
        print(f"{'':<44}{'images/s':>10}")
        print(f"{'C-STORE in -> predictions in the registry':<44}{cls:10.2f}")
        print(f"{'  (all acknowledged)':<44}{ack:10.2f}")
        print(f"{'registration only, no models':<44}{plain:10.2f}")
        print(f"classification costs {plain / cls:.2f}x the registration-only time")
        last = res_models[-1]["per_model"]
        for name, m in sorted(last.items()):
            if m["batches"]:
                print(f"  model {name:<24} {m['images']:6.0f} images in {m['batches']:4.0f} batches, "
                      f"{1000 * m['seconds'] / m['batches']:8.1f} ms/batch, "
                      f"{1000 * m['seconds'] / max(m['images'], 1):7.1f} ms/image")
        st = res_models[-1]["stages"]
        print("  mean time per object and stage (worker threads; spool: association thread): " +
              ", ".join(f"{k} {1000 * v:.1f} ms" for k, v in sorted(st.items())))
        if args.json:
            print(json.dumps({"models": which, "files": n, "rows": args.rows, "columns": args.columns,
                              "workers": args.workers, "threads": args.threads, "batch": args.batch,
                              "classified_per_s": cls, "acked_per_s": ack, "registration_only_per_s": plain,
                              "per_model": last}))
        return 0
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
