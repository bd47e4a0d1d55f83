"""The running daemon: composition of lanes, links, review and hub link, systemd notification,
the local control socket, logging and ``smartgate doctor``.

May import every other subpackage except ``demo`` and ``cli``.
"""
