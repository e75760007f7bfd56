"""One module per command group; `shoal.cli` only registers them."""
