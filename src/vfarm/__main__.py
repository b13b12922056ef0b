from vfarm.cli.main import main

raise SystemExit(main())
