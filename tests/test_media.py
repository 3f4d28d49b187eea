"""The one media layer the sources share: the pixel limit and bomb check (images.py), the
stored formats, safe file stems (files.safe_stem) and input-file discovery
(textfiles.input_files), each defined once and used by every source."""

from __future__ import annotations

import logging
import os
import random
import re
from pathlib import Path

import pytest
from PIL import Image

from emu_data.core import errors, files, images
from emu_data.synthetic import world
from emu_data.sources import laion, mmc4, textfiles, webvid

ROOT = Path(__file__).resolve().parents[1] / "emu_data"


# ---- the pixel limit and the bomb check ---------------------------------------------------

def test_the_pixel_limit_is_the_smaller_of_the_callers_and_pillows(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    assert images.pixel_limit() == images.pixel_limit(None) == images.pixel_limit(0) == 10_000
    assert images.pixel_limit(100) == 100 and images.pixel_limit(10**9) == 10_000
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)   # Pillow's check switched off
    assert images.pixel_limit() is None and images.pixel_limit(100) == 100


def test_the_bomb_check_names_the_limit_crossed(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    images.check_pixels(100, 100)                      # at the limit: fine
    images.check_pixels(10, 10, 100)
    for args, message in [((101, 100), "decompression bomb: 101x100 pixels exceed Pillow's limit of 10000"),
                          ((11, 10, 100), "decompression bomb: 11x10 exceeds max_image_pixels 100"),
                          ((200, 200, 100), "exceed Pillow's limit of 10000")]:   # both: Pillow's named
        with pytest.raises(images.ImageRejected) as caught:
            images.check_pixels(*args)
        assert caught.value.reason == "decompression_bomb" and message in str(caught.value)
    with pytest.raises(images.ImageRejected, match="exceeds max_pixels 100"):
        images.check_pixels(11, 10, 100, option="max_pixels")


def test_every_source_uses_the_one_bomb_check(monkeypatch):
    body = world.encode(world.render(world.random_scene(random.Random(0))))
    with pytest.raises(mmc4.ImageDropped, match="decompression bomb: .* exceeds max_image_pixels 100") as caught:
        mmc4.checked_image(body, 100)
    assert caught.value.reason == "decompression_bomb"
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    config = webvid.WebvidConfig(max_pixels=64 * 64 - 1)
    with pytest.raises(webvid.VideoError, match="exceeds max_pixels 4095") as caught:
        webvid._refuse_bomb(64, 64, config)
    assert caught.value.reason == "decompression_bomb"
    with pytest.raises(webvid.VideoError, match="Pillow's limit of 10000"):
        webvid._refuse_bomb(101, 100, webvid.WebvidConfig())
    webvid._refuse_bomb(100, 100, webvid.WebvidConfig())


def test_laions_default_size_filter_is_the_bomb_limit():
    assert laion.ImageOptions().max_image_pixels == images.pixel_limit() == Image.MAX_IMAGE_PIXELS


def test_the_limit_and_the_stored_formats_are_stated_once():
    """Nothing but images.py reads Pillow's limit or spells out the stored formats."""
    for path in ROOT.rglob("*.py"):
        if path == ROOT / "core" / "images.py":
            continue
        code = path.read_text()
        assert "Image.MAX_IMAGE_PIXELS" not in code, path
        assert not re.search(r"""["']JPEG["'],\s*["']PNG["'],\s*["']WEBP["']""", code), path


# ---- safe stems -------------------------------------------------------------------------------

@pytest.mark.parametrize("name,stem", [
    ("results_2M_train", "results_2M_train"),
    ("docs_shard_0-v2.1", "docs_shard_0-v2.1"),       # `-` and `.` kept
    ("a b/c\\d:é", "a_b_c_d__"),                      # one `_` a character, non-ASCII too
    ("nul\x00\udcff", "nul__"),                       # a surrogate escape of a non-UTF-8 name
    ("", "_"),
    ("..", ".."),
])
def test_safe_stem(name, stem):
    assert files.safe_stem(name) == stem


def test_a_long_stem_is_bounded_and_stays_apart():
    a, b = "x" * 300 + "a", "x" * 300 + "b"
    assert len(files.safe_stem(a)) == files.MAX_STEM == len(files.safe_stem(b))
    assert files.safe_stem(a) != files.safe_stem(b)
    assert files.safe_stem(a) == files.safe_stem(a) and files.safe_stem(a).startswith("x" * 191 + "-")
    assert files.safe_stem("y" * files.MAX_STEM) == "y" * files.MAX_STEM   # at the bound: as it is
    # the longest unit's shard, hidden while written, is still a legal file name
    assert len(f".tmp-webvid-{files.safe_stem(a)}-00000-00000.arrow") <= 255


def test_every_source_names_its_files_with_safe_stem():
    assert webvid._stem(Path("/in/WebVid-10M train.csv")) == "WebVid-10M_train"   # `-` kept now
    assert mmc4._stem(Path("/in/docs-0 é.jsonl")) == "docs-0__"
    assert laion._safe_stem(Path("/in/part-0 (1).parquet")) == "part-0__1_"
    assert webvid._stem(Path(".csv")) == mmc4._stem(Path(".jsonl")) == "_"


# ---- input files ------------------------------------------------------------------------------

def _touch(*paths: Path) -> None:
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}\n")


