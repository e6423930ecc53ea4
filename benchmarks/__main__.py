"""`python -m benchmarks`: list the benchmarks."""

import pkgutil
import sys

import benchmarks

for module in pkgutil.iter_modules(benchmarks.__path__):
    if not module.name.startswith("_"):
        doc = __import__(f"benchmarks.{module.name}", fromlist=["__doc__"]).__doc__ or ""
        sys.stdout.write(f"python -m benchmarks.{module.name:<20} {doc.strip().splitlines()[0] if doc else ''}\n")
