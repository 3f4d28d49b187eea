"""The command line as a user meets it: sample -> validate -> stats -> preview, and --help."""

import json

import pytest

from emu_data import cli
from emu_data.core import options


def test_sample_validate_stats_preview(tmp_path, ray_session, capsys):
    out = tmp_path / "corpus"
    assert cli.main(["sample", "--out", str(out), "--n", "3", "--shard-rows", "5"]) == 0
    assert "samples in" in capsys.readouterr().out
    assert cli.main(["validate", str(out), "--deep"]) == 0
    assert ": clean" in capsys.readouterr().out
    assert cli.main(["stats", str(out), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert set(stats["sources"]) == {"yt_storyboard", "laion", "laion_coco", "mmc4", "webvid"}
    assert stats["sources"]["laion"] == {**stats["sources"]["laion"], "samples": 3, "images": 3, "texts": 3}
    assert all(counts == {"ok": 3} for counts in stats["status"].values())
    page = tmp_path / "p.html"
    assert cli.main(["preview", str(out), "--out", str(page), "--n", "5"]) == 0
    assert page.read_text().count('class="card') == 5
    assert cli.main(["sample", "--out", str(out), "--n", "3", "--shard-rows", "5"]) == 0
    assert "already complete" in capsys.readouterr().out


def test_stats_table_lists_sources_and_reasons(sample_dir, capsys):
    assert cli.main(["stats", str(sample_dir)]) == 0
    out = capsys.readouterr().out
    assert "yt_storyboard" in out and "status by reason" in out and "ok 6" in out


@pytest.mark.parametrize("command", [[], ["sample"], ["validate"], ["stats"], ["preview"]])
def test_help_explains_every_command(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(command + ["--help"])
    assert e.value.code == 0
    assert "usage: emu-data" in capsys.readouterr().out


def test_bad_arguments_are_clear_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["sample", "--out", str(tmp_path), "--shard-bytes", "lots"])
    assert e.value.code == 2 and "not a size" in capsys.readouterr().err
    assert cli.main(["sample", "--out", str(tmp_path / "x"), "--sources", "flickr"]) == 2
    assert "unknown sample source" in capsys.readouterr().err
    assert cli.main(["stats", str(tmp_path)]) == 2
    assert "no manifest" in capsys.readouterr().err


def test_sizes_parse():
    assert options.size("64MB") == 64 * 10**6 and options.size("1GiB") == 2**30 and options.size("1000") == 1000


def test_impersonation_needs_the_flag_because_the_guard_cannot_see_curl(tmp_path, capsys):
    ids = tmp_path / "ids.txt"
    ids.write_text("dQw4w9WgXcQ\n")
    code = cli.main(["youtube", "--ids", str(ids), "--impersonate", "chrome", "--out", str(tmp_path / "out")])
    assert code == 2
    assert "--impersonate" in capsys.readouterr().err and not (tmp_path / "out").exists()
