"""``voiceloop say`` and ``voiceloop tts ...`` (voices, export-onnx)."""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import UserError

if TYPE_CHECKING:  # torch/transformers load lazily so `voiceloop --help` stays fast
    from ..tts.chattts.engine import ChatTts

DEFAULT_TTS = "2Noise/ChatTTS"
CLONE_NOTE = (
    "A voice from a recording copies a real person's voice: only record or upload voices whose speakers "
    "agreed to it. The ChatTTS weights are licensed CC BY-NC 4.0 (non-commercial use only)."
)


def add_tts_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default=DEFAULT_TTS, help="hub id or local directory (default: %(default)s)"
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--int8", action="store_true", help="CPU int8 dynamic quantization of the GPT")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads for the TTS model")
    parser.add_argument(
        "--backend",
        choices=("auto", "torch", "onnx"),
        default="auto",
        help="the GPT's runtime; auto (default): onnxruntime on CPUs when installed, else torch",
    )
    parser.add_argument("--decoder", choices=("hidden", "dvae"), default="hidden", help="mel decoder path")
    parser.add_argument("--verify", action="store_true", help="check the files against the official sha256")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="longest audio per sentence (default: the model's 43.7 s)",
    )


def load_tts(args: argparse.Namespace) -> ChatTts:
    from ..compute import ModelOptions
    from ..tts.chattts.engine import ChatTts, ChatTtsOptions

    model = ModelOptions(
        device=args.device, dtype=args.dtype, quantize="int8" if args.int8 else None, threads=args.threads
    )
    options = ChatTtsOptions(
        model=model, decoder=args.decoder, verify_sha256=args.verify, gpt_backend=args.backend
    )
    if getattr(args, "max_seconds", None) is not None:
        if args.max_seconds <= 0:
            raise UserError("--max-seconds must be positive")
        from ..tts.chattts.engine import STEPS_PER_SECOND

        steps = max(1, math.ceil(args.max_seconds * STEPS_PER_SECOND))
        options.sampling = replace(options.sampling, max_new_tokens=steps)
    return ChatTts.from_pretrained(args.model, options)


def _voice(engine: ChatTts, spec: str | None, save_as: str | None):
    """The voice for ``--voice`` (a speaker, a recording's prompt, or both); without one, a fresh
    random voice (saved with ``--save-voice``, so it can be kept)."""
    from ..tts.chattts.speaker import resolve_voice

    speaker = resolve_voice(spec, engine.stats, engine.voice_store) if spec else engine.random_voice()
    if save_as:
        if speaker is None:
            raise UserError("--save-voice needs a voice: these assets have no spk_stat to sample one from")
        print(f"saved voice {save_as!r} to {engine.voice_store.save(save_as, speaker)}", file=sys.stderr)
    return engine.voice(speaker)


def _write(path: Path, audio: np.ndarray, rate: int) -> None:
    import soundfile

    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), audio, rate, subtype="PCM_16")


def cmd_say(args: argparse.Namespace) -> int:
    if args.batch is None and args.text is None:
        raise UserError("give the text to say, or --batch LINES.txt --out-dir DIR")
    if args.batch is not None and args.out_dir is None:
        raise UserError("--batch needs --out-dir")
    engine = load_tts(args)
    speaker = _voice(engine, args.voice, args.save_voice)
    if args.batch is not None:
        return _say_batch(engine, args, speaker)
    text = args.text
    prepared = engine.prepare(text)
    for char in prepared.unsupported:
        print(f"warning: cannot pronounce {char!r}; left out", file=sys.stderr)
    if not prepared.sentences:
        raise UserError(f"nothing to say in {text!r} (no speakable characters)")
    started = time.perf_counter()
    if args.stream:
        import soundfile

        first = None
        total = 0
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        with soundfile.SoundFile(args.output, "w", engine.sample_rate, 1, subtype="PCM_16") as out:
            for chunk in engine.stream(text, speaker, refine=args.refine, seed=args.seed):
                first = first if first is not None else time.perf_counter() - started
                out.write(chunk)
                total += len(chunk)
        audio_s = total / engine.sample_rate
    else:
        (audio,) = engine.synthesize([text], speaker, refine=args.refine, seed=args.seed)
        _write(Path(args.output), audio, engine.sample_rate)
        first, audio_s = None, len(audio) / engine.sample_rate
    elapsed = time.perf_counter() - started
    rtf = elapsed / audio_s if audio_s else float("nan")
    ttfa = f", first audio after {first:.2f} s" if first is not None else ""
    print(
        f"wrote {args.output}: {audio_s:.2f} s of audio in {elapsed:.2f} s (RTF {rtf:.2f}){ttfa}",
        file=sys.stderr,
    )
    engine.lane.close()
    return 0


