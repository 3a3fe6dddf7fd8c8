"""``python -m pai.cli``: the same as the ``pai`` console script."""

from pai.cli.main import main

main()
