from hsmsign.cli import main

main()
