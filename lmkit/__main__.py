from lmkit.cli import main

main()