def _say_batch(engine: ChatTts, args: argparse.Namespace, speaker) -> int:
    from rich.progress import Progress

    lines = [line.strip() for line in Path(args.batch).read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise UserError(f"{args.batch} has no non-empty lines")
    out_dir = Path(args.out_dir)
    width = len(str(len(lines)))
    with Progress(transient=False) as progress:
        task = progress.add_task("synthesizing", total=len(lines))
        for start in range(0, len(lines), args.batch_size):
            group = lines[start : start + args.batch_size]
            waves = engine.synthesize(group, speaker, refine=args.refine, seed=args.seed)
            for offset, wave in enumerate(waves):
                index = start + offset + 1
                if len(wave) == 0:
                    progress.console.print(f"line {index}: nothing to say, skipped")
                else:
                    _write(out_dir / f"{index:0{width}d}.wav", wave, engine.sample_rate)
            progress.advance(task, len(group))
    return 0


def cmd_voice(args: argparse.Namespace) -> int:
    from ..tts.chattts.speaker import SpeakerStats, VoiceStore, resolve_voice, sample_speaker

    store = VoiceStore(Path(args.voice_dir) if args.voice_dir else None)
    if args.action != "list" and not args.name:
        raise UserError(f"tts voice {args.action} needs a NAME")
    if (args.from_audio or args.transcript is not None) and (args.action != "save" or args.spec):
        raise UserError(
            "--from-audio/--transcript go with 'tts voice save NAME --from-audio REF.wav' (no SPEC)"
        )
    if args.action == "save" and args.from_audio:
        return _save_from_audio(args, store)
    if args.action == "save" and not args.spec:
        raise UserError(
            "tts voice save NAME SPEC: SPEC is seed:N, a speaker string or a file holding one "
            "(or --from-audio REF.wav to make a voice from a recording)"
        )
    if args.action == "list":
        for name in store.names():
            print(name)
        return 0
    if args.action == "delete":
        store.delete(args.name)
        return 0
    if args.action == "show":
        print(store.load(args.name))
        return 0
    # save: from a spec (speaker string / file / seed:N with --model's statistics)
    stats = None
    if args.spec.startswith("seed:"):
        from ..tts.chattts import assets

        root = assets.resolve_root(args.model)
        if not (root / assets.SPK_STAT).is_file():
            raise UserError(f"{args.model} has no {assets.SPK_STAT}; cannot sample seed voices")
        stats = SpeakerStats.load(root / assets.SPK_STAT)
        speaker = sample_speaker(stats, int(args.spec[5:]))
    else:
        speaker = resolve_voice(args.spec, stats, store)
    print(store.save(args.name, speaker))
    return 0


def _save_from_audio(args: argparse.Namespace, store) -> int:
    """``tts voice save NAME --from-audio REF.wav``: check, transcribe if needed, encode, save."""
    import soundfile

    from ..tts.chattts import assets
    from ..tts.chattts.speaker import is_voice_name

    if not is_voice_name(args.name):
        store.path(args.name)  # raises the naming rule before any model loads
    path = Path(args.from_audio)
    if not path.is_file():
        raise UserError(f"--from-audio {str(path)!r}: no such file")
    try:
        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError) as exc:
        raise UserError(f"--from-audio {str(path)!r}: cannot read it as audio ({exc})") from exc
    if args.transcript is not None and args.transcript.strip():
        from ..tts.chattts.clone import VoiceCloner

        result = VoiceCloner.from_pretrained(assets.resolve_root(args.model)).clone(
            samples, rate, args.transcript
        )
    else:
        from ..agent import Agent

        with Agent(asr=args.asr, tts=f"chattts:{args.model}") as agent:
            result = agent.voice_from_audio(samples, rate)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(
        f"{result.seconds:.1f} s, {result.prompt_steps} prompt steps; "
        f"transcript ({result.transcript_source}): {result.transcript}",
        file=sys.stderr,
    )
    print(store.save(args.name, result.voice))
    return 0


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from ..tts.chattts import assets
    from ..tts.chattts.onnx import export_onnx

    root = assets.resolve_root(args.model)
    path = export_onnx(root, Path(args.out_dir))
    print(path)
    return 0


