from mxpolicyd.cli import main

main()
