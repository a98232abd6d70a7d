"""`python -m sync` runs the dvmirror command line."""

from sync.cli import main

if __name__ == "__main__":
    main()
