"""procwire's exceptions.

``Empty`` and ``Full`` are the :mod:`queue` module's own classes, exactly as
:mod:`multiprocessing` raises them, so existing ``except queue.Empty`` code
keeps working.

``BrokenBarrierError`` is :mod:`threading`'s, as ``multiprocessing.Barrier``
raises it. ``OwnerDiedWarning`` is issued by the ``acquire()`` that finds a
lock's previous holder dead (see :mod:`procwire.sync`).
"""
from __future__ import annotations

from queue import Empty, Full
from threading import BrokenBarrierError

from procwire._core import MessageTooLarge, OwnerDiedWarning, ProcwireError, SegmentError

__all__ = ["BrokenBarrierError", "Empty", "Full", "MessageTooLarge", "OwnerDiedWarning",
           "ProcwireError", "SegmentError"]
