"""The ``voiceloop`` command line.

Subcommands are small functions registered in :func:`build_parser`; errors a user can fix (a
missing file, undecodable audio, bad options) print one line and exit with status 2, never a
traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import UserError
from ..pipeline import StageError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="voiceloop",
        description="Real-time voice agents: VAD → streaming ASR → your handler → streaming TTS.",
    )
    parser.add_argument("--version", action="version", version=f"voiceloop {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    from .vad import add_parsers as add_vad_parsers

    add_vad_parsers(sub)
    from .asr import add_parsers as add_asr_parsers

    add_asr_parsers(sub)
    from .tts import add_parsers as add_tts_parsers

    add_tts_parsers(sub)
    from .loop import add_parsers as add_loop_parsers

    add_loop_parsers(sub)
    from .serve import add_parsers as add_serve_parsers

    add_serve_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError, UserError) as exc:
        print(f"voiceloop {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except StageError as exc:  # a stage failed mid-run; a user-fixable cause (a lost device) is one line
        if isinstance(exc.error, UserError | FileNotFoundError):
            print(f"voiceloop {args.command}: error: {exc.error}", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
