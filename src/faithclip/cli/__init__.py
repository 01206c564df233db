"""Command-line interface: one thin module per subcommand over the library API."""
