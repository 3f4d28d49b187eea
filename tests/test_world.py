"""The generated world: deterministic, and its text names what is drawn."""

import io
import random

import pytest
from PIL import Image

from emu_data.synthetic import world
from emu_data.synthetic.world import BACKGROUNDS, COLOURS, SHAPES, Clip, Mover, Scene, Thing, alt_text, caption, clip_caption, encode, narrate, random_clip, random_document, random_scene, render

SEEDS = range(30)


def _close(pixel, rgb, tol=12):
    return all(abs(a - b) <= tol for a, b in zip(pixel, rgb))


def test_same_seed_gives_identical_text_and_bytes():
    def make(seed):
        rng = random.Random(seed)
        scene = random_scene(rng, 3)
        clip = random_clip(rng, 5.0)
        doc = random_document(rng, 2)
        image = render(scene)
        return (caption(scene), alt_text(scene, rng), clip_caption(clip), narrate(clip, 1.0, rng), doc,
                [encode(image, fmt) for fmt in ("JPEG", "PNG", "WEBP")])

    assert make(7) == make(7)
    assert make(7) != make(8)


def test_no_global_random_state_is_used():
    random.seed(0)
    before = random.random()
    random.seed(0)
    random_scene(random.Random(1), 3)
    random_clip(random.Random(1), 3.0)
    random_document(random.Random(1), 3)
    assert random.random() == before


def test_where_uses_a_three_by_three_grid():
    where = lambda x, y: Thing("circle", "red", x, y, 0.2).where()  # noqa: E731
    assert where(0.1, 0.5) == "on the left"
    assert where(0.9, 0.5) == "on the right"
    assert where(0.5, 0.5) == "in the centre"
    assert where(0.5, 0.1) == "at the top"
    assert where(0.5, 0.9) == "at the bottom"
    assert where(0.9, 0.1) == "in the top right"
    assert where(0.0, 1.0) == "in the bottom left"


def test_caption_names_every_things_colour_shape_and_position():
    for seed in SEEDS:
        scene = random_scene(random.Random(seed), 3)
        text = caption(scene)
        assert text.endswith(f"on a {scene.background} background")
        for t in scene.things:
            assert f"{t.colour} {t.shape} {t.where()}" in text
    scene = Scene("white", (Thing("circle", "red", 0.15, 0.5, 0.2), Thing("square", "blue", 0.85, 0.15, 0.2)))
    assert caption(scene) == "a red circle on the left and a blue square in the top right on a white background"
    assert caption(Scene("grey", (Thing("star", "orange", 0.5, 0.5, 0.2),))).startswith("an orange star")


def test_random_scene_fits_the_frame_and_keeps_things_apart():
    for seed in SEEDS:
        scene = random_scene(random.Random(seed), 3)
        assert 1 <= len(scene.things) <= 3 and scene.background in BACKGROUNDS
        assert len({t.colour for t in scene.things}) == len(scene.things)
        for t in scene.things:
            assert t.shape in SHAPES and t.colour in COLOURS
            assert t.size / 2 <= t.x <= 1 - t.size / 2 and t.size / 2 <= t.y <= 1 - t.size / 2
        for i, a in enumerate(scene.things):
            for b in scene.things[i + 1:]:
                assert ((a.x - b.x) ** 2 + (a.y - b.y) ** 2) ** 0.5 > 0.9 * (a.size + b.size) / 2


@pytest.mark.parametrize("size", [(224, 224), (160, 90), (64, 64)])
def test_render_draws_named_colours_at_their_positions(size):
    width, height = size
    for seed in SEEDS:
        scene = random_scene(random.Random(seed), 3)
        image = render(scene, width, height)
        assert image.mode == "RGB" and image.size == size
        for t in scene.things:
            cx, cy = int(t.x * width), int(t.y * height)
            for dx in (-1, 0, 1):
                for dy in (-1, 0, 1):
                    assert image.getpixel((cx + dx, cy + dy)) == COLOURS[t.colour], (seed, t)
        # the corner farthest from every thing shows the background
        corners = [(0, 0), (width - 1, 0), (0, height - 1), (width - 1, height - 1)]
        far = max(corners, key=lambda c: min(abs(c[0] / width - t.x) + abs(c[1] / height - t.y)
                                             for t in scene.things))
        assert image.getpixel(far) == BACKGROUNDS[scene.background]


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_encode_round_trips_through_pil(fmt):
    scene = random_scene(random.Random(3), 2)
    image = render(scene, 64, 64)
    data = encode(image, fmt)
    decoded = Image.open(io.BytesIO(data))
    assert decoded.format == fmt and decoded.size == (64, 64)
    decoded = decoded.convert("RGB")
    if fmt == "PNG":
        assert decoded.tobytes() == image.tobytes()
    t = scene.things[0]
    assert _close(decoded.getpixel((int(t.x * 64), int(t.y * 64))), COLOURS[t.colour], tol=40)


