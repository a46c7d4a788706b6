"""dpstream service package."""
