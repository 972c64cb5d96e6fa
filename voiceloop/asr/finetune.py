"""CTC fine-tuning of wav2vec2 checkpoints: ``voiceloop asr finetune``.

Why it exists: a pretrained Mandarin checkpoint misses domain words and characters, and a tiny
model trained from scratch is the only honest end-to-end fixture for the streaming path. The
loop is deliberately small (no ``Trainer``): manifests in, official hub layout out, resumable
from per-epoch checkpoints, CER measured every epoch so a run can be judged while it goes.

How a run starts (model, vocabulary, grown head) and what it writes (hub layout, checkpoints,
resume state) is in :mod:`.finetune_checkpoint`; this module holds the loop and its CLI.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .corpus import TargetVocab, Utterance, char_error_rate, load_audio, read_manifest
from .finetune_checkpoint import (
    _checkpoints,
    _load_start,
    _load_training_state,
    _resize_head,
    _save_checkpoint,
    save_model,
)


@dataclass
class FinetuneOptions:
    """Training knobs; the defaults suit fine-tuning a pretrained XLSR checkpoint on a few hours of speech."""

    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-4  #: peak AdamW learning rate (after warmup, then linear decay to 0)
    warmup: float = 0.1  #: warmup length: a fraction of all steps when < 1, else a step count
    weight_decay: float = 0.0
    grad_clip: float = 1.0  #: max gradient norm; CTC gradients spike on badly aligned batches
    freeze_feature_encoder: bool = True  #: the conv encoder is generic; training it needs far more data
    freeze_layers: int = 0  #: also freeze the lowest N transformer layers (+ projection, pos. conv)
    max_audio_s: float = 20.0  #: longer training utterances are skipped (memory grows with length²)
    sortagrad: bool = False  #: first epoch shortest-first ("SortaGrad"; did not help the tiny fixture)
    seed: int = 0
    eval_every_epoch: bool = True  #: False: evaluate only after the last epoch
    save_every: int = 1  #: checkpoint every N epochs (the last epoch is always checkpointed)
    keep_checkpoints: int = 2  #: older checkpoint-epochN folders are deleted
    threads: int | None = None  #: torch intra-op threads (None: torch's default)
    resume: bool = True  #: continue from the newest checkpoint-epochN in ``out``
    progress: bool = True  #: show a progress bar (rich) and per-epoch lines


def _freeze(model: nn.Module, options: FinetuneOptions) -> None:
    """Freeze the conv encoder and/or the lowest layers; with layers frozen, what feeds them is too."""
    base = model.wav2vec2
    if options.freeze_feature_encoder:
        model.freeze_feature_encoder()
    layers = base.encoder.layers
    if not 0 <= options.freeze_layers <= len(layers):
        raise ValueError(f"freeze_layers must be 0..{len(layers)}, got {options.freeze_layers}")
    if options.freeze_layers:
        frozen = [base.feature_projection, base.encoder.pos_conv_embed, *layers[: options.freeze_layers]]
        for module in frozen:
            module.requires_grad_(False)
        if getattr(base, "masked_spec_embed", None) is not None:
            base.masked_spec_embed.requires_grad_(False)


def _collate(batch: list[Utterance], vocab: TargetVocab, normalize: bool) -> dict[str, torch.Tensor]:
    """Pad to the longest item (dynamic padding); normalise per utterance like Wav2Vec2FeatureExtractor."""
    audios = [load_audio(u.audio) for u in batch]
    longest = max(len(a) for a in audios)
    inputs = torch.zeros(len(batch), longest)
    mask = torch.zeros(len(batch), longest, dtype=torch.long)
    for i, audio in enumerate(audios):
        if normalize:
            audio = (audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)
        inputs[i, : len(audio)] = torch.from_numpy(audio)
        mask[i, : len(audio)] = 1
    targets = [vocab.encode(u.text) for u in batch]
    labels = torch.full((len(batch), max(len(t) for t in targets)), -100, dtype=torch.long)
    for i, target in enumerate(targets):
        labels[i, : len(target)] = torch.tensor(target)
    return {"input_values": inputs, "attention_mask": mask, "labels": labels}


def _batches(items: list[Utterance], size: int, rng: random.Random | None) -> list[list[Utterance]]:
    """Length-sorted batches (little padding), in shuffled order when ``rng`` is given."""
    ordered = sorted(items, key=lambda u: u.seconds)
    batches = [ordered[i : i + size] for i in range(0, len(ordered), size)]
    if rng is not None:
        rng.shuffle(batches)
    return batches


def _forward(
    model: nn.Module, batch: dict[str, torch.Tensor], blank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and mean-per-target-char CTC loss (blank = pad id, impossible alignments zeroed)."""
    logits = model(batch["input_values"], attention_mask=batch["attention_mask"]).logits
    frames = model._get_feat_extract_output_lengths(batch["attention_mask"].sum(-1)).long()
    labels = batch["labels"]
    keep = labels >= 0
    log_probs = nn.functional.log_softmax(logits, dim=-1, dtype=torch.float32).transpose(0, 1)
    loss = nn.functional.ctc_loss(
        log_probs, labels[keep], frames, keep.sum(-1), blank=blank, reduction="mean", zero_infinity=True
    )
    return logits, loss


