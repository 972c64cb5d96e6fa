#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one go: the GPU tests, then the TTS, voice-to-voice and
# streaming-ASR benchmarks on the GPU (full-size random weights, as on the CPU).
#
#     bash benchmarks/gpu.sh [OUT_DIR [PART...]]   # default: benchmarks/results, every part
#
# Parts: tests tts voice_to_voice asr.
# Writes OUT_DIR/gpu-tests.xml (JUnit), tts-cuda.json, voice_to_voice-cuda.json, asr_streaming-cuda.json.
# Each part has its own time limit and a failure in one does not stop the others; the exit status
# is the number of parts that failed.
set -u
out=${1:-benchmarks/results}
parts=" ${*:2} "
[ "$parts" = "  " ] && parts=" tests tts voice_to_voice asr "
mkdir -p "$out"
export PYTHONUNBUFFERED=1
failed=0
part() {  # part SECONDS NAME COMMAND...
    local limit=$1 name=$2
    shift 2
    [[ $parts == *" $name "* ]] || return 0
    echo "=== $name ($(date +%T))"
    local started=$SECONDS
    timeout "$limit" "$@" || { echo "=== $name FAILED (status $?)"; failed=$((failed + 1)); }
    echo "=== $name took $((SECONDS - started)) s"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"

part 150 tests python3 -m pytest tests/test_gpu.py -q -rs -p no:cacheprovider -o log_cli=false \
    --junitxml="$out/gpu-tests.xml"
part 150 tts python3 benchmarks/tts.py --variants fp16,cuda-fp32 --skip-reference --steps 240 --repeats 3 \
    --threads 4 --out "$out/tts-cuda.json"
part 240 voice_to_voice python3 benchmarks/voice_to_voice.py --precisions auto --paths file --turns 6 \
    --gap-s 3 --preemptive off,on --turn off,complete --out "$out/voice_to_voice-cuda.json"
part 110 asr python3 benchmarks/asr_streaming.py --precisions cuda-fp32,cuda-fp16 \
    --configs 0.64/1/0.24,0.32/1/0.24,0.16/1/0.16 --utterances 2 --reps 1 --skip-tiny --threads 4 \
    --recommended cuda-fp16 --out "$out/asr_streaming-cuda.json"
echo "=== parts failed: $failed"
exit "$failed"
