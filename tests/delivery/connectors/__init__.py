"""Each connector driven end to end against a local server that speaks its provider's API."""
