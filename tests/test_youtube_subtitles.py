import json
import pickle
import random
from pathlib import Path

import pytest
import webvtt

from emu_data.sources.youtube import subtitles as subs
from emu_data.sources.youtube.subtitles import Cue, SubtitleError, Track, Word

DATA = Path(__file__).parent / "data" / "subtitles"


def _read(name: str) -> bytes:
    return (DATA / name).read_bytes()


def _texts(cues):
    return [c.text for c in cues]


# ---------------------------------------------------------------- WebVTT: YouTube ASR


def test_real_asr_excerpt_says_each_phrase_once_with_ms_starts_and_word_times():
    cues = subs.parse(_read("youtube_dl.vtt"), "vtt")
    assert _texts(cues) == ["yeah", "what", "this will happen is I'm telling"]
    assert [c.start for c in cues] == [286.07, 286.47, 304.08]
    assert cues[2].end == 305.069
    assert cues[2].words == (
        Word(304.08, "this"), Word(304.199, "will"), Word(304.379, "happen"),
        Word(304.62, "is"), Word(304.86, "I'm"), Word(305.069, "telling"),
    )


# YouTube's rolling ASR pattern: a typing cue (new line with inline word times under the
# previous phrase), a 10 ms hold cue, then the phrase again on top of the next typing cue.
ASR_VTT = b"""WEBVTT
Kind: captions
Language: en

00:00:00.000 --> 00:00:02.629 align:start position:0%
 
welcome<00:00:00.480><c> back</c><00:00:00.960><c> to</c><00:00:01.320><c> the</c><00:00:01.680><c> kitchen</c>

00:00:02.629 --> 00:00:02.639 align:start position:0%
welcome back to the kitchen
 

00:00:02.639 --> 00:00:05.120 align:start position:0%
welcome back to the kitchen
today<00:00:03.000><c> salt</c><00:00:03.500><c> &amp;</c><00:00:03.800><c> pepper</c>

00:00:05.120 --> 00:00:05.130 align:start position:0%
today salt &amp; pepper
 

00:00:05.130 --> 00:00:07.890 align:start position:0%
today salt &amp; pepper
<c.colorE5E5E5>crusted</c><00:00:05.700><c> steak</c><00:00:06.210><c> is</c><00:00:06.900><c> on</c>

00:00:07.890 --> 00:00:07.900 align:start position:0%
crusted steak is on
 

00:00:07.900 --> 00:00:09.500 align:start position:0%
crusted steak is on
the<00:00:08.250><c> menu</c>

00:00:09.500 --> 00:00:12.000 align:start position:0%
the menu
 
"""
PHRASES = ["welcome back to the kitchen", "today salt & pepper", "crusted steak is on", "the menu"]


def test_rolling_asr_vtt_is_deduplicated_with_ms_times():
    cues = subs.parse_vtt(ASR_VTT)
    assert _texts(cues) == PHRASES
    assert [(c.start, c.end) for c in cues] == [(0.0, 2.629), (2.639, 5.12), (5.13, 7.89), (7.9, 9.5)]
    assert cues[1].words == (Word(2.639, "today"), Word(3.0, "salt"), Word(3.5, "&"), Word(3.8, "pepper"))
    assert cues[2].words[0] == Word(5.13, "crusted")  # text before the first tag: the cue start
    assert [w.text for c in cues for w in c.words] == " ".join(PHRASES).split()


def test_naive_concatenation_repeats_phrases_and_ours_does_not():
    naive = " ".join(c.text for c in webvtt.from_string(ASR_VTT.decode()).captions)
    ours = " ".join(_texts(subs.parse_vtt(ASR_VTT)))
    assert naive.count("crusted steak is on") == 3
    assert all(ours.count(phrase) == 1 for phrase in PHRASES)
    assert ours == " ".join(PHRASES)


# ---------------------------------------------------------------- WebVTT: manual and fixtures


