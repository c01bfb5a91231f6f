"""``python -m relay`` and the single-file ``vic-relay``: ``vic relay`` without ``vic``.

The artefact built by ``scripts/build-artefacts`` starts here; everything after the
program name goes to ``relay.cli`` unchanged, so flags, config and ``--check`` are
those of ``vic relay``. ``--version`` alone prints the distribution's version.
"""

from __future__ import annotations

import sys

from common.ops.version import version


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--version"]:
        print(f"vic relay {version()}")
        return 0
    from relay.cli import main as relay_main

    return relay_main(args)


if __name__ == "__main__":
    sys.exit(main())
