"""Entry point and the one error boundary of the CLI."""

from __future__ import annotations

import atexit
import logging
import os
import sys
import traceback
import warnings
from typing import NoReturn

import click

from edgetune import __version__
from edgetune.cli import bench, compress, device, evaluate, export, fewshot, finetune, gate, inspect, recipe, search, targets
from edgetune.errors import EdgetuneError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgetune")
def cli() -> None:
    """Compress PyTorch models for edge devices: prune, quantize to int8 with calibration data,
    recover with a budgeted fine-tune, export int8 ONNX and TFLite with the same parameters,
    evaluate them on the real runtimes, benchmark them per hardware target, and gate releases.
    Every setting of a run is a recipe key (edgetune recipe keys)."""


for command in (
    compress.command,
    finetune.command,
    fewshot.meta_init_command,
    fewshot.adapt_command,
    export.command,
    gate.command,
    search.command,
    evaluate.command,
    bench.command,
    inspect.command,
    targets.group,
    device.group,
    recipe.group,
):
    cli.add_command(command)


def _quiet_libraries() -> None:
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.disable(logging.WARNING)


def _fail(message: str, code: int) -> int:
    sys.stdout.flush()
    print(" ".join(message.split()), file=sys.stderr, flush=True)
    return code


def run(argv: list[str]) -> int:
    debug = "--debug" in argv
    if debug:
        os.environ["EDGETUNE_DEBUG"] = "1"
    else:
        _quiet_libraries()
    try:
        code = cli.main(args=argv, prog_name="edgetune", standalone_mode=False)
        if isinstance(code, int) and code:  # click returns the code of an Exit when not standalone
            return code
    except EdgetuneError as exc:
        if debug:
            traceback.print_exc()
        return _fail(exc.one_line(), exc.exit_code)
    except click.exceptions.NoArgsIsHelpError as exc:
        # click >= 8.2: a group called without a command shows its help
        click.echo(exc.ctx.get_help() if exc.ctx else "", err=False)
        return EXIT_USAGE
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx else "edgetune"
        return _fail(f"error: {exc.format_message()}; see '{where} --help'", EXIT_USAGE)
    except click.ClickException as exc:
        return _fail(f"error: {exc.format_message()}; see 'edgetune --help'", EXIT_USAGE)
    except (KeyboardInterrupt, click.exceptions.Abort) as exc:
        if isinstance(exc.__context__, EOFError):  # click turns an EOFError into Abort: it was no Ctrl-C
            return _internal(exc.__context__, debug)
        return _fail("error: interrupted; nothing was written for the unfinished command", EXIT_INTERRUPTED)
    except SystemExit as exc:  # click does not raise it when not standalone: user code called sys.exit
        return _fail(f"error: code run by edgetune called sys.exit({exc.code!r}); remove the call from the model or data code", EXIT_USAGE)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except Exception as exc:  # the boundary: anything unexpected is a bug, reported in one line
        return _internal(exc, debug)
    return 0


def _internal(exc: BaseException, debug: bool) -> int:
    if debug:
        traceback.print_exception(exc)
    text = str(exc).splitlines()[0] if str(exc) else ""
    return _fail(f"error: internal error {type(exc).__name__}: {text}; rerun with --debug and report it", 1)


def main() -> None:
    exit_now(run(sys.argv[1:]))


def exit_now(code: int) -> NoReturn:
    """End the process without the interpreter's teardown. After a compress, freeing every
    module and array one by one and the native libraries' destructors take about 0.6 s
    (EfficientNet-Lite0 on this machine class) and do nothing a finished command needs. The
    exit handlers still run first (temporary folders, child processes), and the standard
    streams are flushed."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (| head): nothing more can reach it
            pass
    os._exit(code)


if __name__ == "__main__":
    main()
