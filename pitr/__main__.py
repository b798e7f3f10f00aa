from pitr.entry import main

raise SystemExit(main())
