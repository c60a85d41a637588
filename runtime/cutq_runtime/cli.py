"""`python -m cutq_runtime`: the standard-library command line for small devices (no typer, no rich).

    python -m cutq_runtime remove photos/ --out-dir cutouts/ --model u2netp
    python -m cutq_runtime models list | pull NAME | path NAME | import FILE --name NAME
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import batch, cpu, models
from .api import DEFAULT_MODEL, DEFAULT_PNG_LEVEL, RemoveOptions
from .errors import CutqError, shown_warnings
from .flags import for_cli
from .progress import TextProgress
from .session import new_session


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, not '{text}'")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cutq_runtime", description="U²-Net background removal on CPU.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cache-dir", help="model cache (default: $CUTQ_HOME or ~/.cache/cutq)")
    sub = parser.add_subparsers(dest="command", required=True)

    rm = sub.add_parser("remove", help="cut the background out of images", parents=[common])
    rm.add_argument("inputs", nargs="+", help="files, globs or folders; - reads stdin")
    target = rm.add_mutually_exclusive_group(required=True)
    target.add_argument("-o", "--out", help="output PNG for a single input; - writes stdout")
    target.add_argument("--out-dir", help="folder for <stem>.png outputs")
    rm.add_argument("-m", "--model", default=DEFAULT_MODEL, help="variant name or .onnx/.ort path (default: u2net)")
    rm.add_argument("--only-mask", action="store_true", help="write the 8-bit mask instead of the cut-out")
    rm.add_argument("--bgcolor", help="flatten onto R,G,B,A instead of transparency")
    rm.add_argument("--threads", type=_positive, help="onnxruntime intra-op threads (default: all cores)")
    rm.add_argument("--max-pixels", type=_positive, help="refuse larger images (default: 89478485, or CUTQ_MAX_PIXELS)")
    rm.add_argument("--max-bytes", type=_positive,
                    help="refuse files and stdin over this many bytes, unread (default: 268435456, or CUTQ_MAX_BYTES)")
    rm.add_argument("--png-level", type=int, default=DEFAULT_PNG_LEVEL, choices=range(10), metavar="0-9",
                    help=f"PNG compression: higher is smaller and slower (default: {DEFAULT_PNG_LEVEL})")
    rm.add_argument("--strict-cpu", action="store_true",
                    help="refuse a model this CPU may compute wrong masks with, instead of warning (or CUTQ_STRICT_CPU=1)")
    rm.add_argument("--low-memory", action="store_true",
                    help="free the model's working memory after each image (small devices; a little slower)")
    rm.add_argument("--workers", type=_positive, help="inferences at once, sharing one model (default: one per core, at "
                    "most 4; threads each: cores / workers unless --threads). 1 uses the least memory")
    rm.add_argument("--no-resume", dest="resume", action="store_false",
                    help="with --out-dir: do every input again instead of skipping those an earlier run finished")
    rm.add_argument("--report", help="write one JSON line per failed input, with its reason, to this file")

    sub.add_parser("serve", help="serve variants over HTTP (needs the serve extra); see serve --help", add_help=False)

    mdl = sub.add_parser("models", help="list, fetch and import models")
    msub = mdl.add_subparsers(dest="action", required=True)
    msub.add_parser("list", help="known models and cached variants", parents=[common])
    for action, text in (("pull", "download a released model into the cache"), ("path", "print a model's file path")):
        msub.add_parser(action, help=text, parents=[common]).add_argument("name")
    imp = msub.add_parser("import", help="copy an .onnx/.ort file into the cache under a name", parents=[common])
    imp.add_argument("file")
    imp.add_argument("--name", required=True)
    imp.add_argument("--base", help="released model whose preprocessing it uses (default: U²-Net's)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:  # its own parser, in the optional serve package
        from .serve import main as serve

        return serve(argv[1:], prog="python -m cutq_runtime serve")
    args = _parser().parse_args(argv)
    try:
        if args.command == "remove":
            return _remove(args)
        return _models(args)
    except CutqError as exc:
        print(f"error: {for_cli(str(exc))}", file=sys.stderr)
        return 2


def _remove(args: argparse.Namespace) -> int:
    jobs = batch.plan(batch.expand_inputs(args.inputs), args.out, args.out_dir)
    options = RemoveOptions(args.only_mask, batch.parse_bgcolor(args.bgcolor), args.max_pixels, args.png_level,
                           args.max_bytes)
    workers, config = batch.session_config(args.workers, args.threads, strict_cpu=args.strict_cpu,
                                           low_memory=args.low_memory)
    with shown_warnings(lambda text: print(f"warning: {text}", file=sys.stderr)):
        session = new_session(args.model, cache_dir=args.cache_dir, config=config)
    ledger = batch.open_ledger(jobs, args.out_dir, batch.settings_key(str(session.model.path), options), args.resume)
    bar = TextProgress("Removing backgrounds")
    count = 0

    def report(job: batch.Job, error: str | None) -> None:
        nonlocal count
        count += 1
        if error:
            print(f"\nerror: {for_cli(error)}", file=sys.stderr)
        bar(count, len(jobs))

    try:
        result = batch.run(jobs, session, options, report, workers=workers, ledger=ledger)
    finally:
        if ledger is not None:
            ledger.close()
    if args.report:
        result.write_report(args.report)
    if args.out_dir and len(jobs) > 1:
        skipped = f", {len(result.skipped)} already done (skipped)" if result.skipped else ""
        print(f"\n{len(result.done)} cut-outs written to {args.out_dir}{skipped}, {len(result.failed)} failed", file=sys.stderr)
    if result.failed:
        print(f"{len(result.failed)} of {len(jobs)} failed", file=sys.stderr)
        return 1
    return 0


def _models(args: argparse.Namespace) -> int:
    cache = models.cache_dir(args.cache_dir)
    if args.action == "list":
        rows = models.list_models(cache)
        print(f"{'name':<20} {'kind':<8} {'size':>11}  {'CPUs':<20} location")
        for info in rows:
            where = str(info.path) if info.path else "not downloaded"
            cpus = cpu.LABELS[info.cpus] + ("" if info.exact_here else " (not here)")
            print(f"{info.name:<20} {info.kind:<8} {(info.size_bytes or 0) / 1e6:8.1f} MB  {cpus:<20} {where}")
        if not all(info.exact_here for info in rows):
            print(f"\n(not here) {cpu.NOT_HERE}")
    elif args.action == "pull":
        print(models.pull(args.name, cache))
    elif args.action == "path":
        print(models.resolve(args.name, cache).path)
    else:
        print(models.import_model(args.file, args.name, cache, base=args.base))
    return 0


if __name__ == "__main__":
    sys.exit(main())
