"""The lesson, as programs you can run and read: ``procwire demo NAME``.

One short module per idea of the lesson text (进程, 管道, 消息队列, 共享内存,
信号, 套接字, 同步互斥) plus the homework, the driver and the conductor
(``bus``). Each module's docstring tells the idea; its ``main()`` shows it,
printing events in the order they happen and cleaning up every process and
file it made. :mod:`procwire.lessons.registry` lists them.
"""
from procwire.lessons.registry import LESSONS, Lesson, find

__all__ = ["LESSONS", "Lesson", "find"]
