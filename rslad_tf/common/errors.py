"""User-facing errors and the command-line wrapper that turns them into one line.

A `UserError` is a mistake the user can fix (bad flag, missing file, occupied run
directory): entry points print ``error: <message>`` and exit with status 2, no traceback.
Anything else is an internal error: a short message and the path of a log holding the
traceback, exit status 1.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import traceback


class UserError(Exception):
    """A problem with the user's input; the message names it and says how to fix it.

    The registries' validation errors (`DataError`, `PresetError`) subclass it, so
    `run_cli` reports them in one line without this module knowing them."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage mistakes become a `UserError`: one ``error: ...`` line and exit
    status 2 under `run_cli`."""

    def error(self, message):
        raise UserError(f"{message} (see --help)")


def run_cli(main, argv=None) -> int:
    """Run ``main(argv)`` and map its errors to exit codes (0 ok, 1 internal, 2 user)."""
    try:
        main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of our stdout went away (`... | head`): not an error of ours. Point
        # stdout at devnull so Python's exit-time flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a closed pipe
    except SystemExit as exc:  # argparse's own usage errors exit 2 already
        return int(exc.code or 0) if isinstance(exc.code, int) else 2
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno in (28, 30, 13):  # ENOSPC, EROFS, EACCES: the output location
            print(f"error: cannot write {exc.filename or 'output'}: {exc.strerror}; "
                  "choose another --out location or free space", file=sys.stderr)
            return 2
        return _internal(exc)
    except Exception as exc:  # noqa: BLE001 - the last line of defence
        return _internal(exc)
    return 0


def _internal(exc: BaseException) -> int:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    fd, path = tempfile.mkstemp(prefix=f"rslad_tf-crash-{stamp}-", suffix=".log")
    with os.fdopen(fd, "w") as f:
        f.write("".join(traceback.format_exception(exc)))
    first = str(exc).splitlines()[0] if str(exc) else ""
    print(f"internal error: {type(exc).__name__}: {first} (traceback in {path})",
          file=sys.stderr)
    return 1
