"""What a ChatTTS voice conditions generation on, and the text form of a voice made from a recording.

A ChatTTS voice is a speaker vector (``spk_emb``, a speaker string), an audio prompt (``spk_smp``:
DVAE codes of a recording, with ``txt_smp``, its transcript), or both. The reference passes the
prompt as two parameters beside the speaker; voiceloop keeps a voice as *one* string so it travels
wherever a voice spec goes (``--voice``, ``session(voice=...)``, the voice store): a speaker string
as before, or for a voice with an audio prompt a one-line JSON object::

    {"format": "chattts-voice/1", "spk_smp": "<base16384>", "txt_smp": "<transcript>",
     "spk_emb": null, "seconds": 7.5, "transcript_from": "asr"}

``spk_smp`` and ``spk_emb`` are the reference's own strings, so they can be pasted into ChatTTS.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch

from .speaker_string import SpeakerError, decode_prompt_codes, decode_speaker

VOICE_FORMAT = "chattts-voice/1"
_INFO_KEYS = ("seconds", "transcript_from")
_MAX_TRANSCRIPT_CHARS = 2000


@dataclass(frozen=True, eq=False)  # tensors have no boolean ==
class Voice:
    """A decoded voice: ``speaker`` float32 ``[dim]`` or None (``[empty_spk]``), ``prompt_codes``
    int64 ``[num_vq, T]`` or None, and ``prompt_text``, the words those codes say."""

    speaker: torch.Tensor | None = None
    prompt_codes: torch.Tensor | None = None
    prompt_text: str = ""

    @property
    def prompt_steps(self) -> int:
        """GPT positions the audio prompt adds to every prefill (one per 21.3 ms of recording)."""
        return 0 if self.prompt_codes is None else int(self.prompt_codes.shape[1])


def is_voice_json(text: str) -> bool:
    """Whether a voice spec is the JSON form (as opposed to a name, seed, file or speaker string)."""
    return isinstance(text, str) and text.lstrip().startswith("{")


def voice_json(spk_smp: str, txt_smp: str, spk_emb: str | None = None, **info: float | str | None) -> str:
    """The one-line JSON form of a voice with an audio prompt (validated: it parses back)."""
    unknown = set(info) - set(_INFO_KEYS)
    if unknown:
        raise SpeakerError(f"unknown voice fields {sorted(unknown)}; allowed: {', '.join(_INFO_KEYS)}")
    record: dict[str, Any] = {"format": VOICE_FORMAT, "spk_smp": spk_smp, "txt_smp": txt_smp}
    record["spk_emb"] = spk_emb
    record |= {k: v for k, v in info.items() if v is not None}
    text = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
    parse_voice_json(text)
    return text


def parse_voice_json(text: str, dim: int | None = None) -> Voice:
    """Decode the JSON form; anything malformed is a :class:`SpeakerError` naming the field."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpeakerError(f"voice JSON is malformed: {exc}") from exc
    if not isinstance(record, dict) or record.get("format") != VOICE_FORMAT:
        raise SpeakerError(f'a voice JSON object needs "format": "{VOICE_FORMAT}"')
    spk_smp, txt_smp, spk_emb = record.get("spk_smp"), record.get("txt_smp"), record.get("spk_emb")
    if not isinstance(spk_smp, str) or not spk_smp.strip():
        raise SpeakerError('voice JSON: "spk_smp" (the audio prompt codes) must be a non-empty string')
    if not isinstance(txt_smp, str) or not txt_smp.strip():
        raise SpeakerError('voice JSON: "txt_smp" (the transcript of the recording) must be non-empty')
    if len(txt_smp) > _MAX_TRANSCRIPT_CHARS:
        raise SpeakerError(f'voice JSON: "txt_smp" is longer than {_MAX_TRANSCRIPT_CHARS} characters')
    if spk_emb is not None and not isinstance(spk_emb, str):
        raise SpeakerError('voice JSON: "spk_emb" must be a speaker string or null')
    try:
        codes = decode_prompt_codes(spk_smp)
    except SpeakerError as exc:
        raise SpeakerError(f'voice JSON: "spk_smp": {exc}') from exc
    if codes.shape[0] == 0 or codes.shape[1] == 0:
        raise SpeakerError(f'voice JSON: "spk_smp" holds no codes (shape {tuple(codes.shape)})')
    speaker = None
    if spk_emb is not None:
        try:
            speaker = decode_speaker(spk_emb, dim)
        except SpeakerError as exc:
            raise SpeakerError(f'voice JSON: "spk_emb": {exc}') from exc
    return Voice(speaker=speaker, prompt_codes=codes, prompt_text=txt_smp.strip())


def voice_info(text: str) -> dict[str, Any]:
    """The informational fields of a JSON voice (length, where its transcript came from)."""
    record = json.loads(text)
    return {k: record[k] for k in _INFO_KEYS if k in record}
