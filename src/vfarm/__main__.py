from vfarm.mime_builder.cli import main

raise SystemExit(main())
