import sys

from torchclr.cli import main

sys.exit(main())
