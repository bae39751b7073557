from pixelwise.cli import main

main()
