"""``python -m safeddl``: the same command line as ``safeddl``."""

from safeddl.cli.main import main

if __name__ == "__main__":
    main(prog_name="safeddl")
