"""``python -m ead_sdk.cli``: the same as the ``ead`` command."""

from ead_sdk.cli import main

if __name__ == "__main__":
    main()
