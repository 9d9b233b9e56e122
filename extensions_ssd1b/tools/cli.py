"""``python -m extensions_ssd1b``: inspect, verify and convert checkpoints without the webui.

Exit status: 0 all good; 1 a file has a problem (unreadable, not an SDXL-family checkpoint, refused,
corrupt data) or a conversion could not be done; 2 bad command line; 3 an internal error (a bug);
130 interrupted.  Errors are one line naming the file and the reason, never a traceback (set
``SSD1B_DEBUG=1`` to get one for an internal error).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TextIO

from .. import __version__
from ..core.errors import CheckpointError, Ssd1bError

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
PROG = "python -m extensions_ssd1b"


def webui_checkpoint_dir(package_dir: Path | None = None) -> Path | None:
    """``<root>/models/Stable-diffusion`` when this extension sits at ``<root>/extensions/<name>``."""
    package_dir = package_dir or Path(__file__).resolve().parents[1]
    extension = package_dir.parent
    if extension.parent.name != "extensions":
        return None
    folder = extension.parent.parent / "models" / "Stable-diffusion"
    return folder if folder.is_dir() else None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Inspect, verify and convert SDXL-family checkpoints.")
    parser.add_argument("--version", action="version", version=f"sd-webui-ssd1b {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    inspect = commands.add_parser(
        "inspect",
        help="what a checkpoint is, from its header (milliseconds, even for 7 GB)",
        description="Identify checkpoints from their headers alone. With no PATH: the webui's "
        "models/Stable-diffusion folder when this extension is installed in a webui, otherwise a generated sample.",
    )
    inspect.add_argument("paths", nargs="*", metavar="PATH", help="files or folders (searched recursively)")
    inspect.add_argument("--json", action="store_true", help="machine-readable output (docs/inspect-schema.json)")

    verify = commands.add_parser(
        "verify",
        help="read every tensor: NaN/Inf, all-zero blocks, mixed dtypes, layout",
        description="Read every byte of every tensor with bounded memory and report what is wrong.",
    )
    verify.add_argument("paths", nargs="+", metavar="PATH", help="files or folders (searched recursively)")
    verify.add_argument("--json", action="store_true", help="machine-readable output")
    verify.add_argument("--no-progress", action="store_true", help="no progress bar (it is drawn only on a tty)")

    convert = commands.add_parser(
        "convert",
        help="diffusers folder or UNet → A1111 single-file checkpoint",
        description="Write an A1111 single-file checkpoint (LDM naming) from a diffusers SDXL-family folder, "
        "or from a diffusers UNet file plus --components (an SDXL single file with the text encoders and VAE).",
    )
    convert.add_argument("source", metavar="SRC", help="a diffusers folder, or a diffusers UNet .safetensors")
    convert.add_argument("destination", metavar="DST", help="the .safetensors file to write")
    convert.add_argument("--components", metavar="FILE", help="SDXL single file providing text encoders and VAE")
    convert.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default="fp16", help="output dtype (fp16)")
    convert.add_argument("--force", action="store_true", help="replace DST if it exists")
    convert.add_argument("--no-progress", action="store_true", help="no progress bar (it is drawn only on a tty)")
    return parser


def main(argv: Sequence[str] | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    out, err = stdout or sys.stdout, stderr or sys.stderr
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:  # argparse has printed its message
        return int(exit_.code or 0)
    try:
        if args.command == "inspect":
            return _inspect(args, out, err)
        if args.command == "verify":
            return _verify(args, out, err)
        return _convert(args, out, err)
    except KeyboardInterrupt:
        err.write("interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `… | head`: the reader went away, which is not our error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except Ssd1bError as error:
        message, path = str(error), getattr(error, "path", None)
        err.write(f"error: {path}: {message}\n" if path and not message.startswith(path) else f"error: {message}\n")
        return EXIT_PROBLEM
    except Exception as error:
        if os.environ.get("SSD1B_DEBUG"):
            raise
        err.write(
            f"internal error (a bug; please report it, SSD1B_DEBUG=1 shows the traceback): "
            f"{type(error).__name__}: {error}\n"
        )
        return EXIT_INTERNAL


# -- inspect --------------------------------------------------------------------------------------


@contextmanager
def _default_paths(err: TextIO) -> Iterator[list[str]]:
    folder = webui_checkpoint_dir()
    if folder is not None:
        yield [str(folder)]
        return
    from .samples import write_sample

    with tempfile.TemporaryDirectory(prefix="ssd1b-sample-") as temporary:
        path = write_sample(Path(temporary) / "SSD-1B-sample.safetensors", "ssd-1b", sparse=True)
        err.write(
            "Not installed inside a webui, so here is a generated sample: a full-size SSD-1B single file "
            "whose data is a sparse hole. Give PATHs to inspect your own files.\n\n"
        )
        yield [str(path)]


def _inspect(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .report import document, format_report, inspect_paths

    if args.paths:
        reports = inspect_paths(args.paths)
    else:
        with _default_paths(err) as paths:
            reports = inspect_paths(paths)
    if args.json:
        json.dump(document(reports), out, indent=2)
        out.write("\n")
    else:
        out.write("\n\n".join(format_report(r) for r in reports) + "\n")
        bad = [r for r in reports if not r["ok"]]
        for report in bad:
            if report["error"]:
                err.write(f"error: {report['error']['message']}\n")
    return EXIT_OK if all(r["ok"] for r in reports) else EXIT_PROBLEM


# -- verify ---------------------------------------------------------------------------------------


def _verify_reports(paths: Sequence[str], progress: bool | None) -> list[dict[str, Any]]:
    from ..diffusers.folder import DIFFUSERS_PARTS, weight_files
    from .report import expand, inspect_diffusers_folder
    from .verify import VerifyReport, verify_file

    results: list[dict[str, Any]] = []
    for kind, path in expand(paths):
        if kind == "file":
            results.append(verify_file(path, progress=progress).as_json())
        elif kind == "diffusers":
            # The folder's structure from its headers, then every weight file's data.
            folder = inspect_diffusers_folder(path)
            combined = VerifyReport(str(path), family=(folder["family"] or {}).get("name"))
            combined.problems.extend(folder["problems"])
            for part, stem in DIFFUSERS_PARTS:
                if not (path / part).is_dir():
                    continue
                try:
                    files = weight_files(path / part, stem, "F16")
                except CheckpointError as error:
                    combined.problems.append(str(error))
                    continue
                for file in files:
                    single = verify_file(file, progress=progress, data_only=True, label=part)
                    combined.tensors += single.tensors
                    combined.bytes_scanned += single.bytes_scanned
                    if single.error:
                        combined.problems.append(single.error["message"])
                    combined.problems.extend(f"{file.relative_to(path)}: {p}" for p in single.problems)
                    combined.nonfinite.update(single.nonfinite)
                    combined.zero_blocks.extend(single.zero_blocks)
            results.append(combined.as_json())
        else:
            message = {
                "pickle": "a pickle checkpoint: not read (unpickling can run code)",
                "missing": "no such file or folder",
                "empty": "no .safetensors files in it",
            }[kind]
            report = VerifyReport(str(path))
            kind_name = "Unsupported" if kind == "pickle" else "CheckpointError"
            report.error = {"type": kind_name, "message": f"{path}: {message}", "problems": [f"{path}: {message}"]}
            results.append(report.as_json())
    return results


def _verify(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    progress = False if args.no_progress else None
    results = _verify_reports(args.paths, progress)
    if args.json:
        json.dump({"schema": "sd-webui-ssd1b/verify/1", "files": results}, out, indent=2)
        out.write("\n")
    else:
        for result in results:
            out.write(_format_verify(result) + "\n")
        for result in results:
            if result["error"]:
                err.write(f"error: {result['error']['message'][:500]}\n")
    return EXIT_OK if all(r["ok"] for r in results) else EXIT_PROBLEM


def _format_verify(result: dict[str, Any]) -> str:
    scanned = f"{result['tensors']} tensors, {result['bytes_scanned'] / 1e9:.2f} GB read"
    what = f"{result['family']}, " if result["family"] else ""
    if result["ok"]:
        lines = [f"{result['path']}: OK ({what}{scanned})"]
    elif result["error"] and not result["problems"]:
        return f"{result['path']}: FAILED: {result['error']['message']}"
    else:
        count = len(result["problems"])
        lines = [f"{result['path']}: {count} problem{'s' if count > 1 else ''} ({what}{scanned})"]
        lines += [f"  - {p}" for p in result["problems"]]
    lines += [f"  note: {n}" for n in result["notes"]]
    return "\n".join(lines)


# -- convert --------------------------------------------------------------------------------------


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM/SIGHUP unwind like Ctrl-C, so the partial output is removed on the way out."""
    previous = {}
    for name in ("SIGTERM", "SIGHUP"):
        number = getattr(signal, name, None)
        if number is None:
            continue
        with suppress(ValueError):  # not the main thread: leave signals alone
            previous[number] = signal.signal(number, _interrupt)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _convert(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .convert import convert

    progress = False if args.no_progress else None
    with _signals_interrupt():
        try:
            result = convert(
                args.source,
                args.destination,
                components=args.components,
                dtype=args.dtype,
                force=args.force,
                progress=progress,
            )
        except KeyboardInterrupt:
            err.write(f"interrupted: {args.destination} was not written\n")
            return EXIT_INTERRUPTED
    out.write(
        f"wrote {result.destination} ({result.bytes_written / 1e9:.2f} GB, {result.family}, "
        f"{result.tensors} tensors, {args.dtype}) in {result.seconds:.1f} s\n"
    )
    if result.overflowed:
        total = sum(result.overflowed.values())
        names = ", ".join(list(result.overflowed)[:5])
        err.write(
            f"warning: {total} values were too large for {args.dtype} and became ±inf in {names}; "
            "`verify` will flag them — convert to bf16 or fp32 instead\n"
        )
    return EXIT_OK
