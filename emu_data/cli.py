"""`emu-data`: the command line. Parse arguments, call one library function, report.

Exit codes: 0 success, 1 the data is at fault (validation found violations, units failed),
2 the command cannot work with what it was given (bad arguments, missing or foreign path).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from emu_data import __version__, errors

EPILOG = "Docs: README.md. Record definitions: schemas/*.json."


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * args.verbose + 10 * args.quiet,
                        format="%(levelname)s %(name)s: %(message)s")
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("interrupted: committed work is kept; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as e:   # errors.py: 2 usage, 1 data (or disk) at fault; anything else is a bug
        status = errors.exit_status(e)
        if status is None:
            raise
        print(errors.message(e, args.command), file=sys.stderr)
        return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emu-data",
        description="Build Emu-style interleaved image-text pretraining corpora as Arrow shards.",
        epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"emu-data {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="less log output")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_run, _add_sample, _add_youtube, _add_laion, _add_mmc4, _add_webvid, _add_mix, _add_features,
                _add_train, _add_eval, _add_validate, _add_stats, _add_preview):
        add(commands)
    return parser


# ---- shared option groups --------------------------------------------------------------

def _output_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--out", type=Path, required=True, help="corpus directory to write (created)")
    g.add_argument("--shard-rows", type=_positive_int, default=10_000, metavar="N",
                   help="at most N samples per shard (default 10000)")
    g.add_argument("--shard-bytes", type=_size, default="256MB", metavar="SIZE",
                   help="at most about SIZE per shard, e.g. 64MB, 1GB (default 256MB)")
    g.add_argument("--overwrite", action="store_true",
                   help="replace what an earlier run with another configuration wrote in --out")


def _ray_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("parallelism (Ray)")
    g.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="join this Ray cluster (e.g. auto, ray://head:10001); default: RAY_ADDRESS, "
                        "else an embedded local Ray")
    g.add_argument("--num-cpus", type=_positive_int, default=None, metavar="N",
                   help="CPUs for the embedded local Ray (default: all)")


def _net_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("downloads (the HTTP policy)")
    g.add_argument("--allow-private-addresses", action="store_true",
                   help="let downloads reach loopback/private/link-local addresses (off by default: "
                        "URL lists are untrusted; tests and the offline demo need it for 127.0.0.1)")
    g.add_argument("--allow-address", action="append", default=[], metavar="CIDR", type=_network,
                   help="let downloads reach this address or network despite the guard (e.g. a "
                        "mirror at 10.1.2.0/24), on EVERY port: the guard matches addresses, not "
                        "ports, so give the narrowest (a single address for one host); repeatable; "
                        "narrower than --allow-private-addresses")
    g.add_argument("--timeout", type=float, default=30.0, help="read timeout in seconds (default 30)")
    g.add_argument("--retries", type=int, default=3, help="retries of a failed request (default 3)")
    g.add_argument("--rate-per-host", type=float, default=10.0, metavar="N",
                   help="at most N requests per second to one host, per worker (default 10)")
    g.add_argument("--max-bytes", type=_size, default="64MiB", metavar="SIZE",
                   help="largest response body to accept; a bigger one is cut there and the item "
                        "reported too_large (default 64MiB)")


def _net_from(args):
    from emu_data.net import NetPolicy

    return NetPolicy(read_timeout=args.timeout, retries=args.retries, per_host_rate=args.rate_per_host,
                     allow_private_addresses=args.allow_private_addresses,
                     allowed_networks=tuple(args.allow_address), max_bytes=args.max_bytes)


def _network(text: str) -> str:
    import ipaddress

    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError as e:
        if text.startswith("[") or text.count(":") == 1:   # 10.0.0.5:8080, [::1]:8080
            raise argparse.ArgumentTypeError(f"{text!r}: give an address or CIDR without a port; "
                                             "it opens every port of that address") from None
        raise argparse.ArgumentTypeError(str(e)) from None


def _output_from(args):
    from emu_data.stage import OutputOptions

    return OutputOptions(args.out, args.shard_rows, args.shard_bytes, args.overwrite)


def _ray_from(args):
    from emu_data.runtime import RayOptions

    return RayOptions(address=args.ray_address, num_cpus=args.num_cpus)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def _size(text: str) -> int:
    """Parse 512MB, 1GiB, 1000000 into bytes."""
    number = text.rstrip("KMGIBkmgib")
    unit = text[len(number):].upper()
    try:
        value = int(float(number) * _UNITS[unit])
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 64MB, 1GB, 1GiB)") from None
    if value < 1:
        raise argparse.ArgumentTypeError("size must be positive")
    return value


# ---- commands ----------------------------------------------------------------------------

def _add_run(commands) -> None:
    p = commands.add_parser(
        "run", help="run a recipe (pipelines/*.yaml): ingest, mix, features, validate, train, eval in one go",
        description="Run the stages of a recipe in order, each an emu-data command with the options the "
                    "recipe gives it, outputs under --out/<stage>. The whole recipe is checked first (unknown "
                    "stages and options, missing inputs: errors name the line). A rerun skips finished "
                    "stages and resumes an interrupted one; --from reruns a stage and all after it. The "
                    "resolved recipe is saved as OUT/recipe.json, progress as OUT/pipeline.json.",
        epilog="examples:\n  emu-data run pipelines/smoke.yaml --out runs/smoke\n"
               "  emu-data run pipelines/emu_pretrain.yaml --out runs/emu --dry-run\n"
               "  emu-data run pipelines/smoke.yaml --out runs/smoke --from train",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", type=Path, metavar="RECIPE", help="a recipe file (YAML)")
    p.add_argument("--out", type=Path, required=True, help="run directory: every stage writes under it")
    p.add_argument("--dry-run", action="store_true",
                   help="check the recipe and print each stage's command line; run nothing")
    p.add_argument("--from", dest="from_stage", metavar="STAGE",
                   help="run STAGE and every later stage again, from empty outputs")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="STAGE.OPTION=VALUE",
                   help="override one option of the recipe (also site.KEY=VALUE, defaults.OPTION=VALUE); "
                        "repeatable, e.g. --set train.steps=50")
    _ray_options(p)
    p.set_defaults(handler=_run_run)


def _run_run(args) -> int:
    from emu_data.pipeline import runner, summary

    options = runner.RunOptions(args.out, dry_run=args.dry_run, from_stage=args.from_stage,
                                ray_address=args.ray_address, num_cpus=args.num_cpus,
                                settings=tuple(args.settings))
    try:
        plan = runner.run(args.recipe, options)
    except runner.StageFailed as e:
        print(f"emu-data run: {e}", file=sys.stderr)
        return e.code
    if not args.dry_run:
        print(f"\nfinished {args.recipe} in {plan.out}\n\n{summary.summarize(plan.stages)}")
    return 0


def _add_sample(commands) -> None:
    p = commands.add_parser(
        "sample", help="write a small corpus of every source kind from a generated world (no network)",
        description="Write a small valid corpus of all five source kinds (yt_storyboard, laion, "
                    "laion_coco, mmc4, webvid) from a generated world of drawn scenes whose "
                    "captions and subtitles name what is drawn. No network.",
        epilog="example: emu-data sample --out runs/sample --n 32")
    p.add_argument("--n", type=_positive_int, default=16, help="items per source (default 16)")
    p.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    p.add_argument("--sources", default=None, metavar="LIST",
                   help="comma-separated subset of sources (default: all five)")
    p.add_argument("--frames-per-sample", type=_positive_int, default=16,
                   help="storyboard frames per sample before a video is cut (default 16)")
    _output_options(p)
    _ray_options(p)
    p.set_defaults(handler=_run_sample)


def _run_sample(args) -> int:
    from emu_data.sources import sample

    config = sample.SampleConfig(
        n=args.n, seed=args.seed, frames_per_sample=args.frames_per_sample,
        sources=tuple(args.sources.split(",")) if args.sources else sample.SOURCES)
    result = sample.make_sample(config, _output_from(args), _ray_from(args))
    m = result.manifest
    state = "already complete, nothing to do" if result.reused else f"{result.ran_units} unit(s) run"
    print(f"wrote {args.out}: {m['rows']} samples in {len(m['shards'])} shard(s) ({state})")
    print("  by source: " + ", ".join(f"{s} {n}" for s, n in m["source_counts"].items()))
    return 0


def _add_youtube(commands) -> None:
    p = commands.add_parser(
        "youtube", help="YouTube storyboards + subtitles -> YT-Storyboard interleaved samples",
        description="Fetch storyboard mosaics and subtitles with yt-dlp, slice tiles at their real "
                    "times, merge with subtitle text by Emu's rule (text since the previous frame "
                    "before each frame) and cut into samples of at most --frames-per-sample frames. "
                    "Every video ends in the corpus or in the status table with a reason.",
        epilog="examples:\n  emu-data youtube GJLlxj_dtq8 https://youtu.be/dsMFmonKDD4 --out runs/yt\n"
               "  emu-data youtube --ids ids.txt --out runs/yt --cookies cookies.txt\n"
               "  yt-dlp -J ID > info/ID.info.json   # collect metadata apart, then:\n"
               "  emu-data youtube --info-json info/ --out runs/yt",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("videos", nargs="*", metavar="VIDEO", help="video ids, video URLs, playlist or channel URLs")
    p.add_argument("--ids", type=Path, metavar="FILE", help="file with one id or URL per line")
    p.add_argument("--info-json", type=Path, action="append", default=[], metavar="DIR",
                   help="directory of yt-dlp info dicts (yt-dlp -J); repeatable")
    g = p.add_argument_group("what to take")
    g.add_argument("--langs", default="en", help="subtitle languages in order of preference (default en)")
    g.add_argument("--allow-auto", action=argparse.BooleanOptionalAction, default=True,
                   help="use ASR captions when no manual track exists (default on)")
    g.add_argument("--storyboard-level", default=None, metavar="LEVEL",
                   help="storyboard format (sb0, sb1, ...) or index; default the largest tiles")
    g.add_argument("--frames-per-sample", type=_positive_int, default=16, help="frames per sample (default 16)")
    g.add_argument("--videos-per-unit", type=_positive_int, default=8,
                   help="videos per unit of work, the unit of resume (default 8)")
    g.add_argument("--retry-failed", action="store_true",
                   help="rerun units whose videos failed for a retryable reason (rate_limited, timeout, 5xx)")
    g.add_argument("--rate-limit-wait", type=float, default=60.0, metavar="S",
                   help="pause after a rate-limit answer, doubled on each repeat (default 60 s)")
    y = p.add_argument_group("yt-dlp")
    y.add_argument("--cookies", metavar="FILE", help="Netscape cookies file")
    y.add_argument("--proxy", metavar="URL", help="proxy for every request")
    y.add_argument("--sleep-requests", type=float, default=0.75, help="seconds between requests (default 0.75)")
    y.add_argument("--sleep-interval", type=float, default=10.0, help="seconds before each download (default 10)")
    y.add_argument("--max-sleep-interval", type=float, default=20.0, help="random upper bound of it (default 20)")
    y.add_argument("--sleep-subtitles", type=float, default=5.0, help="seconds before each subtitle (default 5)")
    y.add_argument("--extractor-args", default="", metavar="ARGS",
                   help="yt-dlp syntax, e.g. 'youtube:player_skip=webpage,configs;skip=translated_subs'")
    y.add_argument("--impersonate", metavar="TARGET",
                   help="browser to impersonate (needs curl_cffi, whose sockets the address guard "
                        "cannot see: only with --allow-private-addresses)")
    y.add_argument("--max-concurrent", type=_positive_int, default=None, metavar="N",
                   help="units (workers) in flight at once; default 2 x CPUs")
    _net_options(p)
    _output_options(p)
    _ray_options(p)
    p.set_defaults(handler=_run_youtube)


def _run_youtube(args) -> int:
    from dataclasses import replace

    from emu_data.sources.youtube import inputs, stage, ytdl

    options = ytdl.YtdlOptions(
        cookies=args.cookies, proxy=args.proxy, sleep_requests=args.sleep_requests,
        sleep_interval=args.sleep_interval, max_sleep_interval=args.max_sleep_interval,
        sleep_subtitles=args.sleep_subtitles, extractor_args=ytdl.parse_extractor_args(args.extractor_args),
        impersonate=args.impersonate, retries=args.retries, socket_timeout=args.timeout)
    if args.impersonate and not args.allow_private_addresses:
        # fail closed: curl_cffi connects in C, below the socket.connect hook (net_guard.py)
        raise errors.UsageError("--impersonate downloads through curl_cffi, which the address guard cannot "
                         "watch; add --allow-private-addresses if the metadata you feed is trusted")
    config = stage.YoutubeConfig(
        langs=tuple(lang.strip() for lang in args.langs.split(",") if lang.strip()),
        allow_auto=args.allow_auto, storyboard_level=args.storyboard_level,
        frames_per_sample=args.frames_per_sample, videos_per_unit=args.videos_per_unit,
        rate_limit_wait=args.rate_limit_wait)
    policy = _net_from(args)
    videos = inputs.collect(args.videos, args.ids, args.info_json, lambda url: ytdl.expand(url, options, policy))
    ray = replace(_ray_from(args), max_in_flight=args.max_concurrent)
    result = stage.make_youtube(videos, config, options, policy, _output_from(args), ray,
                                retry_failed=args.retry_failed)
    _report(args.out, result)
    return 0


def _report(out, result) -> None:
    m = result.manifest
    state = "already complete, nothing to do" if result.reused else \
        f"{result.ran_units} unit(s) run, {result.skipped_units} kept"
    print(f"wrote {out}: {m['rows']} samples in {len(m['shards'])} shard(s) ({state})")
    print("  status: " + ", ".join(f"{s} {n}" for s, n in m["status_counts"].items()))


def _add_laion(commands) -> None:
    p = commands.add_parser(
        "laion", help="LAION-2B / LAION-COCO parquet -> [image, text] samples, downloaded by img2dataset",
        description="Image URLs downloaded with img2dataset (the field's downloader), its per-row "
                    "results converted to [image, text] samples and status rows. Threshold flags drop "
                    "rows with a reason; every URL is checked against the address guard first.",
        epilog="examples:\n  emu-data laion --input laion2B-en/part-0000*.parquet --out runs/laion --min-similarity 0.28\n"
               "  emu-data laion --input laion-coco/ --source laion_coco --out runs/coco   # text = top_caption",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", type=Path, required=True, metavar="PARQUET",
                   help="LAION parquet files, or directories of them")
    g = p.add_argument_group("what to take")
    g.add_argument("--source", choices=("laion", "laion_coco"), default="laion",
                   help="laion (text = TEXT) or laion_coco (text = top_caption, the BLIP caption)")
    g.add_argument("--caption-col", default=None, help="caption column (default TEXT, or top_caption for laion_coco)")
    g.add_argument("--url-col", default="URL", help="URL column (default URL)")
    g.add_argument("--min-similarity", type=float, default=None, help="drop rows below this CLIP similarity")
    g.add_argument("--max-punsafe", type=float, default=None, help="drop rows above this NSFW probability")
    g.add_argument("--max-pwatermark", type=float, default=None, help="drop rows above this watermark probability")
    g.add_argument("--rows-per-unit", type=_positive_int, default=10_000, help="rows per unit of work (default 10000)")
    g.add_argument("--retry-failed", action="store_true", help="rerun units holding retryable failures")
    i = p.add_argument_group("img2dataset")
    i.add_argument("--resize-mode", default="no", help="no (keep served images), border, keep_ratio, center_crop")
    i.add_argument("--image-size", type=_positive_int, default=256, help="target size when resizing (default 256)")
    i.add_argument("--encode-format", default="jpg", choices=("jpg", "png", "webp"))
    i.add_argument("--encode-quality", type=int, default=95)
    i.add_argument("--thread-count", type=_positive_int, default=64, help="download threads per unit (default 64)")
    i.add_argument("--verify-hash", default=None, metavar="COL:TYPE",
                   help="check downloaded bytes against a column, e.g. sha256:sha256")
    _net_options(p)
    _output_options(p)
    _ray_options(p)
    p.set_defaults(handler=_run_laion)


def _run_laion(args) -> int:
    from emu_data.sources import laion

    verify = tuple(args.verify_hash.split(":", 1)) if args.verify_hash else None
    config = laion.LaionConfig(
        source=args.source, url_col=args.url_col, caption_col=args.caption_col,
        min_similarity=args.min_similarity, max_punsafe=args.max_punsafe, max_pwatermark=args.max_pwatermark,
        rows_per_unit=args.rows_per_unit, verify_hash=verify,
        image=laion.ImageOptions(resize_mode=args.resize_mode, image_size=args.image_size,
                                 encode_format=args.encode_format, encode_quality=args.encode_quality),
        download=laion.DownloadOptions(thread_count=args.thread_count,
                                       retries=args.retries, timeout=max(1, int(args.timeout))))
    result = laion.make_laion(args.input, config, _net_from(args), _output_from(args), _ray_from(args),
                              retry_failed=args.retry_failed)
    _report(args.out, result)
    return 0


def _add_webvid(commands) -> None:
    p = commands.add_parser(
        "webvid", help="WebVid CSV -> N uniformly sampled frames (with times) + caption per video",
        description="Each mp4 downloaded (size cap), decoded with PyAV, N frames sampled at the centres "
                    "of N equal spans with their real times, caption from `name`. Short, corrupt or "
                    "undecodable videos get status reasons.",
        epilog="example: emu-data webvid --input results_2M_train.csv --out runs/webvid --frames 8",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", type=Path, required=True, metavar="CSV",
                   help="WebVid CSV files, or directories of them")
    g = p.add_argument_group("what to take")
    g.add_argument("--frames", type=_positive_int, default=8, help="frames per video (default 8, as Emu)")
    g.add_argument("--min-duration", type=float, default=1.0, help="shorter videos are too_short (default 1 s)")
    g.add_argument("--frame-size", type=int, default=512, help="longest side of stored frames, 0 keeps (default 512)")
    g.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality of stored frames (default 90)")
    g.add_argument("--rows-per-unit", type=_positive_int, default=256, help="CSV rows per unit of work (default 256)")
    g.add_argument("--fetch-workers", type=_positive_int, default=8, help="videos fetched at once per unit (default 8)")
    g.add_argument("--max-video-bytes", type=_size, default="64MB", help="size cap per video (default 64MB)")
    g.add_argument("--retry-failed", action="store_true", help="rerun units holding retryable failures")
    _net_options(p)
    _output_options(p)
    _ray_options(p)
    p.set_defaults(handler=_run_webvid)


def _run_webvid(args) -> int:
    from dataclasses import replace

    from emu_data.sources import webvid

    config = webvid.WebvidConfig(frames=args.frames, min_duration=args.min_duration,
                                 frame_size=args.frame_size or None, jpeg_quality=args.jpeg_quality,
                                 rows_per_unit=args.rows_per_unit, fetch_workers=args.fetch_workers)
    policy = replace(_net_from(args), max_bytes=args.max_video_bytes)
    result = webvid.make_webvid(args.input, config, policy, _output_from(args), _ray_from(args),
                                retry_failed=args.retry_failed)
    _report(args.out, result)
    return 0


def _add_mmc4(commands) -> None:
    p = commands.add_parser(
        "mmc4", help="MMC4 interleaved documents (jsonl) -> samples with images at their sentences",
        description="One sample per document: images downloaded and placed before their matched "
                    "sentence; images below --min-sim dropped, the best --max-images kept, optionally "
                    "re-assigned to sentences (linear assignment on the similarity matrix). Images "
                    "that fail are recorded in the document's meta; a document left with no image "
                    "gets a status reason.",
        epilog="examples:\n  emu-data mmc4 --input docs_shard_*.jsonl --out runs/mmc4\n"
               "  emu-data mmc4 --input docs/ --out runs/mmc4 --min-sim 0.32 --max-images 5   # Emu\n"
               "  emu-data mmc4 --input docs/ --out runs/mmc4 --min-image-bytes 11000       # OpenFlamingo",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", type=Path, required=True, metavar="JSONL",
                   help="MMC4 jsonl files, or directories of them")
    g = p.add_argument_group("what to take")
    g.add_argument("--min-sim", type=float, default=0.24, help="drop images below this similarity (default 0.24)")
    g.add_argument("--max-images", type=_positive_int, default=6, help="images kept per document (default 6)")
    g.add_argument("--reassign", action=argparse.BooleanOptionalAction, default=True,
                   help="re-run the image-sentence assignment on the kept images (default on)")
    g.add_argument("--min-image-bytes", type=_size, default=None, metavar="SIZE",
                   help="drop images of at most SIZE bytes (default off)")
    g.add_argument("--max-image-pixels", type=_positive_int, default=2**26,
                   help="decompression-bomb guard (default 2^26 pixels)")
    g.add_argument("--docs-per-unit", type=_positive_int, default=128, help="documents per unit of work (default 128)")
    g.add_argument("--fetch-workers", type=_positive_int, default=16, help="parallel image fetches per unit (default 16)")
    _net_options(p)
    _output_options(p)
    _ray_options(p)
    p.set_defaults(handler=_run_mmc4)


def _run_mmc4(args) -> int:
    from emu_data.sources import mmc4

    config = mmc4.Mmc4Config(min_sim=args.min_sim, max_images=args.max_images, reassign=args.reassign,
                             min_image_bytes=args.min_image_bytes or 0, max_image_pixels=args.max_image_pixels,
                             docs_per_unit=args.docs_per_unit, fetch_workers=args.fetch_workers)
    result = mmc4.make_mmc4(args.input, config, _net_from(args), _output_from(args), _ray_from(args))
    _report(args.out, result)
    return 0


def _add_mix(commands) -> None:
    p = commands.add_parser(
        "mix", help="merge per-source corpora in given proportions, deduplicated and shuffled",
        description="Merge corpora into one: exact dedup by key, image sha256 and normalized URL; "
                    "each source subsampled so the output matches the weights (nothing is repeated: "
                    "the scarcest source relative to its weight sets the total); a deterministic "
                    "shuffle by --seed. Every input sample gets a status row (ok, dedup_image, "
                    "dedup_url, duplicate_key, over_quota).",
        epilog="examples:\n  emu-data mix runs/yt runs/laion runs/coco runs/mmc4 runs/webvid --out runs/mix\n"
               "  emu-data mix runs/* --out runs/mix --weights yt_storyboard=16,laion=128 --seed 1",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", type=Path, metavar="SRC", help="finished corpus directories")
    p.add_argument("--preset", choices=sorted(PRESET_NAMES), default="emu",
                   help="named weights; emu = Emu's per-step batch sizes: laion 128, laion_coco 128, "
                        "mmc4 64, webvid 16, yt_storyboard 16 (default)")
    p.add_argument("--weights", default=None, metavar="LIST",
                   help="SOURCE=WEIGHT,... overriding the preset's weights for the sources named")
    p.add_argument("--seed", type=int, default=0, help="shuffle and subsample seed (default 0)")
    p.add_argument("--no-dedup-images", action="store_true", help="keep samples with identical images")
    p.add_argument("--no-dedup-urls", action="store_true", help="keep samples with the same URL")
    _output_options(p)
    _ray_options(p)
    p.set_defaults(handler=_run_mix)


PRESET_NAMES = ("emu", "equal")


def _run_mix(args) -> int:
    from emu_data import mix

    weights = {**mix.PRESETS[args.preset], **(mix.parse_weights(args.weights) if args.weights else {})}
    config = mix.MixConfig(weights=weights, seed=args.seed, dedup_images=not args.no_dedup_images,
                           dedup_urls=not args.no_dedup_urls)
    result, plan = mix.make_mix(args.inputs, config, _output_from(args), _ray_from(args))
    _report(args.out, result)
    total = sum(result.manifest["source_counts"].values()) or 1
    print("  share:  " + ", ".join(f"{s} {n / total:.1%} (weight {weights.get(s, 0):g})"
                                   for s, n in result.manifest["source_counts"].items()))
    return 0


def _add_features(commands) -> None:
    p = commands.add_parser(
        "features", help="EVA-CLIP embeddings of every corpus image, in shards aligned with the corpus",
        description="Embed every image of CORPUS with an open_clip vision tower (EVA-CLIP by default): "
                    "decode and resize on CPU tasks, encode on GPU actors (one model per GPU; with no GPU, "
                    "one CPU actor). One feature shard per corpus shard, same name, rows in corpus order "
                    "(key, image_index, embedding). Resumable per shard.",
        epilog="examples:\n"
               "  emu-data features runs/mix --out runs/mix-eva --model EVA02-L-14 --pretrained merged2b_s4b_b131k\n"
               "  emu-data features runs/mix --out runs/mix-eva --model EVA01-g-14 --pretrained ~/eva01_g14.bin --tokens patch\n"
               "  emu-data features runs/sample --out runs/sample-feat --model tiny.json --pretrained none  # random init\n"
               "then: emu-data validate runs/mix-eva   (checked against the corpus its manifest names)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("corpus", type=Path, metavar="CORPUS", help="a finished corpus directory")
    p.add_argument("--out", type=Path, required=True, help="features directory to write (created)")
    p.add_argument("--overwrite", action="store_true", help="replace features of another model/layout in --out")
    m = p.add_argument_group("model")
    m.add_argument("--model", default="EVA02-B-16",
                   help="open_clip model name (EVA02-B-16, EVA02-L-14, EVA01-g-14, ...) or the path of an "
                        "open_clip JSON model config (default EVA02-B-16)")
    m.add_argument("--pretrained", required=True, metavar="TAG|PATH|none",
                   help="open_clip hub tag (needs network or a cache), a local checkpoint file, or none "
                        "(random init: for tests and speed runs only; warned and recorded)")
    m.add_argument("--tokens", choices=("pooled", "patch"), default="pooled",
                   help="pooled: the image embedding; patch: the last block's tokens, what Emu reads (default pooled)")
    m.add_argument("--precision", choices=("bf16", "fp16", "fp32"), default="bf16",
                   help="autocast precision, also the stored dtype (default bf16)")
    m.add_argument("--seed", type=int, default=0, help="random init seed with --pretrained none (default 0)")
    r = p.add_argument_group("speed")
    r.add_argument("--batch-size", type=_positive_int, default=256, help="images per encoder call (default 256)")
    r.add_argument("--gpus", type=int, default=None,
                   help="encoder actors, one GPU each (default: every GPU Ray sees; 0: encode on CPU)")
    r.add_argument("--encoder-cpus", type=_positive_int, default=None,
                   help="CPUs of the CPU encoder when there is no GPU (default: half the CPUs)")
    r.add_argument("--images-per-read", type=_positive_int, default=64, help="images per CPU decode task (default 64)")
    _ray_options(p)
    p.set_defaults(handler=_run_features)


def _run_features(args) -> int:
    from emu_data import encoder, features

    spec = encoder.ModelSpec(model=args.model, pretrained=args.pretrained, tokens=args.tokens,
                             precision=args.precision, seed=args.seed)
    run = features.RunOptions(batch_size=args.batch_size, gpus=args.gpus, encoder_cpus=args.encoder_cpus,
                              images_per_read=args.images_per_read)
    built = features.make_features(args.corpus, args.out, spec, run, _ray_from(args), overwrite=args.overwrite)
    first = built["shards"][0]["path"] if built["shards"] else None
    print(f"wrote {args.out}: {built['rows']} embeddings in {len(built['shards'])} shard(s), aligned with {args.corpus}")
    if first:
        print(f"  {spec.model} ({'RANDOM INIT' if spec.random_init else spec.pretrained}), {spec.tokens}, {spec.precision}")
    return 0


def _add_train(commands) -> None:
    p = commands.add_parser(
        "train", help="train the bundled small Emu on a corpus and its patch features (resumable)",
        description="Smoke-scale Emu pretraining: a causal transformer (learned queries over the EVA-CLIP "
                    "patch tokens) feeding a decoder-only LM; loss = next-token CE on text + lambda x l2 "
                    "regression of the next visual embedding. Sources mixed by weight (Emu's by default), "
                    "samples packed to --seq-len. AdamW (0.9, 0.98), wd 0.05, cosine with 20% warmup. "
                    "A checkpoint every N steps; rerunning the same command resumes exactly.",
        epilog="examples:\n"
               "  emu-data train --corpus runs/sample --features runs/sample-feat --out runs/emu-smoke --steps 300\n"
               "  emu-data train --corpus /data/mix --features /data/mix-eva --out runs/emu --config emu.yaml\n"
               "config file (JSON or YAML), any subset of:\n"
               "  model: {width, depth, heads, queries, ct_width, ct_depth, ct_heads, regression_weight,\n"
               "         image_start_weight, attention: sample (each packed sample sees itself) | row}\n"
               "  data:  {seq_len, batch_size, weights: {laion: 128, ...}, holdout, vocab_size, workers}\n"
               "  optim: {lr, min_lr_ratio, betas, weight_decay, warmup, grad_clip}\n"
               "  run:   {steps, checkpoint_every, seed, device, precision}\n"
               "then: emu-data eval --run RUN --corpus ... --features ...",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _run_inputs(p)
    p.add_argument("--out", type=Path, required=True, help="run directory (created; an existing one resumes)")
    p.add_argument("--config", type=Path, default=None, help="JSON/YAML training config (default: the smoke model)")
    o = p.add_argument_group("overrides (of the config file)")
    o.add_argument("--steps", type=_positive_int, help="optimizer steps (default 1000)")
    o.add_argument("--batch-size", type=_positive_int, help="packed rows per step (default 16)")
    o.add_argument("--seq-len", type=_positive_int, help="positions per packed row (default 256)")
    o.add_argument("--lr", type=float, help="peak learning rate (default 1e-3)")
    o.add_argument("--checkpoint-every", type=_positive_int, help="steps between checkpoints (default 100)")
    o.add_argument("--workers", type=int, help="loader processes (default 2; 0: in-process)")
    o.add_argument("--device", help="auto (default: cuda if there is one), cpu, cuda, cuda:N")
    o.add_argument("--seed", type=int, help="model init, mixture and sequence order (default 0)")
    p.add_argument("--stop-after", type=_positive_int, metavar="STEP",
                   help="stop (with a checkpoint) after this step of the schedule; rerun to continue")
    p.set_defaults(handler=_run_train)


def _run_inputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus", type=Path, required=True, help="a finished corpus directory")
    p.add_argument("--features", type=Path, required=True,
                   help="its features directory (emu-data features --tokens patch; pooled works too)")


def _run_train(args) -> int:
    from emu_data import train
    from emu_data.model import config as model_config

    picked = lambda **values: {k: v for k, v in values.items() if v is not None}  # noqa: E731
    config = model_config.load(args.config).with_overrides(
        data=picked(batch_size=args.batch_size, seq_len=args.seq_len, workers=args.workers),
        optim=picked(lr=args.lr),
        run=picked(steps=args.steps, checkpoint_every=args.checkpoint_every, device=args.device, seed=args.seed))
    summary = train.train(args.corpus, args.features, args.out, config, stop_after=args.stop_after)
    if "loss" in summary:
        print(f"trained {args.out}: step {summary['steps']} (from {summary['resumed_from']}), "
              f"loss {summary['loss']:.3f} (text CE {summary['text_ce']:.3f}, visual MSE {summary['visual_mse']:.4f})")
    else:
        print(f"{args.out} is already trained to step {summary['steps']}: nothing to do")
    print(f"  metrics: {args.out / 'metrics.jsonl'}   next: emu-data eval --run {args.out} "
          f"--corpus {args.corpus} --features {args.features}")
    return 0


def _add_eval(commands) -> None:
    p = commands.add_parser(
        "eval", help="evaluate a trained run: held-out CE, CIDEr-D captioning (0/2/4-shot), retrieval",
        description="Compare a run's last checkpoint with its untrained initialisation and a caption prior on "
                    "the run's held-out samples: text CE and perplexity, visual regression MSE and cosine, "
                    "zero/few-shot captioning scored with CIDEr-D, and text-to-image retrieval R@1/R@5 with "
                    "the regressed embedding. Writes RUN/eval/report.json and report.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="a run directory written by emu-data train")
    _run_inputs(p)
    p.add_argument("--max-pairs", type=_positive_int, default=100,
                   help="held-out image-text pairs for captioning and retrieval (default 100)")
    p.add_argument("--shots", default="0,2,4", help="in-context demonstrations, comma-separated (default 0,2,4)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    p.set_defaults(handler=_run_eval)


def _run_eval(args) -> int:
    from emu_data import evaluate

    options = evaluate.EvalOptions(max_pairs=args.max_pairs, device=args.device,
                                   shots=tuple(int(k) for k in args.shots.split(",") if k.strip()))
    report = evaluate.evaluate(args.run, args.corpus, args.features, options)
    print(evaluate.markdown(report), end="")
    print(f"report: {args.run / 'eval' / 'report.json'}")
    return 0


def _add_validate(commands) -> None:
    p = commands.add_parser(
        "validate", help="check shards and manifests against the schemas",
        description="Check every shard and manifest under each PATH: schema (names, types), per-row\n"
                    "invariants, images decode, unique keys, manifest vs files.\n"
                    "A features directory (emu-data features) is checked against its corpus instead: one\n"
                    "feature shard per corpus shard, one embedding per non-null image in corpus order,\n"
                    "consistent metadata, finite values.\n"
                    "Prints one line per violation (file:row: [rule] key=... message) and a summary.\n"
                    "Exit 0 clean, 1 violations, 2 unusable input.",
        epilog="examples:\n"
               "  emu-data validate runs/sample --deep\n"
               "  emu-data validate runs/mix-eva --corpus /data/mix   # features, corpus moved since",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                   help="corpus or features directory (or a folder of them)")
    p.add_argument("--deep", action="store_true", help="fully decode every image (default: a sample per shard)")
    p.add_argument("--corpus", type=Path, default=None, metavar="CORPUS",
                   help="corpus a features directory is checked against (default: the one its manifest names)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--max-lines", type=int, default=200, help="violation lines to print (default 200)")
    p.set_defaults(handler=_run_validate)


def _run_validate(args) -> int:
    from emu_data.validate import validate

    report = validate(args.paths, deep=args.deep, corpus=args.corpus)
    if args.json:
        print(json.dumps({"ok": report.ok, "summary": report.summary(),
                          "violations": [v.__dict__ for v in report.violations]}, indent=2))
    else:
        for v in report.violations[:args.max_lines]:
            print(v)
        if len(report.violations) > args.max_lines:
            print(f"... and {len(report.violations) - args.max_lines} more")
        print(report.summary())
    return 0 if report.ok else 1


def _add_stats(commands) -> None:
    p = commands.add_parser(
        "stats", help="samples, images, texts and bytes by source; status counts by reason",
        epilog="example: emu-data stats runs/sample --json")
    p.add_argument("path", type=Path, metavar="PATH", help="a finished corpus directory")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=_run_stats)


def _run_stats(args) -> int:
    from emu_data import stats

    computed = stats.compute(args.path)
    print(json.dumps(computed.to_dict(), indent=2) if args.json else stats.format_table(computed))
    return 0


def _add_preview(commands) -> None:
    p = commands.add_parser(
        "preview", help="write a self-contained HTML page showing samples as a person reads them",
        epilog="example: emu-data preview runs/sample --out runs/sample.html --n 20")
    p.add_argument("path", type=Path, metavar="PATH", help="a finished corpus directory")
    p.add_argument("--out", type=Path, required=True, help="HTML file to write")
    p.add_argument("--n", type=_positive_int, default=20, help="samples to show (default 20)")
    p.set_defaults(handler=_run_preview)


def _run_preview(args) -> int:
    from emu_data.preview import write_preview

    shown = write_preview(args.path, args.out, args.n)
    print(f"wrote {args.out} ({shown} samples)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
