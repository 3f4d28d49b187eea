"""The identity pool: which identity fetches the next video, and when.

One pool serves a whole run: the engine hosts it as one named Ray actor, so every worker on
every node leases from the same one, and 1 worker or 64 spend the same budget. Workers
beyond what the identities can serve are told to wait, not let through.

An identity gets a video when it is not retired, not cooling down, has a free slot
(`concurrent`), has started fewer than `videos_per_hour` videos in the sliding window, and
its last video started at least the sleep between videos ago. A video counts against the
window until one window after it *ends*, not after it starts: YouTube counts a video by
its requests, and a slow video's last request must not land in a window the pool already
thinks free.

A bot check or 429 cools the identity down (the first pause, doubled on each refusal in a
row, capped); `retire_after` bot checks in a row retire it for the run. A video an identity
refused goes to another; it ends `bot_check` only when every identity still serving has
refused it, or none is left.

Plain Python with an injectable clock, so its rules are tested without Ray or sleeping.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections import deque
from dataclasses import dataclass, field

from emu_data.sources.youtube.identities import Identity

REFUSALS = ("bot_check", "rate_limited")
MAX_WAIT = 5.0          # a waiting worker asks again at least this often (a release may free a slot)
STALE_LEASE = 3600.0    # a lease held this long belongs to a worker that died: its slot is freed


@dataclass(frozen=True)
class PoolPolicy:
    cooldown: float = 60.0             # the first pause after a refusal, doubled on each in a row
    max_cooldown: float = 3600.0
    retire_after: int = 3              # bot checks in a row
    sleep_interval: float = 0.0        # seconds between two video starts on one identity ...
    max_sleep_interval: float = 0.0    # ... drawn up to this
    window: float = 3600.0             # the budget's sliding window (an hour; shorter in benchmarks)
    request_rate: float = 0.0          # requests per second per identity and host (0: unlimited)


@dataclass(frozen=True)
class Lease:
    identity: Identity
    token: int


@dataclass(frozen=True)
class Wait:
    seconds: float


@dataclass(frozen=True)
class Exhausted:
    """No identity is left for this video: every one serving has refused it, or none serves."""
    reason: str
    message: str


@dataclass
class _State:
    identity: Identity
    ends: deque = field(default_factory=deque)     # end times of the videos still in the window
    active: dict = field(default_factory=dict)     # token -> lease time (each counts too)
    next_start: float = 0.0
    cool_until: float = 0.0
    refusals_in_row: int = 0
    bot_checks_in_row: int = 0
    retired: bool = False
    served: int = 0
    refused: int = 0
    done: deque = field(default_factory=deque)     # finish times, for the videos/hour shown
    version: int = 0                               # its entry in the ready queue that counts


class IdentityPool:
    """The identities in a queue by the time each may start its next video, so a lease costs
    O(log n), not a look at every identity: a pool of thousands serves thousands of leases a
    second. A lease goes to the identity that has been ready the longest, which spreads videos
    evenly. An identity's ready time changes only on its own events (lease, release, refusal):
    then it is queued again and its old entry goes stale (versions)."""

    def __init__(self, identities: list[Identity], policy: PoolPolicy = PoolPolicy(), *,
                 clock=time.monotonic, seed: int | None = None):
        if not identities:
            raise ValueError("an identity pool needs at least one identity")
        self.policy = policy
        self._clock = clock
        self._rng = random.Random(seed)
        self._states = {i.name: _State(i) for i in identities}
        self._alive = len(identities)        # not retired
        self._queue: list[tuple[float, int, str]] = []   # (ready at, version, name)
        self._tokens = 0
        self._leases: dict[int, str] = {}
        self._requests: dict[tuple[str, str], float] = {}   # (identity, host) -> next free time
        self._started = self._stale_checked = clock()
        for state in self._states.values():
            self._queue_again(state, self._started)

    # ---- leasing -----------------------------------------------------------------------
    def lease(self, refused_by: tuple[str, ...] = ()) -> Lease | Wait | Exhausted:
        """An identity for one video, or how long to wait for one, or why none will come.
        refused_by: the identities that refused this video already (bot checks)."""
        now = self._clock()
        self._free_stale(now)
        refused = {n for n in refused_by if n in self._states and not self._states[n].retired}
        if self._alive - len(refused) <= 0:
            return self._exhausted(refused_by)
        passed_over = []   # entries of identities that refused this video: queued back after
        try:
            while self._queue:
                ready_at, version, name = self._queue[0]
                state = self._states[name]
                if version != state.version or state.retired:
                    heapq.heappop(self._queue)       # stale: the identity was queued again since
                elif name in refused:
                    passed_over.append(heapq.heappop(self._queue))
                elif ready_at > now:
                    return Wait(min(MAX_WAIT, ready_at - now))
                else:
                    heapq.heappop(self._queue)
                    return self._grant(state, now)
            return Wait(MAX_WAIT)   # every identity left is busy: a slot frees when a video ends
        finally:
            for entry in passed_over:
                heapq.heappush(self._queue, entry)

    def _grant(self, state: _State, now: float) -> Lease:
        self._tokens += 1
        state.active[self._tokens] = now
        p = self.policy
        state.next_start = now + (self._rng.uniform(p.sleep_interval, max(p.sleep_interval, p.max_sleep_interval))
                                  if p.sleep_interval else 0.0)
        self._leases[self._tokens] = state.identity.name
        self._queue_again(state, now)
        return Lease(state.identity, self._tokens)

    def _queue_again(self, state: _State, now: float) -> None:
        """Queue the identity at its new ready time (its older entry goes stale). One whose
        slots are all taken is queued on release instead; the queue is rebuilt when stale
        entries outnumber live ones, so a run of millions of videos keeps it small."""
        state.version += 1
        ready = self._ready_at(state, now) if not state.retired else math.inf
        if ready < math.inf:
            heapq.heappush(self._queue, (ready, state.version, state.identity.name))
        if len(self._queue) > 4 * len(self._states) + 64:
            self._queue = [e for e in self._queue if e[1] == self._states[e[2]].version]
            heapq.heapify(self._queue)

    def _ready_at(self, state: _State, now: float) -> float:
        """When this identity may start its next video, as far as its own events tell (inf:
        when one of its videos ends; it is queued again then)."""
        if len(state.active) >= state.identity.concurrent:
            return math.inf
        ready = max(state.cool_until, state.next_start)
        budget = int(state.identity.videos_per_hour)
        if budget:
            self._forget(state.ends, now - self.policy.window)
            over = len(state.active) + len(state.ends) - budget   # videos that must leave the window first
            if over >= 0:
                ready = max(ready, state.ends[over] + self.policy.window) if over < len(state.ends) else math.inf
        return ready

    @staticmethod
    def _forget(times: deque, before: float) -> None:
        while times and times[0] <= before:
            times.popleft()

    def _exhausted(self, refused_by: tuple[str, ...]) -> Exhausted:
        retired = sorted(s.identity.name for s in self._states.values() if s.retired)
        parts = ([f"refused by {', '.join(sorted(refused_by))}"] if refused_by else []) + \
                ([f"retired: {', '.join(retired[:20])}{' ...' if len(retired) > 20 else ''}"] if retired else [])
        return Exhausted("bot_check", f"no identity left for this video ({'; '.join(parts) or 'none'})")

    def _free_stale(self, now: float) -> None:
        """Leases held past STALE_LEASE belong to dead workers: free their slots (looked for
        once a minute: it is a walk over every lease)."""
        if now - self._stale_checked < 60.0:
            return
        self._stale_checked = now
        for token, name in list(self._leases.items()):
            state = self._states[name]
            if now - state.active.get(token, now) > STALE_LEASE:
                del state.active[token]
                del self._leases[token]
                self._queue_again(state, now)

    # ---- outcomes ----------------------------------------------------------------------
    def release(self, token: int, outcome: str) -> None:
        """The video of lease `token` ended: "ok", a refusal (bot_check, rate_limited), or any
        other reason (the video's own fault: the identity worked)."""
        name = self._leases.pop(token, None)
        if name is None:
            return   # released twice, or freed as stale
        state, now = self._states[name], self._clock()
        state.active.pop(token, None)
        state.ends.append(now)   # it counts against the budget until a window after its end
        if outcome in REFUSALS:
            self._refused(state, outcome, now)
        else:
            state.refusals_in_row = state.bot_checks_in_row = 0
            state.served += 1
            state.done.append(now)
        self._queue_again(state, now)

    def _refused(self, state: _State, outcome: str, now: float) -> None:
        state.refused += 1
        state.refusals_in_row += 1
        if outcome == "bot_check":
            state.bot_checks_in_row += 1
            if state.bot_checks_in_row >= self.policy.retire_after and not state.retired:
                state.retired = True
                self._alive -= 1
        pause = min(self.policy.cooldown * 2 ** (state.refusals_in_row - 1), self.policy.max_cooldown)
        state.cool_until = max(state.cool_until, now + pause)

    # ---- politeness per request --------------------------------------------------------
    def request(self, name: str, host: str) -> float:
        """Reserve the next request slot of identity `name` on `host`: seconds to wait first.
        Slots are spaced 1/request_rate apart across every worker."""
        rate = self.policy.request_rate
        if not rate:
            return 0.0
        now = self._clock()
        key = (name, host.lower())
        slot = max(now, self._requests.get(key, now))
        self._requests[key] = slot + 1.0 / rate
        if len(self._requests) > 100_000:   # hosts come from untrusted metadata: keep it bounded
            self._requests = {k: t for k, t in self._requests.items() if t > now}
        return slot - now

    # ---- what the progress bar shows -----------------------------------------------------
    def snapshot(self) -> dict:
        """Per identity: state (active, cooling, retired), videos served and refused, videos an
        hour over the last window (or since the start, when shorter)."""
        now = self._clock()
        span = max(min(self.policy.window, now - self._started), 1e-9)
        identities = {}
        for name, s in self._states.items():
            self._forget(s.done, now - self.policy.window)
            state = "retired" if s.retired else "cooling" if s.cool_until > now else "active"
            identities[name] = {"state": state, "served": s.served, "refused": s.refused,
                                "videos_per_hour": len(s.done) * 3600.0 / span}
        return {"identities": identities,
                "videos_per_hour": sum(i["videos_per_hour"] for i in identities.values())}


def progress_line(snapshot: dict, most: int = 4) -> str:
    """The pool in a progress bar's few words: rate overall, per identity (the busiest few),
    and how many cool down or are retired."""
    identities = snapshot["identities"]
    cooling = sum(1 for i in identities.values() if i["state"] == "cooling")
    retired = sum(1 for i in identities.values() if i["state"] == "retired")
    busiest = sorted(identities.items(), key=lambda kv: -kv[1]["videos_per_hour"])[:most]
    each = " ".join(f"{name} {i['videos_per_hour']:.0f}" for name, i in busiest)
    more = f" +{len(identities) - most}" if len(identities) > most else ""
    return (f"{snapshot['videos_per_hour']:.0f} videos/h [{each}{more}]"
            f"{f', {cooling} cooling' if cooling else ''}{f', {retired} retired' if retired else ''}")
