from callmissed.cli import main

raise SystemExit(main())
