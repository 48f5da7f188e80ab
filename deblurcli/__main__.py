from deblurcli.cli import main

main()