def evaluate(
    model: nn.Module,
    items: list[Utterance],
    vocab: TargetVocab,
    options: FinetuneOptions,
    normalize: bool = True,
) -> dict[str, Any]:
    """Greedy-decode ``items``: corpus CER, mean CTC loss and a few (reference, hypothesis) samples."""
    model.eval()
    refs, hyps, losses = [], [], []
    with torch.inference_mode():
        for chunk in _batches(items, options.batch_size, None):
            batch = _collate(chunk, vocab, normalize)
            logits, loss = _forward(model, batch, vocab.blank)
            losses.append(loss.item())
            frames = model._get_feat_extract_output_lengths(batch["attention_mask"].sum(-1)).long()
            for u, ids, n in zip(chunk, logits.argmax(-1).tolist(), frames.tolist(), strict=True):
                refs.append(u.text)
                hyps.append(vocab.decode(ids[:n]))
    model.train()
    samples = [{"ref": r, "hyp": h} for r, h in list(zip(refs, hyps, strict=True))[:5]]
    return {"cer": char_error_rate(refs, hyps), "loss": float(np.mean(losses)), "samples": samples}


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def finetune(
    model: str | Path, train: Path, eval: Path | None, out: Path, options: FinetuneOptions | None = None
) -> dict[str, Any]:
    """Train ``model`` (checkpoint directory, hub id, or config.json for random init) with CTC on the
    ``train`` manifest; write checkpoints, ``metrics.jsonl`` and the final model to ``out``."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    options = options or FinetuneOptions()
    out = Path(out)
    if options.threads:
        torch.set_num_threads(options.threads)
    train_items = read_manifest(train)
    eval_items = read_manifest(eval) if eval is not None else []
    long = [u for u in train_items if u.seconds > options.max_audio_s]
    train_items = [u for u in train_items if u.seconds <= options.max_audio_s]
    if not train_items:
        raise ValueError(f"{train}: every utterance is longer than max_audio_s={options.max_audio_s}")
    console = Console(stderr=True, quiet=not options.progress)
    out.mkdir(parents=True, exist_ok=True)
    existing = _checkpoints(out)
    resume_from = existing[-1] if options.resume and existing else None
    if resume_from is None:  # fresh start: stale checkpoints/metrics from an older run would mislead a resume
        for _, stale in existing:
            shutil.rmtree(stale)
        (out / "metrics.jsonl").unlink(missing_ok=True)
    net, vocab, preprocessor = _load_start(
        resume_from[1] if resume_from else model, [u.text for u in train_items], options.seed
    )
    added = vocab.extend([u.text for u in train_items])
    _resize_head(net, vocab)
    net.config.pad_token_id, net.config.ctc_zero_infinity = vocab.blank, True
    _freeze(net, options)
    net.train()
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=options.lr, weight_decay=options.weight_decay, betas=(0.9, 0.98))
    per_epoch = math.ceil(len(train_items) / options.batch_size)
    total = per_epoch * options.epochs
    warmup = max(1, round(options.warmup * total) if options.warmup < 1 else int(options.warmup))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, warmup, total))
    start_epoch, step = 0, 0
    if resume_from is not None:
        state = _load_training_state(resume_from[1] / "training_state.pt")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        random.setstate(state["python_rng"])
        name, key, *rest = state["numpy_rng"]
        np.random.set_state((name, key.numpy().astype(np.uint32), *rest))
        torch.set_rng_state(state["torch_rng"])
        start_epoch, step = state["epoch"], state["step"]
        console.print(f"resuming from {resume_from[1].name} (epoch {start_epoch}, step {step})")
    else:
        torch.manual_seed(options.seed)
    if added and resume_from is None:
        console.print(f"vocabulary: +{len(added)} characters ({''.join(added[:40])})")
    if long:
        console.print(f"skipped {len(long)} training utterances longer than {options.max_audio_s} s")
    normalize = bool(preprocessor.get("do_normalize", True))
    history: list[dict[str, Any]] = []
    started = time.perf_counter()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True, disable=not options.progress) as bar:
        for epoch in range(start_epoch + 1, options.epochs + 1):
            epoch_started, losses = time.perf_counter(), []
            task = bar.add_task(f"epoch {epoch}/{options.epochs}", total=per_epoch)
            shuffle = None if epoch == 1 and options.sortagrad else random.Random(options.seed * 1000 + epoch)
            for chunk in _batches(train_items, options.batch_size, shuffle):
                _, loss = _forward(net, _collate(chunk, vocab, normalize), vocab.blank)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(params, options.grad_clip)
                optimizer.step()
                scheduler.step()
                step += 1
                losses.append(loss.item())
                recent = f"epoch {epoch}/{options.epochs} loss {np.mean(losses[-20:]):.3f}"
                bar.update(task, advance=1, description=recent)
            bar.remove_task(task)
            row: dict[str, Any] = {
                "epoch": epoch,
                "step": step,
                "train_loss": float(np.mean(losses)),
                "lr": scheduler.get_last_lr()[0],
            }
            if eval_items and (options.eval_every_epoch or epoch == options.epochs):
                result = evaluate(net, eval_items, vocab, options, normalize)
                row.update(eval_cer=result["cer"], eval_loss=result["loss"], samples=result["samples"])
            row["epoch_seconds"] = round(time.perf_counter() - epoch_started, 2)
            history.append(row)
            with (out / "metrics.jsonl").open("a", encoding="utf-8") as f:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            cer = f" eval CER {row['eval_cer']:.2%}" if "eval_cer" in row else ""
            console.print(
                f"epoch {epoch}/{options.epochs}: loss {row['train_loss']:.3f}{cer} "
                f"({row['epoch_seconds']:.0f} s)"
            )
            if epoch % max(1, options.save_every) == 0 or epoch == options.epochs:
                state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                         "epoch": epoch, "step": step, "options": asdict(options)}  # fmt: skip
                _save_checkpoint(out, epoch, (net, vocab, preprocessor), state, options.keep_checkpoints)
    save_model(net, vocab, preprocessor, out)
    final = history[-1] if history else {}
    return {
        "out": str(out),
        "epochs": options.epochs,
        "resumed_from": resume_from[0] if resume_from else None,
        "added_chars": added,
        "vocab_size": len(vocab.tokens),
        "train_loss": final.get("train_loss"),
        "eval_cer": final.get("eval_cer"),
        "seconds": round(time.perf_counter() - started, 1),
        "history": history,
    }


def cmd_finetune(args: argparse.Namespace) -> int:
    options = FinetuneOptions(
        freeze_layers=args.freeze_layers,
        freeze_feature_encoder=not args.train_feature_encoder,
        resume=not args.no_resume,
        threads=args.threads,
    )
    for name in ("epochs", "batch_size", "lr"):
        if getattr(args, name) is not None:
            setattr(options, name, getattr(args, name))
    evaluation = Path(args.eval) if args.eval else None
    result = finetune(args.model or args.init_config, Path(args.train), evaluation, Path(args.out), options)
    cer = result["eval_cer"]
    print(f"model written to {result['out']}" + (f" (eval CER {cer:.2%})" if cer is not None else ""))
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``finetune`` (under ``voiceloop asr``)."""
    defaults = FinetuneOptions()
    parser = subparsers.add_parser("finetune", help="CTC fine-tuning on JSONL manifests (audio path + text)")
    add = parser.add_argument
    add("--train", required=True, help='JSON lines manifest: {"audio": "a.wav", "text": "..."}')
    add("--eval", help="held-out manifest; CER is measured on it every epoch")
    add("--out", required=True, help="output folder: checkpoints, metrics.jsonl, final model")
    start = parser.add_mutually_exclusive_group(required=True)
    start.add_argument("--model", help="starting checkpoint (directory or hub id)")
    start.add_argument("--init-config", help="config.json for a random init (vocabulary from the text)")
    add("--epochs", type=int, help=f"default {defaults.epochs}")
    add("--batch-size", type=int, help=f"default {defaults.batch_size}")
    add("--lr", type=float, help=f"peak learning rate, default {defaults.lr}")
    add("--freeze-layers", type=int, default=0, help="freeze the lowest N transformer layers (default 0)")
    add("--train-feature-encoder", action="store_true", help="do not freeze the conv feature encoder")
    add("--no-resume", action="store_true", help="start over even if --out holds checkpoints")
    add("--threads", type=int, help="torch intra-op threads")
    parser.set_defaults(func=cmd_finetune)
    return parser
