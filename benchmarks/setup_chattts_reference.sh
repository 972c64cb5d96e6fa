#!/usr/bin/env bash
# Build benchmarks/.venv-chattts: a throwaway environment holding the reference ChatTTS
# (chattts 0.2.5, AGPL) so golden outputs and reference benchmarks can be produced.
#
# The reference is never a voiceloop dependency. The venv reuses the system torch through
# --system-site-packages, and every torch-related package is installed with --no-deps under a
# constraint that pins torch (and numpy) to the system versions, so torch is never replaced.
# torchaudio 2.11.0 on PyPI is a CUDA build; its compiled libraries are deleted so that its pure
# Python parts (MelSpectrogram, functional) import on a CPU-only torch (research notes §7).
#
# Idempotent: rerunning only installs what is missing and re-checks everything.
# Usage: bash benchmarks/setup_chattts_reference.sh   (PYTHON=... to choose the base interpreter)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-chattts"
base_py="${PYTHON:-python3}"

# Exact versions that were verified to work together on torch 2.13 CPU + transformers 5.24.
pkgs=(
  chattts==0.2.5
  vocos==0.1.0
  encodec==0.1.1
  torchaudio==2.11.0
  vector-quantize-pytorch==1.32.0
  einops==0.8.2
  einx==0.4.3
  frozendict==2.5.1
  torch-einops-utils==0.2.0
  loguru==0.7.3
  numba==0.68.1
  llvmlite==0.50.0
  pybase16384==0.3.9
)
# Already needed by voiceloop or transformers; installed (no-deps) only if the base lacks them.
plain=(scipy pyyaml tqdm requests cffi sympy)

sys_torch="$("$base_py" -c 'import torch; print(torch.__version__)')"
sys_numpy="$("$base_py" -c 'import numpy; print(numpy.__version__)')"
echo "[setup] base python: $("$base_py" -c 'import sys; print(sys.executable)') (torch $sys_torch, numpy $sys_numpy)"

if [[ -x "$venv/bin/python" ]]; then
  echo "[setup] venv exists: $venv"
else
  echo "[setup] creating venv (--system-site-packages): $venv"
  "$base_py" -m venv --system-site-packages "$venv"
fi
vpy="$venv/bin/python"

constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
printf 'torch==%s\nnumpy==%s\n' "$sys_torch" "$sys_numpy" >"$constraints"

missing=()
for spec in "${pkgs[@]}"; do
  name="${spec%%==*}"
  want="${spec##*==}"
  have="$("$vpy" -c "import importlib.metadata as m, sys
try: print(m.version(sys.argv[1]))
except m.PackageNotFoundError: print('')" "$name")"
  if [[ "$have" != "$want" ]]; then missing+=("$spec"); fi
done
for name in "${plain[@]}"; do
  if ! "$vpy" -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" "$name" 2>/dev/null; then
    missing+=("$name")
  fi
done

if ((${#missing[@]})); then
  echo "[setup] installing (--no-deps): ${missing[*]}"
  # (the local index mirrors print one "Location ... is ignored" line per package; hide those)
  "$vpy" -m pip install --quiet --no-deps -c "$constraints" "${missing[@]}" 2>&1 \
    | { grep -v "is ignored: it is neither" || true; }
else
  echo "[setup] all pinned packages already present"
fi

purelib="$("$vpy" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
for lib in _torchaudio libtorchaudio torchaudio_prefixctc; do
  so="$purelib/torchaudio/lib/$lib.abi3.so"
  if [[ -e "$so" ]]; then
    rm -f "$so"
    echo "[setup] removed CUDA-only library $so"
  fi
done

echo "[setup] verifying imports and that torch is the system one"
"$vpy" - "$sys_torch" "$venv" <<'EOF'
import sys
import warnings

want_torch, venv = sys.argv[1], sys.argv[2]
warnings.filterwarnings("ignore")
import torch

assert torch.__version__ == want_torch, f"torch was replaced: {torch.__version__} != {want_torch}"
assert not torch.__file__.startswith(venv), f"torch is imported from the venv: {torch.__file__}"
import ChatTTS  # noqa: F401
import importlib.metadata as md
import pybase16384  # noqa: F401
import torchaudio
import transformers
import vector_quantize_pytorch  # noqa: F401
import vocos  # noqa: F401

torchaudio.transforms.MelSpectrogram(sample_rate=24000, n_fft=1024, hop_length=256, n_mels=100)
print(
    f"[setup] ok: torch {torch.__version__} ({torch.__file__}), transformers {transformers.__version__}, "
    f"chattts {md.version('chattts')}, vocos {md.version('vocos')}, torchaudio {md.version('torchaudio')} (no .so), "
    f"vector-quantize-pytorch {md.version('vector-quantize-pytorch')}"
)
EOF
echo "[setup] done; run reference scripts with $vpy"
