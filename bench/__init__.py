"""`make bench`: the hub under load, every figure beside a baseline from the same run."""
