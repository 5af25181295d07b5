"""`python -m emogen.cli`: the `emogen` command."""

from emogen.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
