#!/bin/bash
# xregctl nn-info / nn-run / nn-bench on a small model written here with Debian's python3-onnx:
# y = Softmax(Relu(x W + b)), x [batch, 4], 3 classes with labels in xreg.labels.
set -euo pipefail
xregctl=$1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
/usr/bin/python3 - "$dir" <<'PY'
import sys, numpy as np, onnx
from onnx import helper, TensorProto, numpy_helper
d = sys.argv[1]
W = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]], np.float32)
b = np.array([0.1, 0.2, 0.3], np.float32)
g = helper.make_graph(
    [helper.make_node("MatMul", ["x", "W"], ["xw"], name="mm"),
     helper.make_node("Add", ["xw", "b"], ["s"], name="bias"),
     helper.make_node("Relu", ["s"], ["r"], name="relu"),
     helper.make_node("Softmax", ["r"], ["y"], name="softmax", axis=-1)],
    "tiny",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
    [numpy_helper.from_array(W, "W"), numpy_helper.from_array(b, "b")])
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], producer_name="xreg-test")
helper.set_model_props(m, {"xreg.labels": "hand,chest,knee", "xreg.task": "body_part"})
onnx.save(m, f"{d}/tiny.onnx")
x = np.array([[0, 0, 5, 0], [3, 0, 0, 0]], np.float32)
x.tofile(f"{d}/in.f32")
r = np.maximum(x @ W + b, 0)
e = np.exp(r - r.max(1, keepdims=True))
(e / e.sum(1, keepdims=True)).astype(np.float32).tofile(f"{d}/want.f32")
m.graph.node[2].op_type = "FancyRelu"
onnx.save(m, f"{d}/bad.onnx")
PY
fail() { echo "FAIL: $*"; exit 1; }

out=$("$xregctl" nn-info "$dir/tiny.onnx")
grep -q "x: float \[batch, 4\]" <<<"$out" || fail "nn-info input: $out"
grep -q "y: float \[batch, 3\]" <<<"$out" || fail "nn-info output: $out"
grep -q "parameters: 15" <<<"$out" || fail "nn-info parameters: $out"
grep -q "xreg.labels = hand,chest,knee" <<<"$out" || fail "nn-info metadata: $out"
grep -Eq "MatMul +1" <<<"$out" || fail "nn-info ops: $out"

out=$("$xregctl" nn-run "$dir/tiny.onnx" --input "$dir/in.f32" --output "$dir/out.f32" --top 1)
grep -q "sample 0: 2 (knee)" <<<"$out" || fail "nn-run top class: $out"
grep -q "sample 1: 0 (hand)" <<<"$out" || fail "nn-run top class: $out"
/usr/bin/python3 - "$dir" <<'PY' || fail "nn-run output differs"
import sys, numpy as np
d = sys.argv[1]
a, b = np.fromfile(f"{d}/out.f32", np.float32), np.fromfile(f"{d}/want.f32", np.float32)
assert a.shape == b.shape and np.abs(a - b).max() < 1e-6, (a, b)
PY

head -c 20 "$dir/in.f32" > "$dir/short.f32"
if out=$("$xregctl" nn-run "$dir/tiny.onnx" --input "$dir/short.f32" --output "$dir/o.f32" 2>&1); then
    fail "nn-run accepted a partial sample"
fi
grep -q "not a multiple of one sample (16 bytes" <<<"$out" || fail "nn-run short input: $out"

set +e
out=$("$xregctl" nn-info "$dir/bad.onnx" 2>&1); rc=$?
set -e
[ $rc = 3 ] || fail "nn-info on an unsupported op exited $rc"
grep -q 'unsupported op "FancyRelu" (node "relu", opset 13)' <<<"$out" || fail "nn-info bad: $out"

out=$("$xregctl" nn-bench "$dir/tiny.onnx" --batch 2 --runs 3)
grep -q "batch: 2" <<<"$out" && grep -q "latency: median" <<<"$out" || fail "nn-bench: $out"
# the step profiler: every step of the batch-2 plan timed, per op type and engine
out=$(XREG_NN_PROFILE=1 "$xregctl" nn-bench "$dir/tiny.onnx" --batch 2 --runs 3 2>&1)
grep -q "nn profile: batch 2, 5 runs" <<<"$out" || fail "profile header: $out"
grep -Eq "MatMul +oneDNN +1 steps" <<<"$out" || fail "profile MatMul line: $out"
# Softmax rows run on nn's own AVX2 kernel where the CPU has AVX2 and FMA
sm=oneDNN
if grep -qw avx2 /proc/cpuinfo && grep -qw fma /proc/cpuinfo; then sm=nn; fi
grep -Eq "Softmax +$sm +1 steps" <<<"$out" || fail "profile Softmax line ($sm): $out"
out=$("$xregctl" nn-bench "$dir/tiny.onnx" --batch 2 --runs 3 2>&1)
if grep -q "nn profile" <<<"$out"; then fail "profile printed without XREG_NN_PROFILE"; fi
# every step with its output shape
out=$(XREG_NN_PROFILE=steps "$xregctl" nn-bench "$dir/tiny.onnx" --batch 2 --runs 3 2>&1)
grep -Eq "step +0 MatMul +oneDNN +2x3 " <<<"$out" || fail "profile steps: $out"
# 2 threads: a product model (x W) runs a batch of 2 with both threads in each step (a chunk
# of 1 would repack the weights per sample) and a batch of 4 as one chunk of 2 per thread
out=$("$xregctl" nn-bench "$dir/tiny.onnx" --batch 2 --threads 2 --runs 3 2>&1)
grep -q "threads: 2" <<<"$out" && grep -q "batch runs: every thread in every step" <<<"$out" ||
    fail "nn-bench, 2 threads: $out"
out=$("$xregctl" nn-bench "$dir/tiny.onnx" --batch 4 --threads 2 --runs 3 2>&1)
grep -q "batch runs: samples side by side, 2 at a time per thread" <<<"$out" ||
    fail "nn-bench, 2 threads, batch 4: $out"
out=$("$xregctl" nn-run "$dir/tiny.onnx" --input "$dir/in.f32" --output "$dir/out2.f32" --threads 2 2>&1) ||
    fail "nn-run --threads 2: $out"
cmp -s "$dir/out.f32" "$dir/out2.f32" || fail "nn-run --threads 2 differs from 1 thread"
echo "ctl-nn: all checks passed"
