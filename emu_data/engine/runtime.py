"""The one module that touches Ray: start or join a cluster, run tasks with a bound, and
run inference (a pool of model actors, each unit of work whole on one actor, fed by CPU read
tasks the actor owns).

Everything else hands plain picklable functions, classes and arguments to `map_tasks`,
`inference_units` and `read_ahead`, so a change in Ray's API (its actor-pool API changed
twice) is an edit here only.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import os
import signal
import sys
import threading
import uuid
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from tqdm import tqdm

from emu_data.core.options import option, positive_int

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RayOptions:
    """Where work runs. address None: RAY_ADDRESS if set, else an embedded local Ray."""

    address: str | None = option(None, flag="--ray-address", metavar="ADDR",
                                 help="join this Ray cluster (e.g. auto, ray://head:10001); default: "
                                      "RAY_ADDRESS, else an embedded local Ray")
    num_cpus: int | None = option(None, parse=positive_int, metavar="N",   # embedded Ray only
                                  help="CPUs for the embedded local Ray (default: all)")
    max_in_flight: int | None = option(None, flag="--max-concurrent", parse=positive_int, metavar="N",
                                       help="units (workers) in flight at once; default 2 x CPUs")
    cpus_per_task: float = 1.0


@dataclass(frozen=True)
class TaskFailure:
    """A task raised: the item, and the error as text (the traceback lives in Ray's logs);
    cause: the exception itself (Ray's own error when the worker was lost)."""

    item: object
    error: str
    cause: BaseException | None = field(default=None, compare=False, repr=False)


def ensure_ray(options: RayOptions = RayOptions()):
    """Start embedded Ray or join a cluster, once per process; returns the ray module."""
    address = options.address or os.environ.get("RAY_ADDRESS") or None
    if address in (None, "local") and "ray" not in sys.modules:
        # Ray's own default for a local cluster (token auth on), said before Ray reads its
        # config at import: left unset, Ray warns of it on every command
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray  # imported here: workers unpickling a stage need not import Ray's driver side

    if ray.is_initialized():
        return ray
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no phoning home from a data tool
    with _own_sigterm_handler():
        if address in (None, "local"):
            ray.init(num_cpus=options.num_cpus, include_dashboard=False,
                     logging_level=logging.WARNING, configure_logging=False)
            log.info("started embedded Ray with %s CPUs", cluster_cpus(ray))
        else:
            ray.init(address=address, logging_level=logging.WARNING, configure_logging=False)
            log.info("joined Ray cluster at %s (%s CPUs)", address, cluster_cpus(ray))
    return ray


@contextlib.contextmanager
def _own_sigterm_handler():
    """Keep the application's SIGTERM handler: ray.init installs one that sys.exits wherever
    the signal lands, after which Ray's core worker aborts (exit 134, a native stack dump).
    The CLI turns SIGTERM into an interrupt that stops units and keeps committed work."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        if main and previous is not None:
            signal.signal(signal.SIGTERM, previous)


def cluster_cpus(ray=None) -> int:
    import ray as _ray

    return int((ray or _ray).cluster_resources().get("CPU", 1))


def cluster_gpus(ray=None) -> int:
    import ray as _ray

    return int((ray or _ray).cluster_resources().get("GPU", 0))


def shutdown() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def map_tasks(fn: Callable, items: Iterable, *, options: RayOptions = RayOptions(),
              desc: str = "tasks", total: int | None = None,
              postfix: Callable[[], str] | None = None) -> Iterator[tuple[object, object]]:
    """Run fn(item) as Ray tasks; yield (item, result or TaskFailure) as tasks finish.

    At most `max_in_flight` tasks are submitted at once, so a list of millions of items
    never floods the object store; a failing task is reported, never stops the others.
    A caller that stops early (closes the generator, or an exception leaves its loop) stops
    the submitting; the tasks already submitted are never cancelled (see `_stop`):
    - if it was interrupted (Ctrl-C, or SIGTERM as the CLI turns it into an interrupt) they
      are left at once, to stop with the process: ray.shutdown kills an embedded Ray's
      workers, and a cluster kills the tasks of a driver that is gone. One may finish its
      unit meanwhile; a unit's commit is atomic, and a rerun waits for the writers a run
      left behind and refuses any that starts after it has prepared (corpus.prepare).
    - otherwise they are waited for (up to _DRAIN_S) and what they ended with dropped, so
      none goes on writing behind its back and their errors are not printed later as
      "unhandled"; one still running after that is left, with a warning, as above.
    A task whose worker dies (killed, out of memory) is retried once by Ray.
    postfix() -> a few words the progress bar shows after its counts, asked every few seconds.
    """
    ray = ensure_ray(options)
    # fn may be any picklable callable (a partial, a dataclass instance): ship it once
    # through the object store and call it from one plain remote function.
    fn_ref = ray.put(fn)
    remote = ray.remote(_call).options(num_cpus=options.cpus_per_task, max_retries=1)
    limit = options.max_in_flight or max(2, 2 * cluster_cpus(ray))
    pending: dict = {}
    items = iter(items)
    try:
        with tqdm(total=total, desc=desc, unit="task", disable=None) as bar:
            while True:
                while len(pending) < limit and (item := next(items, _END)) is not _END:
                    pending[remote.remote(fn_ref, item)] = item
                if not pending:
                    return
                done, _ = ray.wait(list(pending), num_returns=1, timeout=_POSTFIX_S if postfix else None)
                if postfix:
                    _show_postfix(bar, postfix)
                for ref in done:
                    item = pending.pop(ref)
                    bar.update()
                    yield item, _result(ray, ref, item)
    finally:
        if pending:
            _stop(ray, list(pending))


_END = object()
_DRAIN_S = 30.0
_POSTFIX_S = 5.0


def _show_postfix(bar, postfix: Callable[[], str]) -> None:
    try:
        bar.set_postfix_str(postfix(), refresh=True)
    except Exception as e:  # noqa: BLE001 - a progress line never stops a run
        log.debug("progress postfix failed: %s", e)


def _stop(ray, refs: list, drain_s: float = _DRAIN_S) -> None:
    """What becomes of the tasks a caller stopped waiting for (it closed the generator, or
    an exception left its loop): never ray.cancel. Ray (2.60) aborts the whole process
    ("Check failed: it != submissible_tasks_.end() Tried to complete task that was not
    pending") when a task is cancelled while its reply is being handled: the reply handler
    takes the task off the executing list before it completes it, a cancel in between fails
    it as not yet started, and the completion finds it gone. force=False has the same window
    and would raise KeyboardInterrupt inside the task besides, which can leave code that does
    not expect it stuck for good (a ThreadPool never finishing terminate()).

    Interrupted (a KeyboardInterrupt, SIGTERM's Terminated included, is in flight or is what
    the closing happens in): leave them at once, the process is on its way out and Ray stops
    them with it. Otherwise: wait for them, up to drain_s, and fetch what they ended with,
    so that nothing is left for Ray to report as unhandled; an interrupt while waiting is
    raised as usual. Those still running after drain_s are left, as if interrupted."""
    if _interrupted():
        log.debug("interrupted: %d task(s) left to stop with this process", len(refs))
        return
    done, left = ray.wait(refs, num_returns=len(refs), timeout=drain_s)
    for ref in done:   # fetch what they ended with: nothing left for Ray to report as unhandled
        try:
            ray.get(ref)
        except Exception as e:  # noqa: BLE001 - failed: the caller has stopped anyway
            log.debug("a task the caller stopped waiting for ended with %s", type(e).__name__)
    if left:
        log.warning("%d task(s) still running %.0f s after their caller stopped are left to finish",
                    len(left), drain_s)


def _interrupted() -> bool:
    """A KeyboardInterrupt is being handled here, or is what the exception being handled
    (GeneratorExit of a close() in the caller's `finally`) happened during."""
    seen, e = set(), sys.exc_info()[1]
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__context__
    return False


def _describe(item) -> str:
    """A unit by its id: its payload can be thousands of rows long."""
    return str(getattr(item, "id", None) or repr(item)[:200])


def _call(fn, item):
    return fn(item)


def _result(ray, ref, item):
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as e:
        # RayTaskError wraps the worker's exception; keep its message, not a traceback dump
        cause = getattr(e, "cause", None) or e
        log.debug("task for %s failed: %s", _describe(item), cause)   # the caller reports it
        return TaskFailure(item, f"{type(cause).__name__}: {cause}", cause)


@dataclass(frozen=True)
class InferencePlan:
    """How inference spreads: `actors` model replicas, each working on `units_per_actor` units
    at once (threads of the actor, taking turns on its model: the next unit's reads overlap
    the last one's tail), each unit fed by at most `reads_per_unit` CPU read tasks in flight."""

    batch_size: int = 256
    actors: int = 1
    gpus_per_actor: float = 0.0       # 0: CPU actors
    cpus_per_actor: float = 1.0
    cpus_per_read: float = 1.0
    memory_per_read: int = 768 * 2**20  # a read task: its imports (torch, via open_clip) + pixels
    units_per_actor: int = 2
    reads_per_unit: int = 2


def inference_units(units: list, worker_cls: type, worker_args: tuple, plan: InferencePlan,
                    options: RayOptions = RayOptions()) -> Iterator[tuple[object, object]]:
    """Run each unit whole on one of `plan.actors` actors holding worker_cls(*worker_args)
    (__init__ loads the model once); worker(unit) is a generator of small messages, and
    this yields (unit, message) as they arrive, units in no fixed order. What the worker
    makes (a shard) it writes itself: only its messages come to this process. When every
    unit is done, worker.close() is called if it has one.

    The worker reads its unit's input with `read_ahead` (tasks it owns). Any failure stops
    the run: the actors are killed, their tasks with them, and the error is raised as the
    worker raised it (a FeatureError stays a FeatureError, not Ray's wrapper)."""
    ray = ensure_ray(options)
    actor_cls = ray.remote(_UnitActor).options(
        num_cpus=plan.cpus_per_actor, num_gpus=plan.gpus_per_actor, max_concurrency=plan.units_per_actor)
    actors = [actor_cls.remote(worker_cls, worker_args) for _ in range(min(plan.actors, len(units)))]
    load = [0] * len(actors)
    queue, running = list(reversed(units)), {}
    try:
        while queue or running:
            while queue and min(load) < plan.units_per_actor:
                which = load.index(min(load))
                unit = queue.pop()
                running[actors[which].run.options(num_returns="streaming").remote(unit)] = (unit, which)
                load[which] += 1
            ready, _ = ray.wait(list(running), num_returns=1)
            for stream in ready:
                unit, which = running[stream]
                try:
                    ref = next(stream)
                except StopIteration:
                    del running[stream]
                    load[which] -= 1
                    continue
                yield unit, _get(ray, ref)
        ray.get([actor.close.remote() for actor in actors])   # all done: let go of what they hold
    finally:
        for actor in actors:
            ray.kill(actor)


class _UnitActor:
    """An inference actor: holds the worker; `run` (a streaming generator method, called by
    name) hands it a unit."""

    def __init__(self, worker_cls: type, worker_args: tuple):
        self.worker = worker_cls(*worker_args)

    def run(self, unit):
        yield from self.worker(unit)

    def close(self) -> None:
        if hasattr(self.worker, "close"):
            self.worker.close()


def read_ahead(read: Callable, items: Iterable, plan: InferencePlan) -> Iterator:
    """read(item) as Ray CPU tasks (plan.cpus_per_read each, plan.memory_per_read), at most
    plan.reads_per_unit in flight, the first ones submitted now; the iterator returned yields
    the results in the order of `items`. Meant for the worker of `inference_units`: the tasks
    are its actor's and die with it. A task's error is raised as the task raised it; the
    tasks still in flight are then waited for, not cancelled (`_stop`)."""
    import ray

    remote = ray.remote(_call).options(num_cpus=plan.cpus_per_read, memory=plan.memory_per_read, max_retries=1)
    read_ref, items = ray.put(read), iter(items)
    window = collections.deque(remote.remote(read_ref, item) for item in itertools.islice(items, plan.reads_per_unit))
    return _in_order(ray, window, (remote.remote(read_ref, item) for item in items))


def _in_order(ray, window: collections.deque, more: Iterator) -> Iterator:
    try:
        while window:
            result = _get(ray, window[0])
            window.popleft()
            window.extend(itertools.islice(more, 1))   # while the caller works on this result
            yield result
    finally:
        if window:
            _stop(ray, list(window))


def _get(ray, ref):
    """ray.get, with a task's own exception raised instead of Ray's wrapper around it."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, Exception):
            raise e.cause from None
        raise


# ---- one object shared by every task of a run --------------------------------------------

@contextlib.contextmanager
def shared(cls: type, *args, options: RayOptions = RayOptions(), **kwargs) -> Iterator["SharedHandle"]:
    """cls(*args, **kwargs) as one named Ray actor while the block runs: every task on every
    node that holds the handle calls the same object (a budget kept cluster-wide). Calls are
    served one at a time, so the object needs no locks; its methods must be quick."""
    ray = ensure_ray(options)
    name = f"emu-data-{cls.__name__}-{uuid.uuid4().hex[:12]}"
    namespace = ray.get_runtime_context().namespace
    actor = ray.remote(cls).options(name=name, namespace=namespace, num_cpus=0,
                                    max_restarts=0).remote(*args, **kwargs)
    handle = SharedHandle(name, namespace)
    try:
        ray.get(actor.__ray_ready__.remote())   # started: a cls that cannot start fails here, once
        yield handle
    finally:
        ray.kill(actor)


class SharedHandle:
    """A picklable way to call a `shared` object: by its actor's name, looked up once per
    process. call(method, *args) runs the method there and returns its result."""

    _actors: dict = {}   # (namespace, name) -> actor handle, per process

    def __init__(self, name: str, namespace: str | None):
        self.name, self.namespace = name, namespace

    def __reduce__(self):
        return SharedHandle, (self.name, self.namespace)

    def call(self, method: str, *args):
        import ray

        return ray.get(getattr(self._actor(), method).remote(*args))

    def _actor(self):
        import ray

        key = (self.namespace, self.name)
        if key not in self._actors:
            self._actors[key] = ray.get_actor(self.name, namespace=self.namespace)
        return self._actors[key]


class LocalHandle:
    """The same calls on an object in this process (a unit run without Ray, in a test)."""

    def __init__(self, obj):
        self.obj = obj

    def call(self, method: str, *args):
        return getattr(self.obj, method)(*args)
