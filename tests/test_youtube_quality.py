"""Transcript cleaning, frame judgements and the video-level filters, on real tracks where
there are some (tests/data/youtube-json3: a real ASR track and a real manual track, MIT).

The end-to-end side (a music-only video ends in the status table, a static stretch keeps one
frame at its true time) is in test_youtube.py, through yt-dlp against the sample site.
"""

import io
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from emu_data import cli
from emu_data.core import options
from emu_data.sources.youtube import frames, quality, subtitles, transcript
from emu_data.sources.youtube.storyboard import Level, slice_mosaics
from emu_data.sources.youtube.subtitles import Cue

TRACKS = Path(__file__).parent / "data" / "youtube-json3"
VTT = Path(__file__).parent / "data" / "subtitles"
Q = quality.QualityOptions()


def _json3_words(path: Path) -> list[str]:
    """Every word of a json3 track as the file spells it: each event's segs concatenated."""
    events = json.loads(path.read_text())["events"]
    return [w for e in events if not e.get("aAppend")
            for w in "".join(seg["utf8"] for seg in e.get("segs") or []).split()]


def _cleaned(path: Path) -> transcript.Cleaned:
    return transcript.clean(subtitles.parse(path.read_bytes(), path.suffix[1:]))


@pytest.mark.parametrize("name", ["asr_conversation.json3", "manual_reindented.json3"])
def test_real_tracks_keep_every_spoken_word_once_in_order(name):
    cleaned = _cleaned(TRACKS / name)
    assert [w for c in cleaned.cues for w in c.text.split()] == _json3_words(TRACKS / name)
    assert cleaned.removed == []   # neither real track annotates anything
    starts = [c.start for c in cleaned.cues]
    assert starts == sorted(starts)


def test_real_asr_track_cleaned_text_word_for_word():
    cues = _cleaned(TRACKS / "asr_conversation.json3").cues
    assert [(c.start, c.text) for c in cues[:3]] == [
        (0.0, "in the comments all right oh good I"),
        (3.0, "think we found some comments all right"),
        (5.13, "so we were going to get started and all"),
    ]
    assert cues[0].words[2] == subtitles.Word(0.21, "comments", 237)   # acAsrConf kept per word


def test_real_youtube_vtt_asr_excerpt_is_unchanged_by_cleaning():
    cues = subtitles.parse((VTT / "youtube_dl.vtt").read_bytes(), "vtt")
    assert transcript.clean(cues).cues == cues


def test_speech_of_the_real_asr_track():
    cleaned = _cleaned(TRACKS / "asr_conversation.json3")
    speech = transcript.speech(cleaned.cues, duration=2974.8)
    assert speech.words == 7578
    assert 150 < speech.words_per_minute < 156
    assert speech.asr_confidence == pytest.approx(0.887, abs=0.001)
    assert (speech.language, speech.language_probability > 0.99) == ("en", True)
    quality.check_speech(speech, "en-orig", 595, Q)   # real English speech passes every filter


# ---------------------------------------------------------------- annotations, as real tracks write them

MUSIC_ASR = [Cue(0.0, 4.0, "[Music]"), Cue(4.0, 8.0, "a [Music]"), Cue(8.0, 12.0, "[Music] [Music]"),
             Cue(12.0, 16.0, "he"), Cue(16.0, 20.0, "[Applause]"), Cue(20.0, 24.0, "he [Music]")]


def test_a_music_only_asr_track_cleans_down_to_its_stray_words():
    cleaned = transcript.clean(MUSIC_ASR)
    assert [(c.start, c.text) for c in cleaned.cues] == [(4.0, "a"), (12.0, "he"), (20.0, "he")]
    assert cleaned.removed == [(0.0, "[Music]"), (4.0, "[Music]"), (8.0, "[Music]"), (8.0, "[Music]"),
                               (16.0, "[Applause]"), (20.0, "[Music]")]
    speech = transcript.speech(cleaned.cues, duration=1920)   # the issue's 32-minute video
    with pytest.raises(quality.Filtered) as caught:
        quality.check_speech(speech, "en", 193, Q)
    assert caught.value.reason == "low_speech"
    assert str(caught.value).endswith("(193 frames)")


