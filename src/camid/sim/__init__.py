"""The simulated cameras, the competition they shoot, and a scrape-like external pool (``camid simulate``)."""
