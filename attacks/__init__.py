"""dpstream attacks package."""
