"""``python -m bridge`` is ``cometd-bridge``."""

from bridge.cli import main


raise SystemExit(main())