def test_manual_caption_conventions_and_mojibake():
    cues = [Cue(1.0, 2.0, ">> donâ€™t stop [MUSIC PLAYING] now"), Cue(2.0, 3.0, "♪ la la la ♪"),
            Cue(3.0, 4.0, "(inaudible) and (laughs) then"), Cue(4.0, 5.0, "..."), Cue(5.0, 6.0, "♪ ♪"),
            Cue(6.0, 7.0, "(this aside is said aloud)")]
    cleaned = transcript.clean(cues)
    assert [c.text for c in cleaned.cues] == ["don’t stop now", "la la la", "and then", "(this aside is said aloud)"]
    assert [text for _, text in cleaned.removed] == [">>", "[MUSIC PLAYING]", "♪", "♪", "(inaudible)", "(laughs)",
                                                     "...", "♪", "♪"]
    kept = transcript.clean(cues, keep_annotations=True)
    assert [c.text for c in kept.cues][:2] == [">> don’t stop [MUSIC PLAYING] now", "♪ la la la ♪"]
    assert [t for t, _ in kept.removed] == [4.0, 5.0]   # punctuation-only still goes: it says nothing


def test_annotation_words_leave_the_word_timings_too():
    cue = Cue(0.0, 3.0, "hello [Music] world", (subtitles.Word(0.0, "hello", 200), subtitles.Word(1.0, "[Music]", 0),
                                               subtitles.Word(2.0, "world", 180)))
    assert [w.text for w in transcript.clean([cue]).cues[0].words] == ["hello", "world"]


ANNOTATIONS = st.sampled_from(["[Music]", "[Applause]", "[Laughter]", "♪", "♫♫", "(inaudible)", ">>",
                               "[MUSIC PLAYING]", "(laughs)"])
WORDS = st.from_regex(r"[A-Za-z0-9à-öø-ÿ][A-Za-z0-9à-öø-ÿ'.,?!]{0,7}", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.one_of(WORDS.map(lambda w: ("w", w)), ANNOTATIONS.map(lambda a: ("a", a))),
                         max_size=8), max_size=12))
def test_cleaning_keeps_every_word_once_and_takes_every_annotation(cue_parts):
    """The family: any mix of words and annotations, any cue boundaries."""
    cues = [Cue(float(i), float(i) + 1, " ".join(text for _, text in parts)) for i, parts in enumerate(cue_parts)]
    cleaned = transcript.clean(cues)
    assert [w for c in cleaned.cues for w in c.text.split()] == [t for p in cue_parts for k, t in p if k == "w"]
    assert [a for _, a in cleaned.removed] == [t for p in cue_parts for k, t in p if k == "a"]
    assert all(any(ch.isalnum() for ch in c.text) for c in cleaned.cues)


# ---------------------------------------------------------------- language

GERMAN = ("Der rote Kreis bewegt sich langsam von links nach rechts über das Bild, während das blaue "
          "Quadrat in der Mitte bleibt. Danach wandern beide Formen zusammen nach oben und erreichen "
          "am Ende fast den Rand des Bildes.")


def test_a_german_transcript_on_an_english_track_is_a_language_mismatch():
    speech = transcript.speech([Cue(0.0, 60.0, GERMAN)], duration=60)
    assert speech.language == "de"
    with pytest.raises(quality.Filtered) as caught:
        quality.check_speech(speech, "en-orig", 13, Q)
    assert caught.value.reason == "language_mismatch"
    quality.check_speech(speech, "de", 13, Q)                                               # asked for German
    quality.check_speech(speech, "en", 13, quality.QualityOptions(language_confidence=0))   # off
    few = transcript.speech([Cue(0.0, 10.0, "Der rote Kreis bewegt sich")], duration=10)
    quality.check_speech(few, "en", 3, Q)   # too few words to judge: never a mismatch


# ---------------------------------------------------------------- video filters and their switches

def test_each_video_filter_has_a_switch_that_turns_it_off():
    off = quality.QualityOptions(min_duration=0, min_words_per_minute=0, language_confidence=0, min_distinct_frames=0)
    empty = transcript.speech([], duration=60)
    for check, args in ((quality.check_duration, (3.0, 2)), (quality.check_speech, (empty, "en", 13)),
                        (quality.check_frames, (1, 13))):
        with pytest.raises(quality.Filtered):
            check(*args, Q)
        check(*args, off)
    assert options.threshold("off") == 0 and options.threshold("12.5") == 12.5
    for bad in ("-1", "nan", "inf", "lots"):
        with pytest.raises(Exception):
            options.threshold(bad)


