"""The suite's scenarios, each `run(opts) -> list of result rows`, in the order `make bench` runs them."""
