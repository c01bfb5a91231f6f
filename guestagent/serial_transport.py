"""The guest's serial line in raw 8-bit mode: nothing between the tty and the session.

A tty starts cooked: ICRNL maps CR to LF, IXON takes ^S/^Q as flow control, ISIG turns
^C/^Z/^\\ into signals, ICANON holds input until a newline, ECHO sends it back, OPOST
turns LF into CRLF. Any one of them corrupts a sealed record (and the handshake, whose
bytes are random). pyserial clears most; ``make_raw`` clears them all (cfmakeraw's set,
plus IXANY and IMAXBEL), sets 8 bits without parity, and makes a read wait for one byte
(pyserial's VMIN=0/VTIME=0 makes an idle non-blocking read return b"", which looks like
EOF)."""

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


def make_raw(fd: int) -> None:
    """Raw 8-bit mode without flow control on the tty ``fd``; reads wait for a byte."""
    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = termios.tcgetattr(fd)
    iflag &= ~IFLAG_OFF
    oflag &= ~OFLAG_OFF
    lflag &= ~LFLAG_OFF
    cflag = (cflag & ~(termios.CSIZE | termios.PARENB | termios.CRTSCTS)) | termios.CS8
    cflag |= termios.CREAD | termios.CLOCAL
    cc[termios.VMIN] = 1
    cc[termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, [iflag, oflag, cflag, lflag, ispeed, ospeed, cc])
