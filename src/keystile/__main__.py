"""``python -m keystile``: the same as the ``keystile`` command."""

from keystile.cli import main

if __name__ == "__main__":
    main()
