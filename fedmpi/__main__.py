import sys

if sys.argv[1:2] == ["run"]:  # as early as possible: see fedmpi.signals
    from fedmpi import signals

    signals.install()

from fedmpi.cli import main  # noqa: E402

raise SystemExit(main())
