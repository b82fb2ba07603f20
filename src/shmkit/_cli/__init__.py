"""The ``shmkit`` command's subcommands, one private module per group.

``shmkit.cli`` builds the parser and dispatches; each module here holds the
commands of one group (``ls``/``watch``, ``info``, ``put``/``get``, ``bench``,
``rm``/``gc``/``demo``) and imports only what those need.
"""
