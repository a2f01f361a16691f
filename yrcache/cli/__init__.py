# SPDX-License-Identifier: Apache-2.0
"""The ``yrcache`` command: info, ls, du, gc, fsck, bench (:mod:`.commands`)."""
from .commands import build_parser, main

__all__ = ["build_parser", "main"]
