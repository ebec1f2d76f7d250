from lofit_bench.cli import main

raise SystemExit(main())
