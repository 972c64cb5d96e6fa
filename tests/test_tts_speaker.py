"""ChatTTS speaker strings, seeded voices and the voice store.

Golden strings below were produced with the reference recipe (the ``pybase16384`` package, stdlib
``lzma`` raw LZMA2 preset 9|extreme, ``torch.manual_seed`` + ``torch.randn(dim, dtype=float16)
.mul_(std).add_(mean)`` as ChatTTS 0.2.5 does on CPU), so this test needs no pybase16384.
"""

from __future__ import annotations

import hashlib
import lzma
import random

import pytest
import torch

from voiceloop.tts.chattts.speaker import (
    SAMPLE_DTYPE,
    SpeakerError,
    SpeakerStats,
    VoiceStore,
    b16384_decode,
    b16384_encode,
    decode_prompt_codes,
    decode_speaker,
    default_voice_dir,
    encode_prompt_codes,
    encode_speaker,
    resolve_voice,
    sample_speaker,
    sample_vector,
)

pytestmark = pytest.mark.usefixtures("one_thread")

# input hex -> pybase16384.encode_to_string(bytes.fromhex(hex))
B14_GOLDEN = [
    ("", ""),
    ("00", "一㴁"),
    ("ff", "跀㴁"),
    ("0102", "乀渀㴂"),
    ("abcdef", "磳泰㴃"),
    ("0001020304", "一帠娐㴅"),
    ("fffefdfcfbfa", "跿緟臯蠀㴆"),
    ("00112233445566", "丄怣嬑捦"),
    ("0011223344556677", "丄怣嬑捦毀㴁"),
    ("48656c6c6f2c20776f726c6421", "怙擆羼稠毛蔦羐漀㴆"),
    ("deadbeefcafebabe0123456789abcdef", "薫槮贫貺綀怴掞垫腻縀㴂"),
    ("ffffffffffffffffffffffffffff", "跿跿跿跿跿跿跿跿"),
]
# encode_speaker((arange(8) / 8 - 0.5).half()) by the reference recipe
ENC8 = "乀仰僠亶中下一一娀兀付一㴆"
# spk_stat string (ChatTTS 0.2 config form) for std = 0.5, mean = linspace(-1, 1, 8), and its voices
STATS8 = "与七渀蘀尀冀仠丸与下胞蟛箤礉囃椶篎布縀㴄"
SPK8 = {0: "乀仵烏犺勯癣侖葕笕冺苴一㴆", 1234: "乀份哬榸沮蒊滪罱屩冦嫴一㴆"}
# 768-d: std = linspace(0.05, 0.6, 768), mean = 0.2 * sin(arange(768)), both float16; seed 42
SPK768_SHA256 = "87ee4c4a88f1ec0b4e98447a121e3a4b96271b7a8107af7de90468116a081319"
# encode_prompt_codes([[1, 2, 3, 625], [0, 65535, 7, 8]])
PROMPT_GOLDEN = "亀乀丄丏乀丠丌乱亀丏跼唀倀一㴃"

_LZMA = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]


def _pack(raw: bytes) -> str:
    return b16384_encode(lzma.compress(raw, format=lzma.FORMAT_RAW, filters=_LZMA))


@pytest.fixture
def stats8() -> SpeakerStats:
    return SpeakerStats(std=torch.full((8,), 0.5), mean=torch.linspace(-1, 1, 8))


@pytest.fixture
def stats768() -> SpeakerStats:
    std = torch.linspace(0.05, 0.6, 768).half().float()
    mean = torch.sin(torch.arange(768, dtype=torch.float32)).mul(0.2).half().float()
    return SpeakerStats(std=std, mean=mean)


# ------------------------------------------------------------------------------------------- base16384


@pytest.mark.parametrize(("hexdata", "text"), B14_GOLDEN)
def test_b16384_golden(hexdata: str, text: str) -> None:
    assert b16384_encode(bytes.fromhex(hexdata)) == text
    assert b16384_decode(text) == bytes.fromhex(hexdata)


