"""Doing one video's YouTube work on identities the run's pool lends.

Both YouTube stages (`youtube`: storyboards + subtitles; `clips`: storyboards for clip lists)
fetch a video the same way: lease an identity, run the work with its cookies and proxy and
its request pacing, tell the pool how it went. A bot check sends the video to another
identity; a rate-limit answer sends it back to the pool (any identity, after its cooldown),
at most `rate_limit_retries` times; it fails for good when no identity is left for it.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from emu_data import net
from emu_data.core import errors, records
from emu_data.sources.youtube import identities, pool, ytdl

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Done:
    """What the work returned, on which identity, after how many attempts."""

    value: object
    identity: str
    attempts: int


class Failed(errors.ItemFailed):
    """The video's work failed for good: its reason, its message (naming the last identity
    tried) and the attempts it took."""

    def __init__(self, reason: str, message: str, attempts: int):
        super().__init__(reason, message)
        self.attempts = attempts


def local_pool(options: ytdl.YtdlOptions):
    """A unit run without the run's shared pool (a test, a library call): a pool of one from
    its own --cookies/--proxy, with the default policy but no sleeps between videos."""
    from emu_data.engine.runtime import LocalHandle

    identity = identities.Identity("default", options.cookies, options.proxy, videos_per_hour=0)
    return LocalHandle(pool.IdentityPool([identity], pool.PoolPolicy(cooldown=0.0)))


def on_identities(handle, work: Callable, *, failures: tuple, rate: float, rate_limit_retries: int,
                  ref: str) -> Done:
    """work(identity, before_request) on identities the pool lends, until it returns (Done)
    or fails for good (Failed). `failures`: the exceptions that are the video's own (a
    status reason), not a bug; a refusal counts against an identity only when YouTube gave
    it through yt-dlp (not an info-json file's own status)."""
    refused: list[str] = []
    attempts = rate_limits = 0
    last = None
    while True:
        lease = _lease(handle, tuple(refused))
        if isinstance(lease, pool.Exhausted):
            raise Failed(lease.reason, f"{last}; {lease.message}" if last else lease.message, max(attempts, 1))
        attempts += 1
        name, outcome = lease.identity.name, "failed"   # what the pool hears if this raises
        try:
            with _own_cookies(lease.identity) as identity:
                value = work(identity, _polite(handle, identity, rate))
            outcome = "ok"
            return Done(value, name, attempts)
        except failures as e:
            reason = getattr(e, "reason", "invalid_record")
            outcome = reason if isinstance(e, ytdl.YtdlError) else "failed"
            last = records.with_identity(str(e) or reason, name)
            if outcome == "bot_check":
                refused.append(name)
                log.warning("bot check for identity %s on %s: trying another", name, ref)
                continue
            if outcome == "rate_limited" and rate_limits < rate_limit_retries:
                rate_limits += 1
                log.warning("rate limited: identity %s on %s; the video goes back to the pool", name, ref)
                continue
            raise Failed(reason, last, attempts) from None
        finally:
            handle.call("release", lease.token, outcome)


@contextlib.contextmanager
def _own_cookies(identity: identities.Identity):
    """The identity as this video uses it. yt-dlp writes a cookies file back, in place, when
    it is done with it (YouTube rotates session cookies): an identity that serves one video at
    a time keeps its file, so the rotation is kept; one serving several at once gives each
    video a copy, so no two yt-dlp runs write one file at the same time (a half-written file
    would make the next video a guest's)."""
    if not identity.cookies or identity.concurrent == 1:
        yield identity
        return
    with tempfile.TemporaryDirectory(prefix="emu-yt-cookies-") as tmp:
        copy = Path(tmp) / "cookies.txt"
        copy.write_bytes(Path(identity.cookies).read_bytes())
        yield replace(identity, cookies=str(copy))


def _lease(handle, refused: tuple[str, ...]):
    """A lease or Exhausted: waits (sleeping here, not in the pool) while none is free."""
    while True:
        answer = handle.call("lease", refused)
        if not isinstance(answer, pool.Wait):
            return answer
        time.sleep(answer.seconds)


def _polite(handle, identity: identities.Identity, rate: float):
    """before_request for yt-dlp: wait for the identity's next request slot on the host. An
    identity that serves one video at a time is this worker's alone while it holds the lease:
    its bucket lives here (no pool call per request); one shared by several videos at once
    asks the pool, the bucket every worker shares. None with no rate."""
    if not rate:
        return None
    if identity.concurrent == 1:
        return net.RateLimiter(rate).acquire
    name = identity.name

    def before_request(host: str) -> None:
        wait = handle.call("request", name, host)
        if wait > 0:
            time.sleep(wait)
    return before_request
