from edgetune.cli.launch import main

main()
