"""``python -m danet_edge.cli`` (and ``torchrun -m danet_edge.cli train ...``): the danet-edge CLI."""

from . import main

if __name__ == "__main__":
    main()
