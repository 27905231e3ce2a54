from mlsys.cli import main

raise SystemExit(main())
