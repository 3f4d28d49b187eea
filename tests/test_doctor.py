"""`emu-data doctor` (issue 18): this install is YouTube-ready with no identities; each
identity's cookies file and proxy are judged as yt-dlp would take them; a cookie value or a
proxy password never reaches the output; the youtube run's warn_at_start never raises.
Nothing here connects beyond 127.0.0.1."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import socket
import time
from datetime import date, timedelta

import pytest

from emu_data import cli
from emu_data.sources.youtube import doctor
from emu_data.sources.youtube.identities import Identity

DAY = 86400
VALUE = "VALUEdoNotShow42"
PASSWORD = "pw-s3cret-9f"


def cookies_file(path, rows, header="# Netscape HTTP Cookie File\n"):
    """A Netscape cookies file: rows of (domain, name, expires epoch or "" for a session)."""
    lines = ["\t".join([domain, "TRUE" if domain.startswith(".") else "FALSE", "/", "TRUE", str(expires),
                        name, f"{VALUE}{i}"]) for i, (domain, name, expires) in enumerate(rows)]
    path.write_text(header + "".join(line + "\n" for line in lines))
    return path


def run(capsys, *args):
    code = cli.main(["doctor", *args])
    out, err = capsys.readouterr()
    return code, out, err


def line(out: str, word: str) -> str:
    return next(l for l in out.splitlines() if word in l)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]   # nothing listens once it is closed: connecting is refused


# ---- this install -------------------------------------------------------------------------

def test_a_fresh_install_is_ready_with_no_identities(capsys):
    deno = pytest.importorskip("yt_dlp.utils._jsruntime").DenoJsRuntime().info
    code, out, _ = run(capsys)
    assert code == 0, out
    assert line(out, "JS runtime").startswith("ok") and f"deno {deno.version}" in out
    assert line(out, "ejs").startswith("ok") and importlib.metadata.version("yt-dlp-ejs") in out
    assert line(out, "identities").startswith("ok") and "a guest" in out
    assert len(out.splitlines()) == 5   # one line per check


def test_json_lists_the_same_checks(capsys):
    code, out, _ = run(capsys, "--json")
    assert code == 0
    found = json.loads(out)
    assert [c["name"] for c in found] == ["yt-dlp", "js-runtime", "ejs", "po-token", "identities"]
    assert {c["level"] for c in found} <= {"ok", "warn"}


def test_an_old_ytdlp_is_a_warning_and_one_before_2025_11_a_failure(monkeypatch):
    from yt_dlp.version import __version__

    released = date(*map(int, __version__.split(".")[:3]))
    found = {c.name: c for c in doctor.checks([], today=max(date(2027, 6, 1), released + timedelta(days=61)))}
    assert found["yt-dlp"].level == "warn" and "pip install -U" in found["yt-dlp"].message
    monkeypatch.setattr("yt_dlp.version.__version__", "2025.10.22")
    found = doctor.checks([], today=date(2025, 10, 30))
    assert found[0].level == "fail" and doctor.crippled(found)


def test_no_js_runtime_or_no_ejs_cripples_a_run(monkeypatch):
    monkeypatch.setattr(doctor, "JS_RUNTIMES", ("no-such-runtime",))
    monkeypatch.setattr("yt_dlp.dependencies.yt_dlp_ejs", None)
    found = {c.name: c for c in doctor.checks([])}
    assert found["js-runtime"].level == "fail" and "formats go missing" in found["js-runtime"].message
    assert found["ejs"].level == "fail"


def test_a_registered_po_token_provider_is_listed(monkeypatch):
    from yt_dlp.extractor.youtube.pot._registry import _pot_providers

    doctor.checks([])   # plugins loaded first, as a run would
    monkeypatch.setitem(_pot_providers.value, "BgUtilHTTP", type("BgUtilHTTPPTP", (), {"PROVIDER_VERSION": "1.2.3"}))
    check = next(c for c in doctor.checks([]) if c.name == "po-token")
    assert check.level == "ok" and "BgUtilHTTP 1.2.3" in check.message


# ---- cookies --------------------------------------------------------------------------------

def test_unexpired_youtube_cookies_are_ok_and_the_sign_in_expiry_is_said(tmp_path, capsys):
    now = time.time()
    path = cookies_file(tmp_path / "c.txt", [(".youtube.com", "SID", int(now + 90 * DAY)),
                                            (".youtube.com", "LOGIN_INFO", int(now + 30 * DAY)),
                                            (".youtube.com", "PREF", ""), (".google.com", "NID", int(now + DAY))])
    code, out, err = run(capsys, "--cookies", str(path))
    assert code == 0, out
    said = line(out, "cookies of default")
    assert said.startswith("ok") and "3 YouTube cookies" in said and "LOGIN_INFO expires" in said
    assert VALUE not in out + err


def test_session_cookies_count_as_unexpired(tmp_path):
    path = cookies_file(tmp_path / "c.txt", [(".youtube.com", "SID", ""), (".youtube.com", "SAPISID", "0")])
    check = doctor.checks([Identity("a", cookies=str(path))])[-1]
    assert check.level == "ok" and "browser session" in check.message


def test_a_sign_in_cookie_expiring_within_a_week_is_a_warning(tmp_path):
    path = cookies_file(tmp_path / "c.txt", [(".youtube.com", "__Secure-3PSID", int(time.time() + 2 * DAY))])
    check = doctor.checks([Identity("a", cookies=str(path))])[-1]
    assert check.level == "warn" and "__Secure-3PSID" in check.message


@pytest.mark.parametrize("rows", [
    [(".youtube.com", "SID", 1_000_000)],                          # expired only
    [(".google.com", "SID", 4_000_000_000), ("example.com", "a", "")],  # no youtube.com cookie
    [(".notyoutube.com", "SID", 4_000_000_000)],                   # a look-alike domain
])
def test_no_unexpired_youtube_cookie_fails(tmp_path, capsys, rows):
    code, out, err = run(capsys, "--cookies", str(cookies_file(tmp_path / "c.txt", rows)))
    assert code == 1
    assert line(out, "cookies of default").startswith("FAIL") and VALUE not in out + err


@pytest.mark.parametrize("content", [
    b"\x00\xff\xfe garbage \x80",                                        # not text
    f'[{{"domain": ".youtube.com", "name": "SID", "value": "{VALUE}"}}]'.encode(),  # a JSON export
    f".youtube.com\tTRUE\t/\tTRUE\t0\tSID\t{VALUE}\n".encode(),             # no header
    f"# Netscape HTTP Cookie File\nyoutube.com\tTRUE\t/\tTRUE\t0\tSID\t{VALUE}\n".encode(),  # flag vs dot
    b"",
])
def test_a_file_yt_dlp_cannot_load_fails_without_quoting_it(tmp_path, capsys, content):
    path = tmp_path / "c.txt"
    path.write_bytes(content)
    code, out, err = run(capsys, "--cookies", str(path))
    assert code == 1
    assert line(out, "cookies of default").startswith("FAIL") and VALUE not in out + err


def test_a_missing_cookies_file_fails(tmp_path, capsys):
    code, out, _ = run(capsys, "--cookies", str(tmp_path / "absent.txt"))
    assert code == 1 and line(out, "cookies of default").startswith("FAIL")


def test_lines_yt_dlp_skips_are_a_warning_and_never_quoted(tmp_path, capsys):
    path = cookies_file(tmp_path / "c.txt", [(".youtube.com", "SID", "")])
    with path.open("a") as f:
        f.write(f".youtube.com\tTRUE\t/\tTRUE\tsoon\tHSID\t{VALUE}x\n.youtube.com\t{VALUE}y\n")
    code, out, err = run(capsys, "--cookies", str(path))
    assert code == 0
    said = line(out, "cookies of default")
    assert said.startswith("WARN") and "2 malformed line(s) (3, 4)" in said
    assert VALUE not in out + err


# ---- proxies and identities files -------------------------------------------------------------

def test_a_proxy_password_never_shows(tmp_path, capsys):
    proxy = f"socks5://user:{PASSWORD}@127.0.0.1:{closed_port()}"
    for extra in ((), ("--json",), ("--probe",), ("--probe", "--json")):
        _, out, err = run(capsys, "--proxy", proxy, *extra)
        assert PASSWORD not in out + err and "user:***@127.0.0.1" in out


def test_probe_finds_a_listening_proxy_and_a_closed_port(capsys):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        code, out, _ = run(capsys, "--proxy", f"http://127.0.0.1:{server.getsockname()[1]}", "--probe")
    assert code == 0 and line(out, "proxy of default").startswith("ok")
    code, out, _ = run(capsys, "--proxy", f"http://127.0.0.1:{closed_port()}", "--probe")
    assert code == 1 and line(out, "proxy of default").startswith("FAIL")
    code, out, _ = run(capsys, "--proxy", f"http://127.0.0.1:{closed_port()}")   # no probe: form only
    assert code == 0 and "well-formed" in out


def test_an_identities_file_gets_a_line_per_cookies_file_and_proxy(tmp_path, capsys):
    cookies_file(tmp_path / "a.txt", [(".youtube.com", "SID", "")])
    (tmp_path / "ids.yaml").write_text(
        f"- {{name: a, cookies: a.txt}}\n- {{name: b, proxy: 'http://u:{PASSWORD}@127.0.0.1:3128'}}\n")
    code, out, err = run(capsys, "--identities", str(tmp_path / "ids.yaml"))
    assert code == 0, out
    assert "identities: 2 (1 with cookies, 1 with a proxy)" in out
    assert line(out, "cookies of a").startswith("ok") and line(out, "proxy of b").startswith("ok")
    assert PASSWORD not in out + err


def test_a_malformed_proxy_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "ids.yaml").write_text(f"- {{name: b, proxy: 'ftp://u:{PASSWORD}@host:21'}}\n")
    code, out, err = run(capsys, "--identities", str(tmp_path / "ids.yaml"))
    assert code == 2 and "scheme must be one of" in err and PASSWORD not in out + err
    code, out, err = run(capsys, "--proxy", f"http://u:{PASSWORD}@host/path")
    assert code == 2 and PASSWORD not in out + err


def test_checks_fail_a_malformed_proxy_given_directly():
    check = doctor.checks([Identity("b", proxy=f"ftp://u:{PASSWORD}@host")])[-1]
    assert check.level == "fail" and PASSWORD not in check.message


# ---- at the start of a youtube run ----------------------------------------------------------------

def test_warn_at_start_logs_warnings_and_failures(tmp_path, caplog):
    bad = tmp_path / "bad.txt"
    bad.write_text("not cookies")
    with caplog.at_level(logging.WARNING, logger=doctor.__name__):
        doctor.warn_at_start([Identity("a", cookies=str(bad))])
    assert any("cookies of a" in r.getMessage() and "(fail)" in r.getMessage() for r in caplog.records)
    assert "JS runtime deno" not in caplog.text   # ok lines are not logged


def test_warn_at_start_never_raises(monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError(f"http://u:{PASSWORD}@proxy went wrong")

    monkeypatch.setattr(doctor, "checks", broken)
    with caplog.at_level(logging.WARNING, logger=doctor.__name__):
        doctor.warn_at_start([Identity("default")])
    assert "doctor could not check" in caplog.text and PASSWORD not in caplog.text