def test_sample_vtt_keeps_every_cue_with_ms_times():
    cues = subs.parse(_read("sample.vtt"), ".VTT")
    assert len(cues) == 16
    assert cues[0] == Cue(0.5, 7.0, "Caption text #1")
    assert (cues[2].start, cues[2].end) == (11.89, 16.32)
    assert cues[-1] == Cue(61.35, 64.3, "Caption text #16")


def test_bom_and_metadata_headers_parse():
    bom = subs.parse_vtt(_read("captions_with_bom.vtt"))
    assert _texts(bom) == [f"Caption text #{i}" for i in range(1, 5)]
    assert bom[0].start == 0.5
    assert _texts(subs.parse_vtt(_read("metadata_headers.vtt"))) == ["Caption text #1", "Caption text #2"]


def test_cue_tags_are_stripped_and_inline_times_become_words():
    cues = subs.parse_vtt(_read("cue_tags.vtt"))
    assert _texts(cues) == ["When the moon hits your eye", "Like a big-a pizza pie", "That's amore"]
    assert [c.start for c in cues] == [16.5, 18.5, 20.5]
    assert cues[0].words == (Word(16.5, "When the moon"), Word(17.5, "hits your eye"))
    assert cues[2].words[-1] == Word(21.0, "amore")


def test_manual_vtt_joins_lines_and_keeps_repeats():
    data = (b"WEBVTT\n\n00:01.000 --> 00:02.500\nfirst line\n<i>second</i> line &#39;ok&#39;\n\n"
            b"00:02.500 --> 00:03.000\nNo!\n\n00:03.000 --> 00:03.005\nNo!\n")
    cues = subs.parse_vtt(data)
    assert cues == [Cue(1.0, 2.5, "first line second line 'ok'"), Cue(2.5, 3.0, "No!"), Cue(3.0, 3.005, "No!")]


@pytest.mark.parametrize("name", ["invalid.vtt", "invalid_timeframe.vtt", "missing_timeframe.vtt"])
def test_malformed_vtt_raises_subtitle_error(name):
    with pytest.raises(SubtitleError) as info:
        subs.parse(_read(name), "vtt")
    assert type(info.value) is SubtitleError and info.value.reason == "malformed_subtitles"


# ---------------------------------------------------------------- json3

JSON3_ASR = {
    "wireMagic": "pb3",
    "pens": [{}],
    "events": [
        {"tStartMs": 0, "dDurationMs": 5130, "id": 1, "wpWinPosId": 1, "wsWinStyleId": 1},
        {"tStartMs": 2120, "dDurationMs": 3010, "wWinId": 1, "segs": [
            {"utf8": "me", "acAsrConf": 0}, {"utf8": "\n"}, {"utf8": " again", "tOffsetMs": 655}]},
        {"tStartMs": 160, "dDurationMs": 3840, "wWinId": 1, "segs": [
            {"utf8": "hello", "acAsrConf": 0}, {"utf8": " world", "tOffsetMs": 480, "acAsrConf": 0}]},
        {"tStartMs": 2110, "dDurationMs": 1890, "wWinId": 1, "aAppend": 1, "segs": [{"utf8": "\n"}]},
        {"tStartMs": 5120, "dDurationMs": 10, "wWinId": 1, "segs": [{"utf8": "\n"}]},
    ],
}


def test_json3_words_at_start_plus_offset_and_appends_skipped():
    cues = subs.parse(json.dumps(JSON3_ASR).encode(), "json3")
    assert cues == [
        Cue(0.16, 4.0, "hello world", (Word(0.16, "hello"), Word(0.64, "world"))),
        Cue(2.12, 5.13, "me again", (Word(2.12, "me"), Word(2.775, "again"))),
    ]


def test_manual_json3_has_no_words_and_line_breaks_become_spaces():
    doc = {"events": [{"tStartMs": 1000, "dDurationMs": 1500, "segs": [{"utf8": "line one\nline two"}]}]}
    assert subs.parse_json3(json.dumps(doc).encode()) == [Cue(1.0, 2.5, "line one line two")]


