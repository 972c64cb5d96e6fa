"""Regenerate ``tests/fixtures/tiny-zh-asr``: a tiny Mandarin wav2vec2 CTC model trained from scratch.

Why: the real XLSR checkpoint (1.3 GB) cannot live in the repository or in CI, but the streaming
ASR path must be tested on *speech*, not on random weights. This script builds a synthetic Mandarin
corpus with espeak-ng, trains a ~1.4 M-parameter wav2vec2 with the XLSR-53 structure from random
init through :func:`voiceloop.asr.finetune.finetune`, measures CER on held-out sentences, and writes
the model, a README and ``heldout.jsonl`` (texts + espeak/noise parameters: tests re-synthesise the
audio, so no wav files are committed).

Corpus: a fixed 80-character vocabulary (numbers, dates/times, weather, greetings, directions,
shopping) in which no two characters share syllable *and* tone in espeak's reading; phrases of 2-8
characters from templates plus random character strings; every rendering draws espeak speed
120-200 wpm, pitch 30-70, level -30..-15 dBFS, 0.05-0.3 s of silence before and after, and white or
pink noise at 20-30 dB SNR. Held-out texts never occur in training.

Voice: ``cmn-latn-pinyin``. espeak-ng 1.51's plain ``cmn`` voice reads the pinyin of multi-character
dictionary words with *English* rules (今天 -> "jin one tian one"), so its audio is not Mandarin.

Run: ``python benchmarks/make_tiny_asr.py`` (about 20 min on 2 cores); ``--no-fixture`` to only report.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: shared cores, see research/asr.md 2.3

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from helpers.speech import RATE, espeak, mix_scene  # noqa: E402

from voiceloop.asr.corpus import char_error_rate  # noqa: E402
from voiceloop.asr.finetune import FinetuneOptions, finetune  # noqa: E402

VOICE = "cmn-latn-pinyin"
FIXTURE = ROOT / "tests" / "fixtures" / "tiny-zh-asr"
MODEL_FILES = (
    "config.json",
    "model.safetensors",
    "vocab.json",
    "special_tokens_map.json",
    "preprocessor_config.json",
)
DIGITS = "零一二三四五六七八九"
CHARS = (
    "零一二三四五六七八九十百千两今明天年月号点分早晚上下气晴雨雪风冷热云很你好我谢再见请问"
    "左右前后东南西北走往到是不有没大小多少去来开关门车站家路米个人吗了几买水要"
)
DAYS = ["", "今天", "明天"]
PARTS = ["", "早上", "晚上"]
WEATHER = [
    *("下雨", "下雪", "很冷", "很热", "不冷", "不热", "有风", "没风", "有雨", "没雨", "晴天"),
    *("多云", "有雪", "大风", "大雨", "小雨", "大雪", "小雪", "风很大", "雨很大", "很好"),
]
GREETINGS = [
    *("你好", "你好吗", "我很好", "谢谢", "谢谢你", "再见", "明天见", "晚上见", "早上好", "晚上好"),
    *("请问", "你去吗", "你来吗", "我不去", "我要去", "好不好", "是不是", "有没有", "要不要", "去不去"),
]
DIRECTIONS = "左右前后东南西北"


def number(n: int) -> str:
    """Chinese reading of 1..9999 (一百一十五, 三千零五)."""
    if n < 10:
        return DIGITS[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return ("" if tens == 1 else DIGITS[tens]) + "十" + (DIGITS[ones] if ones else "")
    head, rest = divmod(n, 100) if n < 1000 else divmod(n, 1000)
    text = DIGITS[head] + ("百" if n < 1000 else "千")
    if rest == 0:
        return text
    small = ("一" if 10 <= rest < 20 else "") + number(rest)
    return text + ("零" if rest < 10 or (n >= 1000 and rest < 100) else "") + small


def phrase(rng: random.Random) -> str:
    """One phrase from a random template family (a quarter are random character strings)."""
    kind = rng.choices(range(9), weights=[2, 1, 2, 1, 2, 1, 2, 2, 4])[0]
    n = number(rng.choice([rng.randint(1, 99), rng.randint(100, 999), rng.randint(1000, 9999)]))
    small = number(rng.randint(1, 99))
    where = rng.choice(DIRECTIONS)
    place = rng.choice(["家", "车站", where + "门", rng.choice("东南西北") + "站"])
    hour = rng.randint(1, 12)
    choices = {
        0: [n, n + rng.choice("个人米号年")],
        1: ["".join(rng.choice(DIGITS) for _ in range(rng.randint(3, 6)))],
        2: [
            rng.choice(DAYS)
            + rng.choice(PARTS)
            + ("两" if hour == 2 else number(hour))
            + "点"
            + rng.choice(["", f"{number(rng.randint(1, 59))}分"])
        ],
        3: [
            f"{rng.choice(['', '今年', '明年'])}{number(rng.randint(1, 12))}月{number(rng.randint(1, 31))}号"
        ],
        4: [rng.choice([*DAYS, *PARTS[1:]]) + rng.choice(WEATHER) + rng.choice(["", "了", "吗"])],
        5: GREETINGS,
        6: [
            f"往{where}走",
            f"往{where}走{small}米",
            f"请往{where}走",
            f"{where}门",
            f"到{place}了",
            f"去{place}",
        ],
        7: [
            f"{rng.choice('我你')}要{small}个",
            f"买{small}个",
            f"{rng.choice(['多少', '几个'])}人",
            "几点了",
            f"{rng.choice('开关')}门了{rng.choice(['', '吗'])}",
            rng.choice("大小") + rng.choice("门路车雨风"),
            f"车{rng.choice('来到开')}了",
            f"我{rng.choice('要没不')}买水",
            f"有多少{rng.choice('水个人米')}",
        ],
        8: ["".join(rng.choice(CHARS) for _ in range(rng.randint(2, 6)))],
    }
    return rng.choice(choices[kind])


def make_texts(n_train: int, n_eval: int, seed: int) -> tuple[list[str], list[str]]:
    """Distinct 2-8 character phrases, split so that no held-out text occurs in training."""
    rng = random.Random(seed)
    texts: set[str] = set()
    while len(texts) < n_train + n_eval:
        text = phrase(rng)
        if 2 <= len(text) <= 8:
            assert set(text) <= set(CHARS), text
            texts.add(text)
    ordered = sorted(texts)
    rng.shuffle(ordered)
    return ordered[n_eval:], ordered[:n_eval]


def draw(text: str, rng: random.Random) -> dict[str, Any]:
    """Random rendering parameters; :func:`render` of them is deterministic (espeak + seeded noise)."""
    return {
        "text": text,
        "voice": VOICE,
        "speed": rng.randint(120, 200),
        "pitch": rng.randint(30, 70),
        "level_dbfs": round(rng.uniform(-30, -15), 1),
        "lead_s": round(rng.uniform(0.05, 0.3), 3),
        "trail_s": round(rng.uniform(0.05, 0.3), 3),
        "noise": rng.choice(["white", "pink"]),
        "snr_db": round(rng.uniform(20, 30), 1),
        "seed": rng.randrange(2**31),
    }


def render(p: dict[str, Any]) -> np.ndarray:
    """int16 16 kHz audio for one parameter set (tests/test_asr_fixture.py repeats exactly this)."""
    clip = espeak(p["text"], voice=p["voice"], speed=p["speed"], pitch=p["pitch"])
    gaps = [p["lead_s"], p["trail_s"]]
    audio, _ = mix_scene([clip], gaps, p["noise"], p["snr_db"], p["seed"], level_dbfs=p["level_dbfs"])
    return audio


def write_corpus(work: Path, items: list[dict[str, Any]], name: str) -> Path:
    """Render ``items`` to ``work/name/*.wav`` and a manifest whose paths are relative to it."""
    (work / name).mkdir(parents=True, exist_ok=True)
    manifest = work / f"{name}.jsonl"
    with manifest.open("w", encoding="utf-8") as f:
        for i, item in enumerate(items):
            wav = f"{name}/{i:05d}.wav"
            sf.write(work / wav, render(item), RATE, subtype="PCM_16")
            f.write(json.dumps({"audio": wav, "text": item["text"]}, ensure_ascii=False) + "\n")
    return manifest


def tiny_config() -> dict[str, Any]:
    """XLSR-53's structure at toy size. The conv channels taper (32 -> 128) because on a CPU the first
    conv layers, at 3200 and 1600 frames per second, dominate the training cost. Little regularisation:
    the renderings already vary, and dropout/masking slow the escape from CTC's all-blank plateau."""
    return {
        "architectures": ["Wav2Vec2ForCTC"],
        "model_type": "wav2vec2",
        "conv_dim": [32, 32, 64, 64, 64, 128, 128],
        "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
        "conv_stride": [5, 2, 2, 2, 2, 2, 2],
        "conv_bias": True,
        "feat_extract_norm": "layer",
        "feat_extract_activation": "gelu",
        "do_stable_layer_norm": True,
        "hidden_size": 160,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "intermediate_size": 640,
        "hidden_act": "gelu",
        "num_conv_pos_embeddings": 32,
        "num_conv_pos_embedding_groups": 16,
        "layer_norm_eps": 1e-5,
        **dict.fromkeys(
            ["attention_dropout", "activation_dropout", "feat_proj_dropout", "final_dropout"], 0.0
        ),
        "hidden_dropout": 0.05,
        "layerdrop": 0.0,
        "mask_time_prob": 0.05,
        "mask_time_length": 5,
        "mask_time_min_masks": 1,
        "ctc_loss_reduction": "mean",
        "ctc_zero_infinity": True,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }


def transcribe(model_dir: Path, items: list[dict[str, Any]]) -> list[str]:
    """Offline greedy decoding through plain transformers (also proves the written layout loads)."""
    import torch
    from transformers import Wav2Vec2ForCTC, Wav2Vec2Processor

    processor = Wav2Vec2Processor.from_pretrained(str(model_dir))
    model = Wav2Vec2ForCTC.from_pretrained(str(model_dir)).eval()
    hyps = []
    with torch.inference_mode():
        for item in items:
            inputs = processor(render(item) / 32768.0, sampling_rate=RATE, return_tensors="pt")
            ids = model(inputs.input_values.float()).logits.argmax(-1)[0]
            hyps.append(processor.decode(ids).replace(" ", ""))
    return hyps


FLAGS = ("train_texts", "eval_texts", "renders", "heldout", "epochs", "batch_size", "lr", "seed", "threads")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, help="corpus + training folder (default: a temp dir, deleted)")
    parser.add_argument("--fixture", type=Path, default=FIXTURE, help="where the model goes (%(default)s)")
    parser.add_argument("--no-fixture", action="store_true", help="train and report only")
    parser.add_argument("--train-texts", type=int, default=900, help="distinct training phrases")
    parser.add_argument("--eval-texts", type=int, default=150, help="distinct held-out phrases")
    parser.add_argument("--renders", type=int, default=3, help="renderings per training phrase")
    parser.add_argument("--heldout", type=int, default=40, help="held-out utterances kept for the tests")
    parser.add_argument("--epochs", type=int, default=9)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="tiny-zh-asr-"))
    rng = random.Random(args.seed)
    train_texts, eval_texts = make_texts(args.train_texts, args.eval_texts, args.seed)
    train_items = [draw(t, rng) for t in train_texts for _ in range(args.renders)]
    eval_items = [draw(t, rng) for t in eval_texts]
    train_manifest = write_corpus(work, train_items, "train")
    eval_manifest = write_corpus(work, eval_items, "eval")
    audio_min = sum(sf.info(p).duration for p in (work / "train").glob("*.wav")) / 60
    rendered = time.perf_counter() - started
    print(f"corpus: {len(train_items)} training utterances ({audio_min:.0f} min), {len(eval_items)} held-out")
    print(f"rendered in {rendered:.0f} s into {work}")
    config = work / "config.json"
    config.write_text(json.dumps(tiny_config(), indent=2))
    options = FinetuneOptions(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup=0.08,
        weight_decay=0.01,
        freeze_feature_encoder=False,
        seed=args.seed,
        threads=args.threads,
        save_every=args.epochs,
    )
    result = finetune(config, train_manifest, eval_manifest, work / "model", options)
    hyps = transcribe(work / "model", eval_items)
    refs = [item["text"] for item in eval_items]
    cer = char_error_rate(refs, hyps)
    heldout_cer = char_error_rate(refs[: args.heldout], hyps[: args.heldout])
    print(f"training {result['seconds'] / 60:.1f} min; held-out CER {cer:.2%} over {len(refs)} utterances")
    print(f"CER {heldout_cer:.2%} over the {args.heldout} utterances kept for the tests")
    if not args.no_fixture:
        stats = {
            "n_utts": len(train_items),
            "n_texts": len(train_texts),
            "n_eval": len(eval_items),
            "audio_min": audio_min,
            "cer": cer,
            "heldout_cer": heldout_cer,
            "train_min": result["seconds"] / 60,
            "total_min": (time.perf_counter() - started) / 60,
            "history": result["history"],
        }
        write_fixture(args, work / "model", stats, eval_items[: args.heldout], hyps)
        print(f"fixture written to {args.fixture}")
    if args.work is None:
        shutil.rmtree(work)
    return 0


def write_fixture(
    args: argparse.Namespace,
    model: Path,
    stats: dict[str, Any],
    heldout: list[dict[str, Any]],
    hyps: list[str],
) -> None:
    """Copy the final model (official layout) and write README.md + heldout.jsonl."""
    import torch
    from transformers import Wav2Vec2ForCTC

    out: Path = args.fixture
    out.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        shutil.copy2(model / name, out / name)
    with (out / "heldout.jsonl").open("w", encoding="utf-8") as f:
        for item, hyp in zip(heldout, hyps, strict=False):
            f.write(json.dumps({**item, "hyp": hyp}, ensure_ascii=False) + "\n")
    rows = [
        f"| {r['epoch']} | {r['train_loss']:.3f} | {r['eval_cer']:.2%} | {r['epoch_seconds']:.0f} |"
        for r in stats.pop("history")
    ]
    espeak_version = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout
    params = sum(p.numel() for p in Wav2Vec2ForCTC.from_pretrained(str(out)).parameters())
    values = {
        **stats,
        **{k: getattr(args, k) for k in FLAGS},
        "chars": CHARS,
        "history": "\n".join(rows),
        "params": f"{params / 1e6:.2f} M",
        "size": (out / "model.safetensors").stat().st_size / 1e6,
        "torch_version": torch.__version__,
        "espeak": espeak_version.split(" Data")[0].strip(),
        "command": "python benchmarks/make_tiny_asr.py "
        + " ".join(f"--{k.replace('_', '-')} {getattr(args, k)}" for k in FLAGS),
    }
    (out / "README.md").write_text(README.format(**values), encoding="utf-8")


README = """# tiny-zh-asr: a tiny Mandarin wav2vec2 CTC model (test fixture)

Trained from random init on synthetic espeak-ng Mandarin by `benchmarks/make_tiny_asr.py`, so tests can
check that *speech* comes out as the right characters through the real ASR code paths. It only knows
the 80 characters below and espeak's voice; it is not a usable recogniser.

Regenerate ({total_min:.0f} min on 2 shared CPU cores; the result varies slightly with the CPU and
espeak-ng build, so re-measure the CER when you do):

```bash
{command}
```

- **Model**: `Wav2Vec2ForCTC` with the XLSR-53 structure at toy size: conv kernels [10,3,3,3,3,2,2],
  strides [5,2,2,2,2,2,2], channels 32-32-64-64-64-128-128, `feat_extract_norm` "layer",
  `do_stable_layer_norm`; hidden 160, 4 layers, 4 heads, FFN 640, positional conv 32 (16 groups).
  {params} parameters, `model.safetensors` {size:.1f} MB, official hub layout (config.json,
  preprocessor_config.json, special_tokens_map.json, vocab.json with `<pad>` = CTC blank = id 0).
- **Corpus**: {n_utts} training utterances ({audio_min:.0f} min of audio: {n_texts} distinct phrases x
  {renders} renderings) over the 80-character vocabulary `{chars}` — numbers, times and dates, weather,
  greetings, directions, shopping; no two characters share syllable and tone in espeak's reading.
  Phrases have 2-8 characters, from templates plus random character strings. Each rendering draws espeak
  speed 120-200 wpm, pitch 30-70, level -30..-15 dBFS, 0.05-0.3 s of silence before and after, and white
  or pink noise at 20-30 dB SNR. Voice `cmn-latn-pinyin` ({espeak}): the plain `cmn` voice of espeak-ng
  1.51 reads multi-character words' pinyin with English rules ("jin one tian one").
- **Held-out**: {n_eval} phrases that never occur in training, one rendering each:
  **CER {cer:.2%}** (offline greedy CTC through `Wav2Vec2Processor` + `Wav2Vec2ForCTC`).
  `heldout.jsonl` keeps the first {heldout} (CER {heldout_cer:.2%} on those): the text, the exact
  espeak and noise parameters, and `hyp`, what this model produced at training time. Tests re-create
  the audio as `mix_scene([espeak(text, voice, speed, pitch)], [lead_s, trail_s], noise, snr_db, seed,
  level_dbfs)` with the helpers in `tests/speech.py`.
- **Training**: `voiceloop.asr.finetune.finetune` from `--init-config`: {epochs} epochs, batch {batch_size},
  AdamW peak lr {lr}, 8 % warmup then linear decay, nothing frozen;
  {train_min:.1f} min on 2 CPU cores (torch {torch_version}).

| epoch | train CTC loss | held-out CER | seconds |
|---|---|---|---|
{history}
"""


if __name__ == "__main__":
    sys.exit(main())
