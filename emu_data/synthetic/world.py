"""A small deterministic generated world of flat drawn scenes, and the text that describes them.

It stands in for the web with no network: `emu-data sample` writes a corpus from it, tests
serve it over local HTTP, and a tiny model trains on it. So every text (caption, alt text,
subtitle, web sentence) is a function of the drawn facts - colour, shape, grid position,
motion - with one fixed vocabulary, which makes text predictable from the image.

Everything is a pure function of the `random.Random` passed in; no global random state.
"""

from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

from emu_data.core import images

# Far apart in RGB so a tiny model (and a JPEG round trip) cannot confuse them.
COLOURS: dict[str, tuple[int, int, int]] = {"red": (220, 30, 30), "green": (30, 160, 50), "blue": (30, 70, 220),
                                           "yellow": (240, 210, 20), "purple": (140, 50, 180), "orange": (245, 130, 20)}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
# Light and unsaturated, so no background reads as an object colour.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"white": (255, 255, 255), "grey": (200, 200, 200), "beige": (235, 225, 200)}
_COLS = ("left", "centre", "right")
_ROWS = ("top", "middle", "bottom")


def _cell(v: float) -> int:
    return min(2, max(0, int(v * 3)))


def _region(x: float, y: float) -> str:
    """Bare 3x3 grid words: "left", "top right", "centre", "bottom"."""
    col, row = _COLS[_cell(x)], _ROWS[_cell(y)]
    if row == "middle":
        return col
    return row if col == "centre" else f"{row} {col}"


def _with_preposition(region: str) -> str:
    if region in ("left", "right"):
        return f"on the {region}"
    if region in ("top", "bottom"):
        return f"at the {region}"
    return f"in the {region}"


@dataclass(frozen=True)
class Thing:
    shape: str
    colour: str
    x: float  # centre, fraction of the width
    y: float  # centre, fraction of the height
    size: float  # diameter, fraction of min(width, height)

    def where(self) -> str:
        return _with_preposition(_region(self.x, self.y))

    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    def a_name(self) -> str:
        return ("an " if self.colour[0] in "aeiou" else "a ") + self.name()


@dataclass(frozen=True)
class Scene:
    background: str
    things: tuple[Thing, ...]


def _cell_centre(cell: int, rng: random.Random, jitter: float) -> tuple[float, float]:
    col, row = cell % 3, cell // 3
    return (round((col + 0.5) / 3 + rng.uniform(-jitter, jitter), 3),
            round((row + 0.5) / 3 + rng.uniform(-jitter, jitter), 3))


def random_scene(rng: random.Random, max_things: int = 2) -> Scene:
    """1..max_things things, each in its own grid cell near the cell centre, so position words
    are unambiguous, things barely touch, and nothing crosses the frame edge (radius <= 0.12)."""
    if not 1 <= max_things <= min(9, len(COLOURS)):
        raise ValueError(f"max_things must be in 1..{min(9, len(COLOURS))}")
    n = rng.randint(1, max_things)
    background = rng.choice(list(BACKGROUNDS))
    cells = rng.sample(range(9), n)
    colours = rng.sample(list(COLOURS), n)  # distinct, so "the red one" is unique
    things = []
    for cell, colour in zip(cells, colours):
        x, y = _cell_centre(cell, rng, 0.04)
        things.append(Thing(rng.choice(SHAPES), colour, x, y, round(rng.uniform(0.16, 0.24), 3)))
    return Scene(background, tuple(things))


def _outline(t: Thing, width: int, height: int) -> list[tuple[float, float]]:
    cx, cy, r = t.x * width, t.y * height, t.size * min(width, height) / 2
    if t.shape == "star":  # five points, inner radius 0.45 so the centre is solidly filled
        return [(cx + (r if k % 2 == 0 else 0.45 * r) * math.sin(k * math.pi / 5),
                 cy - (r if k % 2 == 0 else 0.45 * r) * math.cos(k * math.pi / 5)) for k in range(10)]
    if t.shape == "triangle":  # equilateral, centroid on the thing's centre
        return [(cx, cy - r), (cx - 0.866 * r, cy + r / 2), (cx + 0.866 * r, cy + r / 2)]
    if t.shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    raise ValueError(f"unknown shape {t.shape!r}")