def test_encode_rejects_unknown_format():
    with pytest.raises(ValueError):
        encode(Image.new("RGB", (4, 4)), "BMP")


def test_alt_text_names_at_least_one_thing():
    rng = random.Random(0)
    texts = set()
    for seed in range(200):
        scene = random_scene(random.Random(seed), 2)
        text = alt_text(scene, rng).lower()
        texts.add(text)
        assert any(f"{t.colour} {t.shape}" in text for t in scene.things), text
    assert len(texts) > 100  # noisy: many different forms


def test_clip_moves_visibly_and_stays_in_frame():
    for seed in SEEDS:
        clip = random_clip(random.Random(seed), 4.0)
        assert 1 <= len(clip.movers) <= 2
        first, last = clip.scene_at(0), clip.scene_at(clip.duration)
        for a, b in zip(first.things, last.things):
            assert abs(a.x - b.x) + abs(a.y - b.y) > 0.2
            assert a.where() != b.where()
        for k in range(21):
            for t in clip.scene_at(clip.duration * k / 20).things:
                assert 0 <= t.x - t.size / 2 and t.x + t.size / 2 <= 1
                assert 0 <= t.y - t.size / 2 and t.y + t.size / 2 <= 1


def test_scene_at_bounces_off_the_edges():
    clip = Clip(10.0, "white", (Mover(Thing("circle", "red", 0.5, 0.5, 0.2), vx=0.5, vy=0.0),))
    xs = [clip.scene_at(t).things[0].x for t in (0.0, 0.8, 1.0, 2.0)]
    assert xs[0] == 0.5 and xs[1] == pytest.approx(0.9) and xs[2] == pytest.approx(0.8)
    assert all(0.1 <= x <= 0.9 for x in xs)


def test_narrate_cues_are_sorted_disjoint_and_name_the_movers():
    for seed in SEEDS:
        rng = random.Random(seed)
        clip = random_clip(rng, 7.3)
        cues = narrate(clip, 2.0, rng)
        assert [c.start for c in cues] == [0.0, 2.0, 4.0, 6.0] and cues[-1].end == 7.3
        for a, b in zip(cues, cues[1:]):
            assert a.start < a.end <= b.start < b.end
        for cue in cues:
            scene = clip.scene_at((cue.start + cue.end) / 2)
            for t in scene.things:
                assert f"{t.colour} {t.shape} is {t.where()}" in cue.text
    assert narrate(clip, 2.0) == narrate(clip, 2.0)


def test_narrate_says_where_a_thing_goes():
    clip = Clip(6.0, "grey", (Mover(Thing("circle", "red", 1 / 6, 0.5, 0.2), vx=(2 / 3) / 6, vy=0.0),))
    texts = [c.text for c in narrate(clip, 2.0)]
    assert texts[0] == "the red circle is on the left, it moves to the right"
    assert texts[1].startswith("now the red circle is in the centre")
    assert "on the right" in texts[2]
    assert clip_caption(clip) == "a red circle moves from the left to the right on a grey background"


def test_clip_caption_names_start_and_end():
    for seed in SEEDS:
        clip = random_clip(random.Random(seed), 3.0)
        text = clip_caption(clip)
        first, last = clip.scene_at(0), clip.scene_at(clip.duration)
        for a, b in zip(first.things, last.things):
            start, end = world._region(a.x, a.y), world._region(b.x, b.y)
            assert f"{a.colour} {a.shape} moves from the {start} to the {end}" in text


def test_documents_match_images_to_describing_sentences():
    for seed in SEEDS:
        doc = random_document(random.Random(seed), 1 + seed % 4)
        assert doc.title and len(doc.scenes) == len(doc.matched) == 1 + seed % 4
        assert len(doc.sentences) >= len(doc.scenes) + 2
        assert len(set(doc.matched)) == len(doc.matched) and list(doc.matched) == sorted(doc.matched)
        assert len(doc.similarity) == len(doc.scenes)
        for scene, m, row in zip(doc.scenes, doc.matched, doc.similarity):
            assert 0 <= m < len(doc.sentences) and len(row) == len(doc.sentences)
            sentence = doc.sentences[m].lower()
            for t in scene.things:
                assert f"{t.colour} {t.shape}" in sentence
            assert all(0 <= s <= 1 for s in row)
            assert row[m] == max(row) and 0.3 <= row[m] <= 0.4
            assert all(0.1 <= s < 0.25 for j, s in enumerate(row) if j != m)
        for j, sentence in enumerate(doc.sentences):  # filler never names a colour
            if j not in doc.matched:
                assert not any(c in sentence.lower().split() for c in COLOURS)
