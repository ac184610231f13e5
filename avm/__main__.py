"""python -m avm"""

from avm.cli import main

raise SystemExit(main())
