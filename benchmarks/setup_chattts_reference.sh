#!/usr/bin/env bash
# Build benchmarks/.venv-chattts: a throwaway environment holding the reference ChatTTS
# (chattts 0.2.5, AGPL) so golden outputs and reference benchmarks can be produced.
#
# The reference is never a voiceloop dependency. The venv is self-contained: it is built from the
# current interpreter (`python`, or PYTHON=...; from inside a virtualenv too) without system site
# packages, and everything it needs is installed into it at pinned versions:
#   1. torch (CPU build), numpy, transformers and the other libraries the reference and voiceloop's
#      asset writer import, with their dependencies, under a constraint that keeps torch and numpy
#      at the pins whatever else asks;
#   2. chattts and its model libraries with --no-deps (chattts 0.2.5 declares gradio, pynini,
#      WeTextProcessing, ... which the benchmark does not use).
# torchaudio 2.11.0 on PyPI is a CUDA build; its compiled libraries are deleted so that its pure
# Python parts (MelSpectrogram, functional) import on a CPU-only torch (research notes §7).
# torch==2.13.0 resolves to the CPU wheel where pip's index has one (the +cpu local version wins);
# elsewhere set TORCH_INDEX=https://download.pytorch.org/whl/cpu to get it rather than PyPI's CUDA build.
#
# Idempotent: rerunning only installs what is missing and re-checks everything. A venv made by the
# earlier version of this script (--system-site-packages) is rebuilt.
# Usage: bash benchmarks/setup_chattts_reference.sh   (PYTHON=... to choose the base interpreter)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-chattts"
base_py="${PYTHON:-$(command -v python || command -v python3)}"
base_py="$("$base_py" -c 'import sys; print(sys.executable)')"

torch_pin=2.13.0
numpy_pin=2.4.6
# Installed with their dependencies: what the reference, its model libraries and
# tests/chattts_fixtures.py (voiceloop's random-asset writer) import.
base=(
  "torch==$torch_pin"
  "numpy==$numpy_pin"
  transformers==5.24.0
  safetensors==0.8.0
  scipy==1.17.1
  pyyaml==6.0.3
  tqdm==4.70.1
  requests==2.34.2
  cffi==2.0.0
  soxr==1.1.0
  soundfile==0.14.0
  webrtcvad-wheels==2.0.14.post1
  rich==15.0.0
  greenlet==3.5.6
)
# Exact versions that were verified to work together on torch 2.13 CPU + transformers 5.24.
# Installed with --no-deps.
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
echo "[setup] base python: $base_py ($("$base_py" -c 'import sys; print(sys.version.split()[0])'))"

vpy="$venv/bin/python"
cfg="$venv/pyvenv.cfg"
if [[ -f "$cfg" ]] && grep -qiE '^include-system-site-packages *= *true' "$cfg"; then
  echo "[setup] $venv uses the system site packages (made by an earlier version): rebuilding it"
  rm -rf "$venv"
elif [[ -e "$venv" ]] && ! "$vpy" -c 'pass' 2>/dev/null; then
  echo "[setup] $venv does not run (its base interpreter moved?): rebuilding it"
  rm -rf "$venv"
fi
if [[ -x "$vpy" ]]; then
  echo "[setup] venv exists: $venv"
else
  echo "[setup] creating venv: $venv"
  "$base_py" -m venv "$venv"
fi

constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
printf 'torch==%s\nnumpy==%s\n' "$torch_pin" "$numpy_pin" >"$constraints"

# The specs of "$@" whose installed version differs (a local label such as +cpu counts as equal).
missing_of() {
  "$vpy" - "$@" <<'PY'
import importlib.metadata as m
import sys

for spec in sys.argv[1:]:
    name, want = spec.split("==")
    try:
        have = m.version(name).split("+")[0]
    except m.PackageNotFoundError:
        have = ""
    if have != want:
        print(spec)
PY
}

pip_install() {
  # (the local index mirrors print one "Location ... is ignored" line per package; hide those)
  "$vpy" -m pip install --quiet --disable-pip-version-check -c "$constraints" "$@" 2>&1 \
    | { grep -v "is ignored: it is neither" || true; }
}

mapfile -t missing < <(missing_of "${base[@]}")
if ((${#missing[@]})); then
  echo "[setup] installing with dependencies: ${missing[*]}"
  torch_index=()
  if [[ -n "${TORCH_INDEX:-}" ]]; then torch_index=(--extra-index-url "$TORCH_INDEX"); fi
  pip_install "${torch_index[@]}" "${missing[@]}"
fi
mapfile -t missing < <(missing_of "${pkgs[@]}")
if ((${#missing[@]})); then
  echo "[setup] installing (--no-deps): ${missing[*]}"
  pip_install --no-deps "${missing[@]}"
fi
mapfile -t missing < <(missing_of "${base[@]}" "${pkgs[@]}")
if ((${#missing[@]})); then
  echo "[setup] still not at the pinned versions after installing: ${missing[*]}" >&2
  exit 1
fi
echo "[setup] all pinned packages present"

purelib="$("$vpy" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
for lib in _torchaudio libtorchaudio torchaudio_prefixctc; do
  so="$purelib/torchaudio/lib/$lib.abi3.so"
  if [[ -e "$so" ]]; then
    rm -f "$so"
    echo "[setup] removed CUDA-only library $so"
  fi
done

echo "[setup] verifying imports and that torch is the venv's own, at the pin"
"$vpy" - "$torch_pin" "$venv" <<'EOF'
import os
import sys
import warnings

want_torch, venv = sys.argv[1], sys.argv[2]
warnings.filterwarnings("ignore")
import torch

assert torch.__version__.split("+")[0] == want_torch, f"torch {torch.__version__} is not {want_torch}"
assert os.path.realpath(torch.__file__).startswith(os.path.realpath(venv)), f"torch from {torch.__file__}"
import ChatTTS  # noqa: F401
import importlib.metadata as md
import pybase16384  # noqa: F401
import torchaudio
import transformers
import vector_quantize_pytorch  # noqa: F401
import vocos  # noqa: F401

torchaudio.transforms.MelSpectrogram(sample_rate=24000, n_fft=1024, hop_length=256, n_mels=100)
print(
    f"[setup] ok: torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}, "
    f"chattts {md.version('chattts')}, vocos {md.version('vocos')}, torchaudio {md.version('torchaudio')} (no .so), "
    f"vector-quantize-pytorch {md.version('vector-quantize-pytorch')}"
)
EOF
echo "[setup] done; run reference scripts with $vpy"
