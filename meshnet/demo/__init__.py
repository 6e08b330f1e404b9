"""`python -m meshnet.demo` (the README's `make demo`)."""
