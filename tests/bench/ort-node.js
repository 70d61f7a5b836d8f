// onnxruntime-node (CPU) driver for bench-nn.py and, as a reference engine, for checking the
// parity harness. Two modes:
//   node ort-node.js run MODEL IN.f32 OUT.f32 C,H,W [--threads T]
//       raw little-endian float32 in and out; the batch is the input's length / (C*H*W)
//   node ort-node.js bench MODEL C,H,W --batch N --threads T --runs K [--warmup W]
//                    [--profile PREFIX]
//       prints load_ms=, median_ms=, min_ms=, peak_rss_kb= (one per line); --profile writes
//       onnxruntime's per-node profile of every run to PREFIX_<date>.json (ort-profile.py
//       sums it up, to set beside XREG_NN_PROFILE)
// NODE_PATH must reach the folder where setup-onnxruntime-node.sh installed the package.
'use strict';
const fs = require('fs');
const ort = require('onnxruntime-node');

function opt(args, name, dflt) {
  const i = args.indexOf(name);
  if (i < 0) return dflt;
  return args[i + 1];
}

function peakRssKb() {
  const m = /VmHWM:\s*(\d+) kB/.exec(fs.readFileSync('/proc/self/status', 'utf8'));
  return m ? Number(m[1]) : -1;
}

async function session(model, threads, profile) {
  const o = {
    executionProviders: ['cpu'], graphOptimizationLevel: 'all', executionMode: 'sequential',
    intraOpNumThreads: threads, interOpNumThreads: 1,
  };
  if (profile) Object.assign(o, { enableProfiling: true, profileFilePrefix: profile });
  return ort.InferenceSession.create(model, o);
}

async function main() {
  const args = process.argv.slice(2);
  const mode = args[0];
  if (mode === 'run') {
    const [model, inPath, outPath, chw] = args.slice(1, 5);
    const dims = chw.split(',').map(Number);
    const per = dims.reduce((a, b) => a * b, 1);
    const buf = fs.readFileSync(inPath);
    if (buf.length % (4 * per) !== 0 || buf.length === 0)
      throw new Error(`${inPath}: ${buf.length} bytes is not a whole number of ${dims} float32 images`);
    const batch = buf.length / (4 * per);
    const data = new Float32Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.length));
    const s = await session(model, Number(opt(args, '--threads', '2')));
    const out = await s.run({ [s.inputNames[0]]: new ort.Tensor('float32', data, [batch, ...dims]) });
    const y = out[s.outputNames[0]];
    fs.writeFileSync(outPath, Buffer.from(y.data.buffer, y.data.byteOffset, y.data.byteLength));
    console.log(`batch=${batch} output_shape=${y.dims.join('x')}`);
    return;
  }
  if (mode === 'bench') {
    const [model, chw] = args.slice(1, 3);
    const dims = chw.split(',').map(Number);
    const batch = Number(opt(args, '--batch', '1'));
    const threads = Number(opt(args, '--threads', '1'));
    const runs = Number(opt(args, '--runs', '10'));
    const warmup = Number(opt(args, '--warmup', '2'));
    const t0 = process.hrtime.bigint();
    const profile = opt(args, '--profile', '');
    const s = await session(model, threads, profile);
    const loadMs = Number(process.hrtime.bigint() - t0) / 1e6;
    const n = batch * dims.reduce((a, b) => a * b, 1);
    const data = new Float32Array(n);
    let seed = 12345;
    for (let i = 0; i < n; i++) { seed = (seed * 1103515245 + 12345) >>> 0; data[i] = seed / 4294967296 - 0.5; }
    const feeds = { [s.inputNames[0]]: new ort.Tensor('float32', data, [batch, ...dims]) };
    for (let i = 0; i < warmup; i++) await s.run(feeds);
    const times = [];
    for (let i = 0; i < runs; i++) {
      const a = process.hrtime.bigint();
      await s.run(feeds);
      times.push(Number(process.hrtime.bigint() - a) / 1e6);
    }
    if (profile) s.endProfiling();
    times.sort((a, b) => a - b);
    const med = times.length % 2 ? times[(times.length - 1) / 2]
      : (times[times.length / 2 - 1] + times[times.length / 2]) / 2;
    console.log(`load_ms=${loadMs.toFixed(1)}`);
    console.log(`median_ms=${med.toFixed(3)}`);
    console.log(`min_ms=${times[0].toFixed(3)}`);
    console.log(`peak_rss_kb=${peakRssKb()}`);
    return;
  }
  throw new Error('usage: ort-node.js run|bench ...');
}

main().catch((e) => { console.error(`ort-node: ${e.message || e}`); process.exit(1); });
