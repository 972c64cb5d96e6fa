"""Streaming latency of the reference ChatTTS (chattts 0.2.5) on full-size random-weight assets.

Runs ONLY under the throwaway reference environment (``bash benchmarks/setup_chattts_reference.sh``)::

    benchmarks/.venv-chattts/bin/python benchmarks/chattts_reference.py \
        --assets /tmp/chattts-full --make-assets

It times the reference's public ``Chat.infer(stream=True, skip_refine_text=True)`` twice: with the
stream defaults (stream_batch 24, pass_first_n_batches 2) and with stream_batch 12,
pass_first_n_batches 0. Everything else is the reference's default (text normalisation on, split_text
on, stream_speed 12000). The length is forced (min_new_token = max_new_token = --steps) because random
weights stop at random points, and sampling uses a fixed seed and a fixed sampled speaker. Prints one
JSON line. Random weights have the real model's shapes, so the compute (and the timing) is the
real model's; the audio is noise.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
RATE = 24000
DEFAULT_TEXT = "你好，我们来测试一下流式语音合成的首包延迟和实时率。"
CONFIGS = {
    "stream_defaults": {},
    "stream_batch12_pass0": {"stream_batch": 12, "pass_first_n_batches": 0},
}


def ensure_assets(root: Path, make: bool) -> None:
    if (root / "asset" / "gpt" / "model.safetensors").is_file():
        return
    if not make:
        raise SystemExit(f"no assets under {root}; pass --make-assets to write full-size random ones")
    sys.path.insert(0, str(REPO))
    from tests.chattts_fixtures import write_random_assets

    print(f"writing full-size random assets to {root} ...", file=sys.stderr)
    write_random_assets(root, gpt_layers=20, embed_tokens=True)


def load_reference(root: Path) -> Any:
    """``Chat._load`` with explicit paths: the public load accepts only the official sha256 values."""
    import ChatTTS
    import pybase16384 as b14

    chat = ChatTTS.Chat(logging.getLogger("chattts-bench"))
    stat = torch.load(root / "asset" / "spk_stat.pt")  # float32 [1536] = std ++ mean
    chat.config.spk_stat = b14.encode_to_string(stat.to(torch.float16).numpy().tobytes())
    a = root / "asset"
    ok = chat._load(
        vocos_ckpt_path=str(a / "Vocos.safetensors"),
        dvae_ckpt_path=str(a / "DVAE.safetensors"),
        gpt_ckpt_path=str(a / "gpt"),
        embed_path=str(a / "Embed.safetensors"),
        decoder_ckpt_path=str(a / "Decoder.safetensors"),
        tokenizer_path=str(a / "tokenizer"),
        device=torch.device("cpu"),
    )
    if not ok:
        raise RuntimeError("Chat._load reported missing modules")
    return chat


class Probe:
    """Counts GPT forward calls (one per generated step) and time spent decoding audio."""

    def __init__(self, chat: Any) -> None:
        self.steps = 0
        self.decode_s = 0.0
        chat.gpt.gpt.register_forward_hook(self._on_step)
        inner = chat._decode_to_wavs

        def timed_decode(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.decode_s += time.perf_counter() - t

        chat._decode_to_wavs = timed_decode

    def _on_step(self, *_: Any) -> None:
        self.steps += 1

    def reset(self) -> None:
        self.steps, self.decode_s = 0, 0.0


def run_once(chat: Any, probe: Probe, text: str, speaker: str, args: argparse.Namespace, extra: dict) -> dict:
    params = chat.InferCodeParams(  # a fresh object: infer() mutates its (shared default) params
        spk_emb=speaker,
        manual_seed=args.seed,
        max_new_token=args.steps,
        min_new_token=args.steps,
        show_tqdm=False,
        **extra,
    )
    probe.reset()
    chunks: list[int] = []
    ttfa = None
    start = time.perf_counter()
    for wavs in chat.infer(text, stream=True, skip_refine_text=True, params_infer_code=params):
        n = int(np.asarray(wavs).shape[-1])
        if n and ttfa is None:
            ttfa = time.perf_counter() - start
        chunks.append(n)
    total = time.perf_counter() - start
    audio_s = sum(chunks) / RATE
    gpt_s = total - probe.decode_s
    return {
        "name": next(k for k, v in CONFIGS.items() if v == extra),
        "stream_batch": params.stream_batch,
        "pass_first_n_batches": params.pass_first_n_batches,
        "stream_speed": params.stream_speed,
        "ttfa_s": round(ttfa, 3) if ttfa is not None else None,
        "total_s": round(total, 3),
        "audio_s": round(audio_s, 3),
        "rtf": round(total / audio_s, 3) if audio_s else None,
        "gpt_steps": probe.steps,
        "gpt_steps_per_s": round(probe.steps / gpt_s, 2) if gpt_s > 0 else None,
        "decode_s": round(probe.decode_s, 3),
        "chunks": chunks,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", type=Path, required=True, help="asset root (holds asset/)")
    parser.add_argument("--make-assets", action="store_true", help="write full-size random assets if absent")
    parser.add_argument("--text", default=DEFAULT_TEXT)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=144, help="forced GPT steps (144 = 3.07 s audio)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--config", choices=[*CONFIGS, "both"], default="both")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.ERROR)
    ensure_assets(args.assets, args.make_assets)
    t = time.perf_counter()
    chat = load_reference(args.assets)
    load_s = time.perf_counter() - t
    probe = Probe(chat)
    torch.manual_seed(args.seed)
    speaker = chat.sample_random_speaker()
    warm = argparse.Namespace(**{**vars(args), "steps": 8})  # first-call costs (allocations, lazy init)
    run_once(chat, probe, args.text, speaker, warm, {})
    names = list(CONFIGS) if args.config == "both" else [args.config]
    runs = [run_once(chat, probe, args.text, speaker, args, CONFIGS[name]) for name in names]
    print(
        json.dumps(
            {
                "bench": "chattts_reference",
                "chattts": md.version("chattts"),
                "torch": torch.__version__,
                "transformers": md.version("transformers"),
                "threads": args.threads,
                "text": args.text,
                "steps": args.steps,
                "load_s": round(load_s, 2),
                "runs": runs,
            },
            ensure_ascii=False,
        )
    )


if __name__ == "__main__":
    main()
