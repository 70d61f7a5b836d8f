#!/bin/bash
# Rebuild the committed demo models (models/*.onnx) from the licensed rows of
# ../shared/data/xray: the exact commands models/README.md reports. Run from the project root
# after tools/build.sh (xregctl is needed for the nn-run parity check). Each run writes its
# probabilities, metrics and history under build/demo-train/<task>/.
#   bash tools/train-demo-models.sh [body_part implant fracture]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
DATA=build/demo-dataset
XREGCTL=build/daemon/xregctl
tasks=("$@")
[ ${#tasks[@]} -gt 0 ] || tasks=(body_part implant fracture)

# --tasks: only this run's folders are rebuilt; the split of every source is the same
# whichever tasks are named (computed over all licensed rows).
$PY tools/make-demo-dataset.py --data ../shared/data/xray --out "$DATA" --seed 6 --tasks "$(IFS=,; echo "${tasks[*]}")"

common=(--arch xreg_compact --size 128 --resize letterbox --epochs 15 --patience 4
        --batch-size 32 --seed 6 --threads 1 --xregctl "$XREGCTL" --version 2026.11.27)
ROBOFLOW='Roboflow bone-fracture-detection v4 (CC BY 4.0 as stated; images look MURA-derived)'
for t in "${tasks[@]}"; do
  case $t in
    body_part)
      args=(--name demo-body-part
        --provenance "licensed rows of xray/labels.csv (tools/make-demo-dataset.py --seed 6): Hannover Medical School COVID-19 Image Repository (CC BY 3.0; chest), MedNIST (CC BY-SA 4.0 as distributed by MONAI; chest, hand, 64x64), $ROBOFLOW (elbow, finger, forearm, humerus, shoulder, wrist), Fraiwan et al. 2022 DDH dataset (CC BY 4.0; 7 paediatric pelvis)"
        --placeholder "demo model: no spine, knee, skull, abdomen or foot class (those films get a wrong label); pelvis_hip from 7 paediatric images; hand only from 64x64 MedNIST; upper-limb classes only from abnormal (fracture) films of one source")
      out=models/body-part.onnx ;;
    implant)
      args=(--name demo-implant --threshold 0.5
        --provenance "licensed rows of xray/labels.csv (tools/make-demo-dataset.py --seed 6): present = UCI Shoulder Implant X-Ray Manufacturer Classification (CC BY 4.0; shoulder arthroplasty, one source); absent = Fraiwan et al. 2022 DDH dataset (CC BY 4.0; 7 paediatric pelvis) + proxy labels: $ROBOFLOW films without a fracture box, presumed hardware-free"
        --placeholder "demo model: every present film is a shoulder arthroplasty from one source and most absent films are proxy-labelled upper-limb films from another: it separates the two sources, not implants in general")
      out=models/implant.onnx ;;
    fracture)
      args=(--name demo-fracture --threshold 0.5
        --provenance "licensed rows of xray/labels.csv (tools/make-demo-dataset.py --seed 6): $ROBOFLOW; present = a fracture box (MURA-abnormal semantics: also hardware and healed fractures), absent = no box"
        --placeholder "no labelled hip-fracture data: trained on upper-limb films only (elbow, finger, forearm, humerus, shoulder, wrist), where present means MURA-abnormal; never measured on hips")
      out=models/fracture.onnx ;;
    *) echo "unknown task $t" >&2; exit 2 ;;
  esac
  mkdir -p build/demo-train
  $PY tools/train.py "$DATA/$t" --task "$t" --out "build/demo-train/$t" "${common[@]}" "${args[@]}"
  mkdir -p models
  cp "build/demo-train/$t/model.onnx" "$out"
  echo "wrote $out"
done
