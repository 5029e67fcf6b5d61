"""One module per phase; each notebook imports its module and nothing deeper."""