def test_b16384_round_trip_and_lengths() -> None:
    rng = random.Random(7)
    for n in range(0, 101):
        data = bytes(rng.getrandbits(8) for _ in range(n))
        text = b16384_encode(data)
        assert b16384_decode(text) == data
        r = n % 7
        assert len(text) == 4 * (n // 7) + ((-(-8 * r // 14) + 1) if r else 0)
        body = text[:-1] if r else text
        assert all(0x4E00 <= ord(c) <= 0x8DFF for c in body)
        if r:
            assert ord(text[-1]) == 0x3D00 + r


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("abc", "invalid base16384 character"),
        ("乀㴁渀", "length marker before the end"),  # marker in the middle
        ("丄怣嬑", "not a valid length"),  # a full group missing its 4th character
        ("丄怣嬑捦毀帀㴁", "not a valid length"),  # one character too many before a 1-byte marker
        ("㴃", "not a valid length"),  # marker alone
        ("丄 怣嬑捦", "invalid base16384 character"),  # whitespace is tolerated only by the speaker helpers
    ],
)
def test_b16384_decode_rejects_malformed(text: str, needle: str) -> None:
    with pytest.raises(SpeakerError, match=needle):
        b16384_decode(text)


def test_speaker_error_is_value_error() -> None:
    with pytest.raises(ValueError):
        b16384_decode(b"bytes")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- speaker strings


def test_encode_speaker_golden_and_inverse() -> None:
    vec = torch.arange(8, dtype=torch.float32) / 8 - 0.5
    assert encode_speaker(vec) == ENC8
    out = decode_speaker(ENC8)
    assert out.dtype == torch.float32 and out.shape == (8,)
    assert torch.equal(out, vec)  # all values exact in float16


def test_decode_of_encode_is_float16_rounding() -> None:
    vec = torch.randn(768, generator=torch.Generator().manual_seed(3)) * 0.4
    text = encode_speaker(vec)
    assert torch.equal(decode_speaker(text), vec.half().float())
    assert encode_speaker(decode_speaker(text)) == text
    assert encode_speaker(vec.half()) == text  # float16 input takes the same path


def test_decode_speaker_tolerates_whitespace_and_checks_dim() -> None:
    text = encode_speaker(torch.linspace(-1, 1, 768))
    wrapped = "  " + "\n".join(text[i : i + 60] for i in range(0, len(text), 60)) + " \r\n"
    assert torch.equal(decode_speaker(wrapped), decode_speaker(text))
    assert decode_speaker(text, dim=768).shape == (768,)
    with pytest.raises(SpeakerError, match="768-d voice, the model expects 512-d"):
        decode_speaker(text, dim=512)


