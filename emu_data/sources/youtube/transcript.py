"""Transcript cleaning: what a subtitle track says, without what it only annotates.

Parsed cues (any format) come in; cues holding spoken words only come out, each removed
piece kept with its time so the sample's meta can say what went and where.

What counts as an annotation follows the tracks' own conventions, not a guess:
- YouTube's ASR writes non-speech as a bracketed label: "[Music]", "[Applause]", "[Laughter]";
  it never brackets a spoken word.
- Manual captions follow the captioning conventions (DCMP, the FCC's): sound in brackets or
  parentheses ("[MUSIC PLAYING]", "(inaudible)", "(laughs)"), music as "♪"/"♫" around lyrics
  (the notes go, the sung words stay), ">>" for a change of speaker.
A parenthesis of more than four words is kept: that is speech in parentheses, not a label.

Mojibake (UTF-8 read as cp1252: "donâ€™t") is repaired with ftfy, as LAION's and OBELICS's
pipelines do. A cue left with no letter or digit (nothing but "...", "♪ ♪", "-") is removed
whole: no text position may hold only punctuation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Sequence

import ftfy

from emu_data.sources.youtube.subtitles import Cue

# [label] of up to 60 characters, (label) of one to four words, music notes, speaker marks.
ANNOTATION = re.compile(r"\[[^\[\]]{0,60}\]|\(\s*[^\s()]+(?:\s+[^\s()]+){0,3}\s*\)|[♪♫]+|>>+")
# Whole-track language ID reads this many words at most: more adds time, not certainty.
_LANGUAGE_WORDS = 2000


@dataclass(frozen=True)
class Cleaned:
    cues: list[Cue]                      # only cues with spoken words left, in order
    removed: list[tuple[float, str]]     # (cue start in s, text removed), in order


def clean(cues: Sequence[Cue], keep_annotations: bool = False) -> Cleaned:
    """Repair and normalise every cue's text; unless keep_annotations, take out non-speech
    annotations, and drop cues left without a letter or digit."""
    kept: list[Cue] = []
    removed: list[tuple[float, str]] = []
    for cue in cues:
        text = _repaired(cue.text)
        found = [] if keep_annotations else [m.group().strip() for m in ANNOTATION.finditer(text)]
        if found:
            removed += [(cue.start, annotation) for annotation in found]
            text = ANNOTATION.sub(" ", text)
        text = " ".join(text.split())
        if not _has_word(text):
            if text:
                removed.append((cue.start, text))
            continue
        if text != cue.text:
            cue = replace(cue, text=text, words=tuple(w for w in cue.words if _is_spoken(w.text, keep_annotations)))
        kept.append(cue)
    return Cleaned(kept, removed)


def _repaired(text: str) -> str:
    # Printable ASCII has nothing ftfy would change (with HTML unescaping off), and it is
    # most of English ASR: skipping it halves the cleaning time.
    if text.isascii() and text.isprintable():
        return text
    # unescape_html off: the parsers unescaped once already; a second pass would turn a
    # literal "&lt;" someone typed into "<". uncurl_quotes off: repair, not restyle ("don’t"
    # as the track spells it, once its mojibake is undone).
    return ftfy.fix_text(text, unescape_html=False, uncurl_quotes=False)


def _has_word(text: str) -> bool:
    return any(ch.isalnum() for ch in text)


def _is_spoken(word: str, keep_annotations: bool) -> bool:
    if not keep_annotations and ANNOTATION.search(word):
        return False
    return _has_word(word)


# ---------------------------------------------------------------- what the transcript says


@dataclass(frozen=True)
class Speech:
    words: int
    words_per_minute: float
    asr_confidence: float | None      # mean acAsrConf / 255 over words that carry one
    language: str | None              # language ID's best guess, None when not asked or no text
    language_probability: float | None

    def meta(self) -> dict:
        return {"words": self.words, "words_per_minute": round(self.words_per_minute, 1),
                "asr_confidence": None if self.asr_confidence is None else round(self.asr_confidence, 3),
                "language": self.language,
                "language_probability": None if self.language_probability is None
                else round(self.language_probability, 3)}


def speech(cues: Sequence[Cue], duration: float, identify_language: bool = True) -> Speech:
    """Words, their rate over the whole video, mean ASR confidence and the language."""
    words = [word for cue in cues for word in cue.text.split()]
    confidences = [w.confidence for cue in cues for w in cue.words if w.confidence > 0]
    language, probability = language_of(" ".join(words[:_LANGUAGE_WORDS])) if identify_language else (None, None)
    return Speech(len(words), len(words) / (duration / 60) if duration > 0 else 0.0,
                  sum(confidences) / len(confidences) / 255 if confidences else None, language, probability)


def language_of(text: str) -> tuple[str | None, float | None]:
    """py3langid's best language (ISO 639-1) and its normalised probability; None for no text."""
    if not _has_word(text):
        return None, None
    language, probability = _identifier().classify(text)
    return language, float(probability)


def known_language(code: str) -> bool:
    return code in _identifier().nb_classes


@lru_cache(maxsize=1)
def _identifier():
    """Loaded once per process (1-2 s): the model ships inside the py3langid wheel."""
    from py3langid.langid import MODEL_DIR, MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_modelpath(MODEL_DIR / MODEL_FILE, norm_probs=True)


def base_language(track_lang: str) -> str:
    """The language a track's code names: "en-orig" -> "en", "en-GB" -> "en", "zh-Hans" -> "zh"."""
    return track_lang.split("-")[0].lower()
