"""errors.py: what a failure means (usage 2, data 1, a bug: its traceback), and the one
line the command line prints for it; ItemFailed crosses processes with its reason."""

import errno
import os
import pickle

import pytest

from emu_data import cli
from emu_data.core import errors


# ---- exit_status and message -------------------------------------------------------------

def _user_error_classes():
    from emu_data.core import corpus, files, manifest, yamlsafe
    from emu_data.ops import encoder, features
    from emu_data.engine import runlock
    from emu_data.inspect import validate
    from emu_data.model import config, data
    from emu_data.pipeline import recipe
    from emu_data.sources.youtube import ytdl

    return [corpus.LayoutChanged("x"), manifest.ManifestError("x"), runlock.RunInProgress("x"),
            validate.UnusableInput("x"), recipe.RecipeError("x"), config.ConfigError("x"),
            yamlsafe.InputError("f.yaml", 3, "x"), files.UnreadableFile("f", "x"), files.JsonError("f", "x"),
            encoder.ModelError("x"), features.FeatureError("x"), data.DataError("x"),
            ytdl.UnguardedImpersonation("x")]


def test_usage_errors_exit_2_and_stay_value_errors():
    for error in [errors.UsageError("x"), FileNotFoundError(2, "No such file", "f"), NotADirectoryError("f"),
                  *_user_error_classes()]:
        assert errors.exit_status(error) == 2, type(error)
    assert issubclass(errors.UsageError, ValueError)   # library callers catching ValueError keep working
    for error in _user_error_classes():
        assert isinstance(error, errors.UsageError), type(error)


def test_data_faults_exit_1():
    from emu_data.core.shards import OutputError
    from emu_data.engine.stage import StageIncomplete

    for error in [errors.DataFault("x"), StageIncomplete("out", []), OutputError("out/f", "No space left on device"),
                  OSError(errno.ENOSPC, "No space left on device", "out/f"), OSError(errno.EROFS, "ro"),
                  OSError(errno.EDQUOT, "quota"), OSError(errno.EFBIG, "too big")]:
        assert errors.exit_status(error) == 1, error


@pytest.mark.parametrize("error", [ValueError("x"), RuntimeError("x"), KeyError("x"), TypeError("x"),
                                   AssertionError("x"), PermissionError(errno.EACCES, "denied"),
                                   OSError(errno.EIO, "io"), UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"),
                                   errors.ItemFailed("decode_error", "x")])
def test_anything_else_is_a_bug(error):
    assert errors.exit_status(error) is None


def test_messages_are_the_lines_the_cli_always_printed():
    from emu_data.core.shards import OutputError

    assert errors.message(errors.UsageError("bad --n"), "sample") == "emu-data sample: error: bad --n"
    assert (errors.message(FileNotFoundError("x: no such file"), "mix")
            == "emu-data mix: error: x: no such file")
    assert errors.message(errors.DataFault("2 unit(s) failed"), "laion") == "emu-data laion: 2 unit(s) failed"
    assert (errors.message(OutputError("out/a.arrow", "No space left on device"), "mix")
            == "emu-data mix: cannot write out/a.arrow: No space left on device")
    assert (errors.message(OSError(errno.ENOSPC, "whatever pyarrow says", "out/b"), "mix")
            == f"emu-data mix: cannot write out/b: {os.strerror(errno.ENOSPC)}")
    assert (errors.message(OSError(errno.EROFS, "read-only"), "mix")
            == f"emu-data mix: cannot write the output: {os.strerror(errno.EROFS)}")


def test_disk_full_or_read_only():
    assert errors.disk_full_or_read_only(OSError(errno.ENOSPC, "x")) == os.strerror(errno.ENOSPC)
    assert errors.disk_full_or_read_only(OSError(errno.EACCES, "x")) is None
    assert errors.disk_full_or_read_only(OSError("no errno")) is None


# ---- ItemFailed: every error that carries a status reason --------------------------------

def _item_failures():
    from emu_data.core import images
    from emu_data import net
    from emu_data.sources import laion, mmc4, webvid
    from emu_data.sources.youtube import stage, storyboard, ytdl

    return [images.ImageRejected("decompression_bomb", "too many pixels"),
            webvid.VideoError("too_short", "0.5 s"),
            laion.BadImage("not an image"), laion.BadImage("3x3", "too_small"),
            mmc4.DocumentError("no_images", "image_info is empty"),
            mmc4.ImageDropped("too_small", "12 bytes"),
            storyboard.StoryboardError("no_storyboard", "no sb0"),
            ytdl.YtdlError("rate_limited", "HTTP 429"),
            stage.VideoError("unavailable", "private video"),
            net.FetchError("http_503", "http://x/: HTTP 503", retryable=True, attempts=4, retry_after=2.0)]


def test_item_failures_carry_reason_and_message():
    for error in _item_failures():
        assert isinstance(error, errors.ItemFailed), type(error)
        assert error.reason and str(error) and errors.exit_status(error) is None
    bad = _item_failures()[3]
    assert (bad.reason, bad.message, str(bad)) == ("too_small", "3x3", "3x3")


def test_item_failures_pickle_as_themselves():
    for error in _item_failures():
        back = pickle.loads(pickle.dumps(error))
        assert type(back) is type(error)
        assert (back.reason, back.message, str(back), back.args) == (error.reason, error.message, str(error),
                                                                     error.args)
        assert vars(back) == vars(error)


class _OwnConstructor(errors.ItemFailed):
    """A subclass whose constructor takes other arguments than (reason, message)."""

    def __init__(self, code: int):
        super().__init__(f"code_{code}", f"failed with {code}")
        self.code = code


def test_item_failed_pickles_with_a_subclass_constructor_of_its_own():
    back = pickle.loads(pickle.dumps(_OwnConstructor(7)))
    assert (type(back), back.code, back.reason, str(back)) == (_OwnConstructor, 7, "code_7", "failed with 7")


def test_except_sites_keep_catching_them():
    from emu_data.core import images
    from emu_data.sources.youtube import storyboard, ytdl

    assert isinstance(storyboard.StoryboardError("decode_error", "x"), images.ImageRejected)
    assert str(storyboard.StoryboardError("decode_error", "x")) == "decode_error: x"
    assert isinstance(ytdl.YtdlError("download_error", "x"), RuntimeError)   # inputs.from_refs catches those


# ---- the command line ----------------------------------------------------------------------

def test_a_bug_in_a_command_propagates_with_its_traceback(tmp_path, monkeypatch):
    from emu_data.inspect import stats

    def broken(directory):
        raise ValueError("an internal invariant broke")

    monkeypatch.setattr(stats, "compute", broken)
    with pytest.raises(ValueError, match="an internal invariant broke"):
        cli.main(["stats", str(tmp_path)])


@pytest.mark.parametrize("error, status, line", [
    (errors.UsageError("the corpus is of another kind"), 2, "emu-data stats: error: the corpus is of another kind"),
    (errors.DataFault("3 unit(s) failed"), 1, "emu-data stats: 3 unit(s) failed"),
    (OSError(errno.ENOSPC, "disk full", "out/x"), 1, f"emu-data stats: cannot write out/x: {os.strerror(errno.ENOSPC)}"),
])
def test_a_known_error_is_one_line_and_its_exit_status(tmp_path, monkeypatch, capsys, error, status, line):
    from emu_data.inspect import stats

    def failing(directory):
        raise error

    monkeypatch.setattr(stats, "compute", failing)
    assert cli.main(["stats", str(tmp_path)]) == status
    assert capsys.readouterr().err == line + "\n"
