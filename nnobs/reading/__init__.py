"""Reading run files: parsing in bulk, series, the folded history, its cache, and readers shared by every session."""
