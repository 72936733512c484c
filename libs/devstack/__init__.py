"""The whole stack on one machine as real processes: for `make run`, end-to-end tests and `make bench`."""