def test_input_files_arguments_in_order_a_folder_in_name_order_no_recursion(tmp_path):
    folder = tmp_path / "docs"
    _touch(folder / "b.jsonl", folder / "a.jsonl", folder / "c.csv", folder / "sub" / "d.jsonl",
           tmp_path / "z.jsonl", tmp_path / "named.txt")
    (folder / "e.jsonl").mkdir()                   # a folder named like a file: a folder, not entered
    found = textfiles.input_files([tmp_path / "z.jsonl", folder, tmp_path / "named.txt"], ".jsonl")
    assert found == [tmp_path / "z.jsonl", folder / "a.jsonl", folder / "b.jsonl", tmp_path / "named.txt"]
    (tmp_path / "empty").mkdir()
    assert textfiles.input_files([tmp_path / "empty"], ".jsonl") == []   # the caller says what it needed


def test_input_files_one_file_reached_twice_is_taken_once(tmp_path):
    folder = tmp_path / "docs"
    _touch(folder / "a.jsonl", folder / "b.jsonl")
    (tmp_path / "link.jsonl").symlink_to(folder / "b.jsonl")
    given = [folder / "b.jsonl", folder, folder / "a.jsonl", tmp_path / "link.jsonl", folder]
    assert textfiles.input_files(given, ".jsonl") == [folder / "b.jsonl", folder / "a.jsonl"]


def test_input_files_never_read_compressed_files(tmp_path, caplog):
    folder = tmp_path / "docs"
    _touch(folder / "a.csv", folder / "b.csv.gz", folder / "c.csv.zst", folder / "notes.gz")
    with caplog.at_level(logging.WARNING):
        assert textfiles.input_files([folder], ".csv") == [folder / "a.csv"]
    assert "2 compressed file(s) left out (decompress them to .csv to read them), e.g. b.csv.gz" in caplog.text
    for name in ("b.csv.gz", "notes.gz"):
        with pytest.raises(errors.UsageError, match="compressed input; decompress it to .csv first"):
            textfiles.input_files([folder / name], ".csv")
    with pytest.raises(errors.UsageError, match="compressed input"):
        laion.input_files([folder / "notes.gz"])


def test_input_files_refuse_what_is_no_regular_file_and_what_is_missing(tmp_path):
    folder = tmp_path / "docs"
    _touch(folder / "a.parquet")
    os.mkfifo(folder / "b.parquet")
    for given in ([folder], [folder / "b.parquet"]):
        for find in (lambda: textfiles.input_files(given, ".parquet"), lambda: laion.input_files(given)):
            with pytest.raises(errors.UsageError, match=r"b\.parquet: not a regular file"):
                find()
    with pytest.raises(FileNotFoundError, match="nope.parquet: no such file"):
        laion.input_files([tmp_path / "nope.parquet"])


def test_laion_takes_its_files_by_the_same_rule(tmp_path):
    folder = tmp_path / "laion"
    _touch(folder / "b.parquet", folder / "a.parquet", tmp_path / "z.parquet", folder / "sub" / "c.parquet")
    found = laion.input_files([tmp_path / "z.parquet", folder, folder / "a.parquet"])
    assert found == [(tmp_path / "z.parquet").resolve(), (folder / "a.parquet").resolve(),
                     (folder / "b.parquet").resolve()]   # before: sorted across arguments
    (tmp_path / "none").mkdir()
    with pytest.raises(FileNotFoundError, match="no parquet files in"):
        laion.input_files([tmp_path / "none"])
    _touch(tmp_path / "other" / "a.parquet")
    with pytest.raises(ValueError, match="have the same name"):
        laion.input_files([folder, tmp_path / "other"])
