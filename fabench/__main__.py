"""``python -m fabench``: the ``fabench`` command line (:mod:`fabench._entry`)."""

from fabench._entry import main

raise SystemExit(main())
