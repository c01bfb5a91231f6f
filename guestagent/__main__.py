"""``python -m guestagent`` and the single-file ``vic-agent``: ``vic agent`` without ``vic``.

The artefact built by ``scripts/build-artefacts`` starts here (in a containerVM it
is PID 1); everything after the program name goes to ``guestagent.cli`` unchanged,
so flags and config are those of ``vic agent``. ``--version`` alone prints the
distribution's version.
"""

from __future__ import annotations

import sys

from common.ops.version import version


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--version"]:
        print(f"vic agent {version()}")
        return 0
    from guestagent.cli import main as agent_main

    return agent_main(args)


if __name__ == "__main__":
    sys.exit(main())