def render(scene: Scene, width: int = 224, height: int = 224) -> Image.Image:
    image = Image.new("RGB", (width, height), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    for t in scene.things:
        fill = COLOURS[t.colour]
        if t.shape == "circle":
            cx, cy, r = t.x * width, t.y * height, t.size * min(width, height) / 2
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        else:
            draw.polygon(_outline(t, width, height), fill=fill)
    return image


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def caption(scene: Scene) -> str:
    things = _join([f"{t.a_name()} {t.where()}" for t in scene.things])
    return f"{things} on a {scene.background} background"


_ALT_TEMPLATES = (
    "{C} {s} stock photo", "{c} {s}, {region} - image", "{c} {s} on {bg} background",
    "{c} {s} icon png", "IMG_{n:04d}.jpg {c} {s}", "simple {c} {s} illustration vector",
    "{all} | free clipart", "{caption}",
)


def alt_text(scene: Scene, rng: random.Random) -> str:
    """Web-style alt text: terse, templated, sometimes title-cased; always names one thing."""
    t = rng.choice(scene.things)
    text = rng.choice(_ALT_TEMPLATES).format(
        C=t.colour.capitalize(), c=t.colour, s=t.shape, region=_region(t.x, t.y),
        bg=scene.background, n=rng.randrange(10000), caption=caption(scene),
        all=", ".join(u.name() for u in scene.things))
    return text.title() if rng.random() < 0.25 else text


def encode(image: Image.Image, fmt: str = "JPEG", quality: int = 90) -> bytes:
    fmt = {"JPG": "JPEG"}.get(fmt.upper(), fmt.upper())
    if fmt not in images.STORED_FORMATS:   # what the corpus stores as is
        raise ValueError(f"unsupported image format {fmt!r}")
    buf = io.BytesIO()
    options = {} if fmt == "PNG" else {"quality": quality}
    image.convert("RGB").save(buf, format=fmt, **options)
    return buf.getvalue()


@dataclass(frozen=True)
class Mover:
    thing: Thing  # position at t=0
    vx: float  # frame widths per second
    vy: float  # frame heights per second


def _bounce(p: float, lo: float, hi: float) -> float:
    """Reflect p into [lo, hi], as a ball bouncing off the frame edges."""
    span = hi - lo
    q = (p - lo) % (2 * span)
    return lo + (q if q <= span else 2 * span - q)


@dataclass(frozen=True)
class Clip:
    duration: float
    background: str
    movers: tuple[Mover, ...]

    def scene_at(self, t: float) -> Scene:
        things = []
        for m in self.movers:
            r = m.thing.size / 2  # keep the whole thing inside the frame
            x = _bounce(m.thing.x + m.vx * t, r, 1 - r)
            y = _bounce(m.thing.y + m.vy * t, r, 1 - r)
            things.append(Thing(m.thing.shape, m.thing.colour, x, y, m.thing.size))
        return Scene(self.background, tuple(things))


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    text: str


def _min_gap(clip: Clip) -> float:
    """Smallest centre distance minus radii between two movers, sampled over the clip."""
    gap = math.inf
    for k in range(11):
        a, b = clip.scene_at(clip.duration * k / 10).things[:2]
        gap = min(gap, math.hypot(a.x - b.x, a.y - b.y) - (a.size + b.size) / 2)
    return gap


def random_clip(rng: random.Random, duration: float) -> Clip:
    """1-2 movers, each crossing from one grid cell's centre to another's over exactly the
    clip, so the motion is visible, monotonic, and says "from X to Y" truthfully."""
    if duration <= 0:
        raise ValueError("duration must be positive")
    background = rng.choice(list(BACKGROUNDS))
    n = rng.randint(1, 2)
    for attempt in range(100):  # retry until two movers never touch; the last try has one
        count = n if attempt < 99 else 1
        movers = []
        for colour in rng.sample(list(COLOURS), count):
            a, b = rng.sample(range(9), 2)
            (x0, y0), (x1, y1) = _cell_centre(a, rng, 0.03), _cell_centre(b, rng, 0.03)
            thing = Thing(rng.choice(SHAPES), colour, x0, y0, round(rng.uniform(0.16, 0.22), 3))
            movers.append(Mover(thing, (x1 - x0) / duration, (y1 - y0) / duration))
        clip = Clip(duration, background, tuple(movers))
        if count == 1 or _min_gap(clip) > 0:
            return clip
    raise AssertionError("unreachable: a one-mover clip is always accepted")


def _heading(dx: float, dy: float) -> str:
    """Direction words; a component under a quarter of the other is jitter, not motion,
    so a left-to-right crossing is never narrated as "down and to the right"."""
    big = max(abs(dx), abs(dy))
    if big < 1e-12:
        return ""
    horizontal = ("to the right" if dx > 0 else "to the left") if abs(dx) >= big / 4 else ""
    vertical = ("down" if dy > 0 else "up") if abs(dy) >= big / 4 else ""
    return " and ".join(w for w in (vertical, horizontal) if w)


def narrate(clip: Clip, every: float, rng: random.Random | None = None) -> list[Cue]:
    """One cue per `every` seconds (ms-rounded, touching, never overlapping), describing the
    scene at the cue's midpoint: the one frame closest to everything shown while it is on
    screen, and the time to render a storyboard tile for it (scene_at((start + end) / 2))."""
    pick = (lambda options: rng.choice(options)) if rng else (lambda options: options[0])
    cues = []
    for k, start, end, now, soon in _cue_windows(clip, every):
        parts = []
        for a, b in zip(now.things, soon.things):
            lead = "the" if k == 0 else pick(("now the", "the", "and now the"))
            heading = _heading(b.x - a.x, b.y - a.y)
            motion = f"{pick(('it moves', 'it is moving', 'it goes'))} {heading}" if heading else "it stays there"
            parts.append(f"{lead} {a.name()} is {a.where()}, {motion}")
        if end > start:
            cues.append(Cue(start, end, ". ".join(parts)))
    return cues


def _cue_windows(clip: Clip, every: float):
    """(k, start, end, the scene at the window's midpoint, the scene a moment later) for
    each `every`-second window of the clip: ms-rounded, touching, never overlapping."""
    if every <= 0:
        raise ValueError("every must be positive")
    k = 0
    while (start := round(k * every, 3)) < clip.duration:
        end = round(min((k + 1) * every, clip.duration), 3)
        mid = (start + end) / 2
        yield k, start, end, clip.scene_at(mid), clip.scene_at(mid + 1e-3)
        k += 1


def clip_caption(clip: Clip) -> str:
    first, last = clip.scene_at(0).things, clip.scene_at(clip.duration).things
    parts = []
    for a, b in zip(first, last):
        ra, rb = _region(a.x, a.y), _region(b.x, b.y)
        heading = _heading(b.x - a.x, b.y - a.y)
        if ra != rb:
            parts.append(f"{a.a_name()} moves from the {ra} to the {rb}")
        else:  # a hand-made clip may move within one cell, or not at all
            parts.append(f"{a.a_name()} moves {heading} {a.where()}" if heading else f"{a.a_name()} stays {a.where()}")
    return f"{_join(parts)} on a {clip.background} background"


@dataclass(frozen=True)
class Document:
    sentences: tuple[str, ...]
    scenes: tuple[Scene, ...]  # one per image
    matched: tuple[int, ...]  # per image, the index of the sentence describing it
    similarity: tuple[tuple[float, ...], ...]  # images x sentences, CLIP-cosine-like
    title: str


# Filler never names a colour, shape, position or background, so only the image's own
# sentence describes it - as MMC4's matching assumes.
_TOPICS = {
    "Shapes for kids": (
        "Learning simple figures is one of the first steps in drawing.",
        "Print these pages and let children say what they see.",
        "Each picture is drawn with flat paint and no shading.",
        "Ask your child to count the figures in every picture.", "We add new worksheets every week."),
    "Minimal art of the week": (
        "This week we collected a few minimal pieces from our readers.",
        "Minimal art removes everything but form and paint.", "Less is more, as the saying goes.",
        "Send us your own work and we may feature it next time.", "Thanks to everyone who took part."),
    "Geometry warm-up": (
        "Start every lesson with a quick look at a few figures.",
        "Name each figure and say where it sits in the frame.", "These exercises take about five minutes.",
        "Answers are at the end of the page.", "Try to draw each picture from memory afterwards."),
}
_LEADS = ("Here is", "This picture shows", "Below you can see", "In the next image there is")
_VOCAB = set(COLOURS) | set(SHAPES) | set(BACKGROUNDS) | {"left", "right", "top", "bottom", "centre"}


def _facts(text: str) -> set[str]:
    return {w.strip(".,") for w in text.lower().split()} & _VOCAB


def random_document(rng: random.Random, n_images: int) -> Document:
    """Title, an opening filler, then per image an optional filler and the image's own
    caption-like sentence, then a closing filler; similarity follows word overlap."""
    topic = rng.choice(list(_TOPICS))
    fillers = list(_TOPICS[topic])
    rng.shuffle(fillers)
    take = lambda: fillers.pop() if fillers else rng.choice(_TOPICS[topic])  # noqa: E731
    sentences, scenes, matched = [take()], [], []
    for _ in range(n_images):
        if rng.random() < 0.5:
            sentences.append(take())
        scene = random_scene(rng, 2)
        text = f"{rng.choice(_LEADS)} {caption(scene)}."
        scenes.append(scene)
        matched.append(len(sentences))
        sentences.append(text)
    sentences.append(take())
    similarity = []
    for scene, m in zip(scenes, matched):
        facts = _facts(caption(scene))
        row = [round(0.30 + 0.10 * rng.random(), 4) if j == m else  # matched: 0.30-0.40
               round(0.10 + 0.08 * len(facts & _facts(s)) / len(facts | _facts(s)) + 0.04 * rng.random(), 4)
               for j, s in enumerate(sentences)]  # others: 0.10-0.22, higher if they share words
        similarity.append(tuple(row))
    title = f"{topic} #{rng.randint(1, 99)}"
    return Document(tuple(sentences), tuple(scenes), tuple(matched), tuple(similarity), title)


# ---- the same narration in German (a mislabelled subtitle track, for language filters) ------------

# shape: (noun, gender); every adjective below is regular, so "der rote Kreis", "das rote
# Quadrat" (nominative, definite) and "einen roten Kreis", "ein rotes Quadrat" (accusative,
# indefinite) are grammatical for every colour.
_DE_SHAPES = {"circle": ("Kreis", "m"), "square": ("Quadrat", "n"), "triangle": ("Dreieck", "n"),
              "star": ("Stern", "m")}
_DE_COLOURS = {"red": "rot", "green": "grün", "blue": "blau", "yellow": "gelb", "purple": "violett",
               "orange": "orangefarben"}
_DE_BACKGROUNDS = {"white": "weiß", "grey": "grau", "beige": "beigefarben"}
_DE_REGIONS = {"left": "links", "right": "rechts", "top": "oben", "bottom": "unten", "centre": "in der Mitte"}
_DE_HEADINGS = {"to the right": "nach rechts", "to the left": "nach links", "up": "nach oben", "down": "nach unten"}


def _de_name(t: Thing) -> tuple[str, str]:
    """("rote Kreis", "m"): the noun phrase after a definite article, and its gender."""
    noun, gender = _DE_SHAPES[t.shape]
    return f"{_DE_COLOURS[t.colour]}e {noun}", gender


def _de_where(t: Thing) -> str:
    return " ".join(_DE_REGIONS[w] for w in _region(t.x, t.y).split())  # "oben links", "in der Mitte"


def narrate_german(clip: Clip, every: float, rng: random.Random | None = None) -> list[Cue]:
    """`narrate`, in German: the same cue times and the same facts, in grammatical sentences
    ("Jetzt ist der rote Kreis links, und er bewegt sich nach rechts."). The first cue
    opens with what is on screen ("Hier sehen wir einen roten Kreis auf einem weißen
    Hintergrund."), so even a short clip has enough words for a language identifier."""
    pick = (lambda options: rng.choice(options)) if rng else (lambda options: options[0])
    cues = []
    for k, start, end, now, soon in _cue_windows(clip, every):
        sentences = []
        if k == 0:
            things = []
            for t in now.things:
                noun, gender = _DE_SHAPES[t.shape]
                stem = _DE_COLOURS[t.colour]
                things.append(f"einen {stem}en {noun}" if gender == "m" else f"ein {stem}es {noun}")
            sentences.append(f"Hier sehen wir {' und '.join(things)} auf einem "
                             f"{_DE_BACKGROUNDS[clip.background]}en Hintergrund.")
        for a, b in zip(now.things, soon.things):
            name, gender = _de_name(a)
            article, pronoun = ("der", "er") if gender == "m" else ("das", "es")
            lead = "" if k == 0 else pick(("jetzt", "", "nun"))
            said = f"{lead} ist {article} {name} {_de_where(a)}" if lead else f"{article} {name} ist {_de_where(a)}"
            heading = _heading(b.x - a.x, b.y - a.y)
            if heading:
                verb = pick(("bewegt sich", "gleitet", "wandert"))
                motion = f"{verb} {' und '.join(_DE_HEADINGS[h] for h in heading.split(' and '))}"
            else:
                motion = "bleibt dort"
            sentences.append(f"{said[0].upper()}{said[1:]}, und {pronoun} {motion}.")
        if end > start:
            cues.append(Cue(start, end, " ".join(sentences)))
    return cues
