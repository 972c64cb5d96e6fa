"""The ChatTTS GPT: one Llama transformer driven through input embeddings, two output modes.

*Code mode* turns a text prompt into 4 parallel audio codebooks (one step = 4 codes = 21.3 ms of
audio); *text mode* is the refinement pass that rewrites text with prosody tags. All vocabulary
specific parts (text/code embeddings, weight-normed heads) live in ``Embed``; the transformer is
the stock transformers ``LlamaModel``. Sampling follows the reference order exactly (temperature →
windowed repetition penalty → top-p → top-k → EOS mask → multinomial) so seeded outputs match it.

The embeddings and heads are in :mod:`.gpt_embed`; the sampling options and the step/result types
in :mod:`.gpt_sampling` (re-exported here, where callers import them from).
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from transformers import DynamicCache, LlamaConfig, LlamaModel
from transformers.generation import TopKLogitsWarper, TopPLogitsWarper

from ...compute import CancelToken, ModelOptions
from ...quantize import int8_linears
from . import assets
from .assets import AssetError, check_keys, load_strict
from .gpt_embed import NUM_VQ, Embed
from .gpt_onnx import OrtHeads, OrtLlama
from .gpt_sampling import REFINE_SAMPLING, GenerationResult, SamplingOptions, Step, _penalize
from .llama import KvCache, LeanLlama

# transformers 5.x renamed LlamaModel's `past_key_values` to `cache` (the old name goes in 5.40).
_CACHE_KW = "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"


@dataclass
class Prompt:
    """A tokenized, left-padded batch ready for generation."""

    ids: torch.Tensor  # [B, T, num_vq] (text ids repeated over codebooks)
    mask: torch.Tensor  # [B, T] bool, False on left padding
    embeds: torch.Tensor  # [B, T, hidden] float32


class ChatTtsGpt:
    """The loaded transformer + embeddings + tokenizer; stateless between requests."""

    def __init__(
        self,
        llama: LlamaModel | LeanLlama | OrtLlama,
        embed: Embed,
        tokenizer,
        config: dict,
        dtype: torch.dtype,
    ) -> None:
        self.llama = llama
        self.embed = embed
        self.tokenizer = tokenizer
        self.config = config
        self.dtype = dtype
        self.device = next(embed.parameters()).device
        self.num_audio_tokens = int(config["num_audio_tokens"])
        self.num_vq = int(config.get("num_vq", NUM_VQ))
        self.audio_eos = self.num_audio_tokens - 1
        vocab = tokenizer.get_vocab()
        missing = [t for t in ("[spk_emb]", "[Ebreak]", "[break_0]", "[Stts]", "[Ptts]") if t not in vocab]
        if missing:
            raise AssetError(f"the tokenizer lacks ChatTTS control tokens: {', '.join(missing)}")
        #: output heads as one onnxruntime product each (code, text); None: the embed module's
        self.ort_heads: tuple[OrtHeads, OrtHeads] | None = None
        self.spk_emb_id = vocab["[spk_emb]"]
        self.text_eos = vocab["[Ebreak]"]
        self.break_0_id = vocab["[break_0]"]

    @classmethod
    def load(
        cls, root: Path, options: ModelOptions | None = None, *, lean: bool = True, backend: str = "torch"
    ) -> ChatTtsGpt:
        """Load ``asset/gpt``, ``asset/Embed.safetensors`` and ``asset/tokenizer`` under ``root``.

        ``lean`` (default) steps with :class:`LeanLlama` (fused projections, preallocated cache);
        False keeps the stock ``LlamaModel`` — same function, slower per step on CPUs.
        ``backend="onnx"`` runs the lean stack as one onnxruntime graph per step (CPU, fp32 or
        int8; see :mod:`.gpt_onnx`): the fastest CPU path.
        """
        from transformers import AutoTokenizer

        options = options or ModelOptions()
        device = options.resolve_device()
        config = json.loads((root / assets.GPT_DIR / "config.json").read_text())
        llama_config = LlamaConfig(
            **{k: v for k, v in config.items() if k not in ("architectures", "torch_dtype")}
        )
        with torch.device("meta"):
            llama = LlamaModel(llama_config)
        llama.embed_tokens = None  # unused: ChatTTS feeds input embeddings; optional in the file
        state = load_file(str(root / assets.GPT_DIR / "model.safetensors"))
        state.pop("embed_tokens.weight", None)
        with torch.device("meta"):
            expected = llama.state_dict()
        check_keys(expected, state, "asset/gpt/model.safetensors")
        llama.load_state_dict(state, strict=True, assign=True)
        llama.rotary_emb = type(llama.rotary_emb)(llama_config)  # non-persistent buffers: rebuild off meta
        llama.config = llama_config
        if backend not in ("torch", "onnx"):
            raise ValueError(f"backend must be 'torch' or 'onnx', got {backend!r}")
        if backend == "onnx" and (device.type != "cpu" or options.dtype != "fp32"):
            raise ValueError("the onnx GPT backend runs on the CPU in fp32 or int8 (quantize='int8')")
        model: nn.Module | OrtLlama = LeanLlama.from_llama(llama) if lean or backend == "onnx" else llama
        del llama
        model = model.to(device=device, dtype=options.torch_dtype).eval().requires_grad_(False)
        graph = None
        if backend == "onnx":  # from the float weights, before torch quantizes them in place
            graph = OrtLlama(model, quantize=options.quantize, threads=options.threads)
        if options.quantize == "int8":
            int8_linears(model, rows=1)  # one token per step
        if graph is not None:
            model = graph.with_batched(model)  # torch keeps the multi-session steps (forward_rows)
        embed = Embed(
            int(config["hidden_size"]), int(config["num_audio_tokens"]), int(config["num_text_tokens"])
        )
        load_strict(embed, load_file(str(root / assets.EMBED)), assets.EMBED)
        embed.bake()
        embed = embed.to(device).eval().requires_grad_(False)
        tokenizer = AutoTokenizer.from_pretrained(str(root / assets.TOKENIZER_DIR))
        gpt = cls(model, embed, tokenizer, config, options.torch_dtype)
        if backend == "onnx":
            codes = OrtHeads(
                [h.weight for h in embed.head_code], quantize=options.quantize, threads=options.threads
            )
            text = OrtHeads([embed.head_text.weight], quantize=options.quantize, threads=options.threads)
            gpt.ort_heads = (codes, text)
        return gpt

    def code_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[B, hidden]`` → ``[B, num_vq, num_audio_tokens]``."""
        return self.embed.code_logits(hidden) if self.ort_heads is None else self.ort_heads[0](hidden)

    def text_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[B, hidden]`` → ``[B, num_text_tokens]``."""
        return self.embed.head_text(hidden) if self.ort_heads is None else self.ort_heads[1](hidden)[:, 0]

    # -- prompts -----------------------------------------------------------------------------

    @torch.inference_mode()
    def encode(self, texts: list[str], audio: torch.Tensor | None = None) -> Prompt:
        """Tokenize and left-pad; padding slots embed as code id 0 like the reference (masked anyway).

        ``audio`` (codes ``[num_vq, P]``, an audio prompt) is appended to every row after its text:
        P audio positions embedded as summed code embeddings, as the reference's tokenizer does.
        """
        rows = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        tail = 0 if audio is None else int(audio.shape[1])
        if audio is not None and (audio.dim() != 2 or audio.shape[0] != self.num_vq):
            raise ValueError(f"audio prompt codes must be [{self.num_vq}, T], got {tuple(audio.shape)}")
        width = max(len(r) for r in rows) + tail
        ids = torch.zeros(len(rows), width, self.num_vq, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.bool)
        for i, row in enumerate(rows):
            if row:
                ids[i, width - tail - len(row) : width - tail] = torch.tensor(row)[:, None]
                mask[i, width - tail - len(row) :] = True
        text = mask.clone()
        if audio is not None:
            ids[:, width - tail :] = audio.t().long().cpu()
            text[:, width - tail :] = False
        ids, mask, text = ids.to(self.device), mask.to(self.device), text.to(self.device)
        audio_ids = ids.masked_fill(text[..., None], 0)  # text ids lie beyond the code vocabulary
        embeds = torch.where(text[..., None], self.embed.emb_text(ids[..., 0]), self.embed.codes(audio_ids))
        return Prompt(ids, mask, embeds)

    @torch.inference_mode()
    def code_prompt(
        self,
        texts: list[str],
        speaker: torch.Tensor | None = None,
        prefix: str = "[speed_5]",
        *,
        prompt_codes: torch.Tensor | None = None,
        prompt_text: str = "",
    ) -> Prompt:
        """``[Stts][spk_emb]{prompt_text}{prefix}{text}[Ptts]{prompt_codes}`` (``[empty_spk]``
        without a speaker). ``prompt_codes`` + ``prompt_text`` are the reference's ``spk_smp`` +
        ``txt_smp``: a recording's codes and its transcript, so generation continues in its voice."""
        slot = "[spk_emb]" if speaker is not None else "[empty_spk]"
        clean = [
            t.replace("[Stts]", "").replace("[spk_emb]", "").replace("[empty_spk]", "").strip() for t in texts
        ]
        prompt = self.encode([f"[Stts]{slot}{prompt_text}{prefix}{t}[Ptts]" for t in clean], prompt_codes)
        if speaker is not None:
            # The reference normalises the fp16 speaker vector in fp16; same op, same dtype, same bits.
            unit = F.normalize(speaker.to(self.device, torch.float16), p=2.0, dim=0, eps=1e-12).float()
            at = prompt.ids[..., 0].eq(self.spk_emb_id)
            prompt.embeds[at] = unit
        return prompt

    def refine_prompt(self, texts: list[str], control: str = "") -> Prompt:
        return self.encode([f"[Sbreak]{t}[Pbreak]{control}" for t in texts])

    # -- generation --------------------------------------------------------------------------

    @torch.inference_mode()
    def generate(
        self,
        prompt: Prompt,
        sampling: SamplingOptions,
        *,
        text: bool = False,
        cancel: CancelToken | None = None,
        forward: LeanForward | None = None,
    ) -> Iterator[Step]:
        """Yield one :class:`Step` per position until every row hit EOS, the limit, or ``cancel``.

        ``forward`` runs the lean model's passes (default: here, in the calling thread); an engine
        passes one that sends them to its compute lane, where concurrent sessions' steps batch.
        """
        batch = prompt.mask.shape[0]
        groups = 1 if text else self.num_vq
        temps = (
            sampling.temperature
            if isinstance(sampling.temperature, tuple)
            else (sampling.temperature,) * groups
        )
        if len(temps) != groups:
            raise ValueError(f"temperature needs {groups} values in this mode, got {len(temps)}")
        temperature = torch.tensor(temps, device=self.device).repeat(batch)[:, None]
        warpers = []
        if sampling.top_p is not None:
            warpers.append(TopPLogitsWarper(sampling.top_p, min_tokens_to_keep=3))
        if sampling.top_k is not None:
            warpers.append(TopKLogitsWarper(sampling.top_k, min_tokens_to_keep=3))
        eos = self.text_eos if text else self.audio_eos
        seed = sampling.seed if sampling.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
        generator = torch.Generator(device=self.device).manual_seed(seed)
        mask = prompt.mask.long()
        positions = (mask.cumsum(-1) - 1).masked_fill(mask.eq(0), 1)
        inputs = prompt.embeds
        lean = not isinstance(self.llama, LlamaModel)  # LeanLlama or OrtLlama: same interface
        if lean and forward is None:
            forward = self.llama
        cache = self.llama.new_cache(batch, self.dtype, self.device) if lean else DynamicCache()
        padded = not bool(prompt.mask.all())
        history: list[torch.Tensor] = []  # per step [B * groups]
        alive = torch.ones(batch, dtype=torch.bool, device=self.device)
        for step in range(sampling.max_new_tokens):
            if cancel is not None and cancel.cancelled:
                return
            if lean:
                out = forward(inputs.to(self.dtype), positions, cache, mask if padded else None)
            else:
                out = self.llama(
                    inputs_embeds=inputs.to(self.dtype),
                    attention_mask=mask,
                    position_ids=positions,
                    use_cache=True,
                    **{_CACHE_KW: cache},
                ).last_hidden_state
            hidden = out[:, -1].float()
            logits = self.text_logits(hidden) if text else self.code_logits(hidden).flatten(0, 1)
            logits = logits.float() / temperature
            if sampling.repetition_penalty != 1.0 and history:
                window = torch.stack(history[-sampling.penalty_window :], 1)
                logits = _penalize(logits, window, sampling.repetition_penalty)
            for warp in warpers:
                logits = warp(None, logits)
            if step < max(1, sampling.min_new_tokens):  # never an empty result (EOS at step 0)
                logits[:, eos] = -torch.inf
            probs = torch.softmax(logits, -1)
            if sampling.reseed_every_step:
                generator.manual_seed(seed)
            sampled = torch.multinomial(probs, 1, generator=generator)[:, 0]
            history.append(sampled)
            tokens = sampled if text else sampled.view(batch, groups)
            hit = tokens.eq(eos) if text else tokens.eq(eos).any(1)
            alive = alive & ~hit
            yield Step(tokens, hidden, alive.clone())
            if not alive.any():
                return
            inputs = (self.embed.emb_text(tokens) if text else self.embed.codes(tokens))[:, None]
            mask = torch.cat([mask, mask.new_ones(batch, 1)], 1)
            positions = positions[:, -1:] + 1

    def run(
        self,
        prompt: Prompt,
        sampling: SamplingOptions,
        *,
        text: bool = False,
        cancel: CancelToken | None = None,
        forward: LeanForward | None = None,
    ) -> GenerationResult:
        """Generate to the end; per row, the tokens and hidden states before its EOS."""
        batch = prompt.mask.shape[0]
        steps = list(self.generate(prompt, sampling, text=text, cancel=cancel, forward=forward))
        result = GenerationResult()
        for row in range(batch):
            keep = [s for s in steps if bool(s.alive[row])]
            ended = len(keep) < len(steps) or (steps and not bool(steps[-1].alive[row]))
            result.tokens.append(
                torch.stack([s.tokens[row] for s in keep]) if keep else _empty_tokens(text, self)
            )
            result.hiddens.append(
                torch.stack([s.hidden[row] for s in keep])
                if keep
                else torch.zeros(0, self.embed.emb_text.embedding_dim)
            )
            result.finished.append(bool(ended))
        return result

    def refine(
        self,
        texts: list[str],
        control: str = "",
        sampling: SamplingOptions = REFINE_SAMPLING,
        forward: LeanForward | None = None,
    ) -> tuple[list[str], list[list[int]]]:
        """Text mode: rewrite each text with prosody tags; returns (texts, kept token ids).

        Ids at or above ``[break_0]`` (the numbered break/laugh/oral/speed controls) are dropped,
        as the reference does; the rest decode to space-separated text with ``[uv_break]`` etc.
        """
        result = self.run(self.refine_prompt(texts, control), sampling, text=True, forward=forward)
        kept = [[int(t) for t in row if int(t) < self.break_0_id] for row in result.tokens]
        return [self.tokenizer.decode(ids) for ids in kept], kept


#: (embeds [B, T, hidden], positions [B, T], cache, valid or None) -> last hidden states [B, T, hidden]
LeanForward = Callable[[torch.Tensor, torch.Tensor, KvCache, torch.Tensor | None], torch.Tensor]


def _empty_tokens(text: bool, gpt: ChatTtsGpt) -> torch.Tensor:
    shape = (0,) if text else (0, gpt.num_vq)
    return torch.zeros(shape, dtype=torch.long, device=gpt.device)
