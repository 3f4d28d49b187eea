"""img2dataset's own Downloader, run inside the Ray worker, its per-row results handed to us.

img2dataset's `download()` starts a process pool per call, and each process imports
img2dataset (and torch, through webdataset) again; then its results make a round trip
through a parquet or tar file. Calling its `Downloader` directly keeps everything that makes
it the field's downloader — urllib fetch threads, retries, X-Robots-Tag opt-out, hash
verification, its Resizer (decode, resize, re-encode and the size filters) — and replaces
only the last step: the sample writer it is given is ours, and passes each row's result
straight to a callback on the calling thread while the fetch threads keep downloading.
Ray's units, not img2dataset's processes, are the parallelism.

Rows whose bytes are already here (local files) skip the fetch but not the rest:
`local_resizer` applies img2dataset's steps after a download (hash check, Resizer) to them.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import pyarrow as pa

from emu_data import net
from emu_data.net import guard as net_guard


@dataclass(frozen=True)
class Job:
    """What the Downloader needs besides the rows: its and the Resizer's settings."""

    thread_count: int
    timeout: int
    retries: int
    user_agent_token: str | None
    opt_out_directives: tuple[str, ...]   # X-Robots-Tag directives that refuse a row; () ignores them
    resizer: dict                         # img2dataset.resizer.Resizer keyword arguments
    encode_format: str
    verify_hash_type: str | None = None   # md5 | sha256 | sha512: the column of that name is checked


# download()'s defaults, which its Downloader does not apply by itself
OPT_OUT_DIRECTIVES = ("noai", "noimageai", "noindex", "noimageindex")


class DownloaderFailed(Exception):
    """img2dataset's Downloader stopped before every row had a result."""


class _CallbackWriter:
    """img2dataset's sample-writer interface; every row (failures too) goes to `handle`."""

    def __init__(self, handle: Callable[[dict], None], errors: list, shard_id, output_folder,
                 save_caption, oom_shard_count, schema, encode_format):
        self.handle, self.errors = handle, errors

    def write(self, img_str, key, caption, meta):
        if self.errors:  # the unit has failed already: let the downloads drain, hand on nothing
            return
        try:
            self.handle({**meta, "image": img_str})
        except BaseException as e:  # the Downloader would print it and go on: it fails the unit
            self.errors.append(e)

    def close(self):
        pass


def download(columns: dict[str, list], job: Job, handle: Callable[[dict], None],
             policy: net.NetPolicy = net.NetPolicy()) -> None:
    """Download the rows given as columns ("url", any columns to carry through, and the
    expected hashes under the hash type's name when verifying); `handle` gets each row's result dict on this thread:
    the carried columns, status (success | failed_to_download | failed_to_resize),
    error_message, width, height, original_width, original_height and image (bytes or None).

    img2dataset's urlopen runs under `policy` (net_guard.urllib_policy): every connection
    address-checked, redirects limited, Retry-After honoured, bodies capped.

    Raises what `handle` raised, or DownloaderFailed when img2dataset itself stopped (rows
    without a result are then the caller's to account for)."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # imported by img2dataset; asks PyPI otherwise
    from img2dataset.downloader import Downloader    # heavy (torch via webdataset): only where it runs
    from img2dataset.resizer import Resizer

    rows = len(columns["url"])
    errors: list[BaseException] = []
    with tempfile.TemporaryDirectory(prefix="emu-img2dataset-") as tmp:
        shard = Path(tmp) / "rows.feather"
        with pa.OSFile(str(shard), "wb") as sink, pa.ipc.new_file(sink, pa.table(columns).schema) as writer:
            writer.write_table(pa.table(columns))
        downloader = Downloader(
            sample_writer_class=partial(_CallbackWriter, handle, errors), resizer=Resizer(**job.resizer),
            thread_count=job.thread_count, save_caption=False, extract_exif=False, output_folder=tmp,
            column_list=list(columns), timeout=job.timeout, number_sample_per_shard=max(rows, 1),
            oom_shard_count=max(1, math.ceil(math.log10(max(rows, 2)))), compute_hash=None,
            verify_hash_type=job.verify_hash_type, encode_format=job.encode_format, retries=job.retries,
            user_agent_token=job.user_agent_token,
            disallowed_header_directives=list(job.opt_out_directives) or None)
        try:
            with net_guard.urllib_policy(policy):
                downloader.download_shard((0, str(shard)))
        except Exception as e:  # anything from inside img2dataset: what is left of the rows is lost
            if not errors:
                raise DownloaderFailed(f"img2dataset's downloader stopped: {type(e).__name__}: {e}") from e
    if errors:
        raise errors[0]


def local_resizer(job: Job) -> Callable[[dict, bytes, str | None], dict]:
    """(row columns, bytes, expected hash) -> the result dict `download` hands `handle`, for
    bytes already held (a local file): what img2dataset's Downloader does after its fetch,
    the hash check and then its Resizer, so a local image ends as the record a downloaded
    one does. Call it from one thread: the Resizer silences output by swapping file
    descriptors 1 and 2, which img2dataset too only ever does on one thread."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    from img2dataset.resizer import Resizer

    return partial(_resized, job, Resizer(**job.resizer))


def _resized(job: Job, resizer, row: dict, data: bytes, expected_hash: str | None) -> dict:
    result = {**row, "status": "success", "error_message": None, "width": None, "height": None,
              "original_width": None, "original_height": None, "image": None}
    if job.verify_hash_type and getattr(hashlib, job.verify_hash_type)(data).hexdigest() != expected_hash:
        return {**result, "status": "failed_to_download", "error_message": "hash mismatch"}
    image, width, height, original_width, original_height, error = resizer(io.BytesIO(data))
    if error is not None:
        return {**result, "status": "failed_to_resize", "error_message": error}
    return {**result, "width": width, "height": height, "original_width": original_width,
            "original_height": original_height, "image": image}
