"""Acting on an uncertainty map: the regions to review (most uncertain patches, ranked) and their vector file."""