def test_filter_flags_parse_and_show_their_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["youtube", "--help"])
    shown = capsys.readouterr().out
    for flag in ("--min-duration", "--min-words-per-minute", "--language-confidence", "--min-distinct-frames",
                 "--keep-annotations", "--keep-static", "--static-difference", "--blank-std"):
        assert flag in shown


# ---------------------------------------------------------------- frames

def _mosaic(colours_or_images) -> bytes:
    tiles = [c if isinstance(c, Image.Image) else Image.new("RGB", (160, 90), c) for c in colours_or_images]
    mosaic = Image.new("RGB", (800, 90 * ((len(tiles) + 4) // 5)))
    for i, tile in enumerate(tiles):
        mosaic.paste(tile, ((i % 5) * 160, (i // 5) * 90))
    buffer = io.BytesIO()
    mosaic.save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


def _picture(seed: int) -> Image.Image:
    """A tile with content: a square whose place depends on the seed."""
    image = Image.new("RGB", (160, 90), "#6b8e23")
    image.paste(Image.new("RGB", (40, 40), "#d04040"), (10 + 25 * (seed % 5), 20 + 10 * (seed // 5 % 3)))
    return image


def _judged(tiles_in, **kw):
    mosaics = [_mosaic(tiles_in)]
    level = Level("sb0", 160, 90, len(tiles_in), 5, 5, 5.0, "duration", ("u",))
    tiles = slice_mosaics(mosaics, level, quality=90)
    return frames.judge(tiles, frames.looks(mosaics, level), difference=Q.static_difference,
                        blank_std=Q.blank_std, **kw)


def test_a_static_stretch_keeps_its_first_frame_at_its_true_time_and_blank_tiles_go():
    still = _picture(3)
    judged = _judged([_picture(0), _picture(1), still, still, still, "black", _picture(4), "white", _picture(2)])
    assert [t.time for t in judged.kept] == [0.0, 5.0, 10.0, 30.0, 40.0]
    assert judged.static == [15.0, 20.0] and judged.blank == [25.0, 35.0]
    assert judged.distinct == 5
    every = _judged([_picture(0), still, still, "black"], keep=True)
    assert [t.time for t in every.kept] == [0.0, 5.0, 10.0, 15.0] and every.static == every.blank == []
    assert every.distinct == 2


def test_a_still_video_is_a_static_video():
    judged = _judged([_picture(1)] * 12)
    assert (len(judged.kept), judged.distinct) == (1, 1)
    with pytest.raises(quality.Filtered) as caught:
        quality.check_frames(judged.distinct, 12, Q)
    assert caught.value.reason == "static_video"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=60), max_size=10), st.booleans())
def test_cleaning_any_text_never_fails_and_never_leaves_an_empty_position(texts, keep):
    """Hostile cue text (controls, surrogates' neighbours, lone brackets, RTL marks, huge
    runs of notes): cleaning returns cues that each hold a letter or digit, in order."""
    cues = [Cue(float(i), float(i) + 1, text) for i, text in enumerate(texts)]
    cleaned = transcript.clean(cues, keep_annotations=keep)
    assert all(any(ch.isalnum() for ch in c.text) and c.text == " ".join(c.text.split()) for c in cleaned.cues)
    assert [c.start for c in cleaned.cues] == sorted(c.start for c in cleaned.cues)
    transcript.speech(cleaned.cues, duration=10)


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=5),
                 st.lists(st.integers(), max_size=2)))
def test_any_acasrconf_is_a_confidence_or_unknown(value):
    track = {"events": [{"tStartMs": 0, "dDurationMs": 1000,
                         "segs": [{"utf8": "hello", "acAsrConf": value}, {"utf8": " world", "tOffsetMs": 500}]}]}
    words = subtitles.parse(json.dumps(track).encode(), "json3")[0].words
    assert all(isinstance(w.confidence, int) and 0 <= w.confidence <= 255 for w in words)
