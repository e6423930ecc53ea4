"""Services own every write to the database. Keyword-only, typed, one job each."""
