"""Video-level quality filters: a video too short, without speech, in another language than
asked, or without distinct frames ends in the status table with its filter's reason (and how
many frames it had), never silently and never in the corpus.

Every threshold is an option whose default comes from measurements on real tracks
(benchmarks/youtube_quality.py; the numbers and the reasoning are in BENCHMARKS.md, "YouTube
quality filters"); 0 or "off" turns a filter off. The cheap ones run first: too_short needs
only the info dict, so a filtered video costs no download.
"""

from __future__ import annotations

from dataclasses import dataclass

from emu_data.core import errors, records
from emu_data.core.options import option, show_threshold, threshold
from emu_data.sources.youtube import transcript

# Language ID on fewer words is a guess (5-word windows of real English ASR were named
# another language 2% of the time; 20-word windows never): fewer words are low_speech's
# business, not this filter's.
LANGUAGE_MIN_WORDS = 20


@dataclass(frozen=True)
class QualityOptions:
    min_duration: float = option(10.0, parse=threshold, show=show_threshold, metavar="S",
                                 help="too_short: drop videos shorter than this, in seconds "
                                      "(a storyboard holds one tile per 2-10 s); 0 or off keeps them")
    min_words_per_minute: float = option(20.0, parse=threshold, show=show_threshold, metavar="WPM",
                                         help="low_speech: drop videos whose transcript has fewer words per "
                                              "minute of video, after cleaning (real speech: 110-180); 0 or off keeps them")
    language_confidence: float = option(0.9, parse=threshold, show=show_threshold, metavar="P",
                                        help="language_mismatch: drop videos whose transcript language ID names "
                                             "another language than the track's with at least this probability; "
                                             "0 or off keeps them")
    min_distinct_frames: float = option(3, parse=threshold, show=show_threshold, metavar="N",
                                        help="static_video: drop videos with fewer distinct frames (not blank, not a "
                                             "near-duplicate of the frame before); 0 or off keeps them")
    keep_annotations: bool = option(False, help="keep non-speech annotations ([Music], [Applause], ♪, (inaudible), >>) "
                                                "in the text")
    keep_static: bool = option(False, help="keep near-identical consecutive frames and blank frames")
    static_difference: float = option(10.0, parse=float, metavar="LEVELS",
                                      help="frames are near-identical when no 10x10-pixel cell's mean colour differs "
                                           "by more than this (0-255)")
    blank_std: float = option(4.0, parse=float, metavar="LEVELS",
                              help="a frame is blank when every colour channel's standard deviation is below this")


class Filtered(errors.ItemFailed):
    """A video a quality filter took; its message ends in how many frames it had."""

    def __init__(self, reason: str, message: str, frames: int):
        super().__init__(reason, records.filtered_message(message, frames))


def check_duration(duration: float, frames: int, options: QualityOptions) -> None:
    if options.min_duration and duration < options.min_duration:
        raise Filtered("too_short", f"{duration:g} s, shorter than --min-duration {options.min_duration:g} s", frames)


def check_speech(speech: transcript.Speech, track_lang: str, frames: int, options: QualityOptions) -> None:
    if options.min_words_per_minute and speech.words_per_minute < options.min_words_per_minute:
        raise Filtered("low_speech", f"{speech.words} words, {speech.words_per_minute:.1f} per minute of video, "
                       f"below --min-words-per-minute {options.min_words_per_minute:g}", frames)
    wanted = transcript.base_language(track_lang)
    if (options.language_confidence and speech.language and speech.words >= LANGUAGE_MIN_WORDS
            and speech.language != wanted and (speech.language_probability or 0) >= options.language_confidence
            and transcript.known_language(wanted)):   # a language ID cannot name is never a mismatch
        raise Filtered("language_mismatch", f"the {track_lang} track reads as {speech.language} "
                       f"(p={speech.language_probability:.3f} >= --language-confidence "
                       f"{options.language_confidence:g})", frames)


def check_frames(distinct: int, frames: int, options: QualityOptions) -> None:
    if options.min_distinct_frames and distinct < options.min_distinct_frames:
        raise Filtered("static_video", f"{distinct} distinct of {frames} frames, fewer than "
                       f"--min-distinct-frames {options.min_distinct_frames:g}", frames)

