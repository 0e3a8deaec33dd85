"""``python -m hf_varinit <command>`` (and ``accelerate launch -m hf_varinit pretrain ...``)."""

import sys

from hf_varinit.cli import main

if __name__ == "__main__":
    sys.exit(main())