# ---------------------------------------------------------------- srv1 and TTML


def test_srv1_transcript_parses_and_drops_empty_text():
    cues = subs.parse(_read("transcript.xml"), "srv1")
    assert cues == [
        Cue(0.0, 1.54, "Hey, this is just a test"),
        Cue(1.54, 5.7, "this is not the original transcript"),
        Cue(5.7, 8.939, "just something shorter, I made up for testing"),
    ]


def test_srv1_entities_are_unescaped_including_double_escapes():
    data = (b'<?xml version="1.0" encoding="utf-8" ?><transcript>'
            b'<text start="2.5" dur="1">I&amp;#39;m &amp;amp; you &#39;re</text>'
            b'<text start="0.1234" dur="1">caf\xc3\xa9</text></transcript>')
    assert subs.parse_srv1(data) == [Cue(0.123, 1.123, "caf\u00e9"), Cue(2.5, 3.5, "I'm & you 're")]


def test_ttml_clock_and_offset_times_and_line_breaks():
    data = (b'<?xml version="1.0" encoding="utf-8" ?><tt xmlns="http://www.w3.org/ns/ttml" '
            b'xml:lang="en"><body><div><p begin="00:00:01.250" end="00:00:03.000">one<br/>two</p>'
            b'<p begin="3.5s" dur="1500ms"><span>three</span> &amp; four</p></div></body></tt>')
    assert subs.parse(data, "ttml") == [Cue(1.25, 3.0, "one two"), Cue(3.5, 5.0, "three & four")]


# ---------------------------------------------------------------- garbage

HTML = b"<!DOCTYPE html><html><head><title>YouTube</title></head><body>Sign in</body></html>"
BOMB = (b'<?xml version="1.0"?><!DOCTYPE t [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
        b'<transcript><text start="0" dur="1">&b;</text></transcript>')
NOISE = random.Random(0).randbytes(512)


@pytest.mark.parametrize("ext,data", [
    ("vtt", b""), ("json3", b""), ("srv1", b""), ("ttml", b""),
    ("vtt", HTML), ("json3", HTML), ("srv1", HTML), ("ttml", HTML),
    ("vtt", NOISE), ("json3", NOISE), ("srv1", NOISE),
    ("vtt", b"WEBVTT\n\n00:00.000 --> 00:01.000\n\xff\xfe bad utf-8\n"),
    ("json3", b"[1, 2, 3]"), ("json3", b'{"events": {}}'),
    ("json3", b'{"events": [{"tStartMs": "soon", "segs": [{"utf8": "hi"}]}]}'),
    ("json3", b'{"events": [{"tStartMs": 1, "segs": [{"utf8": 5}]}]}'),
    ("srv1", BOMB), ("ttml", BOMB.replace(b"transcript", b"tt")),
    ("srv1", b'<transcript><text start="nan" dur="1">x</text></transcript>'),
    ("srv1", b'<tt><p begin="0s" end="1s">wrong format</p></tt>'),
    ("ttml", b'<tt><body><p begin="00:00:01:12" end="2s">frames</p></body></tt>'),
    ("srt", b"1\n00:00:00,000 --> 00:00:01,000\nhi\n"),
    ("json3", b"[" * 100_000 + b"]" * 100_000),
    ("ttml", b'<tt><p begin="0s">' + b"<b>" * 50_000 + b"x" + b"</b>" * 50_000 + b"</p></tt>"),
])
def test_garbage_raises_malformed_subtitles(ext, data):
    with pytest.raises(SubtitleError) as info:
        subs.parse(data, ext)
    assert info.value.reason == "malformed_subtitles"
    assert isinstance(info.value, ValueError) and str(info.value)


def test_subtitle_error_survives_pickling():
    err = pickle.loads(pickle.dumps(SubtitleError("vtt: bad")))
    assert (type(err), err.reason, str(err)) == (SubtitleError, "malformed_subtitles", "vtt: bad")


