"""``cortex``: the gateway's command line (the gateway itself is not built yet)."""

from __future__ import annotations

import argparse
import sys

from cortex import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cortex", description=__doc__)
    parser.add_argument("--version", action="version", version=f"cortex {__version__}")
    parser.parse_args(argv)
    sys.stderr.write("cortex: the gateway is not implemented yet; see the README\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
