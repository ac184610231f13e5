"""python -m avm"""

from avm.app.cli import main

raise SystemExit(main())
