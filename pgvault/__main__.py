from pgvault.cli import main

main()
