"""Each object's shared-memory format and protocol, one module per object.

The public modules (``queue``, ``latest``, ``broadcast``) hold the class and
its policy; the formats they share with other processes are declared, drawn
and validated here, and their hot paths run in the C core
(``shmkit._core._queue``, ``shmkit._core._seqlock``).
"""
