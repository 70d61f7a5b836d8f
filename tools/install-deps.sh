#!/bin/bash
# Install every Debian 12 package xreg needs to build, run and test. Safe to run again: it
# installs only what is missing. Needs root (or sudo) only when something is missing.
set -euo pipefail

packages=(
  # build
  meson ninja-build pkg-config gcc g++
  libdcmtk-dev libyaml-dev libpq-dev libssl-dev libsystemd-dev libcmocka-dev
  # Debian 12's dcmtk.pc lists sndfile in Requires.private, so pkg-config needs its .pc
  libsndfile1-dev
  # nn/ image files (PNG, JPEG) and the zlib the nn tests write PNGs with
  libpng-dev libjpeg62-turbo-dev zlib1g-dev
  # metrics endpoint (libmicrohttpd) and xregctl status (libcurl)
  libmicrohttpd-dev libcurl4-openssl-dev
  # run: the embedded PostgreSQL cluster
  postgresql-15 postgresql-client-15
  # test: real DICOM peers, fixture makers, the pytest driver
  dcmtk libgdcm-tools python3 python3-pytest python3-psycopg2 python3-pydicom python3-numpy
  # pixels: OpenJPEG for JPEG 2000, zlib to bound deflated objects; Pillow and GDCM's Python
  # binding as pydicom's reference decoders in the tests and the decode benchmark;
  # opj_compress for the YBR_RCT/ICT fixtures
  libopenjp2-7-dev zlib1g-dev libopenjp2-tools python3-pil python3-gdcm
  # the ASan/UBSan build and the libFuzzer target (tests/pixels/sanitized.sh)
  clang libclang-rt-14-dev
  # nn/ preprocessing parity with the training side (PIL + torchvision)
  python3-torch python3-torchvision
  # benchmarks only: Orthanc as a peer to compare with
  orthanc
  systemd
  # nn/: oneDNN (its CMake package needs the OpenCL dev files: Debian builds it with the OCL
  # GPU runtime), protobuf-c over Debian's onnx.proto, the ONNX conformance data, and
  # OpenBLAS so that Debian's PyTorch exports models and references in seconds
  libdnnl-dev ocl-icd-opencl-dev cmake libprotobuf-c-dev protobuf-c-compiler libonnx-dev
  libonnx-testdata python3-torch python3-torchvision python3-onnx libopenblas0-openmp
)

# xregctl eval/compare: PNG plots (cairo); tests compare the statistics with scikit-learn
packages+=(libcairo2-dev python3-sklearn)
# nn/ parity tests (tools/export-models.py): Debian's PyTorch, fast with OpenBLAS
packages+=(python3-torch python3-torchvision python3-onnx libopenblas0-openmp)
# benchmarks only (tests/bench/bench-nn.py installs onnxruntime-node with npm): any node/npm
# will do (Debian's or NodeSource's, which bundles npm), so only when the commands are missing
command -v node >/dev/null || packages+=(nodejs)
command -v npm >/dev/null || packages+=(npm)

missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed'; then
        missing+=("$p")
    fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "install-deps: installing ${missing[*]}" >&2
sudo=()
[ "$(id -u)" = 0 ] || sudo=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
