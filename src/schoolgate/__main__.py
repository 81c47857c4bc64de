from schoolgate.cli import main

raise SystemExit(main())