def cmd_random_assets(args: argparse.Namespace) -> int:
    from ..tts.chattts.random_assets import write_random_assets

    root = write_random_assets(
        Path(args.out_dir), gpt_layers=args.layers, seed=args.seed, embed_tokens=args.layers == 20
    )
    print(f"wrote random-weight ChatTTS assets (noise, the real model's compute) to {root}", file=sys.stderr)
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    say = sub.add_parser("say", help="speak text with the ChatTTS-compatible engine into a WAV file")
    say.add_argument("text", nargs="?", help="text; prosody tags like [laugh] [uv_break] pass through")
    say.add_argument("-o", "--output", default="say.wav", help="output WAV (default: %(default)s)")
    say.add_argument("--voice", help="seed:N | a saved voice name | a speaker string | a file holding one")
    say.add_argument("--save-voice", metavar="NAME", help="also save the voice used under NAME")
    say.add_argument("--refine", action="store_true", help="run the text refinement pass first (slow on CPU)")
    say.add_argument("--stream", action="store_true", help="stream chunks to the file as they are generated")
    say.add_argument("--seed", type=int, default=None, help="sampling seed (reproducible output)")
    say.add_argument("--batch", metavar="LINES.txt", help="one WAV per non-empty line (needs --out-dir)")
    say.add_argument("--out-dir", help="directory for --batch output")
    say.add_argument("--batch-size", type=int, default=4, help="lines generated together (default: 4)")
    add_tts_model_arguments(say)
    say.set_defaults(func=cmd_say)

    tts = sub.add_parser("tts", help="TTS tools: voices, ONNX export")
    tts_sub = tts.add_subparsers(dest="tts_command", metavar="TOOL", required=True)
    voice = tts_sub.add_parser(
        "voice",
        help="list, show, save or delete named voices (save one from a recording with --from-audio)",
        description=CLONE_NOTE,
    )
    voice.add_argument("action", choices=("list", "show", "save", "delete"))
    voice.add_argument("name", nargs="?", help="voice name (show/save/delete)")
    voice.add_argument("spec", nargs="?", help="save: seed:N | speaker string | file")
    voice.add_argument(
        "--from-audio",
        metavar="REF.wav",
        help="save: a voice from a recording (5-10 s of one speaker, quiet room; at most 30 s)",
    )
    voice.add_argument(
        "--transcript",
        metavar="TEXT",
        help="with --from-audio: exactly what the recording says (else the ASR)",
    )
    voice.add_argument(
        "--asr", help="with --from-audio and no --transcript: the ASR engine (default: the loop's)"
    )
    voice.add_argument(
        "--model", default=DEFAULT_TTS, help="the TTS assets (spk_stat for seeds, DVAE for audio)"
    )
    voice.add_argument("--voice-dir", help="where voices live (default: $VOICELOOP_HOME/voices)")
    voice.set_defaults(func=cmd_voice)
    export = tts_sub.add_parser("export-onnx", help="export the decoder + Vocos path to ONNX")
    export.add_argument("model", help="hub id or local directory")
    export.add_argument("out_dir")
    export.set_defaults(func=cmd_export_onnx)
    random = tts_sub.add_parser(
        "random-assets", help="write random-weight assets in the official layout (try the plumbing offline)"
    )
    random.add_argument("out_dir")
    random.add_argument("--layers", type=int, default=2, help="GPT layers: 2 is fast, 20 is full size")
    random.add_argument("--seed", type=int, default=0)
    random.set_defaults(func=cmd_random_assets)