def test_decode_speaker_errors() -> None:
    text = encode_speaker(torch.linspace(-1, 1, 768))
    packed = b16384_decode(text)
    with pytest.raises(SpeakerError, match="empty"):
        decode_speaker(" \n ")
    with pytest.raises(SpeakerError, match="not a valid speaker string"):
        decode_speaker(text[:-2])  # cut inside the base16384 text
    with pytest.raises(SpeakerError, match="truncated"):
        decode_speaker(b16384_encode(packed[: len(packed) // 2]))
    with pytest.raises(SpeakerError, match="stray bytes"):
        decode_speaker(b16384_encode(packed + b"\0\0\0"))
    with pytest.raises(SpeakerError, match="garbled"):
        decode_speaker(b16384_encode(b"\xff" * 40))
    with pytest.raises(SpeakerError, match="whole number of float16"):
        decode_speaker(_pack(b"\x00\x3c\x00"))
    with pytest.raises(SpeakerError, match="non-finite"):
        decode_speaker(_pack(torch.tensor([1.0, float("inf")]).half().numpy().tobytes()))
    with pytest.raises(SpeakerError, match="not a valid speaker string"):
        decode_speaker("hello")


def test_decode_speaker_rejects_flipped_bytes() -> None:
    text = encode_speaker(torch.linspace(-1, 1, 768))
    packed = bytearray(b16384_decode(text))
    failures = 0
    for pos in range(0, len(packed), 97):
        garbled = bytearray(packed)
        garbled[pos] ^= 0x5A
        try:
            out = decode_speaker(b16384_encode(bytes(garbled)), dim=768)
        except SpeakerError:
            failures += 1
        else:  # LZMA has no checksum: a decodable corruption must at least be a finite 768-d vector
            assert out.shape == (768,) and torch.isfinite(out).all()
    assert failures > 0


@pytest.mark.parametrize(
    "bad",
    [
        torch.zeros(2, 4),
        torch.arange(4),
        torch.zeros(0),
        torch.tensor([1.0, float("nan")]),
        torch.tensor([7e4]),  # beyond float16
    ],
)
def test_encode_speaker_rejects_bad_vectors(bad: torch.Tensor) -> None:
    with pytest.raises(SpeakerError):
        encode_speaker(bad)


# ------------------------------------------------------------------------------------------- stats


def test_stats_from_string_golden(stats8: SpeakerStats) -> None:
    stats = SpeakerStats.from_string(STATS8)
    assert stats.dim == 8 and stats.std.dtype == torch.float32 and stats.mean.dtype == torch.float32
    assert torch.equal(stats.std, stats8.std)
    assert torch.equal(stats.mean, stats8.mean.half().float())
    assert stats.to_string() == STATS8
    assert SpeakerStats.from_string(STATS8[:10] + "\n" + STATS8[10:]).to_string() == STATS8


def test_stats_from_tensor_and_load(tmp_path, stats768: SpeakerStats) -> None:
    both = torch.cat([stats768.std, stats768.mean])
    stats = SpeakerStats.from_tensor(both)
    assert stats.dim == 768
    assert torch.equal(stats.std, stats768.std) and torch.equal(stats.mean, stats768.mean)
    path = tmp_path / "spk_stat.pt"
    torch.save(both, path)
    loaded = SpeakerStats.load(path)
    assert torch.equal(loaded.std, stats768.std) and torch.equal(loaded.mean, stats768.mean)
    assert SpeakerStats.load(str(path)).dim == 768


def test_stats_errors(tmp_path) -> None:
    with pytest.raises(SpeakerError, match="even length"):
        SpeakerStats.from_tensor(torch.zeros(5))
    with pytest.raises(SpeakerError, match="even length"):
        SpeakerStats.from_tensor(torch.zeros(2, 4))
    with pytest.raises(SpeakerError, match="differ"):
        SpeakerStats(std=torch.ones(4), mean=torch.zeros(5))
    with pytest.raises(SpeakerError, match="non-finite"):
        SpeakerStats(std=torch.tensor([1.0, float("nan")]), mean=torch.zeros(2))
    with pytest.raises(SpeakerError, match="2\\*dim float16"):
        SpeakerStats.from_string(b16384_encode(b"\0" * 6))
    with pytest.raises(SpeakerError, match="not found"):
        SpeakerStats.load(tmp_path / "missing.pt")
    torch.save({"std": torch.ones(2)}, tmp_path / "dict.pt")
    with pytest.raises(SpeakerError, match="expected a tensor"):
        SpeakerStats.load(tmp_path / "dict.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(SpeakerError, match="cannot read"):
        SpeakerStats.load(tmp_path / "junk.pt")


# ------------------------------------------------------------------------------------------- sampling


def test_sample_speaker_golden(stats8: SpeakerStats, stats768: SpeakerStats) -> None:
    for seed, expected in SPK8.items():
        assert sample_speaker(SpeakerStats.from_string(STATS8), seed) == expected
        assert sample_speaker(stats8, seed) == expected
    text = sample_speaker(stats768, 42)
    assert hashlib.sha256(text.encode()).hexdigest() == SPK768_SHA256


def test_sample_matches_reference_form_with_global_seed(stats768: SpeakerStats) -> None:
    """Same as ``torch.manual_seed(seed)`` then ``randn(dim, dtype=float16).mul_(std).add_(mean)``."""
    assert torch.float16 == SAMPLE_DTYPE  # the reference samples in float16
    std, mean = stats768.std.half(), stats768.mean.half()
    for seed in (0, 1, 2024, 2**63 + 5):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            ref = torch.randn(768, dtype=torch.float16).mul_(std).add_(mean)
        assert torch.equal(sample_vector(stats768, seed), ref)
        assert sample_speaker(stats768, seed) == encode_speaker(ref)


def test_sample_deterministic_and_seeds_differ(stats768: SpeakerStats) -> None:
    a = sample_speaker(stats768, 1234)
    assert sample_speaker(stats768, 1234) == a
    assert sample_speaker(stats768, 1235) != a
    vec = decode_speaker(a, dim=768)
    z = (vec - stats768.mean) / stats768.std
    assert 0.8 < z.std().item() < 1.2 and abs(z.mean().item()) < 0.15  # really randn * std + mean
    r1, r2 = sample_speaker(stats768, None), sample_speaker(stats768, None)
    assert r1 != r2 and decode_speaker(r1, dim=768).shape == (768,)


def test_sampling_leaves_global_rng_alone(stats768: SpeakerStats) -> None:
    state = torch.get_rng_state()
    sample_speaker(stats768, 5)
    sample_speaker(stats768, None)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("seed", [-1, 2**64, 1.5, True, "3"])
def test_sample_rejects_bad_seeds(stats8: SpeakerStats, seed: object) -> None:
    with pytest.raises(SpeakerError, match="seed must be an int"):
        sample_speaker(stats8, seed)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- prompt codes


def test_prompt_codes_golden_and_round_trip() -> None:
    codes = torch.tensor([[1, 2, 3, 625], [0, 65535, 7, 8]])
    assert encode_prompt_codes(codes) == PROMPT_GOLDEN
    assert torch.equal(decode_prompt_codes(PROMPT_GOLDEN), codes)
    assert decode_prompt_codes(PROMPT_GOLDEN).dtype == torch.int64
    rand = torch.randint(0, 626, (4, 94), generator=torch.Generator().manual_seed(1), dtype=torch.int32)
    text = encode_prompt_codes(rand)
    assert torch.equal(decode_prompt_codes(text + "\n"), rand.long())


def test_prompt_codes_errors() -> None:
    with pytest.raises(SpeakerError, match="2-D"):
        encode_prompt_codes(torch.zeros(4, dtype=torch.long))
    with pytest.raises(SpeakerError, match="integers"):
        encode_prompt_codes(torch.zeros(4, 2))
    with pytest.raises(SpeakerError, match=r"\[0, 65535\]"):
        encode_prompt_codes(torch.tensor([[0, -1]]))
    with pytest.raises(SpeakerError, match=r"\[0, 65535\]"):
        encode_prompt_codes(torch.tensor([[0, 65536]]))
    with pytest.raises(SpeakerError, match="shape header"):
        decode_prompt_codes(b16384_encode(b"\x04\x00"))
    data = b16384_decode(PROMPT_GOLDEN)
    with pytest.raises(SpeakerError, match="header says 3x4"):
        decode_prompt_codes(b16384_encode(b"\x03\x00\x04\x00" + data[4:]))
    with pytest.raises(SpeakerError, match="truncated"):
        decode_prompt_codes(b16384_encode(data[:-4]))


# ------------------------------------------------------------------------------------------- voice store


def test_voice_store_save_load_names_delete(tmp_path) -> None:
    store = VoiceStore(tmp_path / "voices")
    assert store.names() == []
    a = encode_speaker(torch.linspace(-1, 1, 768))
    b = encode_speaker(torch.linspace(1, -1, 768))
    path = store.save("alice", a + "\n")
    assert path == tmp_path / "voices" / "alice.txt"
    assert path.read_text(encoding="utf-8").strip() == a
    store.save("Bob_2.v-1", b)
    assert store.names() == ["Bob_2.v-1", "alice"]
    assert store.load("alice") == a and "alice" in store and "carol" not in store
    store.save("alice", b)  # replaces
    assert store.load("alice") == b
    store.delete("alice")
    assert store.names() == ["Bob_2.v-1"]
    with pytest.raises(SpeakerError, match=r"no voice named 'alice'.*saved voices: Bob_2\.v-1"):
        store.load("alice")
    with pytest.raises(SpeakerError, match="no voice named"):
        store.delete("alice")
    with pytest.raises(SpeakerError, match="not a valid speaker string"):
        store.save("bad", "definitely not a voice")
    assert "bad" not in store


BAD_NAMES = ["../x", "a/b", "", ".hidden", "..", "a..b", "x" * 65, "-flag", "name with space", "/etc/passwd"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_voice_store_rejects_names(tmp_path, name: str) -> None:
    store = VoiceStore(tmp_path)
    with pytest.raises(SpeakerError, match="invalid voice name"):
        store.save(name, ENC8)
    with pytest.raises(SpeakerError, match="invalid voice name"):
        store.load(name)
    assert list(tmp_path.iterdir()) == []


def test_default_voice_dir(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("VOICELOOP_HOME", str(tmp_path / "vh"))
    assert default_voice_dir() == tmp_path / "vh" / "voices"
    assert VoiceStore().root == tmp_path / "vh" / "voices"
    monkeypatch.delenv("VOICELOOP_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_voice_dir() == tmp_path / "home" / ".local" / "share" / "voiceloop" / "voices"


# ------------------------------------------------------------------------------------------- resolve_voice


def test_resolve_voice_all_forms(tmp_path, stats768: SpeakerStats) -> None:
    store = VoiceStore(tmp_path / "voices")
    voice = encode_speaker(torch.linspace(-1, 1, 768))
    store.save("alice", voice)
    file = tmp_path / "shared voice.txt"
    file.write_text("\n".join(voice[i : i + 50] for i in range(0, len(voice), 50)) + "\n", encoding="utf-8")

    assert resolve_voice(None, stats768, store) is None
    assert resolve_voice("seed:1234", stats768, store) == sample_speaker(stats768, 1234)
    assert resolve_voice(" SEED: 7 ", stats768, store) == sample_speaker(stats768, 7)
    assert resolve_voice("alice", stats768, store) == voice
    assert resolve_voice(str(file), stats768, store) == voice
    assert resolve_voice(f"  {voice[:100]}\n{voice[100:]}  ", stats768, store) == voice
    assert resolve_voice(voice, None, store) == voice  # no stats: no dim check, still decoded


def test_resolve_voice_errors(tmp_path, stats768: SpeakerStats) -> None:
    store = VoiceStore(tmp_path / "voices")
    store.save("alice", ENC8)
    with pytest.raises(SpeakerError, match="no spk_stat"):
        resolve_voice("seed:3", None, store)
    with pytest.raises(SpeakerError, match="followed by an integer"):
        resolve_voice("seed:abc", stats768, store)
    with pytest.raises(SpeakerError, match=r"saved voice 'alice'.*8-d voice, the model expects 768-d"):
        resolve_voice("alice", stats768, store)
    with pytest.raises(SpeakerError, match=r"no voice named 'bob'.*saved voices: alice.*accepted voice"):
        resolve_voice("bob", stats768, store)
    with pytest.raises(SpeakerError, match=r"no such file.*accepted voice forms"):
        resolve_voice(str(tmp_path / "missing.txt"), stats768, store)
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(SpeakerError, match="cannot be read as text"):
        resolve_voice(str(tmp_path / "binary.txt"), stats768, store)
    (tmp_path / "other.txt").write_text("just some notes\n", encoding="utf-8")
    with pytest.raises(SpeakerError, match=r"voice file .*other\.txt: not a valid speaker string"):
        resolve_voice(str(tmp_path / "other.txt"), stats768, store)
    with pytest.raises(SpeakerError, match="pasted speaker string: not a valid"):
        resolve_voice("乀仰僠亶中", stats768, store)
    with pytest.raises(SpeakerError, match=r"cannot understand voice.*seed:<int>"):
        resolve_voice("hello world!", stats768, store)
    with pytest.raises(SpeakerError, match="empty voice spec"):
        resolve_voice("  ", stats768, store)


def test_resolve_voice_default_store(monkeypatch, tmp_path, stats768: SpeakerStats) -> None:
    monkeypatch.setenv("VOICELOOP_HOME", str(tmp_path))
    voice = sample_speaker(stats768, 11)
    VoiceStore().save("narrator", voice)
    assert resolve_voice("narrator", stats768) == voice
