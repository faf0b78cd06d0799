from compactrec.cli import main

raise SystemExit(main())
