"""A corpus directory is a Hugging Face dataset as it stands."""

import datasets
from PIL import Image


def test_load_dataset_reads_the_corpus_and_decodes_images(sample_dir):
    ds = datasets.load_dataset(str(sample_dir), split="train")
    assert set(ds.column_names) == {"key", "source", "texts", "images", "times", "meta"}
    assert isinstance(ds.features["images"].feature, datasets.Image)
    assert len(ds) == sum(1 for _ in ds)
    row = next(r for r in ds if r["source"] == "laion")
    image = next(i for i in row["images"] if i is not None)
    assert isinstance(image, Image.Image) and image.size == (224, 224)
    assert sorted(set(ds["source"])) == ["laion", "laion_coco", "mmc4", "webvid", "yt_storyboard"]


def test_the_arrow_builder_reads_the_data_folder_too(sample_dir):
    ds = datasets.load_dataset("arrow", data_files=str(sample_dir / "data" / "*.arrow"), split="train")
    assert ds.features["images"].feature == datasets.Image()


def test_status_table_is_a_second_config(sample_dir):
    status = datasets.load_dataset(str(sample_dir), "status", split="train")
    assert set(status["status"]) == {"ok"}
    assert len(status) == 6 * 5  # one row per input item: n=6 for each of five sources
