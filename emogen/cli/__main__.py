"""`python -m emogen.cli.main`."""

from emogen.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
