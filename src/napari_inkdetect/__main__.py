"""``python -m napari_inkdetect`` is the ``napari-inkdetect`` command."""

from napari_inkdetect.cli import main

raise SystemExit(main())
