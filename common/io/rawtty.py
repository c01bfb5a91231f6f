"""A tty in raw 8-bit mode: nothing between the line and the bytes carried over it.

A tty starts cooked: ICRNL maps CR to LF, IXON takes ^S/^Q as flow control, ISIG turns
^C/^Z/^\\ into signals, ICANON holds input until a newline, ECHO sends it back, OPOST
turns LF into CRLF, ISTRIP and the parity flags eat the 8th bit. Any one of them
corrupts a console's bytes or a sealed record (whose handshake bytes are random).
``make_raw`` clears them all (cfmakeraw's set, plus IXANY and IMAXBEL), sets 8 bits
without parity and makes a read wait for one byte: pyserial's VMIN=0/VTIME=0 (it times
reads with select) would make an idle non-blocking read return b"", which looks like
EOF; VMIN=1 makes it EAGAIN, so readiness-driven reads behave. Both ends of a serial
line use it: the relay's serial ingress and the guest agent's serial transport.
"""

from __future__ import annotations

import termios

IFLAG_OFF = (
    termios.IGNBRK
    | termios.BRKINT
    | termios.PARMRK
    | termios.ISTRIP
    | termios.INLCR
    | termios.IGNCR
    | termios.ICRNL
    | termios.IXON
    | termios.IXOFF
    | termios.IXANY
    | termios.IMAXBEL
    | termios.INPCK
)
OFLAG_OFF = termios.OPOST
LFLAG_OFF = termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN


def make_raw(fd: int, *, xonxoff: bool = False, local: bool = False) -> None:
    """Raw 8-bit mode, no parity, reads that wait for one byte, on the tty ``fd``.

    ``xonxoff`` keeps software flow control (an operator's explicit choice: it then
    takes 0x11 and 0x13 out of the data). ``local``: a line with no modem and no
    hardware flow control (the guest's UART): CLOCAL on, CRTSCTS off."""
    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = termios.tcgetattr(fd)
    keep = (termios.IXON | termios.IXOFF) if xonxoff else 0
    iflag &= ~(IFLAG_OFF & ~keep)
    oflag &= ~OFLAG_OFF
    lflag &= ~LFLAG_OFF
    cflag = (cflag & ~(termios.CSIZE | termios.PARENB)) | termios.CS8 | termios.CREAD
    if local:
        cflag = (cflag & ~termios.CRTSCTS) | termios.CLOCAL
    cc[termios.VMIN] = 1
    cc[termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, [iflag, oflag, cflag, lflag, ispeed, ospeed, cc])
