"""procwire's exceptions.

``Empty`` and ``Full`` are the :mod:`queue` module's own classes, exactly as
:mod:`multiprocessing` raises them, so existing ``except queue.Empty`` code
keeps working.
"""
from __future__ import annotations

from queue import Empty, Full

from procwire._core import MessageTooLarge, ProcwireError, SegmentError

__all__ = ["Empty", "Full", "MessageTooLarge", "ProcwireError", "SegmentError"]