def test_empty_but_valid_documents_give_no_cues():
    assert subs.parse(b"WEBVTT\n", "vtt") == []
    assert subs.parse(b'{"events": []}', "json3") == []
    assert subs.parse(b"<transcript></transcript>", "srv1") == []


# ---------------------------------------------------------------- choose_track

BASE = "https://www.youtube.com/api/timedtext?v=abc"


def _formats(lang, *exts, tlang=None):
    suffix = f"&tlang={tlang}" if tlang else ""
    return [{"ext": ext, "url": f"{BASE}&lang={lang}&fmt={ext}{suffix}", "name": lang} for ext in exts]


def test_manual_track_comes_before_asr_and_json3_before_vtt():
    info = {"subtitles": {"en": _formats("en", "vtt", "srv3", "json3")},
            "automatic_captions": {"en-orig": _formats("en", "json3")}}
    assert subs.choose_track(info, ["en"]) == Track("en", "manual", "json3", f"{BASE}&lang=en&fmt=json3", "en")


def test_asr_prefers_original_language_key():
    info = {"subtitles": {}, "automatic_captions": {
        "en": _formats("en-plain", "vtt", "json3"), "en-orig": _formats("en-orig", "vtt")}}
    track = subs.choose_track(info, ["en"])
    # the raw key: yt-dlp's subtitleslangs must name "en-orig" to download that track
    assert (track.lang, track.kind, track.ext) == ("en-orig", "auto", "vtt")
    assert "lang=en-orig" in track.url


def test_machine_translations_are_never_chosen():
    info = {"automatic_captions": {"fr": _formats("en", "json3", tlang="fr"),
                                   "en-orig": _formats("en", "json3")}}
    assert subs.choose_track(info, ["fr"]) is None
    assert subs.choose_track(info, ["fr", "en"]).lang == "en-orig"


def test_regional_variant_when_exact_code_is_missing_and_exact_wins_otherwise():
    info = {"subtitles": {"en-US": _formats("en-US", "vtt"), "en-GB": _formats("en-GB", "vtt")}}
    assert subs.choose_track(info, ["en"]).lang == "en-GB"
    info["subtitles"]["en"] = _formats("en", "srv1")
    assert (subs.choose_track(info, ["EN"]).lang, subs.choose_track(info, ["en"]).ext) == ("en", "srv1")


def test_allow_auto_false_and_language_order():
    info = {"subtitles": {"de": _formats("de", "vtt")}, "automatic_captions": {"en-orig": _formats("en", "json3")}}
    assert subs.choose_track(info, ["en"], allow_auto=False) is None
    assert subs.choose_track(info, ["en", "de"], allow_auto=False).lang == "de"
    assert subs.choose_track(info, ["en", "de"]).kind == "auto"


def test_none_when_nothing_fits():
    assert subs.choose_track({}, ["en"]) is None
    assert subs.choose_track({"subtitles": None, "automatic_captions": None}, ["en"]) is None
    only_unsupported = {"subtitles": {"en": _formats("en", "srv3", "srt")}, "automatic_captions": {}}
    assert subs.choose_track(only_unsupported, ["en"]) is None
    assert subs.choose_track({"subtitles": {"english": _formats("x", "vtt")}}, ["en"]) is None


def test_rolling_asr_vtt_keeps_a_phrase_said_twice():
    """Only a cue's first line repeats the phrase before; the same phrase typed again (a
    music video's "[Music]", "[Music]"; a "yeah", "yeah") is said twice and stays twice."""
    from emu_data.synthetic.site.youtube import asr_vtt
    from emu_data.synthetic.world import Cue as Said

    said = ["[Music]", "[Music]", "yeah", "yeah", "he said yeah", "he said yeah"]
    cues = subs.parse_vtt(asr_vtt([Said(4.0 * i, 4.0 * i + 3.5, text) for i, text in enumerate(said)]).encode())
    assert _texts(cues) == said
